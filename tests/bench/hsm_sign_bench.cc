// RSA-2048 SHA-256 signatures per second, three ways, in one run:
//   (a) raw PKCS#11: C_SignInit + C_Sign (CKM_RSA_PKCS over a precomputed
//       SHA-256 DigestInfo) on a SoftHSM2 token, one leased session per thread;
//   (b) keywarden's OpenSSL provider: EVP_DigestSignInit_ex + EVP_DigestSign
//       on the same token key, hashing the message in software;
//   (c) OpenSSL software signing with a software RSA-2048 key.
// Each at 1 and 2 threads. Every benchmark first verifies one signature made
// by its own path and refuses to run when it does not verify.
//
// Usage: hsm_sign_bench [--benchmark_min_time=S] [--benchmark_repetitions=N]
// [--benchmark_filter=...] (default: 5 interleaved repetitions of 1 s, medians reported; other
// Google Benchmark flags work too)
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <benchmark/benchmark.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "hsm/keys.h"
#include "hsm/open.h"
#include "hsm/ossl.h"
#include "hsm/pin.h"
#include "hsm/provider/provider.h"
#include "hsm/status.h"
#include "hsm/strings.h"
#include "hsm/token.h"
#include "hsm/uri.h"
#include "softhsm-fixtures/fixture.h"

namespace {

using keywarden::StrCat;
namespace hsm = keywarden::hsm;
namespace ossl = keywarden::ossl;
using keywarden::testing::SoftHsmFixture;

constexpr std::string_view kMessage = "keywarden hsm_sign_bench: a short message to sign";
constexpr double kTarget = 0.95;  // provider >= kTarget x raw C_Sign

// DER prefix of DigestInfo { sha256WithRSAEncryption's digest AlgorithmIdentifier, OCTET STRING }.
constexpr uint8_t kSha256DigestInfoPrefix[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                               0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                               0x01, 0x05, 0x00, 0x04, 0x20};

// Set up in main() before any benchmark runs; read-only while they run.
std::unique_ptr<SoftHsmFixture> g_fixture;
std::shared_ptr<hsm::CryptoContext> g_crypto;
std::shared_ptr<hsm::Token> g_token;
std::shared_ptr<hsm::TokenKey> g_key;
ossl::UniquePtr<EVP_PKEY> g_token_pkey;  // g_key through keywarden's provider
ossl::UniquePtr<EVP_PKEY> g_soft_key;    // software RSA-2048, default library context
std::vector<uint8_t> g_digest_info;      // DigestInfo(SHA-256(kMessage))

// Releases everything in dependency order: keys, then token, then the
// library context that served the token key, then the token files.
void ReleaseGlobals() {
  g_token_pkey.reset();
  g_soft_key.reset();
  g_key.reset();
  g_token.reset();
  g_crypto.reset();
  g_fixture.reset();
}

const unsigned char* MessageData() {
  return reinterpret_cast<const unsigned char*>(kMessage.data());
}

std::string OpenSslErrors() {
  std::string out;
  char buf[256];
  while (unsigned long e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no OpenSSL error" : out;
}

// True when `sig` is a valid RSA PKCS#1 v1.5 SHA-256 signature of kMessage
// under `pub`, checked in OpenSSL's default library context.
bool Verifies(EVP_PKEY* pub, std::span<const uint8_t> sig) {
  ossl::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (!ctx ||
      EVP_DigestVerifyInit_ex(ctx.get(), &pctx, "SHA256", nullptr, nullptr, pub, nullptr) != 1) {
    ERR_clear_error();
    return false;
  }
  if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1) {
    ERR_clear_error();
    return false;
  }
  const bool ok =
      EVP_DigestVerify(ctx.get(), sig.data(), sig.size(), MessageData(), kMessage.size()) == 1;
  ERR_clear_error();
  return ok;
}

// One signature by EVP_DigestSign with `key` in `libctx`; false on error.
// `props` is hsm::kTokenKeyProperties for the token key, as the daemon's
// signing path uses it.
bool EvpSign(EVP_PKEY* key, OSSL_LIB_CTX* libctx, const char* props, std::vector<uint8_t>& sig) {
  ossl::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  if (!ctx ||
      EVP_DigestSignInit_ex(ctx.get(), nullptr, "SHA256", libctx, props, key, nullptr) != 1) {
    return false;
  }
  size_t len = sig.size();
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, MessageData(), kMessage.size()) != 1) {
    return false;
  }
  sig.resize(len);
  return true;
}

// (a) Raw PKCS#11 on a session this thread leases for the whole run.
void BM_RawCSign(benchmark::State& state) {
  auto session = g_token->Acquire();
  if (!session.ok()) {
    state.SkipWithError(StrCat("acquire session: ", session.status().ToString()).c_str());
    return;
  }
  CK_FUNCTION_LIST* fn = session->fn();
  const CK_SESSION_HANDLE h = session->handle();
  const CK_OBJECT_HANDLE key = g_key->private_handle;
  CK_MECHANISM mech{CKM_RSA_PKCS, nullptr, 0};
  std::vector<uint8_t> sig(g_key->MaxSignatureSize());
  auto sign_once = [&](CK_ULONG& len) -> CK_RV {
    CK_RV rv = session->Call("C_SignInit", fn->C_SignInit, h, &mech, key);
    if (rv != CKR_OK) return rv;
    len = static_cast<CK_ULONG>(sig.size());
    return session->Call("C_Sign", fn->C_Sign, h, g_digest_info.data(),
                         static_cast<CK_ULONG>(g_digest_info.size()), sig.data(), &len);
  };

  CK_ULONG len = 0;
  if (CK_RV rv = sign_once(len); rv != CKR_OK) {
    state.SkipWithError(StrCat("raw C_Sign failed: ", hsm::RvName(rv)).c_str());
    return;
  }
  if (!Verifies(g_key->public_key.get(), std::span<const uint8_t>(sig.data(), len))) {
    state.SkipWithError("raw C_Sign signature does not verify with the token key's public key");
    return;
  }

  for (auto _ : state) {
    CK_RV rv = sign_once(len);
    if (rv != CKR_OK) {
      state.SkipWithError(StrCat("raw C_Sign failed: ", hsm::RvName(rv)).c_str());
      break;
    }
    benchmark::DoNotOptimize(sig.data());
  }
  state.SetItemsProcessed(state.iterations());
}

// (b) keywarden's provider, including the software hash of the message.
void BM_ProviderDigestSign(benchmark::State& state) {
  std::vector<uint8_t> sig(g_key->MaxSignatureSize());
  if (!EvpSign(g_token_pkey.get(), g_crypto->libctx(), hsm::kTokenKeyProperties, sig)) {
    state.SkipWithError(StrCat("provider EVP_DigestSign failed: ", OpenSslErrors()).c_str());
    return;
  }
  if (!Verifies(g_key->public_key.get(), sig)) {
    state.SkipWithError("provider signature does not verify with the token key's public key");
    return;
  }

  for (auto _ : state) {
    sig.resize(g_key->MaxSignatureSize());
    if (!EvpSign(g_token_pkey.get(), g_crypto->libctx(), hsm::kTokenKeyProperties, sig)) {
      state.SkipWithError(StrCat("provider EVP_DigestSign failed: ", OpenSslErrors()).c_str());
      break;
    }
    benchmark::DoNotOptimize(sig.data());
  }
  state.SetItemsProcessed(state.iterations());
}

// (c) OpenSSL's default provider with a software key.
void BM_SoftwareDigestSign(benchmark::State& state) {
  const size_t max = static_cast<size_t>(EVP_PKEY_get_size(g_soft_key.get()));
  std::vector<uint8_t> sig(max);
  if (!EvpSign(g_soft_key.get(), nullptr, nullptr, sig)) {
    state.SkipWithError(StrCat("software EVP_DigestSign failed: ", OpenSslErrors()).c_str());
    return;
  }
  if (!Verifies(g_soft_key.get(), sig)) {
    state.SkipWithError("software signature does not verify with the software key");
    return;
  }

  for (auto _ : state) {
    sig.resize(max);
    if (!EvpSign(g_soft_key.get(), nullptr, nullptr, sig)) {
      state.SkipWithError(StrCat("software EVP_DigestSign failed: ", OpenSslErrors()).c_str());
      break;
    }
    benchmark::DoNotOptimize(sig.data());
  }
  state.SetItemsProcessed(state.iterations());
}

BENCHMARK(BM_RawCSign)->UseRealTime()->Threads(1)->Threads(2);
BENCHMARK(BM_ProviderDigestSign)->UseRealTime()->Threads(1)->Threads(2);
BENCHMARK(BM_SoftwareDigestSign)->UseRealTime()->Threads(1)->Threads(2);

// Console output as usual, plus each run's signatures per second, kept for
// the summary. Failed runs are kept as failed so they cannot count as figures.
class RecordingReporter : public benchmark::ConsoleReporter {
 public:
  struct Result {
    std::string name;
    bool ok = false;
    bool failed = false;
    bool from_median = false;
    double per_second = 0;
  };

  using benchmark::ConsoleReporter::ConsoleReporter;

  // With repetitions, the median of the repetitions is the figure; a
  // benchmark any of whose repetitions failed has none.
  void ReportRuns(const std::vector<Run>& reports) override {
    benchmark::ConsoleReporter::ReportRuns(reports);
    for (const Run& run : reports) {
      Result& r = results_[{run.run_name.function_name, run.threads}];
      r.name = run.run_name.function_name;
      auto it = run.counters.find("items_per_second");
      const bool ok = !run.error_occurred && it != run.counters.end() && it->second.value > 0;
      if (run.run_type == Run::RT_Iteration) {
        r.failed |= !ok;
        if (ok && !r.from_median) r.per_second = it->second.value;
      } else if (run.aggregate_name == "median" && ok) {
        r.per_second = it->second.value;
        r.from_median = true;
      }
      r.ok = !r.failed && r.per_second > 0;
    }
  }

  // Null when the benchmark did not run or failed.
  const Result* Find(const std::string& function, int64_t threads) const {
    auto it = results_.find({function, threads});
    return it == results_.end() || !it->second.ok ? nullptr : &it->second;
  }

 private:
  std::map<std::pair<std::string, int64_t>, Result> results_;
};

std::string Rate(const RecordingReporter::Result* r) {
  if (r == nullptr) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", r->per_second);
  return buf;
}

std::string Ratio(const RecordingReporter::Result* num, const RecordingReporter::Result* den) {
  if (num == nullptr || den == nullptr) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", num->per_second / den->per_second);
  return buf;
}

// Prints the summary; returns false when a figure is missing (a benchmark
// failed or was filtered out).
bool PrintSummary(const RecordingReporter& reporter) {
  std::printf("\nRSA-2048 SHA-256 signatures/s (PKCS#1 v1.5), SoftHSM2 token \"%s\"\n",
              SoftHsmFixture::kCaToken);
  std::printf("  (a) raw C_SignInit+C_Sign over a precomputed DigestInfo\n");
  std::printf("  (b) keywarden provider: EVP_DigestSign (SHA-256 hashing included, %s)\n",
              hsm::kTokenKeyProperties);
  std::printf("  (c) OpenSSL software key: EVP_DigestSign\n");
  std::printf("target: provider >= %.2f x raw C_Sign\n\n", kTarget);
  std::printf("%-8s %14s %14s %14s %9s %9s  %s\n", "threads", "(a) raw", "(b) provider",
              "(c) software", "(b)/(a)", "(c)/(a)", "provider vs target");
  bool complete = true;
  for (int64_t threads : {1, 2}) {
    const auto* raw = reporter.Find("BM_RawCSign", threads);
    const auto* prov = reporter.Find("BM_ProviderDigestSign", threads);
    const auto* soft = reporter.Find("BM_SoftwareDigestSign", threads);
    std::string verdict;
    if (raw == nullptr || prov == nullptr) {
      verdict = "n/a (missing figure)";
      complete = false;
    } else {
      verdict = prov->per_second >= kTarget * raw->per_second ? "PASS" : "BELOW";
    }
    if (soft == nullptr) complete = false;
    std::printf("%-8lld %14s %14s %14s %9s %9s  %s\n", static_cast<long long>(threads),
                Rate(raw).c_str(), Rate(prov).c_str(), Rate(soft).c_str(), Ratio(prov, raw).c_str(),
                Ratio(soft, raw).c_str(), verdict.c_str());
  }
  std::fflush(stdout);
  return complete;
}

// Tokens, login, one token key and one software key, into the globals.
bool Setup() {
  auto fixture = SoftHsmFixture::Create();
  if (!fixture.ok()) {
    std::cerr << "softhsm fixture: " << fixture.status() << "\n";
    return false;
  }
  g_fixture = std::move(*fixture);

  auto crypto = hsm::CryptoContext::Create();
  if (!crypto.ok()) {
    std::cerr << "crypto context: " << crypto.status() << "\n";
    return false;
  }
  g_crypto = *crypto;

  const std::string label = SoftHsmFixture::kCaToken;
  auto uri = hsm::Pkcs11Uri::Parse(SoftHsmFixture::TokenUri(label));
  if (!uri.ok()) {
    std::cerr << "token URI: " << uri.status() << "\n";
    return false;
  }
  hsm::OpenOptions options;
  options.default_module = SoftHsmFixture::module_path();
  options.pin = hsm::PinSource::File(g_fixture->PinFile(label));
  auto token = hsm::OpenToken(*uri, options);
  if (!token.ok()) {
    std::cerr << "open token: " << token.status() << "\n";
    return false;
  }
  g_token = *token;

  hsm::KeySpec spec;
  spec.algorithm = hsm::KeyAlgorithm::kRsa2048;
  spec.label = "bench-rsa2048";
  auto key = hsm::GenerateKeyPair(g_token, spec);
  if (!key.ok()) {
    std::cerr << "generate key: " << key.status() << "\n";
    return false;
  }
  g_key = *key;

  auto pkey = g_crypto->Load(g_key);
  if (!pkey.ok()) {
    std::cerr << "load token key: " << pkey.status() << "\n";
    return false;
  }
  g_token_pkey = std::move(*pkey);
  if (!hsm::IsTokenKey(g_token_pkey.get())) {
    std::cerr << "load token key: the EVP_PKEY is not served by keywarden's provider\n";
    return false;
  }

  g_soft_key.reset(EVP_RSA_gen(2048));
  if (!g_soft_key) {
    std::cerr << "software key: " << OpenSslErrors() << "\n";
    return false;
  }

  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_Digest(MessageData(), kMessage.size(), digest, &digest_len, EVP_sha256(), nullptr) != 1 ||
      digest_len != 32) {
    std::cerr << "SHA-256: " << OpenSslErrors() << "\n";
    return false;
  }
  g_digest_info.assign(std::begin(kSha256DigestInfoPrefix), std::end(kSha256DigestInfoPrefix));
  g_digest_info.insert(g_digest_info.end(), digest, digest + digest_len);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  // Defaults, unless the caller sets them (the CI smoke run passes a tiny
  // min time and one repetition): five repetitions of one second each, run
  // in random interleaved order so that raw, provider and software are
  // measured side by side under the same conditions; the median counts.
  std::vector<char*> args(argv, argv + argc);
  std::vector<std::string> defaults = {"--benchmark_min_time=1", "--benchmark_repetitions=5",
                                       "--benchmark_enable_random_interleaving=true",
                                       "--benchmark_report_aggregates_only=true"};
  for (std::string& d : defaults) {
    std::string flag = d.substr(0, d.find('='));
    bool given = false;
    for (int i = 1; i < argc; ++i) given |= std::string_view(argv[i]).starts_with(flag);
    if (!given) args.insert(args.begin() + 1, d.data());
  }
  args.push_back(nullptr);
  argc = static_cast<int>(args.size()) - 1;
  argv = args.data();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  if (!Setup()) {
    ReleaseGlobals();
    return 1;
  }

  RecordingReporter reporter(isatty(STDOUT_FILENO) ? benchmark::ConsoleReporter::OO_ColorTabular
                                                   : benchmark::ConsoleReporter::OO_Tabular);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  const bool complete = PrintSummary(reporter);
  benchmark::Shutdown();

  ReleaseGlobals();
  return complete ? 0 : 1;
}
