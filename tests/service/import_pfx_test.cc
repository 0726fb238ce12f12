// keywarden importpfx (certutil -importKMS) against a real keywardend: PFX
// files as Windows XP/2003 and old OpenSSL exported them (RC2-40, 3DES),
// made here by the openssl command line, are archived, and the archived key
// (opened with the KRA's key by `openssl cms -decrypt`) has the modulus
// openssl prints for the original; many files or a directory end with the
// certutil summary, one bad file reported without stopping the others.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/pkcs12.h"
#include "service/storage/store.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/rpc_test_util.h"
#include "tests/service/soft_ca.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif

namespace keywarden::testing {
namespace {

class ImportPfxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    kra_ca_ = SoftCa::Make("KRA Issuing CA");
    kra_ = kra_ca_.Issue("kra");
    WriteFile(tmp_.File("kra-ca.pem"), ToPem(kra_ca_.cert.get()));
    WriteFile(tmp_.File("kra-ca.crl"), kra_ca_.Crl());
    WriteFile(tmp_.File("kra.pem"), ToPem(kra_.cert.get()));
    WriteFile(tmp_.File("kra.key"), PrivateKeyPem(kra_.key.get()));
    DaemonHarness::Options options;
    options.extra_flags = "enable_foreign = true";
    options.extra_toml =
        StrCat("\n[kra]\ncertificates = [\"", tmp_.File("kra.pem"), "\"]\ncount = 1\ntrust = [\"",
               tmp_.File("kra-ca.pem"), "\"]\ncrls = [\"", tmp_.File("kra-ca.crl"), "\"]\n");
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    old_ca_ = SoftCa::Make("Old Windows CA");
  }

  CommandResult Kw(const std::string& args) const {
    const ClientIdentity& id = daemon_->client("admin");
    return RunCommand(StrCat(KEYWARDEN_CLI, " --server ", daemon_->target(), " --client-cert ",
                             id.cert_path, " --client-key ", id.key_path, " --server-ca ",
                             daemon_->tls_ca_path(), " --server-name localhost ", args));
  }

  // A user of the old CA, its key and certificate in NAME.key / NAME.pem,
  // exported by `openssl pkcs12 -export OPTIONS` (password "old pass") to PFX.
  void ExportUser(const std::string& name, const std::string& options, const std::string& pfx) {
    auto user = old_ca_.Issue(name, "emailProtection");
    WriteFile(tmp_.File(name + ".pem"), ToPem(user.cert.get()));
    WriteFile(tmp_.File(name + ".key"), PrivateKeyPem(user.key.get()));
    auto r = RunCommand(StrCat("openssl pkcs12 -export ", options, " -in ",
                               tmp_.File(name + ".pem"), " -inkey ", tmp_.File(name + ".key"),
                               " -passout pass:'old pass' -out ", pfx));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  std::string Info(const std::string& pfx) {
    return RunCommand(StrCat("openssl pkcs12 -legacy -info -nokeys -noout -passin pass:'old pass' "
                             "-in ",
                             pfx, " 2>&1"))
        .output;
  }

  // The modulus of user NAME's archived key, as `openssl rsa -modulus`
  // prints it: the archive from the CA database, decrypted by openssl with
  // the KRA key.
  std::string ArchivedModulus(const std::string& name) {
    auto store = service::OpenSqliteStore(daemon_->db_path());
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return "";
    const std::string cert_pem = Str(ReadFile(tmp_.File(name + ".pem")));
    auto certs = pki::ParsePemCertificates(std::span<const uint8_t>(
        reinterpret_cast<const uint8_t*>(cert_pem.data()), cert_pem.size()));
    EXPECT_EQ(certs.size(), 1u);
    if (certs.size() != 1) return "";
    service::CertificateQuery q;
    q.sha1 = pki::Sha1Thumbprint(certs[0].get());
    auto found = (*store)->FindCertificates(q);
    EXPECT_TRUE(found.ok() && found->size() == 1) << name;
    if (!found.ok() || found->size() != 1) return "";
    auto request = (*store)->GetRequest(found->front().request_id);
    EXPECT_TRUE(request.ok() && request->archived_key) << name;
    if (!request.ok() || !request->archived_key) return "";
    WriteFile(tmp_.File("envelope.der"), request->archived_key->envelope);
    auto r = RunCommand(StrCat(
        "openssl cms -decrypt -binary -inform DER -in ", tmp_.File("envelope.der"), " -recip ",
        tmp_.File("kra.pem"), " -inkey ", tmp_.File("kra.key"), " -out ", tmp_.File("plain.der"),
        " && openssl rsa -inform DER -noout -modulus -in ", tmp_.File("plain.der")));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output;
  }

  std::string Modulus(const std::string& name) {
    return RunCommand(StrCat("openssl rsa -noout -modulus -in ", tmp_.File(name + ".key"))).output;
  }

  static std::string Str(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

  TempDir tmp_;
  SoftCa kra_ca_, old_ca_;
  SoftCa::Issued kra_;
  std::unique_ptr<DaemonHarness> daemon_;
};

TEST_F(ImportPfxTest, Rc240AndTripleDesFilesImportAndTheArchivedKeyMatches) {
  const std::string rc2 = tmp_.File("rc2.pfx"), des = tmp_.File("3des.pfx");
  ExportUser("rc2user", "-legacy -certpbe PBE-SHA1-RC2-40 -keypbe PBE-SHA1-RC2-40", rc2);
  ExportUser("desuser", "-certpbe PBE-SHA1-3DES -keypbe PBE-SHA1-3DES -macalg sha1", des);
  ASSERT_NE(Info(rc2).find("pbeWithSHA1And40BitRC2-CBC"), std::string::npos) << Info(rc2);
  ASSERT_NE(Info(des).find("pbeWithSHA1And3-KeyTripleDES-CBC"), std::string::npos) << Info(des);

  auto r = Kw(StrCat("importpfx -f -p 'old pass' ", rc2));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("archived the key of CN=rc2user"), std::string::npos) << r.output;
  EXPECT_EQ(ArchivedModulus("rc2user"), Modulus("rc2user"));
  r = Kw(StrCat("importpfx -f -p 'old pass' ", des));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(ArchivedModulus("desuser"), Modulus("desuser"));
  EXPECT_NE(ArchivedModulus("desuser"), Modulus("rc2user"));
}

TEST_F(ImportPfxTest, AWrongPasswordOnAnRc2FileSaysWrongPassword) {
  const std::string rc2 = tmp_.File("rc2.pfx");
  ExportUser("rc2user", "-legacy", rc2);
  auto r = Kw(StrCat("importpfx -f -p 'not it' ", rc2));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("wrong password"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("0x80070056"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("unsupported"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Keys archived"), std::string::npos) << r.output;
}

TEST_F(ImportPfxTest, ADirectoryWithOneBadFileEndsWithTheSummary) {
  const std::string dir = tmp_.File("export");
  ASSERT_EQ(RunCommand("mkdir " + dir).exit_code, 0);
  ExportUser("alice", "-legacy", dir + "/alice.pfx");
  ExportUser("bob", "-certpbe PBE-SHA1-3DES -keypbe PBE-SHA1-3DES", dir + "/bob.PFX");
  ExportUser("carol", "", dir + "/carol.p12");
  WriteFile(dir + "/broken.pfx", std::string("this is not a PFX"));
  WriteFile(dir + "/readme.txt", std::string("not imported"));
  // One password for the batch, from the CLI's environment.
  auto r = RunCommand(StrCat("PW='old pass' ", KEYWARDEN_CLI, " --server ", daemon_->target(),
                             " --client-cert ", daemon_->client("admin").cert_path,
                             " --client-key ", daemon_->client("admin").key_path, " --server-ca ",
                             daemon_->tls_ca_path(), " --server-name localhost importpfx -f ",
                             "--password-source env:PW ", dir));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("broken.pfx: FAILED"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("readme.txt"), std::string::npos) << r.output;
  for (const char* line :
       {"Files: 4", "Files not read: 1", "Users: 3", "Foreign certificates imported: 3", "Keys: 3",
        "Keys archived: 3", "Keys not archived: 0", "importpfx FAILED for 1 of 4 file(s)"}) {
    EXPECT_NE(r.output.find(line), std::string::npos) << line << "\n" << r.output;
  }
  for (const char* user : {"alice", "bob", "carol"}) {
    EXPECT_EQ(ArchivedModulus(user), Modulus(user)) << user;
  }

  // Again, as JSON, with a file that does not exist: every key is already
  // archived now, and the missing file is reported with the others.
  auto again = Kw(StrCat("--json importpfx -f -p 'old pass' ", dir + "/alice.pfx ",
                         tmp_.File("nosuch.pfx "), dir + "/bob.PFX"));
  EXPECT_EQ(again.exit_code, 1) << again.output;
  auto j = nlohmann::json::parse(again.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << again.output;
  EXPECT_EQ(j["summary"]["files"], 3);
  EXPECT_EQ(j["summary"]["files_failed"], 3);
  EXPECT_EQ(j["summary"]["files_not_read"], 1);
  EXPECT_EQ(j["summary"]["keys_archived"], 0);
  EXPECT_EQ(j["summary"]["keys_not_archived"], 2);
  ASSERT_EQ(j["files"].size(), 3u);
  EXPECT_NE(j["files"][0]["error"].get<std::string>().find("already archived"), std::string::npos)
      << again.output;
  EXPECT_NE(j["files"][1]["error"].get<std::string>().find("nosuch.pfx"), std::string::npos)
      << again.output;
}

TEST_F(ImportPfxTest, EveryKeyOfATwoKeyPfxIsArchived) {
  auto dave = old_ca_.Issue("dave", "emailProtection");
  auto erin = old_ca_.Issue("erin", "emailProtection");
  auto pfx =
      pki::BuildPkcs12({{dave.key.get(), dave.cert.get(), {}, "dave"},
                        {erin.key.get(), erin.cert.get(), {}, "erin"}},
                       hsm::SecretString("old pass"), {pki::Pkcs12Protection::kLegacy3Des, 0});
  ASSERT_TRUE(pfx.ok()) << pfx.status();
  WriteFile(tmp_.File("two.pfx"), *pfx);
  for (auto* u : {&dave, &erin}) {
    const std::string name = u == &dave ? "dave" : "erin";
    WriteFile(tmp_.File(name + ".pem"), ToPem(u->cert.get()));
    WriteFile(tmp_.File(name + ".key"), PrivateKeyPem(u->key.get()));
  }
  auto r = Kw(StrCat("importpfx -f -p 'old pass' ", tmp_.File("two.pfx")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Users: 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Keys archived: 2"), std::string::npos) << r.output;
  EXPECT_EQ(ArchivedModulus("dave"), Modulus("dave"));
  EXPECT_EQ(ArchivedModulus("erin"), Modulus("erin"));
}

// A foreign certificate whose key is in BER (signed so by its CA): stored,
// it would be indexed under another hash than the key's, and the key would
// be free for a second owner. Refused, nothing archived; the same user's DER
// certificate is imported.
TEST_F(ImportPfxTest, AForeignCertificateWithItsKeyInBerIsRefused) {
  auto frank = old_ca_.Issue("frank", "emailProtection");
  ossl::UniquePtr<X509> ber(X509_dup(frank.cert.get()));
  ASSERT_TRUE(SetBerRsaKey(X509_get_X509_PUBKEY(ber.get())));
  ASSERT_GT(X509_sign(ber.get(), old_ca_.key.get(), EVP_sha256()), 0);
  WriteFile(tmp_.File("ber.pem"), ToPem(ber.get()));
  WriteFile(tmp_.File("old-ca.pem"), ToPem(old_ca_.cert.get()));
  auto verified = RunCommand(StrCat("openssl verify -CAfile ", tmp_.File("old-ca.pem"), " ",
                                    tmp_.File("ber.pem"), " 2>&1"));
  ASSERT_NE(verified.output.find(": OK"), std::string::npos) << verified.output;
  for (const auto& [name, cert] :
       {std::pair<std::string, X509*>{"ber", ber.get()}, {"der", frank.cert.get()}}) {
    auto pfx =
        pki::BuildPkcs12({{frank.key.get(), cert, {}, "frank"}}, hsm::SecretString("old pass"),
                         {pki::Pkcs12Protection::kLegacy3Des, 0});
    ASSERT_TRUE(pfx.ok()) << pfx.status();
    WriteFile(tmp_.File(name + ".pfx"), *pfx);
  }
  auto r = Kw(StrCat("importpfx -f -p 'old pass' ", tmp_.File("ber.pfx")));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("not in DER"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Keys archived: 0"), std::string::npos) << r.output;
  r = Kw(StrCat("importpfx -f -p 'old pass' ", tmp_.File("der.pfx")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Keys archived: 1"), std::string::npos) << r.output;
  WriteFile(tmp_.File("frank.pem"), ToPem(frank.cert.get()));
  WriteFile(tmp_.File("frank.key"), PrivateKeyPem(frank.key.get()));
  EXPECT_EQ(ArchivedModulus("frank"), Modulus("frank"));
}

TEST_F(ImportPfxTest, AKeyWithoutItsCertificateIsNeverArchived) {
  ExportUser("frank", "", tmp_.File("frank.pfx"));
  auto r = RunCommand(StrCat("openssl pkcs12 -export -nocerts -inkey ", tmp_.File("frank.key"),
                             " -passout pass:'old pass' -out ", tmp_.File("keyonly.pfx")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Kw(StrCat("importpfx -f -p 'old pass' ", tmp_.File("keyonly.pfx")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("no certificate"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Keys archived: 0"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace keywarden::testing
