// keywarden recoverkey / mergepfx / verifykeys: the Key Recovery Agent's
// offline verbs (seed: "Command-Line Key Recovery", "Recovery Batch File";
// certutil -recoverkey, -MergePFX, -verifykeys). None of them talks to
// keywardend: the KRA needs the blob, the CA certificate to trust, and the
// KRA smart card.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <optional>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/rand.h>

#include "absl/strings/match.h"
#include "cli/commands.h"
#include "cli/share_files.h"
#include "hsm/pin.h"
#include "hsm/status.h"
#include "hsm/strings.h"
#include "hsm/uri.h"
#include "pki/certificate.h"
#include "pki/cores.h"
#include "pki/files.h"
#include "pki/key_file.h"
#include "pki/kra_card.h"
#include "pki/pipeline.h"
#include "pki/pkcs12.h"
#include "pki/private_key_blob.h"
#include "pki/recovery_blob.h"

namespace keywarden::cli {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string Subject(X509* cert) {
  return pki::FormatName(X509_get_subject_name(cert));
}

std::string SerialHex(X509* cert) {
  const ASN1_INTEGER* s = X509_get0_serialNumber(cert);
  return HexString({s->data, static_cast<size_t>(s->length)});
}

std::string TimeText(time_t t) {
  char buf[32];
  struct tm tm {};
  gmtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

bool Expired(X509* cert) {
  return X509_cmp_current_time(X509_get0_notAfter(cert)) < 0;
}

std::string NotAfter(X509* cert) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) != 1) return "?";
  return TimeText(timegm(&tm));
}

absl::Status WithFile(const std::string& path, const absl::Status& st) {
  return absl::Status(st.code(), StrCat(path, ": ", st.message()));
}

// ---- passwords ------------------------------------------------------------

// A password nobody has to type twice: 20 characters from an alphabet
// without look-alikes (no 0/O, 1/l/I), about 115 bits.
absl::StatusOr<hsm::SecretString> GeneratePassword() {
  static constexpr char kAlphabet[] =
      "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789-+=_#%";
  constexpr size_t kSize = sizeof kAlphabet - 1;
  std::string pw;
  while (pw.size() < 20) {
    unsigned char b;
    if (RAND_bytes(&b, 1) != 1) return absl::InternalError("password: no random bytes");
    if (b >= 256 - 256 % kSize) continue;  // no modulo bias
    pw.push_back(kAlphabet[b % kSize]);
  }
  hsm::SecretString out(pw);
  OPENSSL_cleanse(pw.data(), pw.size());
  return out;
}

// Reads a password from a source (file:, env:, prompt). `confirm` asks twice
// on a prompt.
absl::StatusOr<hsm::SecretString> ReadPassword(const std::string& spec, const std::string& what,
                                               bool confirm) {
  auto source = hsm::PinSource::Parse(spec == "prompt" ? StrCat("prompt:", what, ": ") : spec);
  if (!source.ok()) {
    return absl::InvalidArgumentError(
        StrCat(what, " source \"", spec, "\": expected file:PATH, env:NAME or prompt"));
  }
  auto pw = source->Read();
  if (!pw.ok()) return absl::Status(pw.status().code(), StrCat(what, ": ", pw.status().message()));
  // PKCS#12 passwords are C strings to OpenSSL: one with a NUL would be cut there.
  if (pw->view().find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        StrCat(what, " holds a NUL byte; a password is taken whole, never cut at a NUL"));
  }
  if (confirm && spec.starts_with("prompt")) {
    auto again = hsm::PinSource::Prompt(StrCat("Confirm ", what, ": ")).Read();
    if (!again.ok()) return again.status();
    if (again->view() != pw->view()) {
      return absl::InvalidArgumentError(StrCat(what, ": the two entries differ"));
    }
  }
  return pw;
}

struct OutputPassword {
  std::string value;   // -p
  std::string source;  // --password-source
  bool generate = false;
};

// The password protecting new PFX files: -p, a source, generated, or (on a
// terminal) prompted twice.
absl::StatusOr<hsm::SecretString> PfxPassword(const OutputPassword& o, bool* generated) {
  *generated = false;
  const int given = (!o.value.empty()) + (!o.source.empty()) + (o.generate ? 1 : 0);
  if (given > 1) {
    return absl::InvalidArgumentError("give one of -p, --password-source and --generate-password");
  }
  if (!o.value.empty()) return hsm::SecretString(o.value);
  if (o.generate) {
    *generated = true;
    return GeneratePassword();
  }
  if (!o.source.empty()) return ReadPassword(o.source, "PFX password", true);
  if (!isatty(STDIN_FILENO)) {
    return absl::InvalidArgumentError(
        "no PFX password: give -p, --password-source file:PATH|env:NAME, or --generate-password "
        "(no terminal to prompt on)");
  }
  return ReadPassword("prompt", "PFX password", true);
}

std::string ProtectionName(pki::Pkcs12Protection p) {
  return p == pki::Pkcs12Protection::kLegacy3Des ? "3DES/SHA-1 (legacy)"
                                                 : "AES-256-CBC/PBKDF2-SHA256";
}

// ---- recoverkey -------------------------------------------------------------

struct RecoverOptions {
  std::vector<std::string> args;  // BLOB [OUT.pfx], or with --batch: blob files / directories
  bool batch = false;
  std::string out_dir;
  std::string card;
  std::string module;
  std::string pin_source;
  std::vector<std::string> trust;
  OutputPassword password;
  bool legacy = false;
  // Threshold archives (docs/THRESHOLD.md).
  std::string contribute_to;             // KRA (SHA-1 or subject) to seal this card's share to
  std::string share_out;                 // --out: the sealed share
  std::vector<std::string> shares;       // contributions sealed to this card
  std::vector<std::string> shares_dirs;  // --batch: directories of NAME.DIGEST.kwshare
};

absl::StatusOr<std::vector<ossl::UniquePtr<X509>>> ReadAnchors(
    const std::vector<std::string>& files) {
  if (files.empty()) {
    return absl::InvalidArgumentError(
        "give the CA certificate(s) to trust with --ca-cert (or --trust): a recovery blob is only "
        "used when its signature chains to one");
  }
  std::vector<ossl::UniquePtr<X509>> anchors;
  for (const std::string& f : files) {
    auto certs = pki::ReadPemCertificates(f);
    if (!certs.ok()) return certs.status();
    for (auto& c : *certs) anchors.push_back(std::move(c));
  }
  return anchors;
}

absl::StatusOr<pki::RecoveryBlob> OpenBlob(const std::string& path,
                                           const std::vector<ossl::UniquePtr<X509>>& anchors) {
  auto bytes = pki::ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  auto der = pki::RecoveryBlobDer(*bytes);
  if (!der.ok()) return WithFile(path, der.status());
  auto blob = pki::ParseRecoveryBlob(*der, anchors);
  if (!blob.ok()) return WithFile(path, blob.status());
  return blob;
}

nlohmann::json BlobJson(const pki::RecoveryBlob& b) {
  nlohmann::json kras = nlohmann::json::array();
  for (const auto& r : b.recipients) {
    nlohmann::json k = {{"description", r.Describe()}, {"key_transport", r.key_transport}};
    if (r.certificate != nullptr) {
      k["subject"] = Subject(r.certificate);
      k["sha1"] = pki::Sha1Thumbprint(r.certificate);
      k["expired"] = Expired(r.certificate);
    }
    kras.push_back(k);
  }
  X509* u = b.user_certificate.get();
  nlohmann::json j = {{"user",
                       {{"subject", Subject(u)},
                        {"serial", SerialHex(u)},
                        {"sha1", pki::Sha1Thumbprint(u)},
                        {"not_after", NotAfter(u)}}},
                      {"signer", Subject(b.signer.get())},
                      {"signing_time", b.signing_time ? TimeText(*b.signing_time) : ""},
                      {"content_cipher", b.content_cipher},
                      {"kras", kras}};
  if (b.threshold) j["threshold"] = {{"k", b.threshold->k}, {"n", b.threshold->n}};
  return j;
}

std::string BlobText(const std::string& path, const pki::RecoveryBlob& b) {
  X509* u = b.user_certificate.get();
  std::string anchor =
      b.signer_chain.empty() ? Subject(b.signer.get()) : Subject(b.signer_chain.back().get());
  std::string text = StrCat(
      "Recovery blob ", path, "\n", "  signed by:    \"", Subject(b.signer.get()),
      "\" (signature verified, chains to trusted \"", anchor, "\")",
      b.signing_time ? StrCat(" on ", TimeText(*b.signing_time)) : "", "\n", "  user:         \"",
      Subject(u), "\"\n", "                serial ", SerialHex(u), ", SHA-1 ",
      pki::Sha1Thumbprint(u), ", valid until ", NotAfter(u), "\n",
      "  archived key: ", b.content_cipher.empty() ? "?" : b.content_cipher, ", encrypted to ",
      b.recipients.size(), " KRA(s)",
      b.threshold ? StrCat(", a threshold archive: ", b.threshold->k, " of these ", b.threshold->n,
                           " KRAs' cards are needed (one coordinates with --shares, ",
                           b.threshold->k - 1, " seal their shares to it with --contribute-to)")
                  : std::string(),
      ":\n");
  for (const auto& r : b.recipients) {
    text += StrCat("    ", b.threshold ? StrCat("share ", r.share_index, ": ") : std::string(),
                   r.Describe(),
                   r.certificate != nullptr && Expired(r.certificate)
                       ? StrCat(" [certificate expired ", NotAfter(r.certificate), "]")
                       : "",
                   "\n");
  }
  return text;
}

std::string UriPinSource(const hsm::Pkcs11Uri& uri, const std::string& flag) {
  if (!flag.empty()) return flag;
  if (!uri.pin_source().empty()) return uri.pin_source();
  return "prompt:PIN for the KRA card: ";
}

struct CardSession {
  std::unique_ptr<pki::KraCard> card;
  absl::StatusOr<hsm::PinSource> pin = absl::UnknownError("unset");
  std::optional<hsm::PinSource> uri_pin_value;
};

absl::StatusOr<CardSession> OpenCard(const RecoverOptions& o) {
  if (o.card.empty()) {
    return absl::InvalidArgumentError(
        "give the KRA smart card with --card PKCS11-URI (e.g. pkcs11:token=kra-card-1)");
  }
  auto uri = hsm::Pkcs11Uri::Parse(o.card);
  if (!uri.ok()) return uri.status();
  CardSession s;
  if (o.pin_source.empty() && uri->pin_source().empty() && uri->has_pin_value()) {
    s.pin = hsm::PinSource::Value(uri->pin_value());
  } else {
    s.pin = hsm::PinSource::Parse(UriPinSource(*uri, o.pin_source));
  }
  if (!s.pin.ok()) return s.pin.status();
  auto card = pki::KraCard::Open(*uri, DefaultModule(o.module));
  if (!card.ok()) return card.status();
  s.card = std::move(*card);
  return s;
}

struct Recovered {
  pki::RecoveryTiming timing;
  double write_seconds = 0;
  nlohmann::json json;
  std::string text;
};

// The card stage of one recovery: the card matched to the blob (logging in
// on first use), the key decrypted and checked against the user
// certificate. Only this stage touches the card.
struct CardStage {
  pki::RecoveredKey key;
  pki::RecoveryTiming timing;
  size_t shares_used = 0;  // threshold: the contributions combined (own share excluded)
};

// `shares`: the contributions for a threshold archive (file name, bytes).
absl::StatusOr<CardStage> RecoverKeyWithCard(
    const std::string& blob_path, const pki::RecoveryBlob& blob, CardSession& s,
    const std::vector<std::pair<std::string, std::vector<uint8_t>>>& shares = {}) {
  auto match = s.card->Match(blob);
  if (!match.ok()) return WithFile(blob_path, match.status());
  if (!s.card->logged_in()) {
    if (auto st = s.card->Login(*s.pin); !st.ok()) return st;
  }
  CardStage r;
  r.shares_used = shares.size();
  absl::StatusOr<pki::RecoveredKey> key = absl::UnknownError("unset");
  if (blob.threshold) {
    std::vector<std::vector<uint8_t>> contributions;
    std::vector<std::string> names;
    for (const auto& [name, bytes] : shares) {
      names.push_back(name);
      contributions.push_back(bytes);
    }
    key = s.card->RecoverThreshold(blob, contributions, names, &r.timing);
  } else if (!shares.empty()) {
    key = absl::InvalidArgumentError(
        "--shares is for threshold archives; this one is recovered by any one of its KRAs");
  } else {
    key = s.card->Recover(blob, &r.timing);
  }
  if (!key.ok()) return WithFile(blob_path, key.status());
  r.key = std::move(*key);
  return r;
}

// The PFX stage: the recovered key written as `out_path` and described.
// Touches no card (it runs on the batch's worker threads); `card_label`
// names the card in the description. The key is freed (and its numbers
// wiped by OpenSSL) with `stage`.
absl::StatusOr<Recovered> WriteRecoveredPfx(const std::string& blob_path,
                                            const pki::RecoveryBlob& blob, CardStage stage,
                                            const std::string& card_label,
                                            const hsm::SecretString& password,
                                            pki::Pkcs12Protection protection,
                                            const std::string& out_path) {
  Recovered r;
  r.timing = stage.timing;
  const pki::RecoveredKey* key = &stage.key;
  auto start = Clock::now();
  pki::Pkcs12Entry entry;
  entry.key = key->key.get();
  entry.certificate = blob.user_certificate.get();
  for (const auto& c : blob.user_chain) entry.chain.push_back(c.get());
  auto pfx = pki::BuildPkcs12({entry}, password, {protection, 0});
  if (!pfx.ok()) return WithFile(blob_path, pfx.status());
  if (auto st = pki::WriteFileAtomically(out_path, *pfx, pki::Overwrite::kRefuse, 0600); !st.ok()) {
    return WithFile(blob_path, st);
  }
  r.write_seconds = Since(start);
  X509* kra = key->kra->certificate.get();
  const size_t bits = static_cast<size_t>(EVP_PKEY_get_bits(key->key.get()));
  const size_t shares_used = stage.shares_used;
  r.json = {{"blob", blob_path},
            {"output", out_path},
            {"kra",
             {{"subject", Subject(kra)},
              {"sha1", pki::Sha1Thumbprint(kra)},
              {"expired", Expired(kra)},
              {"card", card_label}}},
            {"key_bits", bits},
            {"archived_format", key->was_private_key_blob ? "PRIVATEKEYBLOB" : "PKCS#8"},
            {"protection", ProtectionName(protection)},
            {"chain_certificates", blob.user_chain.size()}};
  if (blob.threshold) {
    r.json["threshold"] = {
        {"k", blob.threshold->k}, {"n", blob.threshold->n}, {"shares_used", shares_used + 1}};
  }
  r.text = StrCat("Card \"", card_label, "\": KRA \"", Subject(kra), "\" (SHA-1 ",
                  pki::Sha1Thumbprint(kra), ")\n",
                  blob.threshold ? StrCat("  threshold archive: ", shares_used + 1, " shares of ",
                                          blob.threshold->n, " combined (", blob.threshold->k,
                                          " needed), each checked against its commitment\n")
                                 : "",
                  Expired(kra) ? StrCat("  note: this KRA certificate expired ", NotAfter(kra),
                                        "; that does not matter for recovery\n")
                               : "",
                  "  content key decrypted on the card; RSA-", bits, " key (",
                  key->was_private_key_blob ? "PRIVATEKEYBLOB" : "PKCS#8",
                  ") matches the user certificate\n", "  wrote ", out_path, " (PKCS#12, ",
                  ProtectionName(protection), ": key, certificate and ", blob.user_chain.size(),
                  " chain certificate(s))\n");
  return r;
}

// Recovers one opened blob with the card (logging in on first use) and
// writes the PFX.
// `shares`: the contributions for a threshold archive (file name, bytes).
absl::StatusOr<Recovered> RecoverWithCard(
    const std::string& blob_path, const pki::RecoveryBlob& blob, CardSession& s,
    const hsm::SecretString& password, pki::Pkcs12Protection protection,
    const std::string& out_path,
    const std::vector<std::pair<std::string, std::vector<uint8_t>>>& shares = {}) {
  auto stage = RecoverKeyWithCard(blob_path, blob, s, shares);
  if (!stage.ok()) return stage.status();
  return WriteRecoveredPfx(blob_path, blob, std::move(*stage), s.card->label(), password,
                           protection, out_path);
}

constexpr char kKraStatusNote[] =
    "KRA certificates are not checked for expiry or revocation: the private key on the card is "
    "what decrypts.";

// recoverkey BLOB --contribute-to KRA --card URI --out SHARE: this card's
// share of a threshold archive, sealed to the coordinating KRA.
int RunContribute(const RecoverOptions& o, const Output& out, const std::string& path,
                  const pki::RecoveryBlob& blob, nlohmann::json j, std::string text) {
  if (o.args.size() != 1) {
    return out.Fail(absl::InvalidArgumentError(
        "--contribute-to writes a share, not a PFX: recoverkey BLOB --contribute-to KRA "
        "--card URI --out SHARE"));
  }
  if (o.share_out.empty()) {
    return out.Fail(absl::InvalidArgumentError("--contribute-to needs --out SHARE"));
  }
  if (auto st = pki::CheckWritable(o.share_out, pki::Overwrite::kRefuse); !st.ok()) {
    return out.Fail(st);
  }
  if (!blob.threshold) {
    return out.Fail(absl::FailedPreconditionError(
        StrCat(path, ": not a threshold archive; any one of its KRAs recovers it alone")));
  }
  X509* coordinator = nullptr;
  std::vector<std::string> holders;
  for (const auto& r : blob.recipients) {
    if (r.certificate == nullptr) continue;
    holders.push_back(StrCat("\"", Subject(r.certificate), "\" (SHA-1 ",
                             pki::Sha1Thumbprint(r.certificate), ")"));
    if (absl::EqualsIgnoreCase(pki::Sha1Thumbprint(r.certificate), o.contribute_to) ||
        Subject(r.certificate) == o.contribute_to) {
      coordinator = r.certificate;
    }
  }
  if (coordinator == nullptr) {
    return out.Fail(absl::NotFoundError(
        StrCat("--contribute-to ", o.contribute_to,
               ": no KRA of this archive has that SHA-1 or subject. Its KRAs:\n  ",
               StrJoin(holders, "\n  "))));
  }
  auto card = OpenCard(o);
  if (!card.ok()) return out.Fail(card.status());
  if (auto match = card->card->Match(blob); !match.ok()) {
    return out.Fail(WithFile(path, match.status()));
  }
  if (auto st = card->card->Login(*card->pin); !st.ok()) return out.Fail(st);
  auto sealed = card->card->Contribute(blob, coordinator);
  if (!sealed.ok()) return out.Fail(WithFile(path, sealed.status()));
  if (auto st = pki::WriteFileAtomically(o.share_out, *sealed, pki::Overwrite::kRefuse, 0600);
      !st.ok()) {
    return out.Fail(st);
  }
  j["contribution"] = {{"output", o.share_out},
                       {"coordinator", Subject(coordinator)},
                       {"coordinator_sha1", pki::Sha1Thumbprint(coordinator)},
                       {"card", card->card->label()}};
  text += StrCat("Card \"", card->card->label(), "\": share decrypted on the card and sealed to \"",
                 Subject(coordinator), "\"\n  wrote ", o.share_out,
                 " (only that KRA's card can open it; give it to that KRA)\n");
  out.Result(j, text);
  return kExitOk;
}

int RunRecoverOne(const RecoverOptions& o, const Output& out) {
  if (o.args.empty() || o.args.size() > 2) {
    return out.Fail(absl::InvalidArgumentError(
        "recoverkey BLOB [OUT.pfx] (or --batch BLOB|DIR... --out-dir DIR)"));
  }
  auto anchors = ReadAnchors(o.trust);
  if (!anchors.ok()) return out.Fail(anchors.status());
  const std::string& path = o.args[0];
  auto blob = OpenBlob(path, *anchors);
  if (!blob.ok()) return out.Fail(blob.status());
  nlohmann::json j = BlobJson(*blob);
  std::string text = BlobText(path, *blob);
  if (o.args.size() == 1 && o.contribute_to.empty()) {  // show only: no card, nothing written
    out.Result(j, text);
    return kExitOk;
  }
  if (!o.contribute_to.empty()) return RunContribute(o, out, path, *blob, j, text);
  const std::string& out_path = o.args[1];
  if (auto st = pki::CheckWritable(out_path, pki::Overwrite::kRefuse); !st.ok()) {
    return out.Fail(st);
  }
  // Contributions are read before the card is touched: a missing file
  // costs no PIN.
  std::vector<std::pair<std::string, std::vector<uint8_t>>> shares;
  for (const std::string& f : o.shares) {
    auto bytes = pki::ReadFileBytes(f);
    if (!bytes.ok()) return out.Fail(bytes.status());
    if (bytes->size() > kMaxContributionBytes) {
      return out.Fail(absl::InvalidArgumentError(
          StrCat(f, ": ", bytes->size(), " bytes is too large for a share contribution")));
    }
    shares.emplace_back(f, std::move(*bytes));
  }
  // The card first (no PIN needed to match it), so that a wrong card is
  // reported before anyone types a password; then the password; then the PIN.
  auto card = OpenCard(o);
  if (!card.ok()) return out.Fail(card.status());
  if (auto match = card->card->Match(*blob); !match.ok()) {
    return out.Fail(WithFile(path, match.status()));
  }
  bool generated = false;
  auto password = PfxPassword(o.password, &generated);
  if (!password.ok()) return out.Fail(password.status());
  const auto protection =
      o.legacy ? pki::Pkcs12Protection::kLegacy3Des : pki::Pkcs12Protection::kAes256Pbkdf2;
  auto r = RecoverWithCard(path, *blob, *card, *password, protection, out_path, shares);
  if (!r.ok()) return out.Fail(r.status());
  j["recovered"] = r->json;
  j["note"] = kKraStatusNote;
  j["timing_seconds"] = {{"card_decrypt", r->timing.card},
                         {"key_decrypt", r->timing.decrypt},
                         {"key_check", r->timing.verify},
                         {"pfx_write", r->write_seconds}};
  if (blob->threshold) j["timing_seconds"]["combine"] = r->timing.combine;
  text += r->text + StrCat("  (", kKraStatusNote, ")\n");
  if (generated) {
    j["password"] = std::string(password->view());
    text += StrCat("PFX password (give it to the user out of band): ", password->view(), "\n");
  }
  out.Result(j, text);
  return kExitOk;
}

// Every blob file named: files as given, directories expanded to their
// regular files (not *.pfx / *.p12), sorted.
absl::StatusOr<std::vector<std::string>> BatchInputs(const std::vector<std::string>& args) {
  std::vector<std::string> files;
  for (const std::string& a : args) {
    struct stat st {};
    if (stat(a.c_str(), &st) != 0) return absl::NotFoundError(StrCat(a, ": no such file"));
    if (!S_ISDIR(st.st_mode)) {
      files.push_back(a);
      continue;
    }
    DIR* d = opendir(a.c_str());
    if (d == nullptr) return absl::PermissionDeniedError(StrCat(a, ": cannot read directory"));
    std::vector<std::string> found;
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name.starts_with(".") || name.ends_with(".pfx") || name.ends_with(".p12")) continue;
      std::string full = StrCat(a, "/", name);
      struct stat fst {};
      if (stat(full.c_str(), &fst) == 0 && S_ISREG(fst.st_mode)) found.push_back(full);
    }
    closedir(d);
    std::sort(found.begin(), found.end());
    files.insert(files.end(), found.begin(), found.end());
  }
  if (files.empty()) return absl::NotFoundError("no recovery blob files found");
  return files;
}

std::string Stem(const std::string& path) {
  std::string name = path.substr(path.find_last_of('/') + 1);
  const size_t dot = name.find_last_of('.');
  return dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
}

class ProgressBar {
 public:
  explicit ProgressBar(bool on) : on_(on) {}
  void Show(size_t done, size_t total, const std::string& what) {
    if (!on_) return;
    constexpr size_t kWidth = 30;
    const size_t filled = total == 0 ? kWidth : done * kWidth / total;
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::string name = what.substr(what.find_last_of('/') + 1);
    if (name.size() > 32) name = name.substr(0, 29) + "...";
    std::fprintf(stderr, "\r[%s] %zu/%zu %3zu%% %s\x1b[K", bar.c_str(), done, total,
                 total == 0 ? size_t{100} : done * 100 / total, name.c_str());
    std::fflush(stderr);
  }
  void Done() {
    if (!on_) return;
    std::fprintf(stderr, "\r\x1b[K");
    std::fflush(stderr);
  }

 private:
  bool on_;
};

// recoverkey --batch BLOB|DIR... --contribute-to KRA --card URI --out-dir DIR:
// this card's share of every threshold blob, each sealed to the coordinating
// KRA and written as DIR/STEM.DIGEST.kwshare (cli/share_files.h), so that
// the coordinator's --shares-dir finds each blob's shares by its archive
// digest and a share cannot be taken for another archive's.
// What every --batch run checks and reads first: --out-dir is a
// directory, the trust anchors, the blob files (BatchInputs).
struct BatchStart {
  std::vector<ossl::UniquePtr<X509>> anchors;
  std::vector<std::string> inputs;
};
absl::StatusOr<BatchStart> StartBatch(const RecoverOptions& o) {
  struct stat dst {};
  if (stat(o.out_dir.c_str(), &dst) != 0 || !S_ISDIR(dst.st_mode)) {
    return absl::NotFoundError(StrCat("--out-dir ", o.out_dir, ": not a directory"));
  }
  BatchStart b;
  auto anchors = ReadAnchors(o.trust);
  if (!anchors.ok()) return anchors.status();
  b.anchors = std::move(*anchors);
  auto inputs = BatchInputs(o.args);
  if (!inputs.ok()) return inputs.status();
  b.inputs = std::move(*inputs);
  return b;
}

int RunContributeBatch(const RecoverOptions& o, const Output& out) {
  if (o.out_dir.empty()) {
    return out.Fail(absl::InvalidArgumentError(
        "--batch --contribute-to needs --out-dir DIR for the sealed shares"));
  }
  if (!o.shares.empty() || !o.shares_dirs.empty()) {
    return out.Fail(absl::InvalidArgumentError(
        "--contribute-to (this KRA gives its shares) and --shares/--shares-dir (this KRA "
        "coordinates) exclude each other"));
  }
  auto batch = StartBatch(o);
  if (!batch.ok()) return out.Fail(batch.status());
  auto* anchors = &batch->anchors;
  auto* inputs = &batch->inputs;
  auto card = OpenCard(o);
  if (!card.ok()) return out.Fail(card.status());
  nlohmann::json done = nlohmann::json::array(), failed = nlohmann::json::array();
  std::vector<std::string> failures, written;
  absl::Status fatal;
  size_t i = 0;
  for (; i < inputs->size(); ++i) {
    const std::string& in = (*inputs)[i];
    auto blob = OpenBlob(in, *anchors);
    absl::StatusOr<std::string> file = absl::UnknownError("unset");
    X509* coordinator = nullptr;
    if (!blob.ok()) {
      file = blob.status();
    } else if (!blob->threshold) {
      file = absl::FailedPreconditionError(
          StrCat(in, ": not a threshold archive; any one of its KRAs recovers it alone"));
    } else {
      for (const auto& r : blob->recipients) {
        if (r.certificate == nullptr) continue;
        if (absl::EqualsIgnoreCase(pki::Sha1Thumbprint(r.certificate), o.contribute_to) ||
            Subject(r.certificate) == o.contribute_to) {
          coordinator = r.certificate;
        }
      }
      if (coordinator == nullptr) {
        file = absl::NotFoundError(
            StrCat(in, ": --contribute-to ", o.contribute_to, " holds no share of this archive"));
      } else if (auto match = card->card->Match(*blob); !match.ok()) {
        file = WithFile(in, match.status());
      } else if (auto st = card->card->Login(*card->pin); !st.ok()) {
        fatal = st;  // one login attempt per run
        failed.push_back({{"blob", in}, {"error", std::string(st.message())}});
        failures.push_back(StrCat("  ", st.message()));
        ++i;
        break;
      } else {
        auto sealed = card->card->Contribute(*blob, coordinator);
        const std::string target =
            StrCat(o.out_dir, "/", ContributionFileName(Stem(in), blob->enveloped_data));
        if (!sealed.ok()) {
          file = WithFile(in, sealed.status());
        } else if (auto w =
                       pki::WriteFileAtomically(target, *sealed, pki::Overwrite::kRefuse, 0600);
                   !w.ok()) {
          file = w;
        } else {
          file = target;
        }
      }
    }
    if (file.ok()) {
      done.push_back({{"blob", in},
                      {"share", *file},
                      {"coordinator", Subject(coordinator)},
                      {"coordinator_sha1", pki::Sha1Thumbprint(coordinator)}});
      written.push_back(StrCat("  ", in, " -> ", *file));
      continue;
    }
    failed.push_back({{"blob", in}, {"error", std::string(file.status().message())}});
    failures.push_back(StrCat("  ", file.status().message()));
  }
  const size_t not_attempted = inputs->size() - i;
  nlohmann::json j = {{"contributed", done},
                      {"failed", failed},
                      {"not_attempted", not_attempted},
                      {"card", card->card->label()},
                      {"out_dir", o.out_dir}};
  std::string text = StrCat("Sealed ", done.size(), " of ", inputs->size(), " share(s) to ",
                            o.contribute_to, " into ", o.out_dir, " with card \"",
                            card->card->label(), "\" (give the directory to that KRA)\n");
  if (!written.empty()) text += StrJoin(written, "\n") + "\n";
  if (!failures.empty()) {
    text += StrCat(failed.size(), " failed:\n", StrJoin(failures, "\n"), "\n");
  }
  if (not_attempted > 0) {
    text += StrCat(not_attempted, " not attempted: the card login failed and is never retried\n");
  }
  out.Result(j, text);
  if (!fatal.ok() && !out.json) std::cerr << "keywarden: " << fatal.message() << std::endl;
  return failed.empty() ? kExitOk : kExitFailed;
}

int RunRecoverBatch(const RecoverOptions& o, const Output& out) {
  if (!o.contribute_to.empty()) return RunContributeBatch(o, out);
  if (o.out_dir.empty()) {
    return out.Fail(absl::InvalidArgumentError("--batch needs --out-dir DIR for the PFX files"));
  }
  auto batch = StartBatch(o);
  if (!batch.ok()) return out.Fail(batch.status());
  auto* anchors = &batch->anchors;
  auto* inputs = &batch->inputs;

  // Every output name is decided, and checked free, before the card is used.
  std::vector<std::string> outputs;
  std::vector<std::string> clashes;
  for (const std::string& in : *inputs) {
    std::string target = StrCat(o.out_dir, "/", Stem(in), ".pfx");
    if (std::find(outputs.begin(), outputs.end(), target) != outputs.end()) {
      clashes.push_back(StrCat(target, " (two blobs named ", Stem(in), ")"));
    } else if (!pki::CheckWritable(target, pki::Overwrite::kRefuse).ok()) {
      clashes.push_back(StrCat(target, " (exists)"));
    }
    outputs.push_back(std::move(target));
  }
  if (!clashes.empty()) {
    return out.Fail(absl::AlreadyExistsError(
        StrCat("refusing to start: output files would clash:\n  ", StrJoin(clashes, "\n  "))));
  }
  // Threshold blobs: the contributions, by archive digest (read before the
  // card is touched).
  auto share_dirs = ReadShareDirectories(o.shares_dirs);
  if (!share_dirs.ok()) return out.Fail(share_dirs.status());
  auto card = OpenCard(o);
  if (!card.ok()) return out.Fail(card.status());
  bool generated = false;
  auto password = PfxPassword(o.password, &generated);
  if (!password.ok()) return out.Fail(password.status());
  const auto protection =
      o.legacy ? pki::Pkcs12Protection::kLegacy3Des : pki::Pkcs12Protection::kAes256Pbkdf2;

  ProgressBar bar(!out.json && isatty(STDERR_FILENO));
  const auto start = Clock::now();
  // The card thread (this one) verifies each blob and decrypts its key on
  // the card, in input order, with one session and one login; the PFX files
  // are built and written by one worker per usable core meanwhile
  // (pki/pipeline.h). Results are kept per input and reported in input
  // order, whatever order the workers finish in.
  struct Outcome {
    absl::StatusOr<Recovered> result = absl::UnknownError("not attempted");
    nlohmann::json user;
    double parse_s = 0;
  };
  std::vector<Outcome> outcomes(inputs->size());
  struct Work {
    pki::RecoveryBlob blob;
    CardStage stage;
  };
  // The bar counts finished blobs and names the one the card is on (the
  // next one as soon as a blob leaves the card thread).
  std::mutex progress_mu;
  size_t finished = 0;
  std::string current = inputs->front();
  auto progress = [&](std::optional<size_t> next) {
    std::lock_guard<std::mutex> lock(progress_mu);
    if (next) {
      if (*next < inputs->size()) current = (*inputs)[*next];
    } else {
      ++finished;
    }
    bar.Show(finished, inputs->size(), current);
  };
  progress(0);
  absl::Status fatal;
  const std::string card_label = card->card->label();
  const size_t workers = pki::UsableCores();
  const size_t attempted = pki::RunPipeline<Work>(
      inputs->size(), {workers, 0},
      [&](size_t index, bool* stop) -> std::optional<Work> {
        const std::string& in = (*inputs)[index];
        Outcome& oc = outcomes[index];
        auto t0 = Clock::now();
        auto blob = OpenBlob(in, *anchors);
        oc.parse_s = Since(t0);
        if (!blob.ok()) {
          oc.result = blob.status();
          progress(std::nullopt);
          progress(index + 1);
          return std::nullopt;
        }
        auto stage = RecoverKeyWithCard(in, *blob, *card, share_dirs->For(blob->enveloped_data));
        if (!stage.ok()) {
          oc.result = stage.status();
          if (!card->card->logged_in() && card->card->Match(*blob).ok()) {
            // The login failed: one attempt per run, so stop here.
            fatal = stage.status();
            *stop = true;
          }
          progress(std::nullopt);
          progress(index + 1);
          return std::nullopt;
        }
        oc.user = BlobJson(*blob)["user"];
        progress(index + 1);
        return Work{std::move(*blob), std::move(*stage)};
      },
      [&](size_t index, Work work) {
        outcomes[index].result =
            WriteRecoveredPfx((*inputs)[index], work.blob, std::move(work.stage), card_label,
                              *password, protection, outputs[index]);
        progress(std::nullopt);
      });
  double card_s = 0, decrypt_s = 0, verify_s = 0, parse_s = 0, write_s = 0;
  nlohmann::json done = nlohmann::json::array(), failed = nlohmann::json::array();
  std::vector<std::string> failures;
  for (size_t k = 0; k < attempted; ++k) {
    Outcome& oc = outcomes[k];
    parse_s += oc.parse_s;
    if (oc.result.ok()) {
      card_s += oc.result->timing.card;
      decrypt_s += oc.result->timing.decrypt;
      verify_s += oc.result->timing.verify;
      write_s += oc.result->write_seconds;
      nlohmann::json item = oc.result->json;
      item["user"] = oc.user;
      done.push_back(item);
      continue;
    }
    failed.push_back(
        {{"blob", (*inputs)[k]}, {"error", std::string(oc.result.status().message())}});
    failures.push_back(StrCat("  ", oc.result.status().message()));
  }
  const size_t i = attempted;
  bar.Show(i, inputs->size(), "");
  bar.Done();
  const double total_s = Since(start);
  const size_t not_attempted = inputs->size() - i;
  const double rate = total_s > 0 ? static_cast<double>(done.size()) / total_s : 0;

  nlohmann::json j = {{"recovered", done},
                      {"failed", failed},
                      {"not_attempted", not_attempted},
                      {"card", card->card->label()},
                      {"out_dir", o.out_dir},
                      {"note", kKraStatusNote},
                      {"keys_per_second", rate},
                      {"pfx_workers", workers},
                      {"timing_seconds",
                       {{"total", total_s},
                        {"blob_verify", parse_s},
                        {"card_decrypt", card_s},
                        {"key_decrypt", decrypt_s},
                        {"key_check", verify_s},
                        {"pfx_write", write_s}}}};
  std::string text =
      StrCat("Recovered ", done.size(), " of ", inputs->size(), " blob(s) into ", o.out_dir,
             " with card \"", card->card->label(), "\" (", ProtectionName(protection), ")\n");
  if (!failures.empty()) {
    text += StrCat(failed.size(), " failed:\n", StrJoin(failures, "\n"), "\n");
  }
  if (not_attempted > 0) {
    text += StrCat(not_attempted, " not attempted: the card login failed and is never retried\n");
  }
  if (const auto unused = share_dirs->Unused(); !unused.empty() && not_attempted == 0) {
    j["shares_not_used"] = unused;
    text += StrCat("Contributions for no blob of this batch (not used):\n  ",
                   StrJoin(unused, "\n  "), "\n");
  }
  char figures[320];
  std::snprintf(figures, sizeof figures,
                "Time: %.2f s total, %.1f keys/s; blob verify %.2f s, card decrypt %.2f s, key "
                "decrypt+check %.2f s (card thread), PFX write %.2f s (summed over %zu "
                "workers)\n",
                total_s, rate, parse_s, card_s, decrypt_s + verify_s, write_s, workers);
  text += figures;
  text += StrCat("(", kKraStatusNote, ")\n");
  if (generated && !done.empty()) {
    j["password"] = std::string(password->view());
    text += StrCat("PFX password for every file (give it out of band): ", password->view(), "\n");
  }
  out.Result(j, text);
  if (!fatal.ok() && !out.json) std::cerr << "keywarden: " << fatal.message() << std::endl;
  return failed.empty() ? kExitOk : kExitFailed;
}

// ---- mergepfx -------------------------------------------------------------

struct MergeOptions {
  std::string inputs;  // IN1,IN2,...
  std::string output;
  std::string passwords;                  // -p "in1,...,out" or "in,out"
  std::vector<std::string> in_passwords;  // --in-password SRC (one, or one per input)
  OutputPassword out_password;
  bool legacy = false;
};

std::vector<std::string> SplitComma(const std::string& s) {
  std::vector<std::string> out(1);
  for (char c : s) {
    if (c == ',') {
      out.emplace_back();
    } else {
      out.back().push_back(c);
    }
  }
  return out;
}

int RunMerge(const MergeOptions& o, const Output& out) {
  std::vector<std::string> files = SplitComma(o.inputs);
  for (const auto& f : files) {
    if (f.empty()) return out.Fail(absl::InvalidArgumentError("mergepfx: empty input file name"));
  }
  if (auto st = pki::CheckWritable(o.output, pki::Overwrite::kRefuse); !st.ok()) {
    return out.Fail(st);
  }
  // Input passwords: certutil's -p "in,out" / "in1,...,inN,out", or sources.
  std::vector<hsm::SecretString> in_pw;
  OutputPassword out_pw = o.out_password;
  if (!o.passwords.empty()) {
    if (!o.in_passwords.empty()) {
      return out.Fail(absl::InvalidArgumentError("give -p or --in-password, not both"));
    }
    std::vector<std::string> p = SplitComma(o.passwords);
    if (p.size() != 2 && p.size() != files.size() + 1) {
      return out.Fail(absl::InvalidArgumentError(
          StrCat("-p: give \"INPASSWORD,OUTPASSWORD\" or one password per input then the output "
                 "password (",
                 files.size() + 1, " in all)")));
    }
    if (!out_pw.value.empty() || !out_pw.source.empty() || out_pw.generate) {
      return out.Fail(absl::InvalidArgumentError("-p already gives the output password"));
    }
    for (size_t i = 0; i + 1 < p.size(); ++i) in_pw.emplace_back(p[i]);
    out_pw.value = p.back();
  } else {
    if (o.in_passwords.size() != 1 && o.in_passwords.size() != files.size()) {
      return out.Fail(absl::InvalidArgumentError(
          StrCat("give the input password(s): --in-password SRC once for all inputs or once per "
                 "input (",
                 files.size(), "), or -p \"IN,OUT\"")));
    }
    for (size_t i = 0; i < o.in_passwords.size(); ++i) {
      auto pw = ReadPassword(o.in_passwords[i],
                             o.in_passwords.size() == 1 ? std::string("input PFX password")
                                                        : StrCat("password of ", files[i]),
                             false);
      if (!pw.ok()) return out.Fail(pw.status());
      in_pw.push_back(std::move(*pw));
    }
  }
  std::vector<pki::Pkcs12Contents> contents;
  for (size_t i = 0; i < files.size(); ++i) {
    auto bytes = pki::ReadFileBytes(files[i]);
    if (!bytes.ok()) return out.Fail(bytes.status());
    auto c = pki::ReadPkcs12(*bytes, in_pw.size() == 1 ? in_pw[0] : in_pw[i]);
    if (!c.ok()) return out.Fail(WithFile(files[i], c.status()));
    for (const auto& k : c->keys) {
      if (!k.certificate) {
        return out.Fail(absl::FailedPreconditionError(
            StrCat(files[i], ": a private key has no matching certificate in the file")));
      }
    }
    if (c->keys.empty()) {
      return out.Fail(absl::FailedPreconditionError(StrCat(files[i], ": holds no private key")));
    }
    contents.push_back(std::move(*c));
  }
  bool generated = false;
  auto password = PfxPassword(out_pw, &generated);
  if (!password.ok()) return out.Fail(password.status());

  std::vector<X509*> chain;
  for (auto& c : contents) {
    for (auto& x : c.other_certificates) chain.push_back(x.get());
  }
  std::vector<pki::Pkcs12Entry> entries;
  nlohmann::json keys = nlohmann::json::array();
  std::string list;
  for (auto& c : contents) {
    for (auto& k : c.keys) {
      entries.push_back({k.key.get(), k.certificate.get(), chain, k.friendly_name});
      keys.push_back({{"subject", Subject(k.certificate.get())},
                      {"sha1", pki::Sha1Thumbprint(k.certificate.get())}});
      list += StrCat("  \"", Subject(k.certificate.get()), "\" (SHA-1 ",
                     pki::Sha1Thumbprint(k.certificate.get()), ")\n");
    }
  }
  const auto protection =
      o.legacy ? pki::Pkcs12Protection::kLegacy3Des : pki::Pkcs12Protection::kAes256Pbkdf2;
  auto pfx = pki::BuildPkcs12(entries, *password, {protection, 0});
  if (!pfx.ok()) return out.Fail(pfx.status());
  if (auto st = pki::WriteFileAtomically(o.output, *pfx, pki::Overwrite::kRefuse, 0600); !st.ok()) {
    return out.Fail(st);
  }
  nlohmann::json j = {{"output", o.output},
                      {"inputs", files},
                      {"keys", keys},
                      {"protection", ProtectionName(protection)}};
  std::string text =
      StrCat("Merged ", entries.size(), " key(s) from ", files.size(), " file(s) into ", o.output,
             " (", ProtectionName(protection), "):\n", list);
  if (generated) {
    j["password"] = std::string(password->view());
    text += StrCat("PFX password: ", password->view(), "\n");
  }
  out.Result(j, text);
  return kExitOk;
}

// ---- verifykeys -----------------------------------------------------------

struct VerifyOptions {
  std::string key;
  std::string cert;
  std::string password;  // source for an encrypted PEM key or a PFX
};

// A private key to check, and for a key of a PFX the certificate the file
// pairs it with (by public key) and how to name it.
using LoadedKey = pki::KeyFileKey;

// The key of a key file, or every key of a PFX.
absl::StatusOr<std::vector<LoadedKey>> LoadPrivateKeys(const std::string& path,
                                                       const std::string& password_source) {
  auto bytes = pki::ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  return pki::ParsePrivateKeyFile(*bytes, path, [&]() -> absl::StatusOr<hsm::SecretString> {
    if (password_source.empty()) {
      return absl::InvalidArgumentError(
          StrCat(path, " is protected: give its password with --password SRC"));
    }
    return ReadPassword(password_source, "key password", false);
  });
}

// The public key of a certificate, or a public key, in PEM or DER.
absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> LoadPublicKey(const std::string& path,
                                                        std::string* subject) {
  auto bytes = pki::ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  auto file = pki::ParsePublicKeyFile(*bytes, path);
  if (!file.ok()) return file.status();
  if (file->certificate) *subject = Subject(file->certificate.get());
  return std::move(file->key);
}

// Non-RSA keys: equal public halves and a signature that verifies.
absl::Status CheckBySignature(EVP_PKEY* priv, EVP_PKEY* pub) {
  // The private part must give the public one (OpenSSL's key-pair check;
  // -2: not supported for this key type, the signature below still runs).
  ossl::UniquePtr<EVP_PKEY_CTX> check(EVP_PKEY_CTX_new_from_pkey(nullptr, priv, nullptr));
  if (check && EVP_PKEY_pairwise_check(check.get()) == 0) {
    ERR_clear_error();
    return absl::FailedPreconditionError(
        "the private key is damaged: its private value does not give its own public key");
  }
  ERR_clear_error();
  if (EVP_PKEY_eq(priv, pub) != 1) {
    ERR_clear_error();
    return absl::FailedPreconditionError("the private key does not belong to the public key");
  }
  unsigned char probe[32];
  if (RAND_bytes(probe, sizeof probe) != 1) return absl::InternalError("no random bytes");
  ossl::UniquePtr<EVP_MD_CTX> sctx(EVP_MD_CTX_new()), vctx(EVP_MD_CTX_new());
  std::vector<unsigned char> sig(static_cast<size_t>(EVP_PKEY_get_size(priv)));
  size_t sig_len = sig.size();
  if (!sctx || !vctx || EVP_DigestSignInit(sctx.get(), nullptr, EVP_sha256(), nullptr, priv) != 1 ||
      EVP_DigestSign(sctx.get(), sig.data(), &sig_len, probe, sizeof probe) != 1 ||
      EVP_DigestVerifyInit(vctx.get(), nullptr, EVP_sha256(), nullptr, pub) != 1 ||
      EVP_DigestVerify(vctx.get(), sig.data(), sig_len, probe, sizeof probe) != 1) {
    ERR_clear_error();
    return absl::FailedPreconditionError(
        "a signature made with the private key does not verify with the public key");
  }
  return absl::OkStatus();
}

// Whether `priv` is the private key of `pub`: the private numbers first
// (a damaged d or prime still decrypts: OpenSSL falls back from CRT to d, or
// from d to CRT, so a probe alone would call it a match), then a probe.
absl::Status CheckPair(EVP_PKEY* priv, EVP_PKEY* pub) {
  if (EVP_PKEY_is_a(priv, "RSA") == 1) {
    if (absl::Status consistent = pki::CheckRsaKeyConsistent(priv, "the private key is damaged");
        !consistent.ok()) {
      return consistent;
    }
    return pki::CheckKeyPairMatches(priv, pub);
  }
  return CheckBySignature(priv, pub);
}

std::string CheckedBy(EVP_PKEY* priv) {
  return StrCat(EVP_PKEY_get0_type_name(priv), "-", EVP_PKEY_get_bits(priv), ", checked by ",
                EVP_PKEY_is_a(priv, "RSA") == 1 ? "the private key's numbers and encrypt/decrypt"
                                                : "sign/verify");
}

// A PFX: every key against the certificate the file pairs it with (and
// CERT, when given, must be the certificate of one of them). Each is reported.
int RunVerifyPfxKeys(const VerifyOptions& o, std::vector<LoadedKey>& keys, const Output& out) {
  ossl::UniquePtr<EVP_PKEY> given;
  std::string given_subject;
  if (!o.cert.empty()) {
    auto pub = LoadPublicKey(o.cert, &given_subject);
    if (!pub.ok()) return out.Fail(pub.status());
    given = std::move(*pub);
  }
  bool all_ok = true, given_found = false;
  nlohmann::json list = nlohmann::json::array();
  std::string text;
  for (LoadedKey& k : keys) {
    std::string subject;
    EVP_PKEY* pub = nullptr;
    if (given && EVP_PKEY_eq(k.key.get(), given.get()) == 1) {
      pub = given.get();
      subject = given_subject;
      given_found = true;
    } else if (k.certificate) {
      pub = X509_get0_pubkey(k.certificate.get());
      subject = Subject(k.certificate.get());
    }
    ERR_clear_error();
    absl::Status st = pub == nullptr
                          ? absl::NotFoundError("the file holds no certificate for this key")
                          : CheckPair(k.key.get(), pub);
    const std::string what =
        subject.empty() ? std::string("its certificate") : StrCat("\"", subject, "\"");
    nlohmann::json j = {{"key", k.label}, {"subject", subject}, {"match", st.ok()}};
    if (st.ok()) {
      text += StrCat("Keys match: ", o.key, " ", k.label, " is the private key of ", what, " (",
                     CheckedBy(k.key.get()), ")\n");
    } else {
      all_ok = false;
      j["error"] = std::string(st.message());
      text += StrCat("keys do NOT match: ", o.key, " ", k.label,
                     pub == nullptr ? StrCat(": ", st.message())
                                    : StrCat(" is not the key of ", what, " (", st.message(), ")"),
                     "\n");
    }
    list.push_back(std::move(j));
  }
  if (given && !given_found) {
    all_ok = false;
    text += StrCat("keys do NOT match: no key of ", o.key, " belongs to ",
                   given_subject.empty() ? o.cert : StrCat("\"", given_subject, "\""), "\n");
  }
  const size_t good = static_cast<size_t>(std::count_if(
      list.begin(), list.end(), [](const nlohmann::json& j) { return j["match"].get<bool>(); }));
  text += StrCat(good, " of ", keys.size(), " key(s) of ", o.key, " verified\n");
  nlohmann::json result = {
      {"match", all_ok}, {"key", o.key}, {"certificate", o.cert}, {"keys", list}};
  if (given) result["certificate_matched"] = given_found;
  if (all_ok) {
    out.Result(result, text);
    return kExitOk;
  }
  if (out.json) {
    out.Result(result, text);
  } else {
    std::cerr << text;
  }
  return kExitFailed;
}

int RunVerifyKeys(const VerifyOptions& o, const Output& out) {
  auto keys = LoadPrivateKeys(o.key, o.password);
  if (!keys.ok()) return out.Fail(keys.status());
  const bool pfx = !keys->front().label.empty();
  if (pfx) return RunVerifyPfxKeys(o, *keys, out);
  if (o.cert.empty()) {
    return out.Fail(
        absl::InvalidArgumentError(StrCat("give the certificate or public key to check ", o.key,
                                          " against (only a PFX carries its own certificates)")));
  }
  EVP_PKEY* priv = keys->front().key.get();
  std::string subject;
  auto pub = LoadPublicKey(o.cert, &subject);
  if (!pub.ok()) return out.Fail(pub.status());
  absl::Status st = CheckPair(priv, pub->get());
  const std::string what = subject.empty() ? o.cert : StrCat("\"", subject, "\"");
  if (!st.ok()) {
    if (absl::StartsWith(st.message(), "the private key is damaged")) {
      out.Fail(
          absl::FailedPreconditionError(StrCat("keys do NOT match: ", o.key, ": ", st.message())));
    } else {
      out.Fail(absl::FailedPreconditionError(StrCat(
          "keys do NOT match: ", o.key, " is not the key of ", what, " (", st.message(), ")")));
    }
    return kExitFailed;
  }
  out.Result(
      {{"match", true}, {"key", o.key}, {"certificate", o.cert}, {"subject", subject}},
      StrCat("Keys match: ", o.key, " is the private key of ", what, " (", CheckedBy(priv), ")\n"));
  return kExitOk;
}

void AddOutputPasswordOptions(CLI::App* cmd, OutputPassword& pw, const char* what) {
  cmd->add_option("-p,--password", pw.value,
                  StrCat("Password for ", what,
                         " (visible to other local users in the process list: prefer "
                         "--password-source)"));
  cmd->add_option("--password-source", pw.source,
                  StrCat("Where the password for ", what,
                         " comes from: file:PATH, env:NAME or prompt (asked twice)"));
  cmd->add_flag("--generate-password", pw.generate,
                StrCat("Generate a random password for ", what, " and print it"));
}

}  // namespace

void RegisterRecoveryCommands(CLI::App& app, const Output& out, Action& action) {
  // recoverkey
  auto ro = std::make_shared<RecoverOptions>();
  CLI::App* recover = app.add_subcommand(
      "recoverkey",
      "Decrypt a recovery blob with a KRA smart card and write the user's key as a PKCS#12 "
      "(offline: no connection to keywardend). Threshold archives ([kra] threshold = k >= 2, "
      "docs/THRESHOLD.md) need k cards: k - 1 KRAs each run `recoverkey BLOB --contribute-to "
      "KRA --card URI --out SHARE`, then the coordinating KRA runs `recoverkey BLOB OUT.pfx "
      "--card URI --shares SHARE1,...`");
  recover
      ->add_option("args", ro->args,
                   "BLOB [OUT.pfx]: without OUT.pfx the blob is only verified and shown; with "
                   "--batch: blob files and/or directories of blobs")
      ->required();
  recover->add_flag("--batch", ro->batch,
                    "Recover many blobs in one run (one card login; the card decrypts on one "
                    "thread while a worker per core writes the PFX files into --out-dir)");
  recover->add_option("--out-dir", ro->out_dir,
                      "--batch: directory for the PFX files (NAME.pfx for blob NAME.ext); with "
                      "--contribute-to: for the sealed shares (NAME.DIGEST.kwshare)");
  recover->add_option(
      "--card", ro->card,
      "PKCS#11 URI of the KRA smart card, e.g. pkcs11:token=kra-card-1 (object=/id= "
      "narrow it to one KRA certificate)");
  recover->add_option("--module", ro->module,
                      "PKCS#11 module path or p11-kit name (default: the URI's, else "
                      "$KEYWARDEN_PKCS11_MODULE)");
  recover->add_option("--pin-source", ro->pin_source,
                      "Card PIN from file:PATH, env:NAME or prompt (default: the URI's "
                      "pin-source, else prompt). Tried once, never retried");
  recover
      ->add_option("--ca-cert,--trust", ro->trust,
                   "PEM file of CA certificate(s) the blob's signature must chain to "
                   "(repeatable; required)")
      ->allow_extra_args(false);
  recover->add_option("--contribute-to", ro->contribute_to,
                      "Threshold archives: seal this card's share to the coordinating KRA "
                      "(SHA-1 thumbprint or subject of one of the blob's KRA certificates); "
                      "writes --out instead of a PFX (--batch: one share per blob into --out-dir)");
  recover->add_option("--out", ro->share_out, "--contribute-to: file for the sealed share");
  recover
      ->add_option("--shares-dir", ro->shares_dirs,
                   "--batch, threshold archives: directories of the shares other KRAs sealed to "
                   "this card with --batch --contribute-to (STEM.DIGEST.kwshare, matched to each "
                   "blob by its archive SHA-256); comma-separated or repeated")
      ->delimiter(',')
      ->allow_extra_args(false);
  recover
      ->add_option("--shares", ro->shares,
                   "Threshold archives: the shares other KRAs sealed to this card "
                   "(comma-separated files); this card's own share is added")
      ->delimiter(',');
  AddOutputPasswordOptions(recover, ro->password, "the PFX file(s)");
  recover->add_flag("--legacy", ro->legacy,
                    "Protect the PFX with 3DES and a SHA-1 MAC for old importers (default "
                    "AES-256-CBC, PBKDF2-SHA256, SHA-256 MAC)");
  recover->callback([&out, &action, ro] {
    action = [&out, ro] { return ro->batch ? RunRecoverBatch(*ro, out) : RunRecoverOne(*ro, out); };
  });

  // mergepfx
  auto mo = std::make_shared<MergeOptions>();
  CLI::App* merge = app.add_subcommand(
      "mergepfx", "Merge several PFX files (e.g. recovered keys of one user) into one");
  merge->add_option("inputs", mo->inputs, "IN1.pfx,IN2.pfx,... (comma-separated)")->required();
  merge->add_option("output", mo->output, "OUT.pfx (must not exist)")->required();
  merge->add_option("-p,--password", mo->passwords,
                    "certutil style: \"INPASSWORD,OUTPASSWORD\" or \"IN1,...,INn,OUTPASSWORD\"");
  merge
      ->add_option("--in-password", mo->in_passwords,
                   "Input password source(s): file:PATH, env:NAME or prompt; once for all inputs "
                   "or once per input, in order")
      ->allow_extra_args(false);
  merge->add_option("--out-password-source", mo->out_password.source,
                    "Output password from file:PATH, env:NAME or prompt (asked twice)");
  merge->add_flag("--generate-password", mo->out_password.generate,
                  "Generate the output password and print it");
  merge->add_flag("--legacy", mo->legacy, "Protect the output with 3DES and a SHA-1 MAC");
  merge->callback([&out, &action, mo] { action = [&out, mo] { return RunMerge(*mo, out); }; });

  // verifykeys
  auto vo = std::make_shared<VerifyOptions>();
  CLI::App* verify = app.add_subcommand(
      "verifykeys",
      "Check that a private key and a certificate (or public key) are a pair; for a PFX, "
      "every key of it against its certificate");
  verify
      ->add_option("key", vo->key,
                   "Private key file: PEM, DER PKCS#8/RSA, CAPI PRIVATEKEYBLOB, or PFX")
      ->required();
  verify->add_option("cert", vo->cert,
                     "Certificate or public key, PEM or DER (optional for a PFX: each key is "
                     "checked against the certificate the file holds for it; when given, it "
                     "must belong to one of the keys)");
  verify->add_option(
      "--password", vo->password,
      "Password source for an encrypted key or a PFX: file:PATH, env:NAME or prompt");
  verify->callback(
      [&out, &action, vo] { action = [&out, vo] { return RunVerifyKeys(*vo, out); }; });
}

}  // namespace keywarden::cli
