// `keywarden request` without a daemon: --out with --exchange-cert and
// --ca-cert builds the archival request offline. What it writes is checked
// with our CMC parser and the openssl command line; a bad exchange
// certificate is refused before anything is written.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "pki/cmc.h"
#include "pki/private_key_blob.h"
#include "tests/pki/exchange_test_certs.h"
#include "tests/test_util.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif

namespace keywarden::testing {
namespace {

class RequestOfflineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(ca_.exchange, nullptr);
    WriteFile(Ca(), ToPem(ca_.ca.get()));
    WriteFile(Xchg(), ToPem(ca_.exchange.get()));
    WriteFile(dir_.File("xchg.key"), PrivateKeyPem(ca_.exchange_key.get()));
  }

  std::string Ca() const { return dir_.File("ca.pem"); }
  std::string Xchg() const { return dir_.File("xchg.pem"); }

  // keywarden request, offline; stdout and stderr together.
  CommandResult Request(const std::string& args) const {
    // No daemon anywhere: an attempt to connect would fail loudly.
    return RunCommand(StrCat("env -u KEYWARDEN_SERVER ", KEYWARDEN_CLI,
                             " request --template ArchivalUser ", args));
  }

  // The decrypted 21.13 envelope of `request_file`, via openssl cms -decrypt.
  std::vector<uint8_t> DecryptArchivedKey(const std::string& request_file) {
    auto req = pki::ParseCmcRequest(ReadFile(request_file));
    EXPECT_TRUE(req.ok()) << req.status();
    if (!req.ok() || !req->encrypted_key) return {};
    WriteFile(dir_.File("env.der"), *req->encrypted_key);
    auto r =
        RunCommand(StrCat("openssl cms -decrypt -binary -inform DER -in ", dir_.File("env.der"),
                          " -inkey ", dir_.File("xchg.key"), " -out ", dir_.File("plain.bin")));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.exit_code == 0 ? ReadFile(dir_.File("plain.bin")) : std::vector<uint8_t>();
  }

  ArchivalCa ca_;
  TempDir dir_;
};

TEST_F(RequestOfflineTest, OutWritesAWindowsStyleRequestAndTheKey) {
  const std::string req = dir_.File("req.der");
  const std::string key = dir_.File("key.pem");
  auto r = Request(StrCat("--subject 'CN=alice,O=keywarden test' --exchange-cert ", Xchg(),
                          " --ca-cert ", Ca(), " --out ", req, " --key-out ", key));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "(verified)")) << r.output;
  EXPECT_TRUE(Contains(r.output, "keywarden submit " + req)) << r.output;

  auto parsed = pki::ParseCmcRequest(ReadFile(req));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->digest, "SHA1");
  EXPECT_EQ(parsed->pkcs10.template_name, "ArchivalUser");
  EXPECT_EQ(EVP_PKEY_get_bits(parsed->pkcs10.public_key()), 2048);
  EXPECT_FALSE(parsed->client_info.empty());  // host, user, "keywarden"

  // The key file: 0600, a valid key (openssl), the request's key.
  struct stat st {};
  ASSERT_EQ(stat(key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto check = RunCommand("openssl pkey -check -noout -in " + key);
  EXPECT_EQ(check.exit_code, 0) << check.output;
  WriteFile(dir_.File("csr.der"), parsed->pkcs10.der);
  auto a = RunCommand("openssl req -inform DER -noout -pubkey -in " + dir_.File("csr.der"));
  auto b = RunCommand("openssl pkey -pubout -in " + key);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_EQ(a.output, b.output);

  // The archived key is a PRIVATEKEYBLOB the exchange key opens, and it is that key.
  const auto blob = DecryptArchivedKey(req);
  pki::KeySpec spec = pki::KeySpec::kSignature;
  auto archived = pki::ParsePrivateKeyBlob(blob, &spec);
  ASSERT_TRUE(archived.ok()) << archived.status();
  EXPECT_EQ(spec, pki::KeySpec::kExchange);
  EXPECT_TRUE(pki::CheckKeyPairMatches(archived->get(), parsed->pkcs10.public_key()).ok());
}

TEST_F(RequestOfflineTest, OutRefusesToOverwriteUnlessForced) {
  const std::string req = dir_.File("req.der");
  WriteFile(req, std::string("keep me"));
  const std::string args =
      StrCat("--exchange-cert ", Xchg(), " --ca-cert ", Ca(), " --out ", req, " --key-out ");
  auto r = Request(args + dir_.File("k1.pem"));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_TRUE(Contains(r.output, req)) << r.output;
  auto kept = ReadFile(req);
  EXPECT_EQ(std::string(kept.begin(), kept.end()), "keep me");
  EXPECT_FALSE(FileExists(dir_.File("k1.pem")));  // refused before any key was made

  r = Request(args + dir_.File("k2.pem") + " --force");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(pki::ParseCmcRequest(ReadFile(req)).ok());
}

TEST_F(RequestOfflineTest, ExistingKeyModernOptionsAndJson) {
  auto key = SoftwareRsaKey(3072);
  const std::string key_file = dir_.File("mine.pem");
  WriteFile(key_file, PrivateKeyPem(key.get()));
  const std::string req = dir_.File("req.der");
  auto r = RunCommand(StrCat(KEYWARDEN_CLI, " --json request --template 1.3.6.1.4.1.311.21.8.9.9",
                             " --key ", key_file, " --exchange-cert ", Xchg(), " --ca-cert ", Ca(),
                             " --out ", req,
                             " --digest sha256 --cipher aes256 --key-format pkcs8 "
                             "--no-client-info > ",
                             dir_.File("out.json")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto py =
      RunCommand(StrCat("python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); "
                        "print(d[\"request_file\"], d[\"exchange_certificate\"][\"sha1\"])' ",
                        dir_.File("out.json")));
  ASSERT_EQ(py.exit_code, 0) << py.output;
  EXPECT_EQ(py.output, StrCat(req, " ", pki::Sha1Thumbprint(ca_.exchange.get()), "\n"));

  auto parsed = pki::ParseCmcRequest(ReadFile(req));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->digest, "SHA256");
  EXPECT_EQ(parsed->encrypted_key_hash->size(), 32u);
  EXPECT_EQ(parsed->pkcs10.template_oid, "1.3.6.1.4.1.311.21.8.9.9");
  EXPECT_TRUE(parsed->client_info.empty());
  EXPECT_EQ(EVP_PKEY_eq(parsed->pkcs10.public_key(), key.get()), 1);
  const auto plain = DecryptArchivedKey(req);
  bool was_blob = true;
  auto archived = pki::ParsePrivateKeyPlaintext(plain, &was_blob, nullptr);
  ASSERT_TRUE(archived.ok()) << archived.status();
  EXPECT_FALSE(was_blob);
  EXPECT_EQ(EVP_PKEY_eq(archived->get(), key.get()), 1);
}

// Each bad exchange certificate: exit 3, the failed check named, nothing written.
TEST_F(RequestOfflineTest, BadExchangeCertificatesAreRefusedByName) {
  auto impostor = SoftwareRsaKey(2048);
  ExchangeCertSpec wrong_signer;
  wrong_signer.sign_with = impostor.get();
  ExchangeCertSpec no_eku;
  no_eku.exchange_eku = false;
  ExchangeCertSpec expired;
  expired.not_before = -30L * 24 * 3600;
  expired.not_after = -60;
  ExchangeCertSpec signature_only;
  signature_only.key_usage = "critical,digitalSignature";
  const struct {
    const char* name;
    ExchangeCertSpec spec;
    const char* expect;
  } cases[] = {
      {"wrong-signer", wrong_signer, "is not signed by the CA key"},
      {"no-eku", no_eku, "no extendedKeyUsage 1.3.6.1.4.1.311.21.5"},
      {"expired", expired, "expired on "},
      {"no-keyenc", signature_only, "keyUsage without keyEncipherment"},
  };
  for (const auto& c : cases) {
    auto cert = MakeExchangeCert(ca_.ca.get(), ca_.ca_key.get(), ca_.exchange_key.get(), c.spec);
    ASSERT_NE(cert, nullptr) << c.name;
    const std::string file = dir_.File(StrCat(c.name, ".pem"));
    WriteFile(file, ToPem(cert.get()));
    const std::string req = dir_.File(StrCat(c.name, ".der"));
    const std::string key = dir_.File(StrCat(c.name, ".key"));
    auto r = Request(
        StrCat("--exchange-cert ", file, " --ca-cert ", Ca(), " --out ", req, " --key-out ", key));
    EXPECT_EQ(r.exit_code, 3) << c.name << ": " << r.output;
    EXPECT_TRUE(Contains(r.output, c.expect)) << c.name << ": " << r.output;
    EXPECT_TRUE(Contains(r.output, "refusing to encrypt the private key")) << r.output;
    EXPECT_FALSE(FileExists(req)) << c.name;
    EXPECT_FALSE(FileExists(key)) << c.name;
  }
  // A good exchange certificate from another CA than the trusted one.
  ArchivalCa other;
  WriteFile(dir_.File("other.pem"), ToPem(other.exchange.get()));
  auto r = Request(StrCat("--exchange-cert ", dir_.File("other.pem"), " --ca-cert ", Ca(),
                          " --out ", dir_.File("o.der"), " --key-out ", dir_.File("o.key")));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_TRUE(Contains(r.output, "not signed by the CA key")) << r.output;
}

TEST_F(RequestOfflineTest, UsageErrorsExitTwoBeforeAnyWork) {
  const std::string base =
      StrCat("--exchange-cert ", Xchg(), " --ca-cert ", Ca(), " --out ", dir_.File("r.der"));
  struct {
    std::string args;
    const char* expect;
  } cases[] = {
      {base, "would be lost"},
      {base + " --key-out " + dir_.File("k.pem") + " --pfx " + dir_.File("k.pfx") + " -p x",
       "--out writes the request without sending it"},
      {base + " --key-out " + dir_.File("k.pem") + " --key-bits 2050", "multiple of 16"},
      {base + " --key-out " + dir_.File("k.pem") + " --digest md5", "--digest"},
      {StrCat("--exchange-cert ", Xchg(), " --key-out ", dir_.File("k.pem"), " --force"),
       "--force only applies to --out"},
  };
  for (const auto& c : cases) {
    auto r = Request(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_TRUE(Contains(r.output, c.expect)) << c.args << "\n" << r.output;
  }
  EXPECT_FALSE(FileExists(dir_.File("r.der")));
  EXPECT_FALSE(FileExists(dir_.File("k.pem")));
  // --template is required.
  auto r = RunCommand(StrCat(KEYWARDEN_CLI, " request ", base));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "--template")) << r.output;
}

}  // namespace
}  // namespace keywarden::testing
