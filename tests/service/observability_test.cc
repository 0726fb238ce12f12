// Logs, metrics and health of a real keywardend: the log (JSON) has one
// line per RPC and no PIN, PFX password or archived key byte; the
// Prometheus counters move by exactly the calls made; /readyz and gRPC
// health per service follow the token (its directory taken away and back)
// and the KRAs.
#include <openssl/x509.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <regex>
#include <sstream>
#include <thread>

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "pki/private_key_blob.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/rpc_test_util.h"
#include "tests/service/soft_ca.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;
using nlohmann::json;

constexpr char kTemplates[] = R"(
[[template]]
name = "ArchivalAllowed"
key_usage = ["digitalSignature", "keyEncipherment"]
archival = "allowed"
enrollees = ["enrollee"]
)";

std::string LogText(const std::string& path) {
  const std::vector<uint8_t> bytes = ReadFile(path);
  return std::string(bytes.begin(), bytes.end());
}

struct Http {
  int status = 0;  // 0: no answer
  std::string body;
};

// GET with curl (an independent HTTP client).
Http Get(const std::string& url) {
  auto r = RunCommand("curl -s -m 10 -w '\\n%{http_code}' " + url);
  Http out;
  const size_t nl = r.output.rfind('\n');
  if (r.exit_code != 0 || nl == std::string::npos) return out;
  out.status = std::atoi(r.output.c_str() + nl + 1);
  out.body = r.output.substr(0, nl);
  return out;
}

// Prometheus text: sample line "name{labels} value" -> value. Parsed here
// with a regex of the exposition format, not with keywarden's code.
std::map<std::string, double> ParseMetrics(const std::string& text) {
  std::map<std::string, double> out;
  static const std::regex kLine(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?) (\S+)$)");
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::smatch m;
    EXPECT_TRUE(std::regex_match(line, m, kLine)) << "not a sample line: " << line;
    if (m.size() == 4) out[m[1]] = m[3] == "+Inf" ? 1e300 : std::stod(m[3]);
  }
  return out;
}

double Value(const std::map<std::string, double>& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? 0 : it->second;
}

class ObservabilityTest : public ::testing::Test {
 protected:
  void MakeKras(int n) {
    kra_ca_ = SoftCa::Make("KRA Issuing CA");
    WriteFile(tmp_.File("kra-ca.pem"), ToPem(kra_ca_.cert.get()));
    for (int i = 0; i < n; ++i) {
      kras_.push_back(kra_ca_.Issue(StrCat("kra", i)));
      kra_paths_.push_back(tmp_.File(StrCat("kra", i, ".pem")));
      WriteFile(kra_paths_.back(), ToPem(kras_.back().cert.get()));
    }
    WriteFile(tmp_.File("kra-ca.crl"), kra_ca_.Crl());
  }

  std::string KraToml(int count) {
    std::string list;
    for (const auto& c : kra_paths_) list += (list.empty() ? "\"" : ", \"") + c + "\"";
    return StrCat("\n[kra]\ncertificates = [", list, "]\ncount = ", count, "\ntrust = [\"",
                  tmp_.File("kra-ca.pem"), "\"]\ncrls = [\"", tmp_.File("kra-ca.crl"), "\"]\n");
  }

  void Start(const std::string& format, const std::string& extra) {
    DaemonHarness::Options options;
    options.extra_flags = "enable_foreign = true";
    options.extra_toml =
        extra + "\n[log]\nformat = \"" + format + "\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    ASSERT_TRUE(daemon_->WaitForLog("metrics", 1).ok());
    // The listener's address is in the "started" line.
    const std::string log = LogText(daemon_->log_path());
    std::smatch m;
    ASSERT_TRUE(std::regex_search(log, m, std::regex(R"(http://127\.0\.0\.1:([0-9]+))"))) << log;
    base_ = "http://127.0.0.1:" + m[1].str();
  }

  ossl::UniquePtr<X509> Exchange() {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    v1::CertificateChain chain;
    EXPECT_TRUE(
        stub->GetExchangeCertificate(&ctx, v1::GetExchangeCertificateRequest(), &chain).ok());
    const unsigned char* p = reinterpret_cast<const unsigned char*>(chain.certificate().data());
    return ossl::UniquePtr<X509>(
        d2i_X509(nullptr, &p, static_cast<long>(chain.certificate().size())));
  }

  grpc::Status Submit(const std::string& request, v1::EnrollmentResult* out) {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    v1::SubmitRequest in;
    in.set_request(request);
    in.set_template_name("ArchivalAllowed");
    return stub->Submit(&ctx, in, out);
  }

  // An archival request for a new 2048-bit key (returned in `key`).
  std::string ArchivalRequest(X509* exchange, ossl::UniquePtr<EVP_PKEY>* key) {
    const std::string csr = MakeRequestDer("", 2048, key);
    auto blob = pki::SerializePrivateKeyBlob(key->get(), pki::kCalgRsaKeyx);
    EXPECT_TRUE(blob.ok());
    ArchivalPart part;
    part.encrypted_key = EncryptToExchange(
        std::string(reinterpret_cast<const char*>(blob->data()), blob->size()), exchange);
    part.hash = Sha1Of(part.encrypted_key);
    return MakeCmcDer(csr, key->get(), &part);
  }

  CommandResult Cli(const std::string& who, const std::string& args) {
    const auto& id = daemon_->client(who);
    return RunCommand(StrCat(KEYWARDEN_CLI, " --server ", daemon_->target(), " --client-cert ",
                             id.cert_path, " --client-key ", id.key_path, " --server-ca ",
                             daemon_->tls_ca_path(), " --server-name localhost ", args));
  }

  std::string TokenDir() const { return daemon_->tokens().dir() + "/tokens"; }

  TempDir tmp_;
  SoftCa kra_ca_;
  std::vector<SoftCa::Issued> kras_;
  std::vector<std::string> kra_paths_;
  std::unique_ptr<DaemonHarness> daemon_;
  std::string base_;
};

// Every 16-byte window of `secret` (raw, and as lower/upper-case hex) that
// occurs in `log`; empty when none does.
std::string FindWindow(const std::string& log, const std::vector<uint8_t>& secret) {
  for (size_t i = 0; i + 16 <= secret.size(); ++i) {
    const std::string raw(secret.begin() + static_cast<long>(i),
                          secret.begin() + static_cast<long>(i) + 16);
    std::string hex = HexString(std::span<const uint8_t>(secret.data() + i, 16));
    std::string upper = hex;
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    for (const std::string& w : {raw, hex, upper}) {
      if (log.find(w) != std::string::npos) return StrCat("window at byte ", i, " (", hex, ")");
    }
  }
  return "";
}

std::vector<uint8_t> Der(EVP_PKEY* key, bool pkcs8) {
  unsigned char* der = nullptr;
  int len = 0;
  if (pkcs8) {
    PKCS8_PRIV_KEY_INFO* p8 = EVP_PKEY2PKCS8(key);
    len = i2d_PKCS8_PRIV_KEY_INFO(p8, &der);
    PKCS8_PRIV_KEY_INFO_free(p8);
  } else {
    len = i2d_PrivateKey(key, &der);
  }
  std::vector<uint8_t> out(der, der + std::max(len, 0));
  OPENSSL_free(der);
  return out;
}

TEST_F(ObservabilityTest, JsonLogHasOneLinePerRpcAndNoPinPasswordOrKeyByte) {
  MakeKras(2);
  ASSERT_NO_FATAL_FAILURE(Start("json", KraToml(1) + kTemplates));

  // An archival.
  auto exchange = Exchange();
  ASSERT_TRUE(exchange);
  ossl::UniquePtr<EVP_PKEY> archived;
  v1::EnrollmentResult result;
  grpc::Status st = Submit(ArchivalRequest(exchange.get(), &archived), &result);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(result.disposition(), v1::DISPOSITION_ISSUED) << result.message();

  // importpfx with a password: a key this CA did not issue (-f, foreign).
  SoftCa other = SoftCa::Make("Other CA");
  auto foreign = other.Issue("pfx user", "emailProtection");
  WriteFile(tmp_.File("f.pem"), ToPem(foreign.cert.get()));
  WriteFile(tmp_.File("f.key"), PrivateKeyPem(foreign.key.get()));
  const std::string password = "pfx-Pa55word-7d1e9b";
  WriteFile(tmp_.File("pw"), password + "\n");
  auto exp = RunCommand(StrCat("openssl pkcs12 -export -in ", tmp_.File("f.pem"), " -inkey ",
                               tmp_.File("f.key"), " -passout pass:", password, " -out ",
                               tmp_.File("f.pfx")));
  ASSERT_EQ(exp.exit_code, 0) << exp.output;
  auto imported = Cli("admin", StrCat("importpfx ", tmp_.File("f.pfx"),
                                      " --password-source file:", tmp_.File("pw"), " -f"));
  ASSERT_EQ(imported.exit_code, 0) << imported.output;
  // A wrong password and a caller without the role: refused, logged.
  auto wrong =
      Cli("admin", StrCat("importpfx ", tmp_.File("f.pfx"), " -p ", password, "-wrong -f"));
  EXPECT_NE(wrong.exit_code, 0);
  auto stub = v1::Administration::NewStub(daemon_->Channel("enrollee"));
  grpc::ClientContext ctx;
  v1::CaStatus status;
  grpc::Status denied = stub->GetCaStatus(&ctx, v1::GetCaStatusRequest(), &status);
  ASSERT_FALSE(denied.ok());
  // A client certificate from a CA the server does not trust: the TLS
  // handshake fails inside gRPC, which logs it (through keywarden's log).
  {
    auto untrusted = v1::Enrollment::NewStub(daemon_->Channel("untrusted"));
    grpc::ClientContext c;
    c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::CertificateChain chain;
    EXPECT_FALSE(untrusted->GetCaCertificate(&c, v1::GetCaCertificateRequest(), &chain).ok());
  }
  ASSERT_TRUE(daemon_->Stop().ok());

  const std::string log = LogText(daemon_->log_path());
  // No PIN of any token, no PFX password, no key byte.
  for (const auto& standard : SoftHsmFixture::StandardTokens()) {
    const FixtureToken& t = daemon_->tokens().token(standard.label);
    ASSERT_GE(t.user_pin.size(), 4u);
    EXPECT_EQ(log.find(t.user_pin), std::string::npos) << "user PIN of " << t.label;
    EXPECT_EQ(log.find(t.so_pin), std::string::npos) << "SO PIN of " << t.label;
  }
  EXPECT_EQ(log.find(password), std::string::npos) << "the PFX password";
  for (EVP_PKEY* key : {archived.get(), foreign.key.get()}) {
    for (bool pkcs8 : {false, true}) {
      const auto der = Der(key, pkcs8);
      ASSERT_GT(der.size(), 1000u);
      EXPECT_EQ(FindWindow(log, der), "") << (pkcs8 ? "PKCS#8" : "PKCS#1") << " DER";
    }
  }

  // Every line (but the plain "listening on" banner on stdout) is one JSON
  // object with time, level and msg.
  std::vector<json> lines;
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("keywardend: listening on ", 0) == 0) continue;
    json j = json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << "not JSON: " << line;
    ASSERT_TRUE(j.is_object()) << line;
    EXPECT_TRUE(j.contains("time") && j.contains("level") && j.contains("msg")) << line;
    lines.push_back(std::move(j));
  }
  auto find = [&](const std::function<bool(const json&)>& pred) -> const json* {
    for (const auto& j : lines) {
      if (pred(j)) return &j;
    }
    return nullptr;
  };
  const std::string enrollee = daemon_->client("enrollee").principal;
  const json* submit = find([&](const json& j) {
    return j["msg"] == "rpc" && j.value("method", "") == "/keywarden.v1.Enrollment/Submit";
  });
  ASSERT_NE(submit, nullptr) << log;
  EXPECT_EQ((*submit)["principal"], enrollee);
  EXPECT_EQ((*submit)["status"], "OK");
  EXPECT_EQ((*submit)["request_id"], result.request_id());
  EXPECT_TRUE((*submit)["latency_ms"].is_number());
  EXPECT_FALSE(submit->contains("hresult"));
  // The refusal: its status and the HRESULT the client was given.
  const json* refused = find([&](const json& j) {
    return j["msg"] == "rpc" && j.value("method", "") == "/keywarden.v1.Administration/GetCaStatus";
  });
  ASSERT_NE(refused, nullptr) << log;
  EXPECT_EQ((*refused)["principal"], enrollee);
  EXPECT_EQ((*refused)["status"], "PERMISSION_DENIED");
  char hr[16];
  std::snprintf(hr, sizeof hr, "0x%08x", DetailOf(denied).hresult());
  ASSERT_NE(DetailOf(denied).hresult(), 0u);
  EXPECT_EQ((*refused)["hresult"], hr);
  // Two ImportKey calls by admin: one OK, one refused.
  int imports_ok = 0, imports_failed = 0;
  for (const auto& j : lines) {
    if (j["msg"] == "rpc" &&
        j.value("method", "").find("/ImportArchivedKey") != std::string::npos) {
      EXPECT_EQ(j["principal"], daemon_->client("admin").principal);
      (j["status"] == "OK" ? imports_ok : imports_failed)++;
    }
  }
  EXPECT_EQ(imports_ok, 1) << log;
  EXPECT_EQ(imports_failed, 1) << log;
  // gRPC's own lines are JSON lines too (msg "grpc: ...", with the source).
  const json* grpc_line = find([](const json& j) {
    return j["msg"].get<std::string>().rfind("grpc: ", 0) == 0 && j.contains("source");
  });
  EXPECT_NE(grpc_line, nullptr) << log;
  // Start and stop.
  EXPECT_NE(find([](const json& j) { return j["msg"] == "started"; }), nullptr);
  EXPECT_NE(find([](const json& j) { return j["msg"] == "SIGTERM received, stopping"; }), nullptr);
  EXPECT_NE(find([](const json& j) { return j["msg"] == "stopped"; }), nullptr);
}

TEST_F(ObservabilityTest, MetricsCountersMoveByExactlyTheCallsMade) {
  MakeKras(3);
  ASSERT_NO_FATAL_FAILURE(Start("text", KraToml(2) + kTemplates));
  auto exchange = Exchange();  // first, so the exchange certificate exists
  ASSERT_TRUE(exchange);

  Http first = Get(base_ + "/metrics");
  ASSERT_EQ(first.status, 200) << first.body;
  const auto before = ParseMetrics(first.body);

  const std::string xchg =
      R"({method="/keywarden.v1.Enrollment/GetExchangeCertificate",code="OK"})";
  const std::string submit = R"({method="/keywarden.v1.Enrollment/Submit",code="OK"})";
  const std::string status_denied =
      R"({method="/keywarden.v1.Administration/GetCaStatus",code="PERMISSION_DENIED"})";
  // 2 exchange certificate fetches, 1 archival, 1 refused call.
  ASSERT_TRUE(Exchange());
  ASSERT_TRUE(Exchange());
  ossl::UniquePtr<EVP_PKEY> key;
  v1::EnrollmentResult result;
  ASSERT_TRUE(Submit(ArchivalRequest(exchange.get(), &key), &result).ok());
  ASSERT_EQ(result.disposition(), v1::DISPOSITION_ISSUED);
  {
    auto stub = v1::Administration::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    v1::CaStatus status;
    ASSERT_FALSE(stub->GetCaStatus(&ctx, v1::GetCaStatusRequest(), &status).ok());
  }
  // 1 retrieval of the archived key by the officer.
  {
    auto stub = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::GetArchivedKeyRequest in;
    in.set_search(std::to_string(result.request_id()));
    in.set_blob(true);
    v1::GetArchivedKeyResponse out;
    grpc::Status st = stub->GetArchivedKey(&ctx, in, &out);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }

  Http second = Get(base_ + "/metrics");
  ASSERT_EQ(second.status, 200);
  EXPECT_NE(second.body.find("# TYPE keywarden_rpc_duration_seconds histogram"), std::string::npos);
  const auto after = ParseMetrics(second.body);
  auto moved = [&](const std::string& k) { return Value(after, k) - Value(before, k); };
  EXPECT_EQ(moved("keywarden_rpc_requests_total" + xchg), 2);
  EXPECT_EQ(moved("keywarden_rpc_duration_seconds_count" + xchg), 2);
  EXPECT_EQ(moved("keywarden_rpc_requests_total" + submit), 1);
  EXPECT_EQ(moved("keywarden_rpc_requests_total" + status_denied), 1);
  EXPECT_EQ(moved("keywarden_archivals_total{source=\"enrollment\"}"), 1);
  EXPECT_EQ(moved("keywarden_signatures_total{kind=\"certificate\"}"), 1);
  EXPECT_EQ(moved("keywarden_key_retrievals_total"), 1);
  EXPECT_EQ(Value(after, "keywarden_audit_write_failures_total"), 0);
  // The histogram is cumulative and its +Inf bucket is its count.
  const std::string submit_labels = R"(method="/keywarden.v1.Enrollment/Submit",code="OK")";
  EXPECT_EQ(
      Value(after, "keywarden_rpc_duration_seconds_bucket{" + submit_labels + ",le=\"+Inf\"}"),
      Value(after, "keywarden_rpc_duration_seconds_count{" + submit_labels + "}"));
  EXPECT_GT(Value(after, "keywarden_rpc_duration_seconds_sum{" + submit_labels + "}"), 0);
  // Gauges: 3 valid KRAs made here, 2 per archival.
  EXPECT_EQ(Value(after, "keywarden_kras_valid"), 3);
  EXPECT_EQ(Value(after, "keywarden_kras_configured"), 3);
  EXPECT_EQ(Value(after, "keywarden_kras_per_archival"), 2);
  EXPECT_EQ(Value(after, "keywarden_ready"), 1);
  // The CA token: the archival decrypted and signed on it (C_DecryptInit,
  // C_Decrypt, C_SignInit, C_Sign at least); the pool's limit is the
  // configured [hsm] max_sessions; nobody gave up waiting.
  EXPECT_GE(moved("keywarden_pkcs11_calls_total"), 4);
  std::smatch max;
  const std::string config = LogText(daemon_->config_path());
  ASSERT_TRUE(std::regex_search(config, max, std::regex(R"(max_sessions = ([0-9]+))")));
  EXPECT_EQ(Value(after, "keywarden_hsm_sessions_max"), std::stod(max[1].str()));
  EXPECT_GE(Value(after, "keywarden_hsm_sessions_open"), 1);
  EXPECT_LE(Value(after, "keywarden_hsm_sessions_in_use"),
            Value(after, "keywarden_hsm_sessions_open"));
  EXPECT_EQ(Value(after, "keywarden_hsm_session_wait_timeouts_total"), 0);
  EXPECT_NE(second.body.find("# TYPE keywarden_pkcs11_calls_total counter"), std::string::npos);
  // Seconds to expiry against notAfter / nextUpdate read with OpenSSL.
  const long now = static_cast<long>(std::time(nullptr));
  int days = 0, secs = 0;
  ASSERT_EQ(ASN1_TIME_diff(&days, &secs, nullptr, X509_get0_notAfter(exchange.get())), 1);
  EXPECT_NEAR(Value(after, "keywarden_exchange_certificate_expiry_seconds"), days * 86400.0 + secs,
              10);
  {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    v1::Crl crl;
    ASSERT_TRUE(stub->GetCrl(&ctx, v1::GetCrlRequest(), &crl).ok());
    const unsigned char* p = reinterpret_cast<const unsigned char*>(crl.crl().data());
    ossl::UniquePtr<X509_CRL> parsed(
        d2i_X509_CRL(nullptr, &p, static_cast<long>(crl.crl().size())));
    ASSERT_TRUE(parsed);
    ASSERT_EQ(ASN1_TIME_diff(&days, &secs, nullptr, X509_CRL_get0_nextUpdate(parsed.get())), 1);
    EXPECT_NEAR(Value(after, "keywarden_crl_expiry_seconds"), days * 86400.0 + secs, 10);
  }
  (void)now;
  // The text log has the same RPC line, key=value.
  const std::string log = LogText(daemon_->log_path());
  EXPECT_NE(log.find(StrCat("keywardend: rpc latency_ms=")), std::string::npos) << log;
  EXPECT_NE(log.find(StrCat("method=/keywarden.v1.Enrollment/Submit principal=\"",
                            daemon_->client("enrollee").principal,
                            "\" request_id=", result.request_id(), " status=OK")),
            std::string::npos)
      << log;
  EXPECT_EQ(Get(base_ + "/nothing").status, 404);
  // The exposition parses with the Prometheus project's own Python parser
  // (python3-prometheus-client), which agrees on a value and a type.
  WriteFile(tmp_.File("scrape.txt"), second.body);
  auto py = RunCommand(StrCat(
      "/usr/bin/python3 -c 'import sys\n"
      "from prometheus_client.parser import text_string_to_metric_families as parse\n"
      "fams = list(parse(open(sys.argv[1]).read()))\n"
      "types = {f.name: f.type for f in fams}\n"
      "v = [s.value for f in fams for s in f.samples if s.name == \"keywarden_rpc_requests_total\" "
      "and s.labels == {\"method\": \"/keywarden.v1.Enrollment/Submit\", \"code\": \"OK\"}]\n"
      "print(types[\"keywarden_rpc_duration_seconds\"], types[\"keywarden_rpc_requests\"], "
      "int(v[0]))' ",
      tmp_.File("scrape.txt")));
  EXPECT_EQ(py.exit_code, 0) << py.output;
  EXPECT_EQ(py.output,
            StrCat("histogram counter ",
                   static_cast<int>(Value(after, "keywarden_rpc_requests_total" + submit)), "\n"));
}

TEST_F(ObservabilityTest, ReadyzAndHealthPerServiceFollowTheTokenAndTheKras) {
  MakeKras(1);
  // Archival allowed, but the KRA count needs 2 of 1 usable: not ready for
  // Enrollment until the token and KRAs allow it.
  ASSERT_NO_FATAL_FAILURE(Start("text", KraToml(1) + kTemplates));
  auto channel = daemon_->Channel("nobody");
  EXPECT_EQ(Get(base_ + "/healthz").status, 200);
  Http ready = Get(base_ + "/readyz");
  EXPECT_EQ(ready.status, 200) << ready.body;
  EXPECT_EQ(ready.body.rfind("ready\n", 0), 0u) << ready.body;
  for (const char* s :
       {"", "keywarden.v1.Enrollment", "keywarden.v1.Officer", "keywarden.v1.Administration",
        "keywarden.v1.Audit", "keywarden.v1.Backup", "keywarden.v1.Signing"}) {
    EXPECT_EQ(HealthOf(channel, s), 1) << "service \"" << s << "\"";
  }

  // The token's directory taken away, with no client calling.
  const std::string away = TokenDir() + ".away";
  ASSERT_EQ(std::rename(TokenDir().c_str(), away.c_str()), 0);
  Http down;
  for (int i = 0; i < 100 && down.status != 503; ++i) {
    down = Get(base_ + "/readyz");
    if (down.status != 503) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(down.status, 503) << down.body;
  EXPECT_NE(down.body.find("not ready\n"), std::string::npos) << down.body;
  EXPECT_NE(down.body.find("token: FAILED"), std::string::npos) << down.body;
  EXPECT_NE(down.body.find("database: ok"), std::string::npos) << down.body;
  EXPECT_EQ(Get(base_ + "/healthz").status, 200);  // the process is still up
  EXPECT_EQ(HealthOf(channel, ""), 2);
  EXPECT_EQ(HealthOf(channel, "keywarden.v1.Signing"), 2);
  EXPECT_EQ(HealthOf(channel, "keywarden.v1.Enrollment"), 2);
  {
    Http m = Get(base_ + "/metrics");
    auto values = ParseMetrics(m.body);
    EXPECT_EQ(Value(values, "keywarden_ready"), 0);
    EXPECT_EQ(Value(values, "keywarden_readiness_check{check=\"token\"}"), 0);
  }

  // Back: ready again without a restart.
  ASSERT_EQ(std::rename(away.c_str(), TokenDir().c_str()), 0);
  Http up;
  for (int i = 0; i < 300 && up.status != 200; ++i) {
    up = Get(base_ + "/readyz");
    if (up.status != 200) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(up.status, 200) << up.body;
  int health = -1;
  for (int i = 0; i < 50 && health != 1; ++i) {
    health = HealthOf(channel, "keywarden.v1.Signing");
    if (health != 1) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(health, 1);
  EXPECT_EQ(HealthOf(channel, ""), 1);
  EXPECT_TRUE(daemon_->WaitForLog("keywardend: not ready", 1).ok());
  EXPECT_TRUE(daemon_->WaitForLog("keywardend: ready", 2).ok());

  // The KRA's certificate file replaced by one that is not a KRA, reloaded:
  // archival is not possible, so Enrollment and the whole server are not
  // ready; Officer (no archival) still serves.
  auto not_kra = kra_ca_.Issue("not a kra", "emailProtection");
  WriteFile(kra_paths_[0], ToPem(not_kra.cert.get()));
  ASSERT_TRUE(daemon_->Signal(SIGHUP).ok());
  Http no_kras;
  for (int i = 0; i < 100 && no_kras.status != 503; ++i) {
    no_kras = Get(base_ + "/readyz");
    if (no_kras.status != 503) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(no_kras.status, 503) << no_kras.body;
  EXPECT_NE(no_kras.body.find("kras: FAILED"), std::string::npos) << no_kras.body;
  EXPECT_NE(no_kras.body.find("token: ok"), std::string::npos) << no_kras.body;
  EXPECT_EQ(HealthOf(channel, "keywarden.v1.Enrollment"), 2);
  EXPECT_EQ(HealthOf(channel, ""), 2);
  EXPECT_EQ(HealthOf(channel, "keywarden.v1.Officer"), 1);
}

// PKCS#11 per-function metrics move with the calls a signature makes; the
// hsm layer's token down / back lines go through the daemon's log, as JSON.
TEST_F(ObservabilityTest, Pkcs11MetricsPerFunctionAndTokenLinesInTheJsonLog) {
  ASSERT_NO_FATAL_FAILURE(Start("json", ""));
  const std::string sign_calls = "keywarden_pkcs11_function_calls_total{function=\"C_Sign\"}";
  const std::string sign_count =
      "keywarden_pkcs11_call_duration_seconds_count{function=\"C_Sign\"}";
  const std::string sign_inf =
      "keywarden_pkcs11_call_duration_seconds_bucket{function=\"C_Sign\",le=\"+Inf\"}";
  const std::string sign_sum = "keywarden_pkcs11_call_duration_seconds_sum{function=\"C_Sign\"}";
  Http first = Get(base_ + "/metrics");
  ASSERT_EQ(first.status, 200);
  auto before = ParseMetrics(first.body);

  // A certificate: one signature on the token.
  ossl::UniquePtr<EVP_PKEY> key;
  const std::string csr = MakeRequestDer("metrics user", 2048, &key);
  auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
  grpc::ClientContext ctx;
  v1::SubmitRequest in;
  in.set_request(csr);
  in.set_template_name("User");
  v1::EnrollmentResult result;
  grpc::Status st = stub->Submit(&ctx, in, &result);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(result.disposition(), v1::DISPOSITION_ISSUED) << result.message();

  Http second = Get(base_ + "/metrics");
  ASSERT_EQ(second.status, 200);
  auto after = ParseMetrics(second.body);
  std::printf("C_Sign calls: %g -> %g, latency sum %g s\n", Value(before, sign_calls),
              Value(after, sign_calls), Value(after, sign_sum));
  EXPECT_GE(Value(after, sign_calls), Value(before, sign_calls) + 1) << second.body;
  EXPECT_EQ(Value(after, sign_count), Value(after, sign_calls));
  EXPECT_EQ(Value(after, sign_inf), Value(after, sign_count));
  EXPECT_GT(Value(after, sign_sum), Value(before, sign_sum));
  // The exposition parses with the Prometheus project's own parser, which
  // sees the latency family as a histogram and the calls as a counter.
  WriteFile(tmp_.File("pkcs11.txt"), second.body);
  auto py = RunCommand(
      StrCat("/usr/bin/python3 -c 'import sys\n"
             "from prometheus_client.parser import text_string_to_metric_families as parse\n"
             "fams = {f.name: f for f in parse(open(sys.argv[1]).read())}\n"
             "h = fams[\"keywarden_pkcs11_call_duration_seconds\"]\n"
             "c = fams[\"keywarden_pkcs11_function_calls\"]\n"
             "n = [s.value for s in h.samples if s.name.endswith(\"_count\") and "
             "s.labels == {\"function\": \"C_Sign\"}]\n"
             "print(h.type, c.type, int(n[0]))' ",
             tmp_.File("pkcs11.txt")));
  EXPECT_EQ(py.exit_code, 0) << py.output;
  EXPECT_EQ(py.output,
            StrCat("histogram counter ", static_cast<int>(Value(after, sign_count)), "\n"));

  // The token's directory taken away and back: the hsm layer's own lines
  // are JSON lines of the daemon's log like the rest.
  const std::string away = TokenDir() + ".away";
  ASSERT_EQ(std::rename(TokenDir().c_str(), away.c_str()), 0);
  ASSERT_TRUE(daemon_->WaitForLog("is unavailable", 1).ok());
  ASSERT_EQ(std::rename(away.c_str(), TokenDir().c_str()), 0);
  ASSERT_TRUE(daemon_->WaitForLog("is back", 1, std::chrono::seconds(60)).ok());
  std::istringstream log(LogText(daemon_->log_path()));
  std::string line;
  int down = 0, back = 0;
  while (std::getline(log, line)) {
    if (line.find("is unavailable") == std::string::npos &&
        line.find("is back") == std::string::npos) {
      continue;
    }
    EXPECT_NE(line.rfind("keywarden: ", 0), 0u) << "a plain stderr line: " << line;
    const auto j = json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << "not JSON: " << line;
    if (j.value("msg", "") == "token \"keywarden-ca\" is unavailable") {
      ++down;
      EXPECT_EQ(j.value("level", ""), "error") << line;
      EXPECT_EQ(j.value("token", ""), "keywarden-ca") << line;
      EXPECT_FALSE(j.value("reason", "").empty()) << line;
    } else if (j.value("msg", "") == "token \"keywarden-ca\" is back") {
      ++back;
      EXPECT_EQ(j.value("level", ""), "info") << line;
      EXPECT_NE(j.value("detail", "").find("module re-initialised"), std::string::npos) << line;
    }
  }
  EXPECT_GE(down, 1);
  EXPECT_GE(back, 1);
}

}  // namespace
}  // namespace keywarden::testing
