// Delegated signing: what keywardend adds to the token's own cost. In one
// run, on one SoftHSM2 token and the same two keys (RSA-2048 with
// rsa-pkcs1-sha256, EC P-256 with ecdsa-sha256):
//   (a) raw C_SignInit + C_Sign in this process, one leased session per
//       thread: 1 thread (the single-operation time) and one per core;
//   (a2) the daemon's signing layer (signing::DelegatedSigner) in this
//       process, one thread per core: what it adds without gRPC;
//   (b) Signing/SignDigest over mutual TLS to a real keywardend running as a
//       separate process (started here, with the same token files), from
//       this process with 1, cores, 4, 16 and 64 requests in flight (gRPC's
//       callback client API), ops/s and p50/p99 latency;
//   (c) Signing/SignDigests (batch) to the same daemon with the same number
//       of signatures in flight: calls of min(B, in flight) digests,
//       in flight / that many calls at once; ops/s counts signatures, the
//       latency is per call;
//   (d) Signing/GetSigningKey to the same daemon, at 1 and 16 in flight:
//       the same mTLS, authorization, limits and access log as (b), and no
//       token operation or signature. Its CPU per call is the floor under
//       (b)'s overhead beyond C_Sign: what a unary call costs here at all.
// It prints one table, with (b@16)/(a) and (c@16)/(a) against the 0.90
// target, keywardend's CPU per signature against raw C_Sign's, and p99 at
// in flight = cores against 4 x the single-operation time. Figures, never
// assertions: the exit status is non-zero only when a call fails or a
// signature does not verify (every signature of the first call of every
// stream is checked in software).
//
// With --split, keywardend runs on the first half of this process's CPUs
// and the client on the rest (sched_setaffinity, as taskset would), as when
// the clients are other machines: (a) and (a2) then run on keywardend's
// CPUs, and "all cores" in the targets means keywardend's. Without it both
// share every CPU, and the client's work competes with keywardend's.
//
// Usage: sign_rpc_bench [--seconds S] [--warmup S] [--concurrency 1,4,16,64]
//                       [--channels N] [--keys rsa,ec] [--batch B] [--rounds R] [--split]
//                       [--smoke]
//   --seconds   measured time per cell (default 5)
//   --keys      which of the two keys to measure (default both)
//   --channels  client connections (default: one per request in flight, at
//               most 4 x cores); each has its own TLS session
//   --batch     digests per SignDigests call at most (default 8; 0: no (c))
//   --rounds    run every cell of a key R times for seconds / R each, and add
//               them up (default 1): raw and RPC cells then share the same
//               stretches of time on a machine whose speed drifts
//   --split     keywardend and the client on separate CPUs (needs 2 or more)
//   --smoke     tiny durations, for ctest: proves the path works, figures meaningless
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "hsm/keys.h"
#include "hsm/open.h"
#include "hsm/status.h"
#include "hsm/strings.h"
#include "keywarden/v1/signing.grpc.pb.h"
#include "service/signing/delegated_signer.h"
#include "tests/bench/bench_util.h"
#include "tests/service/daemon_harness.h"

namespace {

namespace hsm = keywarden::hsm;
namespace v1 = keywarden::v1;
namespace ossl = keywarden::ossl;
using keywarden::StrCat;
using keywarden::bench::AddRound;
using keywarden::bench::AffinityCpus;
using keywarden::bench::CpuList;
using keywarden::bench::CpuSeconds;
using keywarden::bench::Fixed;
using keywarden::bench::FlagValue;
using keywarden::bench::IntList;
using keywarden::bench::OwnConnection;
using keywarden::bench::Percentile;
using keywarden::bench::PinProcess;
using keywarden::bench::Tally;
using keywarden::service::signing::Algorithm;
using keywarden::service::signing::DelegatedSigner;
using keywarden::testing::DaemonHarness;
using keywarden::testing::SoftHsmFixture;
namespace service = keywarden::service;
using Clock = std::chrono::steady_clock;

constexpr double kTargetRatio = 0.90;
constexpr char kPrincipal[] = "CN=signer,O=keywarden test";

struct Options {
  double seconds = 5;
  double warmup = 1;
  std::vector<int> concurrency = {1, 4, 16, 64};
  int channels = 0;
  std::string keys = "rsa,ec";
  int batch = 8;
  int rounds = 1;
  bool split = false;
  bool smoke = false;
};

struct BenchKey {
  std::string alias;  // in the daemon
  std::string label;  // on the token
  std::string title;  // in the table
  hsm::KeyAlgorithm algorithm;
  v1::SignatureAlgorithm rpc_algorithm;
  std::shared_ptr<hsm::TokenKey> key;  // this process's handle
  std::vector<uint8_t> digest;         // SHA-256 of a fixed message
  std::vector<uint8_t> token_input;    // what C_Sign gets: DigestInfo (RSA) or the digest (EC)
};

struct Cell {
  std::string path;
  int concurrency = 0;
  double ops = 0;
  double p50_ms = 0, p99_ms = 0;
  // CPU time per operation over the whole cell (warm-up included): of this
  // process for (a); of keywardend and of the client for (b). Unlike ops/s
  // it hardly depends on what else the machine runs.
  double cpu_us = 0, client_cpu_us = 0;
  int batch = 0;  // (c): digests per call
  bool ok = false;
  Tally tally;  // what the figures above are made from (server = keywardend or (a)'s process)
};

// The figures from the tally.
void Finalize(Cell& c) {
  c.ops = c.tally.Rate(std::max(c.batch, 1));
  c.p50_ms = Percentile(c.tally.samples_ms, 0.50);
  c.p99_ms = Percentile(c.tally.samples_ms, 0.99);
  c.cpu_us = c.tally.ServerCpuUs();
  c.client_cpu_us = c.tally.ClientCpuUs();
}

// Software check of a digest signature (default provider, public key only).
bool Verifies(const BenchKey& k, const unsigned char* sig, size_t len,
              const unsigned char* digest = nullptr) {
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(
      EVP_PKEY_CTX_new_from_pkey(nullptr, k.key->public_key.get(), nullptr));
  bool ok = ctx && EVP_PKEY_verify_init(ctx.get()) == 1 &&
            EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_sha256()) == 1;
  if (ok && k.key->type == hsm::KeyType::kRsa) {
    ok = EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) == 1;
  }
  ok = ok && EVP_PKEY_verify(ctx.get(), sig, len, digest != nullptr ? digest : k.digest.data(),
                             k.digest.size()) == 1;
  ERR_clear_error();
  return ok;
}

bool VerifiesTokenSignature(const BenchKey& k, const unsigned char* sig, size_t len) {
  if (k.key->type == hsm::KeyType::kRsa) return Verifies(k, sig, len);
  if (len == 0 || len % 2 != 0) return false;
  ossl::UniquePtr<ECDSA_SIG> ecdsa(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(sig, static_cast<int>(len / 2), nullptr);
  BIGNUM* s = BN_bin2bn(sig + len / 2, static_cast<int>(len / 2), nullptr);
  if (!ecdsa || r == nullptr || s == nullptr || ECDSA_SIG_set0(ecdsa.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return false;
  }
  unsigned char* der = nullptr;
  const int der_len = i2d_ECDSA_SIG(ecdsa.get(), &der);
  const bool ok = der_len > 0 && Verifies(k, der, static_cast<size_t>(der_len));
  OPENSSL_free(der);
  return ok;
}

// Runs one operation in a loop on `threads` threads for warm-up + seconds.
// `make_op(thread)` returns the thread's operation: a callable that signs
// once and returns false on failure.
template <typename MakeOp>
Cell Timed(const char* path, int threads, const Options& o, MakeOp make_op) {
  Cell cell;
  cell.path = path;
  cell.concurrency = threads;
  const auto begin = Clock::now();
  const auto measure_from = begin + std::chrono::duration<double>(o.warmup);
  const auto stop = measure_from + std::chrono::duration<double>(o.seconds);
  std::vector<std::vector<double>> latencies(static_cast<size_t>(threads));
  std::atomic<bool> failed{false};
  std::atomic<int64_t> operations{0};
  const double cpu_before = CpuSeconds();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      auto op = make_op(t);
      auto& mine = latencies[static_cast<size_t>(t)];
      for (;;) {
        const auto start = Clock::now();
        if (start >= stop) break;
        const bool ok = op();
        const auto end = Clock::now();
        operations.fetch_add(1, std::memory_order_relaxed);
        if (!ok) {
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
  Tally& t = cell.tally;
  t.server_cpu_s = CpuSeconds() - cpu_before;
  t.counted = static_cast<double>(operations.load());
  t.Record(latencies, o.seconds);
  Finalize(cell);
  cell.ok = !failed && !t.samples_ms.empty();
  return cell;
}

// (a) Raw PKCS#11 on `threads` threads, each on a session of its own.
Cell RawCSign(hsm::Token& token, const BenchKey& k, int threads, const Options& o,
              std::atomic<bool>* verified) {
  return Timed("(a) C_Sign", threads, o, [&](int) {
    auto session = std::make_shared<absl::StatusOr<hsm::Session>>(token.Acquire());
    auto sig = std::make_shared<std::vector<uint8_t>>(k.key->MaxSignatureSize());
    auto first = std::make_shared<bool>(true);
    return [&, session, sig, first]() -> bool {
      if (!session->ok()) {
        std::fprintf(stderr, "acquire: %s\n", std::string(session->status().message()).c_str());
        return false;
      }
      hsm::Session& s = **session;
      CK_MECHANISM mech{k.key->type == hsm::KeyType::kRsa ? CKM_RSA_PKCS : CKM_ECDSA, nullptr, 0};
      CK_ULONG len = static_cast<CK_ULONG>(sig->size());
      CK_RV rv = s.Call("C_SignInit", s.fn()->C_SignInit, s.handle(), &mech, k.key->private_handle);
      if (rv == CKR_OK) {
        rv = s.Call("C_Sign", s.fn()->C_Sign, s.handle(),
                    const_cast<CK_BYTE_PTR>(k.token_input.data()),
                    static_cast<CK_ULONG>(k.token_input.size()), sig->data(), &len);
      }
      if (rv != CKR_OK) {
        std::fprintf(stderr, "C_Sign: %s\n", hsm::RvName(rv).c_str());
        return false;
      }
      if (*first) {
        // Check the first signature: RSA as it comes, ECDSA's r||s as DER.
        if (!VerifiesTokenSignature(k, sig->data(), len)) *verified = false;
        *first = false;
      }
      return true;
    };
  });
}

// (a2) The daemon's signing layer without gRPC: DelegatedSigner::SignDigest
// in this process (provider, pooled contexts, RSA check, counters).
Cell SignerSign(DelegatedSigner& signer, const BenchKey& k, int threads, const Options& o,
                std::atomic<bool>* verified) {
  const auto algorithm =
      k.key->type == hsm::KeyType::kRsa ? Algorithm::kRsaPkcs1Sha256 : Algorithm::kEcdsaSha256;
  return Timed("(a2) signer", threads, o, [&](int) {
    auto sig = std::make_shared<std::string>();
    auto first = std::make_shared<bool>(true);
    return [&, sig, first]() -> bool {
      auto st =
          signer.SignDigest(kPrincipal, k.alias, algorithm, k.digest, std::nullopt, sig.get());
      if (!st.ok()) {
        std::fprintf(stderr, "signer: %s\n", std::string(st.message()).c_str());
        return false;
      }
      if (*first) {
        if (!Verifies(k, reinterpret_cast<const unsigned char*>(sig->data()), sig->size())) {
          *verified = false;
        }
        *first = false;
      }
      return true;
    };
  });
}

// (b) One run of `concurrency` request streams over `channels` connections.
class RpcRun {
 public:
  // batch 0: SignDigest (or GetSigningKey with `info`); else SignDigests
  // with `batch` digests per call.
  RpcRun(std::vector<std::unique_ptr<v1::Signing::Stub>>& stubs, const BenchKey& k, int concurrency,
         const Options& o, int batch = 0, bool info = false)
      : key_(k), batch_(batch), info_(info) {
    begin_ = Clock::now();
    measure_from_ = begin_ + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(o.warmup));
    stop_ = measure_from_ +
            std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));
    seconds_ = o.seconds;
    for (int i = 0; i < concurrency; ++i) {
      auto s = std::make_unique<Stream>();
      s->run = this;
      s->stub = stubs[static_cast<size_t>(i) % stubs.size()].get();
      s->request.set_alias(k.alias);
      s->request.set_algorithm(k.rpc_algorithm);
      s->request.set_digest(std::string(k.digest.begin(), k.digest.end()));
      s->info_request.set_alias(k.alias);
      s->batch_request.set_alias(k.alias);
      s->batch_request.set_algorithm(k.rpc_algorithm);
      for (int d = 0; d < batch; ++d) {
        // Each digest its own (RSA PKCS#1 v1.5 is deterministic: a signature
        // in the wrong place would not verify).
        std::string digest(k.digest.begin(), k.digest.end());
        digest[0] = static_cast<char>(digest[0] ^ d);
        s->batch_request.add_digests(digest);
      }
      streams_.push_back(std::move(s));
    }
    running_ = concurrency;
  }

  Cell Run(int concurrency, pid_t daemon) {
    const double client_before = CpuSeconds(), daemon_before = CpuSeconds(daemon);
    for (auto& s : streams_) s->Issue();
    {
      std::unique_lock<std::mutex> lock(mu_);
      done_cv_.wait(lock, [&] { return running_ == 0; });
    }
    const double client_cpu = CpuSeconds() - client_before;
    const double daemon_cpu = CpuSeconds(daemon) - daemon_before;
    Cell cell;
    cell.path = batch_ > 0 ? "(c) batch RPC" : info_ ? "(d) no-sign RPC" : "(b) Sign RPC";
    cell.concurrency = concurrency;
    cell.batch = batch_;
    bool ok = true;
    for (auto& s : streams_) {
      cell.tally.samples_ms.insert(cell.tally.samples_ms.end(), s->latencies.begin(),
                                   s->latencies.end());
      ok = ok && s->failed == 0 && s->verified;
      if (s->failed > 0) std::fprintf(stderr, "RPC: %s\n", s->error.c_str());
      if (!s->verified) std::fprintf(stderr, "RPC: an answer did not verify\n");
    }
    cell.tally.seconds = seconds_;
    cell.tally.counted = static_cast<double>(operations_.load());
    cell.tally.server_cpu_s = daemon_cpu;
    cell.tally.client_cpu_s = client_cpu;
    Finalize(cell);
    cell.ok = ok && !cell.tally.samples_ms.empty();
    return cell;
  }

 private:
  struct Stream {
    RpcRun* run = nullptr;
    v1::Signing::Stub* stub = nullptr;
    std::unique_ptr<grpc::ClientContext> context;
    v1::SignDigestRequest request;
    v1::SignResponse response;
    v1::SignDigestsRequest batch_request;
    v1::SignDigestsResponse batch_response;
    v1::GetSigningKeyRequest info_request;
    v1::SigningKeyInfo info_response;
    Clock::time_point start;
    std::vector<double> latencies;
    int failed = 0;
    bool checked = false, verified = true;
    std::string error;

    void Issue() {
      context = std::make_unique<grpc::ClientContext>();
      context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      response.Clear();
      batch_response.Clear();
      info_response.Clear();
      start = Clock::now();
      if (run->info_) {
        stub->async()->GetSigningKey(context.get(), &info_request, &info_response,
                                     [this](grpc::Status status) { Done(status); });
      } else if (run->batch_ > 0) {
        stub->async()->SignDigests(context.get(), &batch_request, &batch_response,
                                   [this](grpc::Status status) { Done(status); });
      } else {
        stub->async()->SignDigest(context.get(), &request, &response,
                                  [this](grpc::Status status) { Done(status); });
      }
    }

    void Done(const grpc::Status& status) {
      const auto end = Clock::now();
      run->operations_.fetch_add(std::max(run->batch_, 1), std::memory_order_relaxed);
      if (!status.ok()) {
        ++failed;
        error = StrCat(static_cast<int>(status.error_code()), " ", status.error_message());
        run->Finished();
        return;
      }
      if (!checked) {
        if (run->info_) {
          // The daemon's key: its public key as this process holds it.
          unsigned char* der = nullptr;
          const int len = i2d_PUBKEY(run->key_.key->public_key.get(), &der);
          verified = len > 0 && info_response.alias() == info_request.alias() &&
                     info_response.public_key() ==
                         std::string(reinterpret_cast<const char*>(der), static_cast<size_t>(len));
          OPENSSL_free(der);
        } else if (run->batch_ > 0) {
          // Every signature of the first call, each against its own digest.
          verified = batch_response.signatures_size() == batch_request.digests_size();
          for (int i = 0; verified && i < batch_response.signatures_size(); ++i) {
            const std::string& sig = batch_response.signatures(i);
            const std::string& d = batch_request.digests(i);
            verified = Verifies(run->key_, reinterpret_cast<const unsigned char*>(sig.data()),
                                sig.size(), reinterpret_cast<const unsigned char*>(d.data()));
          }
        } else {
          const std::string& sig = response.signature();
          verified =
              Verifies(run->key_, reinterpret_cast<const unsigned char*>(sig.data()), sig.size());
        }
        checked = true;
      }
      if (end >= run->measure_from_ && end <= run->stop_) {
        latencies.push_back(std::chrono::duration<double, std::milli>(end - start).count());
      }
      if (end < run->stop_) {
        Issue();
      } else {
        run->Finished();
      }
    }
  };

  void Finished() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--running_ == 0) done_cv_.notify_all();
  }

  const BenchKey& key_;
  const int batch_;
  const bool info_;
  Clock::time_point begin_, measure_from_, stop_;
  double seconds_ = 0;
  std::vector<std::unique_ptr<Stream>> streams_;
  std::mutex mu_;
  std::condition_variable done_cv_;
  int running_ = 0;
  std::atomic<int64_t> operations_{0};
};

std::vector<std::unique_ptr<v1::Signing::Stub>> Stubs(DaemonHarness& daemon, int n) {
  std::vector<std::unique_ptr<v1::Signing::Stub>> out;
  for (int i = 0; i < n; ++i)
    out.push_back(v1::Signing::NewStub(OwnConnection(daemon, "signer", i)));
  return out;
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
    } else if (const char* n = value("--channels")) {
      o.channels = std::atoi(n);
    } else if (const char* k = value("--keys")) {
      o.keys = k;
    } else if (const char* b = value("--batch")) {
      o.batch = std::atoi(b);
    } else if (const char* r = value("--rounds")) {
      o.rounds = std::atoi(r);
    } else if (a == "--split") {
      o.split = true;
    } else if (a == "--smoke") {
      o.smoke = true;
    } else {
      std::fprintf(stderr,
                   "usage: sign_rpc_bench [--seconds S] [--warmup S] [--concurrency 1,4,16,64] "
                   "[--channels N] [--keys rsa,ec] [--batch B] [--rounds R] [--split] [--smoke]\n");
      return false;
    }
  }
  if (o.smoke) {
    o.seconds = 0.3;
    o.warmup = 0.1;
  }
  const bool bad_level = std::any_of(o.concurrency.begin(), o.concurrency.end(),
                                     [](int c) { return c < 1 || c > 1024; });
  if (o.seconds <= 0 || o.warmup < 0 || o.concurrency.empty() || bad_level || o.channels < 0 ||
      o.batch < 0 || o.batch > 256 || o.rounds < 1 || o.rounds > 100) {
    std::fprintf(stderr, "sign_rpc_bench: bad arguments\n");
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!ParseArgs(argc, argv, o)) return 2;
  // The CPUs this process may use; with --split, keywardend gets the first
  // half (at least one) and the client the rest, and "cores" are
  // keywardend's.
  std::vector<int> cpus = AffinityCpus();
  if (cpus.empty()) {
    for (unsigned i = 0; i < std::max(1u, std::thread::hardware_concurrency()); ++i) {
      cpus.push_back(static_cast<int>(i));
    }
  }
  std::vector<int> daemon_cpus = cpus, client_cpus = cpus;
  if (o.split) {
    if (cpus.size() < 2) {
      std::fprintf(stderr, "sign_rpc_bench: --split needs 2 or more CPUs; this process has %zu\n",
                   cpus.size());
      return 77;  // ctest: skipped
    }
    const auto half = cpus.begin() + static_cast<std::ptrdiff_t>((cpus.size() + 1) / 2);
    daemon_cpus.assign(cpus.begin(), half);
    client_cpus.assign(half, cpus.end());
  }
  const int cores = static_cast<int>(daemon_cpus.size());
  auto pin = [&](const std::vector<int>& to) {
    if (o.split && !PinProcess(to)) {
      std::fprintf(stderr, "sign_rpc_bench: could not move this process to CPUs %s\n",
                   CpuList(to).c_str());
      std::exit(1);
    }
  };
  // p99 at in flight = cores is one of the targets: always measured.
  o.concurrency.push_back(cores);
  std::sort(o.concurrency.begin(), o.concurrency.end());
  o.concurrency.erase(std::unique(o.concurrency.begin(), o.concurrency.end()), o.concurrency.end());

  std::vector<BenchKey> keys = {
      {"bench-rsa",
       "bench-rsa2048",
       "RSA-2048 rsa-pkcs1-sha256",
       hsm::KeyAlgorithm::kRsa2048,
       v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256,
       nullptr,
       {},
       {}},
      {"bench-ec",
       "bench-ecp256",
       "EC P-256 ecdsa-sha256",
       hsm::KeyAlgorithm::kEcP256,
       v1::SIGNATURE_ALGORITHM_ECDSA_SHA256,
       nullptr,
       {},
       {}},
  };
  std::shared_ptr<hsm::Token> token;

  // The daemon, with the two bench keys made on its token before it starts.
  DaemonHarness::Options options;
  if (o.split) options.cpus = daemon_cpus;
  options.before_launch = [&](DaemonHarness& h) -> absl::Status {
    auto uri = hsm::Pkcs11Uri::Parse(SoftHsmFixture::TokenUri(SoftHsmFixture::kCaToken));
    if (!uri.ok()) return uri.status();
    hsm::OpenOptions open;
    open.default_module = SoftHsmFixture::module_path();
    open.pin = hsm::PinSource::File(h.tokens().PinFile(SoftHsmFixture::kCaToken));
    open.token.max_sessions = static_cast<size_t>(std::max(cores, 2));
    auto t = hsm::OpenToken(*uri, open);
    if (!t.ok()) return t.status();
    token = *t;
    std::string toml = "\n[signing]\naudit_interval = \"1m\"\n";
    for (BenchKey& k : keys) {
      hsm::KeySpec spec;
      spec.algorithm = k.algorithm;
      spec.label = k.label;
      auto key = hsm::GenerateKeyPair(token, spec);
      if (!key.ok()) return key.status();
      k.key = *key;
      const char* alg = k.key->type == hsm::KeyType::kRsa ? "rsa-pkcs1-sha256" : "ecdsa-sha256";
      toml += StrCat("\n[[signing.keys]]\nalias = \"", k.alias,
                     "\"\nkey = \"pkcs11:token=keywarden-ca;object=", k.label,
                     ";type=private\"\nalgorithms = [\"", alg, "\"]\nprincipals = [\"", kPrincipal,
                     "\"]\n");
      const std::string message = "keywarden sign_rpc_bench: the message whose digest is signed";
      unsigned char digest[32];
      unsigned int len = 0;
      EVP_Digest(message.data(), message.size(), digest, &len, EVP_sha256(), nullptr);
      k.digest.assign(digest, digest + len);
      if (k.key->type == hsm::KeyType::kRsa) {
        // DigestInfo prefix for SHA-256 (RFC 8017 9.2 note 1).
        k.token_input = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                         0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
      }
      k.token_input.insert(k.token_input.end(), k.digest.begin(), k.digest.end());
    }
    std::ofstream f(h.config_path(), std::ios::app);
    f << toml;
    return f.good() ? absl::OkStatus() : absl::InternalError("append to the configuration");
  };
  auto daemon = DaemonHarness::Start(options);
  if (!daemon.ok()) {
    std::fprintf(stderr, "sign_rpc_bench: %s\n", std::string(daemon.status().message()).c_str());
    return 1;
  }
  // keywardend logs the cores it sized its pools for: with --split, its own.
  if (auto st = (*daemon)->WaitForLog(StrCat(" cores=", cores, " "), 1, std::chrono::seconds(5));
      !st.ok()) {
    std::fprintf(stderr, "sign_rpc_bench: keywardend did not start on %d cores: %s\n", cores,
                 std::string(st.message()).c_str());
    return 1;
  }

  // The signing layer in this process, on the same token and keys.
  service::Config signer_config;
  signer_config.hsm.module = SoftHsmFixture::module_path();
  signer_config.hsm.max_sessions = std::max(cores, 2);
  for (const BenchKey& k : keys) {
    service::SigningKeyConfig kc;
    kc.alias = k.alias;
    kc.key = StrCat("pkcs11:token=keywarden-ca;object=", k.label, ";type=private");
    kc.algorithms = {k.key->type == hsm::KeyType::kRsa ? "rsa-pkcs1-sha256" : "ecdsa-sha256"};
    kc.principals = {kPrincipal};
    signer_config.signing.keys.push_back(kc);
  }
  auto crypto = hsm::CryptoContext::Create();
  if (!crypto.ok()) {
    std::fprintf(stderr, "sign_rpc_bench: %s\n", std::string(crypto.status().message()).c_str());
    return 1;
  }
  auto opened = DelegatedSigner::Open(signer_config, *crypto, {token}, nullptr,
                                      [] { return static_cast<int64_t>(0); });
  if (!opened.ok()) {
    std::fprintf(stderr, "sign_rpc_bench: %s\n", std::string(opened.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<DelegatedSigner> signer = std::move(*opened);

  bool all_ok = true;
  struct Row {
    const BenchKey* key;
    Cell cell;
  };
  std::vector<Row> rows;
  std::vector<double> single_ms(keys.size()), raw_ops(keys.size()), raw_cpu_us(keys.size());
  // A deque: a cell keeps a pointer to its connections while more are added.
  std::deque<std::vector<std::unique_ptr<v1::Signing::Stub>>> stub_sets;
  std::vector<std::unique_ptr<RpcRun>> runs;
  // Each round runs every cell of a key once, for seconds / rounds (and
  // warm-up / rounds) each; the cells' figures add up over the rounds. With
  // several rounds, raw C_Sign and the RPC paths are measured in the same
  // stretches of time, so a machine that speeds up or slows down between
  // cells moves both sides of each ratio alike.
  Options round_options = o;
  round_options.seconds = o.seconds / o.rounds;
  round_options.warmup = o.warmup / o.rounds;
  for (size_t ki = 0; ki < keys.size(); ++ki) {
    const BenchKey& k = keys[ki];
    const std::string family = k.key->type == hsm::KeyType::kRsa ? "rsa" : "ec";
    if (("," + o.keys + ",").find("," + family + ",") == std::string::npos) continue;
    std::atomic<bool> verified{true};
    struct Slot {
      bool on_daemon_cpus = false;
      std::function<Cell()> run;
      Cell total;
    };
    std::vector<Slot> slots;
    const Options& ro = round_options;
    for (int threads : {1, cores}) {
      slots.push_back(
          {true, [&, threads] { return RawCSign(*token, k, threads, ro, &verified); }, {}});
      if (cores == 1) break;
    }
    slots.push_back({true, [&] { return SignerSign(*signer, k, cores, ro, &verified); }, {}});
    // The connections of each RPC cell are made once and kept over the rounds.
    auto rpc_slot = [&](int streams, int concurrency, int batch, bool info) {
      const int channels = o.channels > 0 ? o.channels : std::min(streams, 4 * cores);
      auto* stubs = &stub_sets.emplace_back(Stubs(**daemon, channels));
      slots.push_back({false,
                       [&, stubs, streams, concurrency, batch, info] {
                         // Kept until the end: gRPC may still hold the last calls' contexts.
                         RpcRun& run = *runs.emplace_back(
                             std::make_unique<RpcRun>(*stubs, k, streams, ro, batch, info));
                         Cell cell = run.Run(streams, (*daemon)->pid());
                         cell.concurrency = concurrency;
                         return cell;
                       },
                       {}});
    };
    for (int c : o.concurrency) rpc_slot(c, c, 0, false);
    for (int c : o.concurrency) {
      if (o.batch == 0) break;
      // c signatures in flight: calls of up to B digests.
      const int batch = std::min(o.batch, c);
      rpc_slot((c + batch - 1) / batch, c, batch, false);
    }
    for (int c : {1, 16}) rpc_slot(c, c, 0, true);
    for (int round = 0; round < o.rounds; ++round) {
      for (Slot& slot : slots) {
        pin(slot.on_daemon_cpus ? daemon_cpus : client_cpus);
        AddRound(slot.total, slot.run(), round == 0, Finalize);
      }
    }
    for (Slot& slot : slots) {
      const Cell& c = slot.total;
      all_ok = all_ok && c.ok;
      if (c.path == "(a) C_Sign" && c.concurrency == 1) single_ms[ki] = c.p50_ms;
      if (c.path == "(a) C_Sign" && c.concurrency == cores) {
        raw_ops[ki] = c.ops;
        raw_cpu_us[ki] = c.cpu_us;
      }
      rows.push_back({&k, c});
    }
    all_ok = all_ok && verified;
  }
  auto stopped = (*daemon)->Stop();
  if (!stopped.ok()) {
    std::fprintf(stderr, "sign_rpc_bench: %s\n", std::string(stopped.message()).c_str());
    all_ok = false;
  }

  std::printf(
      "\nkeywarden sign_rpc_bench%s: SoftHSM2 token \"%s\", %d cores for keywardend; "
      "keywardend is a separate process (mTLS on loopback), the client is this process; %.1f s "
      "per cell after %.1f s warm-up, in %d round(s)\n",
      o.smoke ? " (SMOKE RUN: figures meaningless)" : "", SoftHsmFixture::kCaToken, cores,
      o.seconds, o.warmup, o.rounds);
  if (o.split) {
    std::printf(
        "layout (--split): keywardend, (a) and (a2) on CPUs %s; the client (b)/(c)/(d) on CPUs "
        "%s\n",
        CpuList(daemon_cpus).c_str(), CpuList(client_cpus).c_str());
  } else {
    std::printf("layout: keywardend and the client share CPUs %s\n", CpuList(cpus).c_str());
  }
  std::printf(
      "single = (a) at 1 thread, median C_Sign time; conc = signatures in flight ((c): calls of "
      "'batch' digests); ops/s = signatures/s ((d): calls/s); (c) latency is per call\n");
  std::printf(
      "targets: (b@16) and (c@16) >= %.2f x (a@%d); keywardend CPU/signature in batch <= 1.10 x "
      "raw; unary overhead beyond C_Sign <= 100 us; p99 at conc = %d <= 4 x single\n",
      kTargetRatio, cores, cores);
  std::printf(
      "cpu us/op: CPU time per signature of this process for (a) and (a2), of keywardend for "
      "(b)/(c)/(d); client us/op: of the client (this process) for (b)/(c)/(d)\n\n");
  std::printf("%-26s %-13s %5s %5s %10s %9s %9s %8s %11s %9s %9s\n", "key", "path", "conc", "batch",
              "ops/s", "p50 ms", "p99 ms", "/(a)", "p99/4single", "cpu us/op", "client us");
  for (size_t ki = 0; ki < keys.size(); ++ki) {
    const Cell* unary16 = nullptr;
    const Cell* batch16 = nullptr;
    const Cell* unary_cores = nullptr;
    const Cell* batch_cores = nullptr;
    const Cell* info16 = nullptr;
    for (const Row& r : rows) {
      if (r.key != &keys[ki]) continue;
      const Cell& c = r.cell;
      const bool rpc = c.path[1] == 'b' || c.path[1] == 'c' || c.path[1] == 'd';
      const bool raw = c.path == "(a) C_Sign";
      if (c.path[1] == 'b' && c.concurrency == 16) unary16 = &c;
      if (c.path[1] == 'c' && c.concurrency == 16) batch16 = &c;
      if (c.path[1] == 'b' && c.concurrency == cores) unary_cores = &c;
      if (c.path[1] == 'c' && c.concurrency == cores) batch_cores = &c;
      if (c.path[1] == 'd' && c.concurrency == 16) info16 = &c;
      std::printf("%-26s %-13s %5d %5s %10s %9s %9s %8s %11s %9s %9s%s\n", keys[ki].title.c_str(),
                  c.path.c_str(), c.concurrency, c.batch > 0 ? StrCat(c.batch).c_str() : "",
                  Fixed(c.ops, 1).c_str(), Fixed(c.p50_ms, 3).c_str(), Fixed(c.p99_ms, 3).c_str(),
                  !raw && raw_ops[ki] > 0 ? Fixed(c.ops / raw_ops[ki], 3).c_str() : "",
                  single_ms[ki] > 0 ? Fixed(c.p99_ms / (4 * single_ms[ki]), 2).c_str() : "",
                  Fixed(c.cpu_us, 0).c_str(), rpc ? Fixed(c.client_cpu_us, 0).c_str() : "",
                  c.ok ? "" : "  FAILED");
    }
    const std::string& t = keys[ki].title;
    for (const Cell* c : {unary16, batch16}) {
      if (c == nullptr || raw_ops[ki] <= 0) continue;
      const double ratio = c->ops / raw_ops[ki];
      std::printf("%-26s => %s at 16 in flight: %.3f x (a@%d) (%s %.2f)\n", t.c_str(),
                  c->path.c_str(), ratio, cores, ratio >= kTargetRatio ? "met, >=" : "NOT met, <",
                  kTargetRatio);
    }
    for (const Cell* c : {unary16, batch16}) {
      // What the ratio would be if CPU were the only limit: with the cores
      // to keywardend alone, and with the client on the same cores.
      if (c == nullptr || c->cpu_us <= 0 || raw_cpu_us[ki] <= 0) continue;
      const bool batch = c->path[1] == 'c';
      std::printf(
          "%-26s    %s CPU per signature: raw C_Sign %.0f us, keywardend %.0f us = %.2f x raw "
          "(%+.0f us)%s, client %.0f us; CPU-bound ratio %.3f (daemon alone), %.3f (with the "
          "client)\n",
          "", c->path.c_str(), raw_cpu_us[ki], c->cpu_us, c->cpu_us / raw_cpu_us[ki],
          c->cpu_us - raw_cpu_us[ki],
          batch ? (c->cpu_us <= 1.10 * raw_cpu_us[ki] ? " (target <= 1.10 x: met)"
                                                      : " (target <= 1.10 x: NOT met)")
                : (c->cpu_us - raw_cpu_us[ki] <= 100 ? " (target <= +100 us: met)"
                                                     : " (target <= +100 us: NOT met)"),
          c->client_cpu_us, raw_cpu_us[ki] / c->cpu_us,
          raw_cpu_us[ki] / (c->cpu_us + c->client_cpu_us));
    }
    if (unary16 != nullptr && info16 != nullptr && raw_cpu_us[ki] > 0) {
      // What any unary call costs keywardend, against (b)'s overhead.
      const double overhead = unary16->cpu_us - raw_cpu_us[ki];
      std::printf(
          "%-26s    (d) no-sign RPC at 16 in flight: keywardend %.0f us per call (client %.0f us) "
          "with no token operation; of (b)'s %+.0f us beyond C_Sign, %.0f us is the call itself "
          "and %+.0f us the signature path\n",
          "", info16->cpu_us, info16->client_cpu_us, overhead, info16->cpu_us,
          overhead - info16->cpu_us);
    }
    for (const Cell* c : {unary_cores, batch_cores}) {
      if (c == nullptr || single_ms[ki] <= 0) continue;
      const double x = c->p99_ms / single_ms[ki];
      std::printf("%-26s    %s p99 at %d in flight = %.3f ms = %.1f x single %.3f ms (%s 4 x)\n",
                  "", c->path.c_str(), cores, c->p99_ms, x, single_ms[ki],
                  x <= 4 ? "met, <=" : "NOT met, >");
    }
    std::printf("\n");
  }
  std::fflush(stdout);
  if (!all_ok)
    std::fprintf(stderr, "sign_rpc_bench: a call failed or a signature did not verify\n");
  rows.clear();
  runs.clear();
  stub_sets.clear();
  signer.reset();
  for (auto& k : keys) k.key.reset();
  token.reset();
  daemon->reset();
  return all_ok ? 0 : 1;
}
