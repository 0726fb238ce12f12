// Revocation published where relying parties look (RFC 5280): issued
// certificates carry the configured cRLDistributionPoints and
// authorityInfoAccess URLs, keywardend serves the CRL and the CA
// certificate at them over plain HTTP, and `openssl verify -crl_download`
// follows a certificateHold being put and released. Everything is checked
// with independent tools (openssl, curl), never with keywarden's own code.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include <gtest/gtest.h>
#include <openssl/pem.h>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/rpc_test_util.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;

constexpr char kOfficer2[] = "CN=officer2,O=keywarden test";
constexpr char kRootAdmin[] = "CN=root admin,O=keywarden test";

// A free loopback port (the URLs in certificates must name the port before
// the daemon starts).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) close(fd);
    return 0;
  }
  const int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

struct Http {
  int status = 0;  // 0: no answer
  std::string headers;
  std::string body_path;
};

class PublicationTest : public ::testing::Test {
 protected:
  void Start() {
    port_ = FreePort();
    ASSERT_NE(port_, 0);
    base_ = StrCat("http://127.0.0.1:", port_);
    DaemonHarness::Options options;
    options.trust_own_ca = true;
    options.extra_clients.emplace("root", kRootAdmin);
    options.extra_toml =
        StrCat(R"(
[publication]
listen = "127.0.0.1:)",
               port_, R"("
crl_urls = [")",
               base_, R"(/pki/keywarden%20test.crl", "http://crl.example.com/kw.crl"]
ca_issuers_urls = [")",
               base_, R"(/pki/ca.crt"]
)",
               kOwnCaClientsToml);
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  std::string CrlUrl() const { return base_ + "/pki/keywarden%20test.crl"; }
  std::string CaUrl() const { return base_ + "/pki/ca.crt"; }

  // curl (an independent HTTP client): status, headers, and the body in a file.
  Http Fetch(const std::string& url, const std::string& method = "GET") {
    const std::string headers = tmp_.File("headers.txt"), body = tmp_.File("body.bin");
    std::remove(headers.c_str());
    std::remove(body.c_str());
    const std::string how = method == "HEAD" ? "-I" : "-X " + method;
    auto r = RunCommand(StrCat("curl -s -m 10 ", how, " -D ", headers, " -o ", body,
                               " -w '%{http_code}' '", url, "'"));
    Http out;
    if (r.exit_code != 0) return out;
    out.status = std::atoi(r.output.c_str());
    auto h = ReadFile(headers);
    out.headers = std::string(h.begin(), h.end());
    out.body_path = body;
    return out;
  }

  grpc::Status Submit(const std::string& who, const std::string& csr, const std::string& tmpl,
                      v1::EnrollmentResult* out) {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel(who));
    grpc::ClientContext ctx;
    v1::SubmitRequest in;
    in.set_request(csr);
    in.set_template_name(tmpl);
    return stub->Submit(&ctx, in, out);
  }

  // An issued certificate (template User, a key made by openssl req),
  // written as PEM to `pem`; returns its serial as openssl prints it.
  std::string IssueUser(const std::string& cn, const std::string& pem) {
    std::string file = cn;
    std::replace(file.begin(), file.end(), ' ', '_');
    const std::string key = tmp_.File(file + ".key"), csr = tmp_.File(file + ".csr");
    auto r = RunCommand("openssl req -new -newkey rsa:2048 -nodes -subj '/CN=" + cn + "' -keyout " +
                        key + " -outform DER -out " + csr);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto der = ReadFile(csr);
    v1::EnrollmentResult out;
    auto st = Submit("enrollee", std::string(der.begin(), der.end()), "User", &out);
    EXPECT_TRUE(st.ok()) << st.error_message();
    WriteFile(pem, DerToPem(out.certificate(), "CERTIFICATE"));
    auto serial = RunCommand("openssl x509 -noout -serial -in " + pem);
    std::string hex = serial.output.substr(serial.output.find('=') + 1);
    hex.erase(hex.find_last_not_of("\n") + 1);
    return hex;
  }

  // `who` asks this CA for a client certificate for `subject`; on success it
  // becomes a client named `as` of the harness. Returns the serial (hex).
  std::string Enrol(const std::string& who, const std::string& subject, const std::string& as) {
    ossl::UniquePtr<EVP_PKEY> key;
    v1::EnrollmentResult out;
    grpc::Status st = Submit(who, MakeEcRequestDer(subject, &key), "ClientAuth", &out);
    EXPECT_TRUE(st.ok()) << st.error_message();
    const unsigned char* p = reinterpret_cast<const unsigned char*>(out.certificate().data());
    ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(out.certificate().size())));
    if (!cert) return "";
    ClientIdentity id{subject, daemon_->dir().File("tls/" + as + ".pem"),
                      daemon_->dir().File("tls/" + as + ".key")};
    WriteFile(id.cert_path, ToPem(cert.get()));
    WriteFile(id.key_path, PrivateKeyPem(key.get()));
    daemon_->AddClient(as, id);
    auto serial = RunCommand("openssl x509 -noout -serial -in " + id.cert_path);
    std::string hex = serial.output.substr(serial.output.find('=') + 1);
    hex.erase(hex.find_last_not_of("\n") + 1);
    return hex;
  }

  grpc::Status Revoke(const std::string& serial, int reason) {
    auto stub = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::RevokeRequest in;
    in.set_serial(serial);
    in.set_reason(reason);
    v1::CertificateInfo out;
    return stub->Revoke(&ctx, in, &out);
  }

  grpc::Status ReleaseHold(const std::string& who, const std::string& serial,
                           v1::CertificateInfo* out = nullptr) {
    auto stub = v1::Officer::NewStub(daemon_->Channel(who));
    grpc::ClientContext ctx;
    v1::ReleaseHoldRequest in;
    in.set_serial(serial);
    v1::CertificateInfo info;
    return stub->ReleaseHold(&ctx, in, out != nullptr ? out : &info);
  }

  grpc::Status ListRequests(const std::string& who) {
    auto stub = v1::Officer::NewStub(daemon_->Channel(who));
    grpc::ClientContext ctx;
    v1::ListRequestsResponse out;
    return stub->ListRequests(&ctx, v1::ListRequestsRequest(), &out);
  }

  std::vector<v1::AuditRecord> Audit(const std::string& event) {
    return AuditRecordsViaRpc(daemon_->Channel("auditor"), event);
  }

  // openssl verify fetching the CRL itself from the certificate's CDP.
  CommandResult VerifyDownloading(const std::string& pem) {
    return RunCommand("openssl verify -crl_check -crl_download -CAfile " + daemon_->ca_cert_path() +
                      " " + pem);
  }

  int port_ = 0;
  std::string base_;
  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
};

TEST_F(PublicationTest, IssuedAndExchangeCertificatesCarryTheConfiguredCdpAndAia) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string leaf = tmp_.File("leaf.pem");
  IssueUser("cdp user", leaf);
  auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
  grpc::ClientContext ctx;
  v1::CertificateChain chain;
  ASSERT_TRUE(stub->GetExchangeCertificate(&ctx, v1::GetExchangeCertificateRequest(), &chain).ok());
  const std::string xchg = tmp_.File("xchg.pem");
  WriteFile(xchg, DerToPem(chain.certificate(), "CERTIFICATE"));

  for (const std::string& pem : {leaf, xchg}) {
    auto text = RunCommand("openssl x509 -noout -text -in " + pem);
    ASSERT_EQ(text.exit_code, 0) << text.output;
    EXPECT_TRUE(Contains(text.output, "X509v3 CRL Distribution Points")) << text.output;
    EXPECT_TRUE(Contains(text.output, "URI:" + CrlUrl())) << text.output;
    EXPECT_TRUE(Contains(text.output, "URI:http://crl.example.com/kw.crl")) << text.output;
    EXPECT_TRUE(Contains(text.output, "Authority Information Access")) << text.output;
    EXPECT_TRUE(Contains(text.output, "CA Issuers - URI:" + CaUrl())) << text.output;
    // Both non-critical (RFC 5280 4.2.1.13, 4.2.2.1).
    EXPECT_FALSE(Contains(text.output, "X509v3 CRL Distribution Points: critical")) << text.output;
    EXPECT_FALSE(Contains(text.output, "Authority Information Access: critical")) << text.output;
    // Still signed by the CA.
    auto v = RunCommand("openssl verify -CAfile " + daemon_->ca_cert_path() + " " + pem);
    EXPECT_EQ(v.exit_code, 0) << v.output;
  }
  // The two CRL URLs are one DistributionPoint (alternative locations):
  // openssl prints one "Full Name:" for it.
  auto text = RunCommand("openssl x509 -noout -ext crlDistributionPoints -in " + leaf);
  size_t full_names = 0;
  for (size_t at = text.output.find("Full Name:"); at != std::string::npos;
       at = text.output.find("Full Name:", at + 1)) {
    ++full_names;
  }
  EXPECT_EQ(full_names, 1u) << text.output;
}

TEST_F(PublicationTest, OpensslVerifyDownloadsTheCrlAndFollowsAHoldAndItsRelease) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string leaf = tmp_.File("held.pem");
  const std::string serial = IssueUser("held user", leaf);
  auto v = VerifyDownloading(leaf);
  EXPECT_EQ(v.exit_code, 0) << v.output;

  // Put on hold: the CRL published at once lists it.
  ASSERT_TRUE(Revoke(serial, 6).ok());
  v = VerifyDownloading(leaf);
  EXPECT_NE(v.exit_code, 0) << v.output;
  EXPECT_TRUE(Contains(v.output, "certificate revoked")) << v.output;
  Http crl = Fetch(CrlUrl());
  ASSERT_EQ(crl.status, 200);
  auto listed = RunCommand("openssl crl -inform DER -noout -text -in " + crl.body_path);
  EXPECT_TRUE(Contains(listed.output, "Serial Number: " + serial)) << listed.output;
  EXPECT_TRUE(Contains(listed.output, "Certificate Hold")) << listed.output;

  // Released through the command line (certutil -revoke SERIAL Unrevoke).
  const std::string conn =
      StrCat(" --server ", daemon_->target(), " --server-ca ", daemon_->tls_ca_path(),
             " --client-cert ", daemon_->client("officer").cert_path, " --client-key ",
             daemon_->client("officer").key_path, " ");
  auto released =
      RunCommand(StrCat(KEYWARDEN_CLI, conn, "officer revoke ", serial, " --reason unrevoke"));
  ASSERT_EQ(released.exit_code, 0) << released.output;
  EXPECT_TRUE(Contains(released.output, "released from certificateHold")) << released.output;
  v = VerifyDownloading(leaf);
  EXPECT_EQ(v.exit_code, 0) << v.output;
  crl = Fetch(CrlUrl());
  ASSERT_EQ(crl.status, 200);
  listed = RunCommand("openssl crl -inform DER -noout -text -in " + crl.body_path);
  EXPECT_TRUE(Contains(listed.output, "No Revoked Certificates")) << listed.output;

  auto records = Audit("certificate.hold_released");
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].principal(), daemon_->client("officer").principal);
  EXPECT_TRUE(Contains(records[0].details(), AsciiLower(serial))) << records[0].details();

  // Held and released again with the other spelling of the verb.
  ASSERT_TRUE(Revoke(serial, 6).ok());
  EXPECT_NE(VerifyDownloading(leaf).exit_code, 0);
  released = RunCommand(StrCat(KEYWARDEN_CLI, conn, "officer unrevoke ", serial));
  ASSERT_EQ(released.exit_code, 0) << released.output;
  v = VerifyDownloading(leaf);
  EXPECT_EQ(v.exit_code, 0) << v.output;
}

TEST_F(PublicationTest, TheListenerServesDerWithItsTypesAndCachingAndNothingElse) {
  ASSERT_NO_FATAL_FAILURE(Start());
  // The CA certificate, byte for byte the configured one (DER by openssl).
  Http ca = Fetch(CaUrl());
  ASSERT_EQ(ca.status, 200) << ca.headers;
  EXPECT_TRUE(Contains(AsciiLower(ca.headers), "content-type: application/pkix-cert"))
      << ca.headers;
  const std::string expected = tmp_.File("ca.der");
  ASSERT_EQ(
      RunCommand("openssl x509 -outform DER -in " + daemon_->ca_cert_path() + " -out " + expected)
          .exit_code,
      0);
  EXPECT_EQ(ReadFile(ca.body_path), ReadFile(expected));
  EXPECT_TRUE(Contains(ca.headers, "Last-Modified: ")) << ca.headers;

  // The CRL: DER that verifies with the CA certificate, its dates in the
  // caching headers.
  Http crl = Fetch(CrlUrl());
  ASSERT_EQ(crl.status, 200) << crl.headers;
  EXPECT_TRUE(Contains(AsciiLower(crl.headers), "content-type: application/pkix-crl"))
      << crl.headers;
  auto checked = RunCommand("openssl crl -inform DER -noout -verify -CAfile " +
                            daemon_->ca_cert_path() + " -in " + crl.body_path);
  EXPECT_EQ(checked.exit_code, 0) << checked.output;
  EXPECT_TRUE(Contains(checked.output, "verify OK")) << checked.output;
  // "lastUpdate=Dec  3 18:00:00 2026 GMT" -> the same instant as the header.
  auto dates =
      RunCommand("openssl crl -inform DER -noout -lastupdate -nextupdate -in " + crl.body_path +
                 " | sed 's/^[a-zA-Z]*=//' | while read d; do date -u "
                 "-d \"$d\" '+%a, %d %b %Y %H:%M:%S GMT'; done");
  ASSERT_EQ(dates.exit_code, 0) << dates.output;
  const size_t nl = dates.output.find('\n');
  ASSERT_NE(nl, std::string::npos) << dates.output;
  const std::string last = dates.output.substr(0, nl);
  const std::string next = dates.output.substr(nl + 1, dates.output.find('\n', nl + 1) - nl - 1);
  EXPECT_TRUE(Contains(crl.headers, "Last-Modified: " + last)) << crl.headers << dates.output;
  EXPECT_TRUE(Contains(crl.headers, "Expires: " + next)) << crl.headers << dates.output;
  EXPECT_TRUE(Contains(crl.headers, "Cache-Control: public, max-age=")) << crl.headers;

  // HEAD: the same headers, no body (curl -I writes the headers where the
  // body would go: nothing follows them).
  Http head = Fetch(CrlUrl(), "HEAD");
  EXPECT_EQ(head.status, 200);
  EXPECT_TRUE(Contains(AsciiLower(head.headers), "content-type: application/pkix-crl"));
  const auto head_body = ReadFile(head.body_path);
  EXPECT_EQ(std::string(head_body.begin(), head_body.end()), head.headers);

  // Anything else: 404 for other paths (a query does not change the path),
  // 405 for other methods.
  for (const std::string path :
       {"/", "/pki/", "/pki/ca.crl", "/pki/keywarden%20test.crl.bak", "/metrics", "/pki/CA.CRT",
        "/pki/ca.crt/x", "/pki/keywarden%2520test.crl"}) {
    EXPECT_EQ(Fetch(base_ + path).status, 404) << path;
  }
  EXPECT_EQ(Fetch(CaUrl() + "?x=1").status, 200);
  for (const std::string method : {"POST", "PUT", "DELETE", "OPTIONS"}) {
    Http r = Fetch(CrlUrl(), method);
    EXPECT_EQ(r.status, 405) << method;
    EXPECT_TRUE(Contains(r.headers, "Allow: GET, HEAD")) << r.headers;
  }
  // An oversized request is refused, and the listener still serves.
  auto big = RunCommand(StrCat("curl -s -m 10 -o /dev/null -w '%{http_code}' -H 'X-Big: ",
                               std::string(20000, 'a'), "' ", CrlUrl()));
  EXPECT_NE(big.output, "200") << big.output;
  EXPECT_EQ(Fetch(CrlUrl()).status, 200);
}

TEST_F(PublicationTest, OnlyAHoldCanBeReleasedAndOnlyByACertificateManager) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string compromised = IssueUser("compromised", tmp_.File("c.pem"));
  const std::string valid = IssueUser("valid", tmp_.File("v.pem"));
  const std::string held = IssueUser("held", tmp_.File("h.pem"));
  ASSERT_TRUE(Revoke(compromised, 1).ok());
  ASSERT_TRUE(Revoke(held, 6).ok());

  // keyCompromise is final.
  grpc::Status st = ReleaseHold("officer", compromised);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_EQ(HResultOf(st), 0x80094003u) << st.error_message();
  EXPECT_TRUE(Contains(st.error_message(), "keyCompromise")) << st.error_message();
  EXPECT_TRUE(Contains(st.error_message(), "only a certificateHold can be released"))
      << st.error_message();
  // Not revoked at all; unknown; not a serial.
  st = ReleaseHold("officer", valid);
  EXPECT_EQ(HResultOf(st), 0x80094003u) << st.error_message();
  EXPECT_TRUE(Contains(st.error_message(), "is not revoked")) << st.error_message();
  st = ReleaseHold("officer", "0badc0de");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  st = ReleaseHold("officer", "not hex!");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  // Not a Certificate Manager.
  for (const std::string who : {"enrollee", "auditor", "nobody"}) {
    st = ReleaseHold(who, held);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << who;
  }
  // None of it changed anything: still listed, both of them.
  Http crl = Fetch(CrlUrl());
  ASSERT_EQ(crl.status, 200);
  auto listed = RunCommand("openssl crl -inform DER -noout -text -in " + crl.body_path);
  EXPECT_TRUE(Contains(listed.output, "Serial Number: " + compromised)) << listed.output;
  EXPECT_TRUE(Contains(listed.output, "Serial Number: " + held)) << listed.output;
  EXPECT_TRUE(Audit("certificate.hold_released").empty());

  // The Certificate Manager may; twice is refused.
  v1::CertificateInfo info;
  st = ReleaseHold("officer", held, &info);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(info.revoked());
  st = ReleaseHold("officer", held);
  EXPECT_EQ(HResultOf(st), 0x80094003u) << st.error_message();
  // The CLI says the same.
  const std::string conn =
      StrCat(" --server ", daemon_->target(), " --server-ca ", daemon_->tls_ca_path(),
             " --client-cert ", daemon_->client("officer").cert_path, " --client-key ",
             daemon_->client("officer").key_path, " ");
  auto cli = RunCommand(StrCat(KEYWARDEN_CLI, conn, "officer unrevoke ", compromised));
  EXPECT_NE(cli.exit_code, 0);
  EXPECT_TRUE(Contains(cli.output, "keyCompromise")) << cli.output;
}

TEST_F(PublicationTest, AReleasedHoldLetsTheClientInAgain) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string serial = Enrol("root", kOfficer2, "officer2");
  ASSERT_FALSE(serial.empty());
  ASSERT_TRUE(ListRequests("officer2").ok());

  ASSERT_TRUE(Revoke(serial, 6).ok());
  grpc::Status st = ListRequests("officer2");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  EXPECT_EQ(HResultOf(st), 0x800b010cu);
  EXPECT_TRUE(Contains(st.error_message(), "certificateHold")) << st.error_message();

  ASSERT_TRUE(ReleaseHold("officer", serial).ok());
  st = ListRequests("officer2");
  EXPECT_TRUE(st.ok()) << st.error_message();

  // Held again: refused again (a revocation after a release is not lost),
  // and so after a restart too, from the database.
  ASSERT_TRUE(Revoke(serial, 1).ok());
  EXPECT_EQ(ListRequests("officer2").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(daemon_->Restart().ok());
  EXPECT_EQ(ListRequests("officer2").error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

}  // namespace
}  // namespace keywarden::testing
