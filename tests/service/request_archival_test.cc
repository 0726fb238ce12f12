// `keywarden request` (enrollment with key archival) against a real
// keywardend (DaemonHarness): the exchange certificate is fetched, verified
// against the CA the daemon serves, the Windows-style CMC request is built
// and submitted, and the CA's answer reported with its HRESULT.
//
// Without a key recovery agent an archival request is refused with
// 0x8009400a (RefusedWith8009400aWhenTheCaHasNoKra). IssuedWithTheKeyArchived is the end-to-end
// check of issuance with a KRA configured (the archive itself is checked in archival_test.cc and
// recovery_test.cc).
#include <sys/stat.h>

#include <algorithm>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/cmc.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/rpc_test_util.h"
#include "tests/service/soft_ca.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif

namespace keywarden::testing {
namespace {

class RequestArchivalTest : public ::testing::Test {
 protected:
  void Start(const DaemonHarness::Options& options = {}) {
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  std::string Connection(const std::string& who) const { return daemon_->CliConnection(who); }

  CommandResult Kw(const std::string& who, const std::string& args) const {
    return RunCommand(StrCat(KEYWARDEN_CLI, Connection(who), args));
  }

  int RequestCount() const {
    auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::ListRequestsResponse list;
    auto st = officer->ListRequests(&ctx, v1::ListRequestsRequest(), &list);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return list.requests_size();
  }

  v1::CertificateChain ExchangeCertificate() const {
    auto enrollment = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    v1::CertificateChain chain;
    auto st = enrollment->GetExchangeCertificate(&ctx, v1::GetExchangeCertificateRequest(), &chain);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return chain;
  }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
};

TEST_F(RequestArchivalTest, RefusedWith8009400aWhenTheCaHasNoKra) {
  Start();
  const std::string key = tmp_.File("alice.key");
  const std::string cert = tmp_.File("alice.pem");
  auto r = Kw("enrollee", StrCat("request --template ArchivalUser --key-out ", key, " --cert-out ",
                                 cert, " --ca-cert ", daemon_->ca_cert_path()));
  // seed: "Cannot archive private key. The certification authority is not
  // configured for key archival. 0x8009400a"
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_TRUE(Contains(r.output, "0x8009400a")) << r.output;
  EXPECT_TRUE(Contains(r.output, "not configured for key archival")) << r.output;
  // The refusal came from the CA, after the exchange certificate was accepted.
  EXPECT_FALSE(Contains(r.output, "exchange certificate")) << r.output;
  // A definite refusal leaves nothing behind: no certificate, and the key
  // written before sending is removed again.
  EXPECT_FALSE(FileExists(cert));
  EXPECT_FALSE(FileExists(key));
  EXPECT_EQ(RequestCount(), 1);  // recorded as denied by the CA

  // --json carries the HRESULT and its symbol.
  const std::string json = tmp_.File("refused.json");
  r = RunCommand(StrCat("(", KEYWARDEN_CLI, " --json", Connection("enrollee"),
                        "request --template ArchivalUser --pfx ", tmp_.File("a.pfx"),
                        " -p secret > ", json, ")"));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  auto py =
      RunCommand(StrCat("python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); "
                        "print(d[\"hresult\"], d[\"exit_code\"])' ",
                        json));
  EXPECT_EQ(py.output, "0x8009400a 3\n") << py.output;
  EXPECT_FALSE(FileExists(tmp_.File("a.pfx")));
}

TEST_F(RequestArchivalTest, AnUntrustedCaIsRefusedBeforeAnythingIsSent) {
  Start();
  // The operator's trust anchor is another CA (the TLS CA): the daemon's
  // CA, and so its exchange certificate, do not chain to it.
  auto r = Kw("enrollee", StrCat("request --template ArchivalUser --key-out ", tmp_.File("k.pem"),
                                 " --ca-cert ", daemon_->tls_ca_path()));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_TRUE(Contains(r.output, "does not chain to a trusted CA")) << r.output;
  EXPECT_FALSE(FileExists(tmp_.File("k.pem")));
  EXPECT_EQ(RequestCount(), 0);
}

TEST_F(RequestArchivalTest, OutFetchesAndVerifiesTheExchangeCertificateButSendsNothing) {
  Start();
  const std::string req = tmp_.File("req.der");
  auto r = Kw("enrollee", StrCat("request --template ArchivalUser --out ", req, " --key-out ",
                                 tmp_.File("k.pem")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(RequestCount(), 0);
  auto parsed = pki::ParseCmcRequest(ReadFile(req));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  // The key is encrypted to the daemon's current exchange certificate: the
  // one RecipientInfo names its issuer and serial.
  const v1::CertificateChain xchg = ExchangeCertificate();
  const auto* p = reinterpret_cast<const unsigned char*>(xchg.certificate().data());
  ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(xchg.certificate().size())));
  ASSERT_NE(cert, nullptr);
  const unsigned char* e = parsed->encrypted_key->data();
  ossl::UniquePtr<CMS_ContentInfo> env(
      d2i_CMS_ContentInfo(nullptr, &e, static_cast<long>(parsed->encrypted_key->size())));
  ASSERT_NE(env, nullptr);
  STACK_OF(CMS_RecipientInfo)* infos = CMS_get0_RecipientInfos(env.get());
  ASSERT_EQ(sk_CMS_RecipientInfo_num(infos), 1);
  EXPECT_EQ(CMS_RecipientInfo_ktri_cert_cmp(sk_CMS_RecipientInfo_value(infos, 0), cert.get()), 0);

  // Submitted later as a file, the CA answers as it does to `request`.
  auto submit = Kw("enrollee", StrCat("submit ", req, " --template ArchivalUser"));
  EXPECT_EQ(submit.exit_code, 3) << submit.output;
  EXPECT_TRUE(Contains(submit.output, "0x8009400a")) << submit.output;
}

// Issuance end to end: the CLI builds the Windows-format request, the
// daemon archives the key to its KRA, and the archive opens with the KRA key.
TEST_F(RequestArchivalTest, IssuedWithTheKeyArchived) {
  SoftCa kra_ca = SoftCa::Make("KRA Issuing CA");
  auto kra = kra_ca.Issue("kra");
  WriteFile(tmp_.File("kra-ca.pem"), ToPem(kra_ca.cert.get()));
  WriteFile(tmp_.File("kra-ca.crl"), kra_ca.Crl());
  WriteFile(tmp_.File("kra.pem"), ToPem(kra.cert.get()));
  WriteFile(tmp_.File("kra.key"), PrivateKeyPem(kra.key.get()));
  DaemonHarness::Options options;
  options.extra_toml =
      StrCat("\n[kra]\ncertificates = [\"", tmp_.File("kra.pem"), "\"]\ncount = 1\ntrust = [\"",
             tmp_.File("kra-ca.pem"), "\"]\ncrls = [\"", tmp_.File("kra-ca.crl"), "\"]\n");
  Start(options);
  const std::string key = tmp_.File("bob.key");
  const std::string cert = tmp_.File("bob.pem");
  const std::string pfx = tmp_.File("bob.pfx");
  auto r = Kw("enrollee2", StrCat("request --template ArchivalUser --key-out ", key, " --cert-out ",
                                  cert, " --pfx ", pfx, " -p 'pfx secret'"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "issued")) << r.output;
  // The archive the daemon stored opens with the KRA key to the same key.
  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  grpc::ClientContext ctx;
  v1::GetArchivedKeyRequest get;
  get.set_search("bob");
  v1::GetArchivedKeyResponse found;
  ASSERT_TRUE(officer->GetArchivedKey(&ctx, get, &found).ok());
  ASSERT_EQ(found.candidates_size(), 1);
  EXPECT_EQ(found.candidates(0).kra_sha1(0), pki::Sha1Thumbprint(kra.cert.get()));
  auto verify = RunCommand(StrCat("openssl verify -CAfile ", daemon_->ca_cert_path(), " ", cert));
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  auto cert_key = RunCommand("openssl x509 -noout -pubkey -in " + cert);
  auto file_key = RunCommand("openssl pkey -pubout -in " + key);
  EXPECT_EQ(cert_key.output, file_key.output);
  auto p12 = RunCommand(StrCat("openssl pkcs12 -in ", pfx,
                               " -passin 'pass:pfx secret' -nodes -out ", tmp_.File("p12.pem")));
  ASSERT_EQ(p12.exit_code, 0) << p12.output;
  auto p12_key = RunCommand("openssl pkey -pubout -in " + tmp_.File("p12.pem"));
  EXPECT_EQ(p12_key.output, file_key.output);
  auto p12_cert = RunCommand("openssl x509 -noout -pubkey -in " + tmp_.File("p12.pem"));
  EXPECT_EQ(p12_cert.output, cert_key.output);
}

// certreq -accept: --response saves the CA's CMC Full PKI Response, which
// openssl verifies (signature, with the CA certificate as the only signer
// allowed) and shows as an id-cct-PKIResponse carrying the certificate.
TEST_F(RequestArchivalTest, TheCmcFullPkiResponseIsSavedAndVerifiesWithOpenssl) {
  SoftCa kra_ca = SoftCa::Make("KRA Issuing CA");
  auto kra = kra_ca.Issue("kra");
  WriteFile(tmp_.File("kra-ca.pem"), ToPem(kra_ca.cert.get()));
  WriteFile(tmp_.File("kra-ca.crl"), kra_ca.Crl());
  WriteFile(tmp_.File("kra.pem"), ToPem(kra.cert.get()));
  DaemonHarness::Options options;
  options.extra_toml =
      StrCat("\n[kra]\ncertificates = [\"", tmp_.File("kra.pem"), "\"]\ncount = 1\ntrust = [\"",
             tmp_.File("kra-ca.pem"), "\"]\ncrls = [\"", tmp_.File("kra-ca.crl"), "\"]\n");
  Start(options);
  const std::string cert = tmp_.File("carol.pem"), response = tmp_.File("carol.rsp");
  auto r =
      Kw("enrollee2", StrCat("request --template ArchivalUser --key-out ", tmp_.File("carol.key"),
                             " --cert-out ", cert, " --response ", response));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "carries the certificate")) << r.output;

  // The signature, by openssl, with the signer taken only from the CA certificate.
  auto verify =
      RunCommand(StrCat("openssl cms -verify -inform DER -noverify -nointern -certfile ",
                        daemon_->ca_cert_path(), " -in ", response, " -out ",
                        tmp_.File("content.der"), " -certsout ", tmp_.File("certs.pem"), " 2>&1"));
  ASSERT_EQ(verify.exit_code, 0) << verify.output;
  EXPECT_TRUE(Contains(verify.output, "Verification successful")) << verify.output;
  // The issued certificate is among the response's certificates.
  auto issued = RunCommand("openssl x509 -noout -fingerprint -sha256 -in " + cert);
  auto all =
      RunCommand(StrCat("awk '/BEGIN CERT/{n++} {print > \"", tmp_.File("c"), "\" n \".pem\"}' ",
                        tmp_.File("certs.pem"), " && for f in ", tmp_.File("c"),
                        "*.pem; do openssl x509 -noout -fingerprint "
                        "-sha256 -in $f; done"));
  ASSERT_EQ(all.exit_code, 0) << all.output;
  EXPECT_TRUE(Contains(all.output, issued.output)) << issued.output << all.output;
  // The content type and the status, by openssl's printer.
  auto print = RunCommand("openssl cms -cmsout -print -inform DER -in " + response);
  ASSERT_EQ(print.exit_code, 0) << print.output;
  EXPECT_TRUE(Contains(print.output, "eContentType: id-cct-PKIResponse")) << print.output;
  // A tampered response is refused by openssl too (the check is not vacuous).
  auto bytes = ReadFile(response);
  auto content = ReadFile(tmp_.File("content.der"));
  auto at = std::search(bytes.begin(), bytes.end(), content.begin(), content.end());
  ASSERT_NE(at, bytes.end());
  at[content.size() - 1] ^= 0x01;
  WriteFile(tmp_.File("tampered.rsp"), bytes);
  auto bad = RunCommand(StrCat("openssl cms -verify -inform DER -noverify -in ",
                               tmp_.File("tampered.rsp"), " -out /dev/null 2>&1"));
  EXPECT_NE(bad.exit_code, 0) << bad.output;
}

TEST_F(RequestArchivalTest, ResponseNeedsTheCaAnswer) {
  Start();
  auto r =
      Kw("enrollee", StrCat("request --template ArchivalUser --out ", tmp_.File("r.der"),
                            " --key-out ", tmp_.File("k.pem"), " --response ", tmp_.File("r.rsp")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "--response")) << r.output;
  EXPECT_FALSE(FileExists(tmp_.File("r.rsp")));
}

}  // namespace
}  // namespace keywarden::testing
