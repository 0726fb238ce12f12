// A Key Recovery Agent's smart card, offline from the CA (seed: "Command-
// Line Key Recovery", certutil -recoverkey; ARCHITECTURE.md §5.3).
//
// The card is any PKCS#11 token holding a KRA certificate and its private
// key. Certificates are public objects, so the card is matched against a
// blob before any PIN is asked for: a wrong card costs no PIN attempt.
// The PIN is tried exactly once per KraCard; the content-encryption key is
// decrypted on the card (the private key never leaves it), the archived
// key in software, and the result is checked against the user certificate.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "hsm/pin.h"
#include "hsm/provider/provider.h"
#include "hsm/token.h"
#include "hsm/uri.h"
#include "pki/recovery_blob.h"
#include "pki/shamir.h"
#include "pki/threshold.h"

namespace keywarden::pki {

struct CardCertificate {
  ossl::UniquePtr<X509> certificate;
  std::vector<uint8_t> id;  // CKA_ID: the private key beside it has the same
  std::string label;
};

// Where the time of one recovery went (seconds).
struct RecoveryTiming {
  double card = 0;     // the content-encryption key decrypted on the card (threshold:
                       // this card's share and the contributions opened on it)
  double combine = 0;  // threshold: the shares combined into the content key
  double decrypt = 0;  // the archived key decrypted and parsed (software)
  double verify = 0;   // key pair check against the user certificate
};

// What a rewrap made (KraCard::Rewrap).
struct RewrapResult {
  std::vector<uint8_t> envelope;         // the archive with its new recipients
  const CardCertificate* kra = nullptr;  // the card certificate whose recipient was opened
  // true: the content key was unwrapped on the card (C_UnwrapKey) and never
  // left it. false: the card's key could not unwrap (no CKA_UNWRAP), so it
  // was decrypted on the card into locked, wiped host memory, made a session
  // object again at once and wrapped there (docs/DECISIONS.md, "rewrap").
  bool unwrapped_on_card = true;
  // The form made: 1 key-transport recipients, k >= 2 a fresh threshold
  // split (threshold::ResplitContentKey).
  int threshold = 1;
  // A threshold archive: the shares combined (this card's and the
  // contributions); 0 for a k = 1 archive.
  size_t combined_shares = 0;
};

struct RecoveredKey {
  ossl::UniquePtr<EVP_PKEY> key;         // the user's private key (software)
  bool was_private_key_blob = false;     // the archive held a CAPI PRIVATEKEYBLOB, not PKCS#8
  uint32_t ai_key_alg = 0;               // its aiKeyAlg (0 for PKCS#8)
  const CardCertificate* kra = nullptr;  // the card certificate used; owned by the KraCard
};

class KraCard {
 public:
  // Opens the token the URI names (module from the URI, else
  // `default_module`) without logging in, and reads its certificates. An
  // object label or id in the URI narrows them to that KRA.
  static absl::StatusOr<std::unique_ptr<KraCard>> Open(const hsm::Pkcs11Uri& uri,
                                                       const std::string& default_module);

  // A card already open (and possibly logged in), e.g. during a key
  // ceremony that has just made its key: no second PIN entry. Every
  // certificate on it is read.
  static absl::StatusOr<std::unique_ptr<KraCard>> FromToken(std::shared_ptr<hsm::Token> token);

  const std::string& label() const { return token_->label(); }
  const std::vector<CardCertificate>& certificates() const { return certs_; }

  // The card certificate a RecipientInfo of `blob` names. NOT_FOUND when
  // none does; the message lists the KRAs the blob is encrypted to (those
  // would work) and the certificates on this card.
  absl::StatusOr<const CardCertificate*> Match(const RecoveryBlob& blob) const;

  // One C_Login attempt, never repeated: after a failure (wrong PIN,
  // locked card) every later call returns the same error without touching
  // the card. Reading the PIN (prompt, file, env) happens here too.
  absl::Status Login(const hsm::PinSource& pin);
  bool logged_in() const { return token_->logged_in(); }

  // Recovers the archived key in `blob` with the card (after Login). A
  // threshold archive (blob.threshold) is refused here, naming how many
  // KRAs are needed: it is recovered with RecoverThreshold.
  absl::StatusOr<RecoveredKey> Recover(const RecoveryBlob& blob, RecoveryTiming* timing = nullptr);

  // Threshold archives (pki/threshold.h, docs/THRESHOLD.md), after Login.
  // Contribute: this card's share, decrypted on the card and sealed to the
  // coordinating KRA's certificate (one of the blob's share holders, not
  // this card's); the plaintext share never leaves this process.
  absl::StatusOr<std::vector<uint8_t>> Contribute(const RecoveryBlob& blob, X509* coordinator);
  // RecoverThreshold: this card's share plus the contributions sealed to it
  // (each named by `names[i]` in messages), each checked against the
  // archive and its commitment, combined, and the key checked against the
  // user certificate. Fewer than k good shares: FAILED_PRECONDITION naming
  // how many more are needed and which KRAs hold them.
  absl::StatusOr<RecoveredKey> RecoverThreshold(
      const RecoveryBlob& blob, const std::vector<std::vector<uint8_t>>& contributions,
      const std::vector<std::string>& names, RecoveryTiming* timing = nullptr);

  // KRA rollover (keywarden kra rewrap), after Login: the content key of
  // `blob`'s k = 1 archive, opened with this card's recipient, goes to
  // `new_kras` in the CA's current form (`threshold`, [kra] threshold):
  // k = 1: wrapped on the card (C_WrapKey) to each new KRA with the key
  // transport the archive already uses; k >= 2: decrypted on the card into
  // locked, wiped memory and split afresh (threshold::ResplitContentKey,
  // coefficients from the card's RNG). The encryptedContentInfo is copied
  // byte for byte; the archived private key is never decrypted. A
  // threshold archive is refused here (FAILED_PRECONDITION): RewrapThreshold.
  // The new KRA certificates are the caller's to check (EKU, validity,
  // chain): this only needs their RSA keys.
  absl::StatusOr<RewrapResult> Rewrap(const RecoveryBlob& blob, const std::vector<X509*>& new_kras,
                                      int threshold = 1);
  // The same for a threshold archive: this card's share and the k - 1
  // contributions sealed to it are opened, checked against their
  // commitments and combined (as RecoverThreshold) into the content key,
  // in locked, wiped memory; it goes to `new_kras` in the form `threshold`
  // gives, as Rewrap. Fewer than k good shares: FAILED_PRECONDITION naming
  // the KRAs that are missing.
  absl::StatusOr<RewrapResult> RewrapThreshold(
      const RecoveryBlob& blob, const std::vector<std::vector<uint8_t>>& contributions,
      const std::vector<std::string>& names, const std::vector<X509*>& new_kras, int threshold);

 private:
  KraCard() = default;
  static absl::StatusOr<std::unique_ptr<KraCard>> Create(std::shared_ptr<hsm::Token> token,
                                                         const std::string& label,
                                                         const std::vector<uint8_t>& id);
  absl::StatusOr<EVP_PKEY*> KeyFor(const CardCertificate& cert);
  // Match + login check + the card's key, for a decryption.
  absl::StatusOr<std::pair<const CardCertificate*, EVP_PKEY*>> Ready(const RecoveryBlob& blob);
  // This card's share of a threshold archive, decrypted on the card.
  absl::StatusOr<std::pair<const threshold::ShareEntry*, hsm::SecretBytes>> OwnShare(
      const RecoveryBlob& blob, const CardCertificate& kra, EVP_PKEY* key);

  // The content key of a threshold archive from this card's share and the
  // contributions (RecoverThreshold, RewrapThreshold); the caller wipes it.
  struct Combined {
    const CardCertificate* kra = nullptr;
    KeyTransport transport = KeyTransport::kRsaPkcs1;  // of this card's share
    hsm::SecretBytes content_key;
  };
  absl::StatusOr<Combined> CombineShares(const RecoveryBlob& blob,
                                         const std::vector<std::vector<uint8_t>>& contributions,
                                         const std::vector<std::string>& names,
                                         RecoveryTiming& timing);

  std::shared_ptr<hsm::Token> token_;
  std::shared_ptr<hsm::CryptoContext> crypto_;
  std::vector<CardCertificate> certs_;
  std::vector<std::pair<const CardCertificate*, ossl::UniquePtr<EVP_PKEY>>> keys_;
  std::vector<std::pair<const CardCertificate*, std::shared_ptr<hsm::TokenKey>>> token_keys_;
  std::optional<absl::Status> login_failure_;
};

}  // namespace keywarden::pki
