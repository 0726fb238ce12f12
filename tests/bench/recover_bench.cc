// Key recovery throughput: N keys archived by a real keywardend, retrieved
// by the Certificate Manager over gRPC and recovered in one batch with one
// KRA card (SoftHSM2), as `keywarden getkey` then `keywarden recoverkey
// --batch` do it, with the time split per stage.
//
//   build/tests/bench/recover_bench [--keys 200] [--aes] [--legacy-pfx] [--out DIR]
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
#include <openssl/bn.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
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

int Run(const Options& o) {
  DaemonHarness::Options options;
  options.extra_toml = kKraTemplateToml;
  if (o.aes) options.extra_flags = "archival_scheme = \"aes256-rsa-oaep\"";
  auto started = DaemonHarness::Start(options);
  if (!started.ok()) return Fail(Message(started.status()));
  std::unique_ptr<DaemonHarness> daemon = std::move(*started);
  const std::string card_label = SoftHsmFixture::kKraCard1;
  auto kra = EnrollKraCard(*daemon, card_label);
  if (!kra.ok()) return Fail(Message(kra.status()));
  if (auto st = UseKras(*daemon, {pki::Sha1Thumbprint(kra->get())}, 1); !st.ok()) {
    return Fail(Message(st));
  }

  TempDir tmp;
  const std::string dir = o.out.empty() ? tmp.path() : o.out;
  std::filesystem::create_directories(dir + "/blobs");
  std::filesystem::create_directories(dir + "/pfx");

  // Setup: the users' keys (on every core), then their archival enrolments.
  auto setup = Clock::now();
  std::vector<User> users(o.keys);
  {
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
      if (!u.key) return Fail("RSA key generation failed");
    }
  }
  if (auto st = EnrolUsers(*daemon, users); !st.ok()) return Fail(Message(st));
  const double setup_s = Since(setup);

  // Retrieve: the Certificate Manager's getkey, one call and one file per key.
  auto officer = v1::Officer::NewStub(daemon->Channel("officer"));
  std::vector<std::string> files;
  std::vector<double> call_ms;
  const double daemon_before = CpuSeconds(daemon->pid());
  auto t = Clock::now();
  for (size_t i = 0; i < users.size(); ++i) {
    const auto call = Clock::now();
    v1::GetArchivedKeyRequest in;
    in.set_search(users[i].serial);
    in.set_blob(true);
    v1::GetArchivedKeyResponse got;
    grpc::ClientContext ctx;
    grpc::Status st = officer->GetArchivedKey(&ctx, in, &got);
    call_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - call).count());
    if (!st.ok()) return Fail(StrCat("GetArchivedKey ", users[i].serial, ": ", st.error_message()));
    if (got.candidates_size() != 1 || got.recovery_blob().empty()) {
      return Fail(StrCat("GetArchivedKey ", users[i].serial, ": ", got.candidates_size(),
                         " candidates, blob of ", got.recovery_blob().size(), " bytes"));
    }
    files.push_back(StrCat(dir, "/blobs/user-", i, ".rec"));
    const std::vector<uint8_t> bytes(got.recovery_blob().begin(), got.recovery_blob().end());
    if (auto w = pki::WriteFileAtomically(files.back(), bytes, pki::Overwrite::kReplace); !w.ok()) {
      return Fail(Message(w));
    }
  }
  const double retrieve_s = Since(t);
  const double daemon_cpu_ms = (CpuSeconds(daemon->pid()) - daemon_before) * 1000;
  auto anchors = pki::ReadPemCertificates(daemon->ca_cert_path());
  if (!anchors.ok()) return Fail(Message(anchors.status()));
  // Recovery is offline: the daemon is gone before the card is opened.
  if (auto st = daemon->Stop(); !st.ok()) return Fail(Message(st));

  // Recovery: one card, one login, every blob.
  const auto start = Clock::now();
  auto uri = hsm::Pkcs11Uri::Parse(SoftHsmFixture::TokenUri(card_label));
  if (!uri.ok()) return Fail(Message(uri.status()));
  auto card = pki::KraCard::Open(*uri, SoftHsmFixture::module_path());
  if (!card.ok()) return Fail(Message(card.status()));
  if (auto st = (*card)->Login(hsm::PinSource::File(daemon->tokens().PinFile(card_label)));
      !st.ok()) {
    return Fail(Message(st));
  }
  const double open_s = Since(start);
  const hsm::SecretString password("bench-password");
  const pki::Pkcs12Options pfx_options{
      o.legacy_pfx ? pki::Pkcs12Protection::kLegacy3Des : pki::Pkcs12Protection::kAes256Pbkdf2, 0};
  double verify_s = 0, card_s = 0, decrypt_s = 0, check_s = 0, pfx_s = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    t = Clock::now();
    auto bytes = pki::ReadFileBytes(files[i]);
    if (!bytes.ok()) return Fail(Message(bytes.status()));
    auto der = pki::RecoveryBlobDer(*bytes);
    if (!der.ok()) return Fail(Message(der.status()));
    auto blob = pki::ParseRecoveryBlob(*der, *anchors);
    if (!blob.ok()) return Fail(Message(blob.status()));
    verify_s += Since(t);
    pki::RecoveryTiming timing;
    auto key = (*card)->Recover(*blob, &timing);
    if (!key.ok()) return Fail(Message(key.status()));
    card_s += timing.card;
    decrypt_s += timing.decrypt;
    check_s += timing.verify;
    if (EVP_PKEY_eq(key->key.get(), users[i].key.get()) != 1) {
      return Fail(StrCat("blob ", i, ": the recovered key is not the archived one"));
    }
    t = Clock::now();
    pki::Pkcs12Entry entry{key->key.get(), blob->user_certificate.get(), {}, ""};
    for (const auto& c : blob->user_chain) entry.chain.push_back(c.get());
    auto pfx = pki::BuildPkcs12({entry}, password, pfx_options);
    if (!pfx.ok()) return Fail(Message(pfx.status()));
    if (auto st = pki::WriteFileAtomically(StrCat(dir, "/pfx/user-", i, ".pfx"), *pfx,
                                           pki::Overwrite::kReplace, 0600);
        !st.ok()) {
      return Fail(Message(st));
    }
    pfx_s += Since(t);
  }
  const double total_s = Since(start);
  const double n = static_cast<double>(o.keys);

  std::printf(
      "recover_bench: %zu RSA-2048 keys archived by keywardend (%s), retrieved with "
      "Officer/GetArchivedKey over mTLS, recovered with one KRA card (SoftHSM2), one login, "
      "PFX %s\n",
      o.keys, o.aes ? "AES-256-CBC + RSA-OAEP" : "DES-EDE3-CBC + RSA PKCS#1 v1.5",
      o.legacy_pfx ? "3DES/SHA-1 (legacy)" : "AES-256-CBC/PBKDF2-SHA256, 10000 iterations");
  std::printf("  setup (not timed): user keys + %zu archival enrolments %.2f s\n", o.keys, setup_s);
  std::printf("  %-58s %9s %9s %7s\n", "stage", "total s", "ms/key", "share");
  const double all_s = total_s + retrieve_s;
  auto row = [&](const char* name, double s) {
    std::printf("  %-58s %9.3f %9.3f %6.1f%%\n", name, s, s / n * 1000, s / all_s * 100);
  };
  row("daemon retrieval (GetArchivedKey RPC + blob file)", retrieve_s);
  row("card open + login (once)", open_s);
  row("blob read + verify (ParseRecoveryBlob)", verify_s);
  row("card decrypt (content key on the card)", card_s);
  row("key decrypt + parse + consistency check", decrypt_s);
  row("key vs user certificate (encrypt/decrypt probe)", check_s);
  row("PFX build + write", pfx_s);
  std::printf(
      "  retrieval: p50 %.2f ms, p99 %.2f ms per call; keywardend CPU %.2f ms per retrieval\n",
      Percentile(call_ms, 0.50), Percentile(call_ms, 0.99), daemon_cpu_ms / n);
  std::printf(
      "  %zu keys in %.3f s: %.1f keys/s end to end (retrieval %.3f s + recovery %.3f s, "
      "recovery alone %.1f keys/s)\n",
      o.keys, all_s, n / all_s, retrieve_s, total_s, n / total_s);
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
    } else if (a == "--out" && i + 1 < argc) {
      o.out = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--keys N] [--aes] [--legacy-pfx] [--out DIR]\n", argv[0]);
      return 2;
    }
  }
  if (o.keys == 0) {
    std::fprintf(stderr, "recover_bench: --keys must be at least 1\n");
    return 2;
  }
  return keywarden::testing::Run(o);
}
