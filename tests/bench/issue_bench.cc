// Certificate issuance side by side: keywardend's Signing/IssueCertificate
// (the issuing key on the SoftHSM2 token, mutual TLS, policy, the key-owner
// check against the CA database, audit) against what an operator would pick
// instead, CFSSL's `cfssl serve` (Debian's golang-cfssl) with a software
// key, through each one's own protocol (gRPC; HTTP+JSON /api/v1/cfssl/sign
// with keep-alive). In one run, for RSA-2048 and for EC P-256 issuing keys:
// both servers issue from the same pre-made PKCS#10 requests (EC P-256
// subject keys) at 1, 4 and 16 requests in flight; every certificate that
// comes back is checked in this process (it parses, its signature verifies
// with the issuer's public key, it certifies the request's key). One table:
// certs/s, p50/p99 latency, each server's CPU per certificate, and the
// ratio keywarden/CFSSL against the targets (>= 1.0 with RSA-2048, >= 2.0
// with EC P-256). Figures, never assertions: the exit status is non-zero
// only when a call fails or a certificate is wrong.
//
// Usage: issue_bench [--seconds S] [--warmup S] [--concurrency 1,4,16]
//                    [--keys rsa,ec,ca] [--requests N] [--rounds R] [--smoke]
//   --keys      issuing keys: rsa and ec are roots of their own made on the
//               token (what they issue is audited, not stored); ca is the
//               CA's own RSA-2048 key under its certificate, whose
//               certificates are recorded in the CA database (a request row
//               and the certificate, in one transaction with the audit
//               record), against an RSA-2048 CFSSL (default rsa,ec)
//   --requests  distinct pre-made PKCS#10 requests, used in turn (default 256)
//   --rounds    run every cell R times for seconds / R each, CFSSL and
//               keywardend in turn, and add them up (default 1)
//   --smoke     tiny durations, for ctest: proves both paths work, figures meaningless
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "keywarden/v1/signing.grpc.pb.h"
#include "tests/bench/bench_util.h"
#include "tests/service/daemon_harness.h"
#include "tests/test_util.h"

namespace {

namespace v1 = keywarden::v1;
namespace ossl = keywarden::ossl;
using keywarden::StrCat;
using keywarden::bench::AddRound;
using keywarden::bench::CpuSeconds;
using keywarden::bench::Fixed;
using keywarden::bench::FlagValue;
using keywarden::bench::IntList;
using keywarden::bench::OwnConnection;
using keywarden::bench::Percentile;
using keywarden::bench::Slurp;
using keywarden::bench::Tally;
using keywarden::testing::DaemonHarness;
using keywarden::testing::RunCommand;
using keywarden::testing::SoftHsmFixture;
using keywarden::testing::TempDir;
using Clock = std::chrono::steady_clock;

constexpr char kSigner[] = "CN=signer,O=keywarden test";

struct Options {
  double seconds = 5;
  double warmup = 1;
  std::vector<int> concurrency = {1, 4, 16};
  std::string keys = "rsa,ec";
  int requests = 256;
  int rounds = 1;
  bool smoke = false;
};

struct Request {
  std::string der, pem;
  std::shared_ptr<EVP_PKEY> key;  // the subject key, public part checked
  std::string cn;
};

struct IssuerKey {
  std::string family;  // "rsa", "ec" or "ca" (the CA's own RSA-2048 key, recorded)
  std::string title;
  std::string ceremony_algorithm;                    // keywarden ceremony --key-algorithm
  std::string openssl_newkey;                        // for CFSSL's software CA
  double target = 1.0;                               // keywarden/CFSSL at 16 in flight
  std::shared_ptr<EVP_PKEY> keywarden_ca, cfssl_ca;  // public keys
};

struct Cell {
  std::string server;
  int concurrency = 0;
  double certs = 0, p50_ms = 0, p99_ms = 0, server_cpu_us = 0;
  double client_cpu_us = 0;  // of this process: its protocol, TLS and the certificate check
  bool ok = false;
  Tally tally;  // what the figures are made from
};

void Finalize(Cell& c) {
  c.certs = c.tally.Rate();
  c.p50_ms = Percentile(c.tally.samples_ms, 0.50);
  c.p99_ms = Percentile(c.tally.samples_ms, 0.99);
  c.server_cpu_us = c.tally.ServerCpuUs();
  c.client_cpu_us = c.tally.ClientCpuUs();
}

std::shared_ptr<EVP_PKEY> PublicKeyOfPemCert(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "r"), std::fclose);
  if (!f) return nullptr;
  ossl::UniquePtr<X509> cert(PEM_read_X509(f.get(), nullptr, nullptr, nullptr));
  if (!cert) return nullptr;
  EVP_PKEY* pub = X509_get_pubkey(cert.get());
  return std::shared_ptr<EVP_PKEY>(pub, EVP_PKEY_free);
}

std::vector<Request> MakeRequests(int n) {
  std::vector<Request> out;
  for (int i = 0; i < n; ++i) {
    Request r;
    r.key.reset(EVP_EC_gen("P-256"), EVP_PKEY_free);
    r.cn = StrCat("bench user ", i);
    ossl::UniquePtr<X509_REQ> req(X509_REQ_new());
    X509_NAME* name = X509_REQ_get_subject_name(req.get());
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>("keywarden bench"), -1, -1,
                               0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(r.cn.c_str()), -1, -1, 0);
    X509_REQ_set_pubkey(req.get(), r.key.get());
    if (X509_REQ_sign(req.get(), r.key.get(), EVP_sha256()) <= 0) return {};
    unsigned char* der = nullptr;
    const int len = i2d_X509_REQ(req.get(), &der);
    if (len <= 0) return {};
    r.der.assign(reinterpret_cast<char*>(der), static_cast<size_t>(len));
    OPENSSL_free(der);
    ossl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
    PEM_write_bio_X509_REQ(bio.get(), req.get());
    char* data = nullptr;
    const long n_pem = BIO_get_mem_data(bio.get(), &data);
    r.pem.assign(data, static_cast<size_t>(n_pem));
    out.push_back(std::move(r));
  }
  return out;
}

// The certificate parses, is signed by `issuer` and certifies the request's
// key for the request's subject.
bool CertificateIsRight(const std::string& der, const Request& r, EVP_PKEY* issuer) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  bool ok = cert && X509_verify(cert.get(), issuer) == 1 &&
            EVP_PKEY_eq(X509_get0_pubkey(cert.get()), r.key.get()) == 1;
  if (ok) {
    char cn[128] = {};
    ok = X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn,
                                   sizeof cn) > 0 &&
         r.cn == cn;
  }
  ERR_clear_error();
  return ok;
}

std::string PemToDer(const std::string& pem) {
  ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  ossl::UniquePtr<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return "";
  unsigned char* der = nullptr;
  const int len = i2d_X509(cert.get(), &der);
  if (len <= 0) return "";
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

// One issuance: fills `der` (the certificate) or `error`.
using IssueFn = std::function<bool(const Request&, std::string* der, std::string* error)>;

// `threads` loops, each with the client `make_client(thread)` returns, for
// warm-up + seconds; the server's CPU from /proc/<server_pid>/stat. The
// requests are taken in turn from `*cursor` on, which is left after the last
// one taken (so later rounds go on with requests this server has not seen).
Cell Timed(const std::string& server, int threads, const Options& o,
           const std::vector<Request>& requests, EVP_PKEY* issuer, pid_t server_pid, size_t* cursor,
           const std::function<IssueFn(int)>& make_client) {
  Cell cell;
  cell.server = server;
  cell.concurrency = threads;
  const auto begin = Clock::now();
  const auto measure_from =
      begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.warmup));
  const auto stop = measure_from + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(o.seconds));
  std::vector<std::vector<double>> latencies(static_cast<size_t>(threads));
  std::atomic<bool> failed{false};
  std::atomic<int64_t> issued{0};
  std::atomic<size_t> next{*cursor};
  const double server_before = CpuSeconds(server_pid), client_before = CpuSeconds();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      IssueFn issue = make_client(t);
      auto& mine = latencies[static_cast<size_t>(t)];
      std::string der, error;
      while (!failed) {
        const auto start = Clock::now();
        if (start >= stop) break;
        const Request& r = requests[next.fetch_add(1) % requests.size()];
        der.clear();
        const bool ok = issue(r, &der, &error);
        const auto end = Clock::now();
        issued.fetch_add(1, std::memory_order_relaxed);
        if (!ok || !CertificateIsRight(der, r, issuer)) {
          std::fprintf(stderr, "%s: %s\n", server.c_str(),
                       ok ? "a certificate is not the one asked for" : error.c_str());
          failed = true;
          return;
        }
        if (end >= measure_from && end <= stop) {
          mine.push_back(std::chrono::duration<double, std::milli>(end - start).count());
        }
      }
    });
  }
  for (auto& t : pool) t.join();
  *cursor = next.load();
  Tally& t = cell.tally;
  t.server_cpu_s = CpuSeconds(server_pid) - server_before;
  t.client_cpu_s = CpuSeconds() - client_before;
  t.counted = static_cast<double>(issued.load());
  t.Record(latencies, o.seconds);
  Finalize(cell);
  cell.ok = !failed && !t.samples_ms.empty();
  return cell;
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// `cfssl serve` with a software CA of its own; stopped (SIGTERM, reaped) on
// destruction.
class Cfssl {
 public:
  ~Cfssl() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Makes the CA with the openssl CLI (`newkey`: "rsa:2048", "ec -pkeyopt
  // ec_paramgen_curve:P-256"), starts the server, waits until it answers.
  bool Start(const TempDir& dir, const std::string& name, const std::string& newkey,
             std::string* error) {
    const std::string ca = dir.File(name + "-ca.pem"), key = dir.File(name + "-ca-key.pem");
    const std::string config = dir.File(name + "-cfssl.json");
    auto made = RunCommand(StrCat("openssl req -x509 -newkey ", newkey,
                                  " -nodes -days 30 -subj '/O=keywarden bench/CN=CFSSL ", name,
                                  " CA' -addext basicConstraints=critical,CA:true -addext ",
                                  "keyUsage=critical,keyCertSign,cRLSign -keyout ", key, " -out ",
                                  ca, " 2>&1"));
    if (made.exit_code != 0) {
      *error = "openssl req: " + made.output;
      return false;
    }
    ca_public_ = PublicKeyOfPemCert(ca);
    std::ofstream(config) << R"({"signing":{"default":{"usages":["digital signature",)"
                          << R"("email protection"],"expiry":"8760h"}}})";
    port_ = FreePort();
    const std::string log = dir.File(name + "-cfssl.log");
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      const std::string port = StrCat("-port=", port_);
      const std::string ca_arg = "-ca=" + ca, key_arg = "-ca-key=" + key;
      const std::string config_arg = "-config=" + config;
      execlp("cfssl", "cfssl", "serve", "-address=127.0.0.1", port.c_str(), ca_arg.c_str(),
             key_arg.c_str(), config_arg.c_str(), "-loglevel=4", static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 100; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        *error = StrCat("cfssl serve exited (", WEXITSTATUS(status),
                        WEXITSTATUS(status) == 127 ? ": not installed; deploy/install-deps.sh "
                                                     "installs golang-cfssl"
                                                   : "",
                        "): ", Slurp(log));
        return false;
      }
      httplib::Client probe("127.0.0.1", port_);
      probe.set_connection_timeout(0, 200000);
      if (auto res = probe.Get("/api/v1/cfssl/health"); res) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    *error = "cfssl serve did not answer within 10 s: " + Slurp(log);
    return false;
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  EVP_PKEY* ca_public() const { return ca_public_.get(); }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::shared_ptr<EVP_PKEY> ca_public_;
};

IssueFn CfsslClient(int port) {
  auto client = std::make_shared<httplib::Client>("127.0.0.1", port);
  client->set_keep_alive(true);
  // Headers and body go out in separate writes: without TCP_NODELAY, Nagle
  // and the server's delayed ACK add ~40 ms to every call.
  client->set_tcp_nodelay(true);
  client->set_read_timeout(60, 0);
  return [client](const Request& r, std::string* der, std::string* error) {
    const std::string body = nlohmann::json{{"certificate_request", r.pem}}.dump();
    auto res = client->Post("/api/v1/cfssl/sign", body, "application/json");
    if (!res) {
      *error = "cfssl: " + httplib::to_string(res.error());
      return false;
    }
    auto json = nlohmann::json::parse(res->body, nullptr, false);
    if (res->status != 200 || json.is_discarded() || !json.value("success", false)) {
      *error = StrCat("cfssl: HTTP ", res->status, ": ", res->body);
      return false;
    }
    *der = PemToDer(json["result"].value("certificate", ""));
    return true;
  };
}

IssueFn KeywardenClient(DaemonHarness& daemon, const std::string& alias, int thread, int channels) {
  std::shared_ptr<v1::Signing::Stub> stub =
      v1::Signing::NewStub(OwnConnection(daemon, "signer", thread % channels));
  return [stub, alias](const Request& r, std::string* der, std::string* error) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::IssueCertificateRequest in;
    in.set_alias(alias);
    in.set_template_name("BenchMail");
    in.set_csr(r.der);
    v1::IssuedCertificate out;
    grpc::Status st = stub->IssueCertificate(&ctx, in, &out);
    if (!st.ok()) {
      *error = StrCat("keywarden: ", static_cast<int>(st.error_code()), " ", st.error_message());
      return false;
    }
    *der = out.certificate();
    return true;
  };
}

bool ParseArgs(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) { return FlagValue(argc, argv, i, name); };
    if (const char* v = value("--seconds")) {
      o.seconds = std::atof(v);
    } else if (const char* w = value("--warmup")) {
      o.warmup = std::atof(w);
    } else if (const char* c = value("--concurrency")) {
      o.concurrency = IntList(c);
    } else if (const char* k = value("--keys")) {
      o.keys = k;
    } else if (const char* n = value("--requests")) {
      o.requests = std::atoi(n);
    } else if (const char* r = value("--rounds")) {
      o.rounds = std::atoi(r);
    } else if (a == "--smoke") {
      o.smoke = true;
    } else {
      std::fprintf(stderr,
                   "usage: issue_bench [--seconds S] [--warmup S] [--concurrency 1,4,16] "
                   "[--keys rsa,ec,ca] [--requests N] [--rounds R] [--smoke]\n");
      return false;
    }
  }
  if (o.smoke) {
    o.seconds = 0.3;
    o.warmup = 0.1;
    o.requests = std::min(o.requests, 16);
  }
  const bool bad_level = std::any_of(o.concurrency.begin(), o.concurrency.end(),
                                     [](int c) { return c < 1 || c > 256; });
  bool bad_keys = o.keys.empty();
  for (size_t at = 0; at <= o.keys.size() && !bad_keys;) {
    const size_t end = std::min(o.keys.find(',', at), o.keys.size());
    const std::string one = o.keys.substr(at, end - at);
    bad_keys = one != "rsa" && one != "ec" && one != "ca";
    at = end + 1;
  }
  if (o.seconds <= 0 || o.warmup < 0 || o.concurrency.empty() || bad_level || bad_keys ||
      o.requests < 1 || o.requests > 100000 || o.rounds < 1 || o.rounds > 100) {
    std::fprintf(stderr, "issue_bench: bad arguments\n");
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!ParseArgs(argc, argv, o)) return 2;
  signal(SIGPIPE, SIG_IGN);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  std::vector<IssuerKey> keys;
  if (o.keys.find("rsa") != std::string::npos) {
    keys.push_back({"rsa", "RSA-2048", "rsa2048", "rsa:2048", 1.0, nullptr, nullptr});
  }
  if (o.keys.find("ec") != std::string::npos) {
    keys.push_back({"ec", "EC P-256", "ec-p256", "ec -pkeyopt ec_paramgen_curve:P-256", 2.0,
                    nullptr, nullptr});
  }
  if (o.keys.find("ca") != std::string::npos) {
    keys.push_back({"ca", "RSA CA", "", "rsa:2048", 1.0, nullptr, nullptr});
  }

  // keywardend, with one issuing key per family made on its token by the
  // real ceremony and certified by itself (a root), allowed the User template.
  DaemonHarness::Options options;
  options.before_launch = [&](DaemonHarness& h) -> absl::Status {
    // The template both servers issue under: an S/MIME signing certificate
    // for the request's subject and key (EC P-256 requests).
    std::string toml = R"(
[[template]]
name = "BenchMail"
key_usage = ["digitalSignature"]
extended_key_usage = ["emailProtection"]
validity = "365d"
key_types = ["ec"]
min_key_bits = 256

[signing]
audit_interval = "1m"
)";
    for (const IssuerKey& k : keys) {
      const std::string label = "issue-" + k.family;
      if (k.family == "ca") {
        // The CA's own key under its own certificate: recorded issuance.
        toml += StrCat("\n[[signing.keys]]\nalias = \"", label,
                       "\"\nkey = \"pkcs11:token=", SoftHsmFixture::kCaToken,
                       ";object=ca-signing;type=private\"\ncertificate = \"", h.ca_cert_path(),
                       "\"\nalgorithms = [\"rsa-pkcs1-sha256\"]\nprincipals = [\"", kSigner,
                       "\"]\ntemplates = [\"BenchMail\"]\n");
        continue;
      }
      auto r = RunCommand(StrCat(
          "KEYWARDEN_PKCS11_MODULE=", SoftHsmFixture::module_path(), " ", KEYWARDEN_CLI,
          " ceremony root --token pkcs11:token=", SoftHsmFixture::kCaToken,
          " --pin-source file:", h.tokens().PinFile(SoftHsmFixture::kCaToken), " --key-label ",
          label, " --key-algorithm ", k.ceremony_algorithm, " --subject 'CN=keywarden ", k.title,
          " issuing CA,O=keywarden bench' --out ", h.dir().File(label + ".pem"), " 2>&1"));
      if (r.exit_code != 0) return absl::InternalError("ceremony " + label + ": " + r.output);
      const char* alg = k.family == "rsa" ? "rsa-pkcs1-sha256" : "ecdsa-sha256";
      toml += StrCat("\n[[signing.keys]]\nalias = \"", label,
                     "\"\nkey = \"pkcs11:token=", SoftHsmFixture::kCaToken, ";object=", label,
                     ";type=private\"\ncertificate = \"", h.dir().File(label + ".pem"),
                     "\"\nalgorithms = [\"", alg, "\"]\nprincipals = [\"", kSigner,
                     "\"]\ntemplates = [\"BenchMail\"]\n");
    }
    std::ofstream f(h.config_path(), std::ios::app);
    f << toml;
    return f.good() ? absl::OkStatus() : absl::InternalError("append to the configuration");
  };
  auto daemon = DaemonHarness::Start(options);
  if (!daemon.ok()) {
    std::fprintf(stderr, "issue_bench: %s\n", std::string(daemon.status().message()).c_str());
    return 1;
  }
  const std::vector<Request> requests = MakeRequests(o.requests);
  if (requests.size() != static_cast<size_t>(o.requests)) {
    std::fprintf(stderr, "issue_bench: could not make the requests\n");
    return 1;
  }

  bool all_ok = true;
  std::vector<std::pair<const IssuerKey*, Cell>> rows;
  std::vector<std::unique_ptr<Cfssl>> cfssls;
  for (IssuerKey& k : keys) {
    k.keywarden_ca =
        PublicKeyOfPemCert(k.family == "ca" ? (*daemon)->ca_cert_path()
                                            : (*daemon)->dir().File("issue-" + k.family + ".pem"));
    auto& cfssl = *cfssls.emplace_back(std::make_unique<Cfssl>());
    std::string error;
    if (!k.keywarden_ca || !cfssl.Start((*daemon)->dir(), k.family, k.openssl_newkey, &error)) {
      std::fprintf(stderr, "issue_bench: %s\n",
                   error.empty() ? "no keywarden issuing certificate" : error.c_str());
      return 1;
    }
    k.cfssl_ca = std::shared_ptr<EVP_PKEY>(cfssl.ca_public(), [](EVP_PKEY*) {});
    // Each round runs every cell of this key once for seconds / rounds
    // (and warm-up / rounds), CFSSL and keywardend in turn; the rounds add
    // up, so both servers share the same stretches of time.
    Options ro = o;
    ro.seconds = o.seconds / o.rounds;
    ro.warmup = o.warmup / o.rounds;
    std::vector<Cell> cf(o.concurrency.size()), kw(o.concurrency.size());
    size_t cf_cursor = 0, kw_cursor = 0;
    for (int round = 0; round < o.rounds; ++round) {
      for (size_t i = 0; i < o.concurrency.size(); ++i) {
        const int c = o.concurrency[i];
        const int channels = std::min(c, 4 * cores);
        Cell one = Timed("cfssl serve (software key)", c, ro, requests, cfssl.ca_public(),
                         cfssl.pid(), &cf_cursor, [&](int) { return CfsslClient(cfssl.port()); });
        Cell two = Timed("keywardend (token key)", c, ro, requests, k.keywarden_ca.get(),
                         (*daemon)->pid(), &kw_cursor, [&](int t) {
                           return KeywardenClient(**daemon, "issue-" + k.family, t, channels);
                         });
        AddRound(cf[i], std::move(one), round == 0, Finalize);
        AddRound(kw[i], std::move(two), round == 0, Finalize);
      }
    }
    for (size_t i = 0; i < o.concurrency.size(); ++i) {
      all_ok = all_ok && cf[i].ok && kw[i].ok;
      rows.push_back({&k, cf[i]});
      rows.push_back({&k, kw[i]});
    }
  }

  std::printf(
      "\nkeywarden issue_bench%s: %d cores; keywardend (SoftHSM2 token \"%s\", SQLite, mTLS "
      "gRPC Signing/IssueCertificate, an S/MIME template) and cfssl serve (golang-cfssl, software "
      "key, HTTP keep-alive) are separate processes on loopback; the client is this process "
      "(one thread per request in flight, every certificate verified); %d distinct EC P-256 "
      "requests; %.1f s per cell after %.1f s warm-up, in %d round(s) with the servers in turn\n\n",
      o.smoke ? " (SMOKE RUN: figures meaningless)" : "", cores, SoftHsmFixture::kCaToken,
      o.requests, o.seconds, o.warmup, o.rounds);
  std::printf("%-9s %-27s %5s %9s %9s %9s %13s %13s %9s\n", "issuer", "server", "conc", "certs/s",
              "p50 ms", "p99 ms", "server us/crt", "client us/crt", "kw/cfssl");
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& [k, c] = rows[i];
    const bool kw = c.server[0] == 'k';
    const double cf_certs = kw ? rows[i - 1].second.certs : 0;
    std::printf("%-9s %-27s %5d %9s %9s %9s %13s %13s %9s%s\n", k->title.c_str(), c.server.c_str(),
                c.concurrency, Fixed(c.certs, 1).c_str(), Fixed(c.p50_ms, 2).c_str(),
                Fixed(c.p99_ms, 2).c_str(), Fixed(c.server_cpu_us, 0).c_str(),
                Fixed(c.client_cpu_us, 0).c_str(),
                kw && cf_certs > 0 ? Fixed(c.certs / cf_certs, 2).c_str() : "",
                c.ok ? "" : "  FAILED");
  }
  std::printf("\n");
  for (const IssuerKey& k : keys) {
    for (size_t i = 1; i < rows.size(); i += 2) {
      if (rows[i].first != &k || rows[i].second.concurrency != o.concurrency.back()) continue;
      const double ratio =
          rows[i - 1].second.certs > 0 ? rows[i].second.certs / rows[i - 1].second.certs : 0;
      std::printf("%-9s => keywarden/CFSSL at %d in flight = %.2f (target >= %.1f: %s)\n",
                  k.title.c_str(), rows[i].second.concurrency, ratio, k.target,
                  ratio >= k.target ? "met" : "NOT met");
    }
  }
  std::fflush(stdout);
  if (!all_ok) std::fprintf(stderr, "issue_bench: a call failed or a certificate was wrong\n");
  cfssls.clear();
  auto stopped = (*daemon)->Stop();
  if (!stopped.ok()) {
    std::fprintf(stderr, "issue_bench: %s\n", std::string(stopped.message()).c_str());
    all_ok = false;
  }
  return all_ok ? 0 : 1;
}
