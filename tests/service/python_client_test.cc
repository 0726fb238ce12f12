// An independent client: Python's grpcio with stubs generated from the
// .proto at test time, mutual TLS, against a real keywardend. What it gets
// back is checked with the openssl command line.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <openssl/pem.h>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/rpc_test_util.h"

#ifndef KEYWARDEN_PROTO_DIR
#error "KEYWARDEN_PROTO_DIR must be the proto/ directory"
#endif
#ifndef KEYWARDEN_PY_CLIENT
#error "KEYWARDEN_PY_CLIENT must be the path of tests/python/keywarden_client.py"
#endif

namespace keywarden::testing {
namespace {

// Debian's python3-grpcio is installed for the system interpreter, which a
// python3 earlier on PATH (pyenv, a venv) may not see.
std::string Python() {
  return access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
}

std::string Base64Decode(const std::string& b64) {
  std::string out((b64.size() / 4 + 1) * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(b64.data()),
                                static_cast<int>(b64.size()));
  if (n < 0) return {};
  size_t len = static_cast<size_t>(n);
  // EVP_DecodeBlock counts the padding as zero bytes.
  if (!b64.empty() && b64.back() == '=') --len;
  if (b64.size() > 1 && b64[b64.size() - 2] == '=') --len;
  out.resize(len);
  return out;
}

class PythonClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = DaemonHarness::Start();
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  std::string MakeCsr(const std::string& subject) {
    const std::string key = tmp_.File("req.key"), csr = tmp_.File("req.der");
    auto r = RunCommand(StrCat("openssl req -new -newkey rsa:2048 -nodes -subj '", subject,
                               "' -keyout ", key, " -outform DER -out ", csr));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return csr;
  }

  // The script's stdout alone (stderr to a file shown on failure).
  CommandResult RunClient(const std::string& who, const std::string& csr,
                          const std::string& extra = "") {
    const ClientIdentity& id = daemon_->client(who);
    const std::string out = tmp_.File("client.out"), err = tmp_.File("client.err");
    CommandResult r =
        // In a subshell: RunCommand appends its own 2>&1.
        RunCommand(StrCat("(", Python(), " ", KEYWARDEN_PY_CLIENT, " --proto-dir ",
                          KEYWARDEN_PROTO_DIR, " --target ", daemon_->target(), " --cert ",
                          id.cert_path, " --key ", id.key_path, " --ca ", daemon_->tls_ca_path(),
                          " --server-name localhost ", extra, " ", csr, " > ", out, " 2> ", err,
                          ")"));
    auto stdout_bytes = ReadFile(out);
    auto stderr_bytes = ReadFile(err);
    r.output = std::string(stdout_bytes.begin(), stdout_bytes.end());
    stderr_ = std::string(stderr_bytes.begin(), stderr_bytes.end());
    return r;
  }

  CommandResult Verify(const std::string& pem_path) {
    return RunCommand(StrCat("openssl verify -CAfile ", daemon_->ca_cert_path(), " ", pem_path));
  }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
  std::string stderr_;
};

TEST_F(PythonClientTest, SubmitsOverMutualTlsAndGetsVerifyingCertificates) {
  const std::string csr = MakeCsr("/CN=python client/O=keywarden test");
  auto r = RunClient("enrollee", csr);
  ASSERT_EQ(r.exit_code, 0) << r.output << stderr_;

  nlohmann::json j = nlohmann::json::parse(r.output, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded()) << "not JSON: " << r.output << stderr_;
  ASSERT_TRUE(j.is_object()) << r.output;
  for (const char* key :
       {"exchange_certificate_der_b64", "request_id", "disposition", "certificate_der_b64"}) {
    ASSERT_TRUE(j.contains(key)) << key << " missing in " << r.output;
  }
  EXPECT_EQ(j["disposition"], "DISPOSITION_ISSUED") << r.output;
  ASSERT_TRUE(j["request_id"].is_number_integer()) << r.output;
  EXPECT_GT(j["request_id"].get<int64_t>(), 0);

  ASSERT_TRUE(j["certificate_der_b64"].is_string()) << r.output;
  ASSERT_TRUE(j["exchange_certificate_der_b64"].is_string()) << r.output;
  const std::string cert_der = Base64Decode(j["certificate_der_b64"].get<std::string>());
  const std::string xchg_der = Base64Decode(j["exchange_certificate_der_b64"].get<std::string>());
  ASSERT_FALSE(cert_der.empty()) << r.output;
  ASSERT_FALSE(xchg_der.empty()) << r.output;
  WriteFile(tmp_.File("cert.pem"), DerToPem(cert_der, "CERTIFICATE"));
  WriteFile(tmp_.File("xchg.pem"), DerToPem(xchg_der, "CERTIFICATE"));

  auto v = Verify(tmp_.File("cert.pem"));
  EXPECT_EQ(v.exit_code, 0) << v.output;
  auto x = Verify(tmp_.File("xchg.pem"));
  EXPECT_EQ(x.exit_code, 0) << x.output;

  auto subject = RunCommand("openssl x509 -noout -subject -in " + tmp_.File("cert.pem"));
  EXPECT_NE(subject.output.find("CN = python client"), std::string::npos) << subject.output;
  auto xsubject = RunCommand("openssl x509 -noout -subject -in " + tmp_.File("xchg.pem"));
  EXPECT_NE(xsubject.output.find("Xchg"), std::string::npos) << xsubject.output;
}

TEST_F(PythonClientTest, FailureExitsOneWithTheError) {
  const std::string csr = MakeCsr("/CN=python officer/O=keywarden test");
  // An officer may not submit: PERMISSION_DENIED from the daemon.
  auto r = RunClient("officer", csr);
  EXPECT_EQ(r.exit_code, 1) << r.output << stderr_;
  EXPECT_NE(stderr_.find("PERMISSION_DENIED"), std::string::npos) << stderr_;
  EXPECT_TRUE(r.output.empty()) << r.output;

  // An unknown template: INVALID_ARGUMENT.
  auto t = RunClient("enrollee", csr, "--template NoSuchTemplate");
  EXPECT_EQ(t.exit_code, 1) << t.output << stderr_;
  EXPECT_NE(stderr_.find("INVALID_ARGUMENT"), std::string::npos) << stderr_;
}

// A loopback port nothing listens on (bound, then closed).
int DeadPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return 1;
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST_F(PythonClientTest, SeveralTargetsFailOverToTheOneThatAnswers) {
  const std::string csr = MakeCsr("/CN=python failover/O=keywarden test");
  const std::string dead1 = StrCat("127.0.0.1:", DeadPort());
  const std::string dead2 = StrCat("127.0.0.1:", DeadPort());
  auto r = RunClient("enrollee", csr, StrCat("--target ", dead1, ",", daemon_->target()));
  ASSERT_EQ(r.exit_code, 0) << r.output << stderr_;
  nlohmann::json j = nlohmann::json::parse(r.output, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r.output;
  EXPECT_EQ(j["disposition"], "DISPOSITION_ISSUED") << r.output;

  // None answers: exit 1 naming both, nothing submitted anywhere.
  auto none = RunClient("enrollee", csr, StrCat("--target ", dead1, ",", dead2));
  EXPECT_EQ(none.exit_code, 1) << none.output << stderr_;
  EXPECT_NE(stderr_.find(dead1), std::string::npos) << stderr_;
  EXPECT_NE(stderr_.find(dead2), std::string::npos) << stderr_;

  // The daemon's own refusal is the answer, not a reason to try the next.
  auto refused = RunClient("officer", csr, StrCat("--target ", daemon_->target(), ",", dead1));
  EXPECT_EQ(refused.exit_code, 1) << refused.output << stderr_;
  EXPECT_NE(stderr_.find("PERMISSION_DENIED"), std::string::npos) << stderr_;
  EXPECT_EQ(stderr_.find(dead1), std::string::npos) << stderr_;
}

}  // namespace
}  // namespace keywarden::testing
