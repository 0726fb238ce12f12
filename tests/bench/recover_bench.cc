// Key recovery throughput: N keys archived by a real keywardend, retrieved
// by the Certificate Manager over gRPC and recovered in one batch with one
// KRA card (SoftHSM2), as `keywarden getkey` then `keywarden recoverkey
// --batch` do it, with the time split per stage.
//
//   build/tests/bench/recover_bench [--keys 200] [--aes] [--legacy-pfx] [--workers N]
//                                   [--out DIR] [--threshold K/N]
//
// Setup (not timed): keywardend as a separate process (mTLS on loopback,
// SQLite, CA key on the CA token); a KRA makes its key on kra-card-1, enrols
// for a KRA certificate from the daemon and stores it on the card; the
// daemon restarts with that KRA (count = 1). N users with software RSA-2048
// keys enrol with archival in the Windows CMC format (PRIVATEKEYBLOB, 3DES),
// so every archive is made by the daemon's own archival path (`--aes`:
// the daemon's aes256-rsa-oaep scheme). Then, timed per stage:
//   retrieve   Officer/GetArchivedKey over mTLS per key, searched by serial
//              number, the recovery blob written to a file (what
//              `keywarden getkey SERIAL FILE` does); p50/p99 per call and
//              keywardend's CPU per retrieval
//   verify     read the blob file, pki::ParseRecoveryBlob (CA signature,
//              chain, certificates)
//   card       the content-encryption key decrypted on the card
//   decrypt    the archived key decrypted (software) and parsed
//   check      the key checked against the user certificate
//   pfx        PKCS#12 built and written (WriteFileAtomically)
// Every recovered key is compared with the key the user enrolled with; the
// binary exits 1 and prints no figures if one differs or any call fails.
// The same blobs are then recovered again as `recoverkey --batch` does it
// (pki/pipeline.h): this thread holds the card and runs verify, card,
// decrypt and check per blob in order while --workers threads (default:
// every core) build and write the PFX files; every PFX written is opened
// again (not timed) and must hold the enrolled key. "END TO END" is
// retrieval + that pipelined recovery.
//
// --threshold K/N (2 <= K <= N <= 5; docs/THRESHOLD.md) measures threshold
// recovery beside the single-KRA figure in the same run: N KRAs enrol on
// kra-card-1..N; the single-KRA set above is archived to kra-card-1 alone
// (count = 1), then the daemon is reconfigured with all N KRAs, count = N,
// threshold = K, and another N users (the same --keys) are archived, each
// archive a ThresholdShare EnvelopedData. After retrieval (the same RPC),
// K cards open and log in once each; per blob, timed:
//   contributions  K - 1 contributing cards each decrypt their share on the
//                  card and seal it to the coordinator (kra-card-1)
//   card           the coordinator decrypts its own share and opens the
//                  K - 1 contributions on its card, each checked against
//                  the archive digest and its commitment
//   combine        Lagrange interpolation of the K shares (GF(2^8))
//   decrypt, check, pfx  as above
// and both columns are printed side by side.
#include <openssl/bn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "pki/cmc_builder.h"
#include "pki/exchange_certificate.h"
#include "pki/files.h"
#include "pki/kra_card.h"
#include "pki/pipeline.h"
#include "pki/pkcs12.h"
#include "pki/recovery_blob.h"
#include "tests/bench/bench_util.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/kra_cards.h"
#include "tests/test_util.h"

namespace keywarden::testing {
namespace {

using Clock = std::chrono::steady_clock;
using bench::CpuSeconds;
using bench::Percentile;
using bench::X509FromDer;

constexpr char kTemplate[] = "ArchivalUser";

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "recover_bench: %s\n", what.c_str());
  return 1;
}

std::string Message(const absl::Status& st) {
  return std::string(st.message());
}

struct Options {
  size_t keys = 200;
  bool aes = false;
  bool legacy_pfx = false;
  std::string out;
  int k = 0;  // --threshold K/N; 0: single KRA only
  int n = 0;
  size_t workers = 0;  // --workers: PFX workers of the pipelined run; 0: every core
};

struct User {
  ossl::UniquePtr<EVP_PKEY> key;
  std::string serial;  // hex, of the certificate issued with archival
};

std::string SerialHex(X509* cert) {
  ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  char* hex = bn ? BN_bn2hex(bn.get()) : nullptr;
  std::string out = hex != nullptr ? hex : "";
  OPENSSL_free(hex);
  return out;
}

// What `keywarden request` does: the exchange certificate from the daemon,
// verified against the CA certificate, then one archival enrolment per user.
absl::Status EnrolUsers(DaemonHarness& daemon, std::vector<User>& users) {
  auto stub = v1::Enrollment::NewStub(daemon.Channel("enrollee"));
  v1::CertificateChain xchg, ca;
  {
    grpc::ClientContext ctx;
    grpc::Status st = stub->GetExchangeCertificate(&ctx, {}, &xchg);
    if (!st.ok()) return absl::UnavailableError("GetExchangeCertificate: " + st.error_message());
  }
  {
    grpc::ClientContext ctx;
    grpc::Status st = stub->GetCaCertificate(&ctx, {}, &ca);
    if (!st.ok()) return absl::UnavailableError("GetCaCertificate: " + st.error_message());
  }
  auto exchange = X509FromDer(xchg.certificate());
  auto ca_cert = X509FromDer(ca.certificate());
  if (!exchange || !ca_cert) return absl::DataLossError("a certificate from the daemon is bad");
  pki::ExchangeTrust trust;
  trust.ca_chain.push_back(ca_cert.get());
  if (auto st = pki::VerifyExchangeCertificate(exchange.get(), trust); !st.ok()) return st;

  pki::ArchivalRequestOptions build;
  build.template_name = kTemplate;
  for (size_t i = 0; i < users.size(); ++i) {
    auto request = pki::BuildArchivalRequest(users[i].key.get(), exchange.get(), build);
    if (!request.ok()) return request.status();
    v1::SubmitRequest in;
    in.set_request(std::string(request->begin(), request->end()));
    in.set_template_name(kTemplate);
    v1::EnrollmentResult result;
    grpc::ClientContext ctx;
    grpc::Status st = stub->Submit(&ctx, in, &result);
    if (!st.ok()) return absl::UnavailableError(StrCat("Submit: ", st.error_message()));
    auto cert = X509FromDer(result.certificate());
    if (result.disposition() != v1::DISPOSITION_ISSUED || !cert ||
        EVP_PKEY_eq(X509_get0_pubkey(cert.get()), users[i].key.get()) != 1) {
      return absl::InternalError(
          StrCat("user ", i, ": not issued for the key sent (", result.message(), ")"));
    }
    users[i].serial = SerialHex(cert.get());
  }
  return absl::OkStatus();
}

// The recovery blobs of `users`, retrieved one RPC each as `keywarden getkey
// SERIAL FILE` does, written under `dir`.
struct Retrieved {
  std::vector<std::string> files;
  std::vector<double> call_ms;
  double seconds = 0;
  double daemon_cpu_ms = 0;
};

absl::StatusOr<Retrieved> RetrieveAll(DaemonHarness& daemon, const std::vector<User>& users,
                                      const std::string& dir) {
  std::filesystem::create_directories(dir);
  auto officer = v1::Officer::NewStub(daemon.Channel("officer"));
  Retrieved out;
  const double daemon_before = CpuSeconds(daemon.pid());
  auto t = Clock::now();
  for (size_t i = 0; i < users.size(); ++i) {
    const auto call = Clock::now();
    v1::GetArchivedKeyRequest in;
    in.set_search(users[i].serial);
    in.set_blob(true);
    v1::GetArchivedKeyResponse got;
    grpc::ClientContext ctx;
    grpc::Status st = officer->GetArchivedKey(&ctx, in, &got);
    out.call_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - call).count());
    if (!st.ok()) {
      return absl::UnavailableError(
          StrCat("GetArchivedKey ", users[i].serial, ": ", st.error_message()));
    }
    if (got.candidates_size() != 1 || got.recovery_blob().empty()) {
      return absl::InternalError(StrCat("GetArchivedKey ", users[i].serial, ": ",
                                        got.candidates_size(), " candidates, blob of ",
                                        got.recovery_blob().size(), " bytes"));
    }
    out.files.push_back(StrCat(dir, "/user-", i, ".rec"));
    const std::vector<uint8_t> bytes(got.recovery_blob().begin(), got.recovery_blob().end());
    if (auto w = pki::WriteFileAtomically(out.files.back(), bytes, pki::Overwrite::kReplace);
        !w.ok()) {
      return w;
    }
  }
  out.seconds = Since(t);
  out.daemon_cpu_ms = (CpuSeconds(daemon.pid()) - daemon_before) * 1000;
  return out;
}

// N users with fresh software RSA-2048 keys (on every core).
absl::StatusOr<std::vector<User>> MakeUsers(size_t count) {
  std::vector<User> users(count);
  std::vector<std::thread> gen;
  std::atomic<size_t> next{0};
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned t = 0; t < cores; ++t) {
    gen.emplace_back([&] {
      for (size_t i = next++; i < users.size(); i = next++) {
        users[i].key.reset(EVP_RSA_gen(2048));
      }
    });
  }
  for (auto& t : gen) t.join();
  for (const User& u : users) {
    if (!u.key) return absl::InternalError("RSA key generation failed");
  }
  return users;
}

// Replaces the [kra] section UseKras appended (the last section of the
// configuration) and restarts the daemon.
absl::Status ReconfigureKras(DaemonHarness& daemon, const std::vector<std::string>& thumbprints,
                             int count, int threshold) {
  if (auto st = daemon.Stop(); !st.ok()) return st;
  std::string config;
  {
    std::ifstream in(daemon.config_path());
    config.assign(std::istreambuf_iterator<char>(in), {});
  }
  const size_t at = config.rfind("\n[kra]\n");
  if (at == std::string::npos) return absl::InternalError("no [kra] section to replace");
  config.resize(at);
  std::ofstream out(daemon.config_path(), std::ios::trunc);
  out << config << "\n[kra]\ncertificates = [\"" << StrJoin(thumbprints, "\", \"")
      << "\"]\ncount = " << count << "\nthreshold = " << threshold << "\n";
  out.close();
  if (!out) return absl::InternalError("cannot rewrite " + daemon.config_path());
  return daemon.Restart();
}

absl::StatusOr<std::unique_ptr<pki::KraCard>> OpenCard(DaemonHarness& daemon,
                                                       const std::string& label) {
  auto uri = hsm::Pkcs11Uri::Parse(SoftHsmFixture::TokenUri(label));
  if (!uri.ok()) return uri.status();
  auto card = pki::KraCard::Open(*uri, SoftHsmFixture::module_path());
  if (!card.ok()) return card.status();
  if (auto st = (*card)->Login(hsm::PinSource::File(daemon.tokens().PinFile(label))); !st.ok()) {
    return st;
  }
  return card;
}

// Seconds per stage of one recovery run over all blobs of one kind.
struct Figures {
  double open = 0;           // cards opened and logged in (once each)
  double verify = 0;         // blob read + ParseRecoveryBlob
  double contributions = 0;  // threshold: the K - 1 contributing cards
  double card = 0;           // the (coordinator's) card
  double combine = 0;        // threshold: Lagrange interpolation
  double decrypt = 0;
  double check = 0;
  double pfx = 0;
  double total = 0;  // the recovery run, end to end
};

absl::StatusOr<pki::RecoveryBlob> ReadBlob(const std::string& file,
                                           const std::vector<ossl::UniquePtr<X509>>& anchors) {
  auto bytes = pki::ReadFileBytes(file);
  if (!bytes.ok()) return bytes.status();
  auto der = pki::RecoveryBlobDer(*bytes);
  if (!der.ok()) return der.status();
  return pki::ParseRecoveryBlob(*der, anchors);
}

absl::Status WritePfx(const pki::RecoveredKey& key, const pki::RecoveryBlob& blob,
                      const pki::Pkcs12Options& options, const std::string& path) {
  static const hsm::SecretString password("bench-password");
  pki::Pkcs12Entry entry{key.key.get(), blob.user_certificate.get(), {}, ""};
  for (const auto& c : blob.user_chain) entry.chain.push_back(c.get());
  auto pfx = pki::BuildPkcs12({entry}, password, options);
  if (!pfx.ok()) return pfx.status();
  return pki::WriteFileAtomically(path, *pfx, pki::Overwrite::kReplace, 0600);
}

// Single KRA: one card, one login, every blob.
absl::StatusOr<Figures> RecoverSingle(DaemonHarness& daemon, const std::string& card_label,
                                      const Retrieved& got, const std::vector<User>& users,
                                      const std::vector<ossl::UniquePtr<X509>>& anchors,
                                      const pki::Pkcs12Options& pfx_options,
                                      const std::string& dir) {
  std::filesystem::create_directories(dir);
  Figures f;
  const auto start = Clock::now();
  auto card = OpenCard(daemon, card_label);
  if (!card.ok()) return card.status();
  f.open = Since(start);
  for (size_t i = 0; i < got.files.size(); ++i) {
    auto t = Clock::now();
    auto blob = ReadBlob(got.files[i], anchors);
    if (!blob.ok()) return blob.status();
    f.verify += Since(t);
    pki::RecoveryTiming timing;
    auto key = (*card)->Recover(*blob, &timing);
    if (!key.ok()) return key.status();
    f.card += timing.card;
    f.decrypt += timing.decrypt;
    f.check += timing.verify;
    if (EVP_PKEY_eq(key->key.get(), users[i].key.get()) != 1) {
      return absl::DataLossError(StrCat("blob ", i, ": the recovered key is not the archived one"));
    }
    t = Clock::now();
    if (auto st = WritePfx(*key, *blob, pfx_options, StrCat(dir, "/user-", i, ".pfx")); !st.ok()) {
      return st;
    }
    f.pfx += Since(t);
  }
  f.total = Since(start);
  return f;
}

// Single KRA as `keywarden recoverkey --batch` runs it (pki/pipeline.h):
// this thread holds the card (one login) and, per blob in order, reads and
// verifies it, decrypts the key on the card and checks it; `workers`
// threads build and write the PFX files meanwhile. Same checks and the
// same comparison with the enrolled keys as RecoverSingle.
struct Pipelined {
  double total = 0;       // wall clock, card open to the last PFX written
  double card_busy = 0;   // the card thread: verify + card + decrypt + check
  double pfx_summed = 0;  // PFX build + write, summed over the workers
  size_t workers = 0;
};

absl::StatusOr<Pipelined> RecoverPipelined(DaemonHarness& daemon, const std::string& card_label,
                                           const Retrieved& got, const std::vector<User>& users,
                                           const std::vector<ossl::UniquePtr<X509>>& anchors,
                                           const pki::Pkcs12Options& pfx_options,
                                           const std::string& dir, size_t workers) {
  std::filesystem::create_directories(dir);
  Pipelined p;
  p.workers = workers;
  const auto start = Clock::now();
  auto card = OpenCard(daemon, card_label);
  if (!card.ok()) return card.status();
  struct Work {
    pki::RecoveryBlob blob;
    pki::RecoveredKey key;
  };
  std::mutex mu;
  absl::Status failure;
  auto fail = [&](absl::Status st) {
    std::lock_guard<std::mutex> lock(mu);
    if (failure.ok()) failure = std::move(st);
  };
  const size_t attempted = pki::RunPipeline<Work>(
      got.files.size(), {workers, 0},
      [&](size_t i, bool* stop) -> std::optional<Work> {
        const auto t = Clock::now();
        auto blob = ReadBlob(got.files[i], anchors);
        absl::StatusOr<pki::RecoveredKey> key =
            blob.ok() ? (*card)->Recover(*blob, nullptr)
                      : absl::StatusOr<pki::RecoveredKey>(blob.status());
        if (key.ok() && EVP_PKEY_eq(key->key.get(), users[i].key.get()) != 1) {
          key = absl::DataLossError(
              StrCat("blob ", i, ": the recovered key is not the archived one"));
        }
        p.card_busy += Since(t);
        if (!key.ok()) {
          fail(key.status());
          *stop = true;
          return std::nullopt;
        }
        return Work{std::move(*blob), std::move(*key)};
      },
      [&](size_t i, Work w) {
        const auto t = Clock::now();
        absl::Status st = WritePfx(w.key, w.blob, pfx_options, StrCat(dir, "/user-", i, ".pfx"));
        const double s = Since(t);
        std::lock_guard<std::mutex> lock(mu);
        p.pfx_summed += s;
        if (!st.ok() && failure.ok()) failure = st;
      });
  p.total = Since(start);
  if (!failure.ok()) return failure;
  if (attempted != got.files.size()) return absl::InternalError("the pipeline stopped early");
  // Every PFX is there and opens to the enrolled key (not timed).
  static const hsm::SecretString password("bench-password");
  for (size_t i = 0; i < got.files.size(); ++i) {
    auto bytes = pki::ReadFileBytes(StrCat(dir, "/user-", i, ".pfx"));
    if (!bytes.ok()) return bytes.status();
    auto pfx = pki::ReadPkcs12(*bytes, password);
    if (!pfx.ok()) return pfx.status();
    if (pfx->keys.size() != 1 || EVP_PKEY_eq(pfx->keys[0].key.get(), users[i].key.get()) != 1) {
      return absl::DataLossError(StrCat("pipelined PFX ", i, " does not hold the enrolled key"));
    }
  }
  return p;
}

// K of N: kra-card-1 coordinates, kra-card-2..K contribute; every card is
// opened and logged in once for all blobs.
absl::StatusOr<Figures> RecoverThreshold(DaemonHarness& daemon, int k, X509* coordinator,
                                         const Retrieved& got, const std::vector<User>& users,
                                         const std::vector<ossl::UniquePtr<X509>>& anchors,
                                         const pki::Pkcs12Options& pfx_options,
                                         const std::string& dir) {
  std::filesystem::create_directories(dir);
  const std::vector<std::string> labels = {SoftHsmFixture::kKraCard1, SoftHsmFixture::kKraCard2,
                                           SoftHsmFixture::kKraCard3, SoftHsmFixture::kKraCard4,
                                           SoftHsmFixture::kKraCard5};
  Figures f;
  const auto start = Clock::now();
  std::vector<std::unique_ptr<pki::KraCard>> cards;
  for (int c = 0; c < k; ++c) {
    auto card = OpenCard(daemon, labels[static_cast<size_t>(c)]);
    if (!card.ok()) return card.status();
    cards.push_back(std::move(*card));
  }
  f.open = Since(start);
  std::vector<std::string> names;
  for (int c = 1; c < k; ++c) names.push_back(labels[static_cast<size_t>(c)]);
  for (size_t i = 0; i < got.files.size(); ++i) {
    auto t = Clock::now();
    auto blob = ReadBlob(got.files[i], anchors);
    if (!blob.ok()) return blob.status();
    if (!blob->threshold || blob->threshold->k != k) {
      return absl::InternalError(StrCat("blob ", i, " is not a ", k, "-of-N threshold archive"));
    }
    f.verify += Since(t);
    t = Clock::now();
    std::vector<std::vector<uint8_t>> contributions;
    for (size_t c = 1; c < cards.size(); ++c) {
      auto sealed = cards[c]->Contribute(*blob, coordinator);
      if (!sealed.ok()) return sealed.status();
      contributions.push_back(std::move(*sealed));
    }
    f.contributions += Since(t);
    pki::RecoveryTiming timing;
    auto key = cards[0]->RecoverThreshold(*blob, contributions, names, &timing);
    if (!key.ok()) return key.status();
    f.card += timing.card;
    f.combine += timing.combine;
    f.decrypt += timing.decrypt;
    f.check += timing.verify;
    if (EVP_PKEY_eq(key->key.get(), users[i].key.get()) != 1) {
      return absl::DataLossError(StrCat("blob ", i, ": the recovered key is not the archived one"));
    }
    t = Clock::now();
    if (auto st = WritePfx(*key, *blob, pfx_options, StrCat(dir, "/user-", i, ".pfx")); !st.ok()) {
      return st;
    }
    f.pfx += Since(t);
  }
  f.total = Since(start);
  return f;
}

int Run(const Options& o) {
  const bool threshold = o.k > 0;
  DaemonHarness::Options options;
  options.extra_toml = kKraTemplateToml;
  if (o.aes) options.extra_flags = "archival_scheme = \"aes256-rsa-oaep\"";
  if (o.n > 3) options.tokens = SoftHsmFixture::FiveKraCards();
  auto started = DaemonHarness::Start(options);
  if (!started.ok()) return Fail(Message(started.status()));
  std::unique_ptr<DaemonHarness> daemon = std::move(*started);
  const std::vector<std::string> labels = {SoftHsmFixture::kKraCard1, SoftHsmFixture::kKraCard2,
                                           SoftHsmFixture::kKraCard3, SoftHsmFixture::kKraCard4,
                                           SoftHsmFixture::kKraCard5};
  std::vector<ossl::UniquePtr<X509>> kras;
  std::vector<std::string> thumbprints;
  for (int c = 0; c < (threshold ? o.n : 1); ++c) {
    auto kra = EnrollKraCard(*daemon, labels[static_cast<size_t>(c)]);
    if (!kra.ok()) return Fail(Message(kra.status()));
    thumbprints.push_back(pki::Sha1Thumbprint(kra->get()));
    kras.push_back(std::move(*kra));
  }
  if (auto st = UseKras(*daemon, {thumbprints[0]}, 1); !st.ok()) return Fail(Message(st));

  TempDir tmp;
  const std::string dir = o.out.empty() ? tmp.path() : o.out;

  // Setup: the users' keys, then their archival enrolments (single KRA).
  auto setup = Clock::now();
  auto users = MakeUsers(o.keys);
  if (!users.ok()) return Fail(Message(users.status()));
  if (auto st = EnrolUsers(*daemon, *users); !st.ok()) return Fail(Message(st));
  double setup_s = Since(setup);

  auto single = RetrieveAll(*daemon, *users, dir + "/blobs");
  if (!single.ok()) return Fail(Message(single.status()));

  // Threshold: the same number of users archived K of N.
  std::vector<User> tusers;
  Retrieved tgot;
  if (threshold) {
    if (auto st = ReconfigureKras(*daemon, thumbprints, o.n, o.k); !st.ok()) {
      return Fail(Message(st));
    }
    setup = Clock::now();
    auto more = MakeUsers(o.keys);
    if (!more.ok()) return Fail(Message(more.status()));
    tusers = std::move(*more);
    if (auto st = EnrolUsers(*daemon, tusers); !st.ok()) return Fail(Message(st));
    setup_s += Since(setup);
    auto got = RetrieveAll(*daemon, tusers, dir + "/threshold-blobs");
    if (!got.ok()) return Fail(Message(got.status()));
    tgot = std::move(*got);
  }
  auto anchors = pki::ReadPemCertificates(daemon->ca_cert_path());
  if (!anchors.ok()) return Fail(Message(anchors.status()));
  // Recovery is offline: the daemon is gone before a card is opened.
  if (auto st = daemon->Stop(); !st.ok()) return Fail(Message(st));

  const pki::Pkcs12Options pfx_options{
      o.legacy_pfx ? pki::Pkcs12Protection::kLegacy3Des : pki::Pkcs12Protection::kAes256Pbkdf2, 0};
  auto f = RecoverSingle(*daemon, labels[0], *single, *users, *anchors, pfx_options, dir + "/pfx");
  if (!f.ok()) return Fail(Message(f.status()));
  const size_t workers =
      o.workers > 0 ? o.workers : std::max<size_t>(1, std::thread::hardware_concurrency());
  auto piped = RecoverPipelined(*daemon, labels[0], *single, *users, *anchors, pfx_options,
                                dir + "/pfx-pipelined", workers);
  if (!piped.ok()) return Fail(Message(piped.status()));
  Figures tf;
  if (threshold) {
    auto r = RecoverThreshold(*daemon, o.k, kras[0].get(), tgot, tusers, *anchors, pfx_options,
                              dir + "/threshold-pfx");
    if (!r.ok()) return Fail(Message(r.status()));
    tf = *r;
  }
  const double n = static_cast<double>(o.keys);
  const char* scheme = o.aes ? "AES-256-CBC + RSA-OAEP" : "DES-EDE3-CBC + RSA PKCS#1 v1.5";
  const char* pfx_kind =
      o.legacy_pfx ? "3DES/SHA-1 (legacy)" : "AES-256-CBC/PBKDF2-SHA256, 10000 iterations";

  if (!threshold) {
    const double all_s = f->total + single->seconds;
    std::printf(
        "recover_bench: %zu RSA-2048 keys archived by keywardend (%s), retrieved with "
        "Officer/GetArchivedKey over mTLS, recovered with one KRA card (SoftHSM2), one login, "
        "PFX %s\n",
        o.keys, scheme, pfx_kind);
    std::printf("  setup (not timed): user keys + %zu archival enrolments %.2f s\n", o.keys,
                setup_s);
    std::printf("  %-58s %9s %9s %7s\n", "stage", "total s", "ms/key", "share");
    auto row = [&](const char* name, double s) {
      std::printf("  %-58s %9.3f %9.3f %6.1f%%\n", name, s, s / n * 1000, s / all_s * 100);
    };
    row("daemon retrieval (GetArchivedKey RPC + blob file)", single->seconds);
    row("card open + login (once)", f->open);
    row("blob read + verify (ParseRecoveryBlob)", f->verify);
    row("card decrypt (content key on the card)", f->card);
    row("key decrypt + parse + consistency check", f->decrypt);
    row("key vs user certificate (encrypt/decrypt probe)", f->check);
    row("PFX build + write", f->pfx);
    std::printf(
        "  retrieval: p50 %.2f ms, p99 %.2f ms per call; keywardend CPU %.2f ms per retrieval\n",
        Percentile(single->call_ms, 0.50), Percentile(single->call_ms, 0.99),
        single->daemon_cpu_ms / n);
    std::printf(
        "  sequential (the stages above, one thread): %zu keys in %.3f s: %.1f keys/s end to end "
        "(retrieval %.3f s + recovery %.3f s, recovery alone %.1f keys/s)\n",
        o.keys, all_s, n / all_s, single->seconds, f->total, n / f->total);
    const double piped_all = piped->total + single->seconds;
    std::printf(
        "  pipelined (recoverkey --batch: card thread + %zu PFX workers): recovery %.3f s, %.1f "
        "keys/s; card thread busy %.3f s (%.1f%%), PFX %.3f ms/key summed over the workers\n",
        piped->workers, piped->total, n / piped->total, piped->card_busy,
        piped->card_busy / piped->total * 100, piped->pfx_summed / n * 1000);
    std::printf(
        "  END TO END (retrieval + pipelined recovery): %zu keys in %.3f s: %.1f keys/s "
        "(target >= 100)\n",
        o.keys, piped_all, n / piped_all);
    return 0;
  }

  std::printf(
      "recover_bench: %zu RSA-2048 keys per column archived by keywardend (%s), retrieved with "
      "Officer/GetArchivedKey over mTLS, recovered offline on SoftHSM2 cards (one login per "
      "card), PFX %s; single KRA (1 card) beside threshold %d of %d (%d cards: kra-card-1 "
      "coordinates, %d contribute), measured in the same run\n",
      o.keys, scheme, pfx_kind, o.k, o.n, o.k, o.k - 1);
  std::printf("  setup (not timed): user keys + %zu archival enrolments %.2f s\n", 2 * o.keys,
              setup_s);
  char threshold_head[32];
  std::snprintf(threshold_head, sizeof threshold_head, "%d/%d ms/key", o.k, o.n);
  std::printf("  %-62s %14s %14s\n", "stage", "single ms/key", threshold_head);
  auto row = [&](const char* name, double single_s, double threshold_s, bool single_applies) {
    if (single_applies) {
      std::printf("  %-62s %14.3f %14.3f\n", name, single_s / n * 1000, threshold_s / n * 1000);
    } else {
      std::printf("  %-62s %14s %14.3f\n", name, "-", threshold_s / n * 1000);
    }
  };
  row("daemon retrieval (GetArchivedKey RPC + blob file)", single->seconds, tgot.seconds, true);
  row("card(s) open + login (once each)", f->open, tf.open, true);
  row("blob read + verify (ParseRecoveryBlob)", f->verify, tf.verify, true);
  row("contributions (K-1 cards: own share decrypted, sealed)", 0, tf.contributions, false);
  row("card: content key | own share + contributions opened", f->card, tf.card, true);
  row("combine (Lagrange interpolation of K shares)", 0, tf.combine, false);
  row("key decrypt + parse + consistency check", f->decrypt, tf.decrypt, true);
  row("key vs user certificate (encrypt/decrypt probe)", f->check, tf.check, true);
  row("PFX build + write", f->pfx, tf.pfx, true);
  const double single_all = f->total + single->seconds;
  const double threshold_all = tf.total + tgot.seconds;
  std::printf("  %-62s %14.1f %14.1f\n", "recovery alone, keys/s", n / f->total, n / tf.total);
  std::printf("  %-62s %14.1f %14.1f\n", "end to end (retrieval + recovery), keys/s",
              n / single_all, n / threshold_all);
  std::printf(
      "  retrieval p50: single %.2f ms, threshold %.2f ms per call; keywardend CPU %.2f / %.2f ms "
      "per retrieval\n",
      Percentile(single->call_ms, 0.50), Percentile(tgot.call_ms, 0.50), single->daemon_cpu_ms / n,
      tgot.daemon_cpu_ms / n);
  return 0;
}

}  // namespace
}  // namespace keywarden::testing

int main(int argc, char** argv) {
  keywarden::testing::Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--keys" && i + 1 < argc) {
      o.keys = static_cast<size_t>(std::strtoul(argv[++i], nullptr, 10));
    } else if (a == "--aes") {
      o.aes = true;
    } else if (a == "--legacy-pfx") {
      o.legacy_pfx = true;
    } else if (a == "--workers" && i + 1 < argc) {
      o.workers = static_cast<size_t>(std::strtoul(argv[++i], nullptr, 10));
    } else if (a == "--out" && i + 1 < argc) {
      o.out = argv[++i];
    } else if (a == "--threshold" && i + 1 < argc) {
      const std::string kn = argv[++i];
      int consumed = 0;
      if (std::sscanf(kn.c_str(), "%d/%d%n", &o.k, &o.n, &consumed) != 2 ||
          static_cast<size_t>(consumed) != kn.size() || o.k < 2 || o.k > o.n || o.n > 5) {
        std::fprintf(stderr,
                     "recover_bench: --threshold %s: give K/N with 2 <= K <= N <= 5 (the "
                     "fixture has five KRA cards)\n",
                     kn.c_str());
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--keys N] [--aes] [--legacy-pfx] [--workers N] [--out DIR] "
                   "[--threshold K/N]\n",
                   argv[0]);
      return 2;
    }
  }
  if (o.keys == 0) {
    std::fprintf(stderr, "recover_bench: --keys must be at least 1\n");
    return 2;
  }
  return keywarden::testing::Run(o);
}
