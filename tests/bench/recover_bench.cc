// Key recovery throughput: N archived keys recovered in one batch with one
// KRA card (SoftHSM2), as `keywarden recoverkey --batch` does it, with the
// time split per stage.
//
//   build/tests/bench/recover_bench [--keys 200] [--aes] [--legacy-pfx] [--out DIR]
//
// Setup (not timed): a CA key on the CA token, one KRA key on kra-card-1,
// N users with software RSA-2048 keys, each key archived the daemon's way
// (3DES or AES key generated on the CA token, PKCS#8 encrypted and the key
// wrapped there). Then, timed per stage:
//   retrieve   one recovery blob per key. Until the daemon's getkey RPC
//              exists this is a local stand-in: pki::BuildRecoveryBlob with
//              the CA key on the token (the signing getkey will do). The
//              lead replaces RetrieveBlob() with the RPC; the column stays.
//   verify     read the blob file, pki::ParseRecoveryBlob (signature, chain,
//              certificates)
//   card       the content-encryption key decrypted on the card
//   decrypt    the archived key decrypted (software) and parsed
//   check      the key checked against the user certificate
//   pfx        PKCS#12 built and written (WriteFileAtomically)
// Every recovered key is compared with the original; the binary exits 1
// and prints no figures if one differs.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/files.h"
#include "pki/kra_card.h"
#include "pki/pkcs12.h"
#include "pki/recovery_blob.h"
#include "tests/recovery_fixture.h"
#include "tests/test_util.h"

namespace keywarden::testing {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "recover_bench: %s\n", what.c_str());
  return 1;
}

struct Options {
  size_t keys = 200;
  bool aes = false;
  bool legacy_pfx = false;
  std::string out;
};

// The retrieval hook: the recovery blob for archived key `i`. Today a local
// BuildRecoveryBlob with the CA key on the token; with the daemon's getkey
// this becomes the RPC (same inputs: the stored envelope and the KRA
// certificates it names).
absl::StatusOr<std::vector<uint8_t>> RetrieveBlob(RecoveryPki& pki, const RecoveryUser& user,
                                                  const std::vector<uint8_t>& envelope) {
  return pki.Blob(user, envelope, {0});
}

int Run(const Options& o) {
  auto fixture = SoftHsmFixture::Create();
  if (!fixture.ok()) return Fail(std::string(fixture.status().message()));
  RecoveryPki::Options po;
  po.kra_cards = {SoftHsmFixture::kKraCard1};
  auto ca_side = RecoveryPki::Create(**fixture, po);
  if (!ca_side.ok()) return Fail(std::string(ca_side.status().message()));
  TempDir tmp;
  const std::string dir = o.out.empty() ? tmp.path() : o.out;
  std::filesystem::create_directories(dir + "/blobs");
  std::filesystem::create_directories(dir + "/pfx");

  // Setup: users and archives.
  auto setup = Clock::now();
  std::vector<RecoveryUser> users;
  std::vector<std::vector<uint8_t>> envelopes;
  for (size_t i = 0; i < o.keys; ++i) {
    auto user = (*ca_side)->MakeUser(StrCat("Bench User ", i));
    if (!user.ok()) return Fail(std::string(user.status().message()));
    auto env = (*ca_side)->Archive(
        *user, {0}, o.aes ? hsm::SymmetricAlgorithm::kAes256 : hsm::SymmetricAlgorithm::kDes3);
    if (!env.ok()) return Fail(std::string(env.status().message()));
    users.push_back(std::move(*user));
    envelopes.push_back(std::move(*env));
  }
  const double setup_s = Since(setup);

  // Retrieve (stand-in), one file per blob.
  auto t = Clock::now();
  std::vector<std::string> files;
  for (size_t i = 0; i < o.keys; ++i) {
    auto blob = RetrieveBlob(**ca_side, users[i], envelopes[i]);
    if (!blob.ok()) return Fail(std::string(blob.status().message()));
    files.push_back(StrCat(dir, "/blobs/user-", i, ".rec"));
    if (auto st = pki::WriteFileAtomically(files.back(), *blob, pki::Overwrite::kReplace);
        !st.ok()) {
      return Fail(std::string(st.message()));
    }
  }
  const double retrieve_s = Since(t);
  std::vector<ossl::UniquePtr<X509>> anchors;
  anchors.push_back(pki::SoftwareCopy((*ca_side)->ca_cert()));
  (*ca_side).reset();  // the CA side is done: recovery is offline

  // Recovery: one card, one login, every blob.
  const auto start = Clock::now();
  auto uri = hsm::Pkcs11Uri::Parse(SoftHsmFixture::TokenUri(SoftHsmFixture::kKraCard1));
  if (!uri.ok()) return Fail("uri");
  auto card = pki::KraCard::Open(*uri, SoftHsmFixture::module_path());
  if (!card.ok()) return Fail(std::string(card.status().message()));
  if (auto st =
          (*card)->Login(hsm::PinSource::File((*fixture)->PinFile(SoftHsmFixture::kKraCard1)));
      !st.ok()) {
    return Fail(std::string(st.message()));
  }
  const double open_s = Since(start);
  const hsm::SecretString password("bench-password");
  const pki::Pkcs12Options pfx_options{
      o.legacy_pfx ? pki::Pkcs12Protection::kLegacy3Des : pki::Pkcs12Protection::kAes256Pbkdf2, 0};
  double verify_s = 0, card_s = 0, decrypt_s = 0, check_s = 0, pfx_s = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    t = Clock::now();
    auto bytes = pki::ReadFileBytes(files[i]);
    if (!bytes.ok()) return Fail(std::string(bytes.status().message()));
    auto der = pki::RecoveryBlobDer(*bytes);
    if (!der.ok()) return Fail(std::string(der.status().message()));
    auto blob = pki::ParseRecoveryBlob(*der, anchors);
    if (!blob.ok()) return Fail(std::string(blob.status().message()));
    verify_s += Since(t);
    pki::RecoveryTiming timing;
    auto key = (*card)->Recover(*blob, &timing);
    if (!key.ok()) return Fail(std::string(key.status().message()));
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
    if (!pfx.ok()) return Fail(std::string(pfx.status().message()));
    if (auto st = pki::WriteFileAtomically(StrCat(dir, "/pfx/user-", i, ".pfx"), *pfx,
                                           pki::Overwrite::kReplace, 0600);
        !st.ok()) {
      return Fail(std::string(st.message()));
    }
    pfx_s += Since(t);
  }
  const double total_s = Since(start);
  const double n = static_cast<double>(o.keys);

  std::printf(
      "recover_bench: %zu archived RSA-2048 keys (%s content, RSA PKCS#1 v1.5 key transport) "
      "recovered with one KRA card (SoftHSM2), one login, PFX %s\n",
      o.keys, o.aes ? "AES-256-CBC" : "DES-EDE3-CBC",
      o.legacy_pfx ? "3DES/SHA-1 (legacy)" : "AES-256-CBC/PBKDF2-SHA256, 10000 iterations");
  std::printf("  setup (not timed): users + archival on the CA token %.2f s\n", setup_s);
  std::printf("  %-58s %9s %9s %7s\n", "stage", "total s", "ms/key", "share");
  auto row = [&](const char* name, double s, double of) {
    std::printf("  %-58s %9.3f %9.3f %6.1f%%\n", name, s, s / n * 1000, of > 0 ? s / of * 100 : 0);
  };
  row("retrieve (stand-in: local BuildRecoveryBlob; getkey RPC)", retrieve_s, 0);
  row("card open + login (once)", open_s, total_s);
  row("blob read + verify (ParseRecoveryBlob)", verify_s, total_s);
  row("card decrypt (content key on the card)", card_s, total_s);
  row("key decrypt + parse (incl. OpenSSL RSA key check)", decrypt_s, total_s);
  row("key vs user certificate (encrypt/decrypt probe)", check_s, total_s);
  row("PFX build + write", pfx_s, total_s);
  std::printf(
      "  recovery total %.3f s for %zu keys: %.1f keys/s (retrieve excluded; with it "
      "%.1f keys/s)\n",
      total_s, o.keys, n / total_s, n / (total_s + retrieve_s));
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
