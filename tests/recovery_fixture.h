// A small PKI for key-recovery tests and the recovery benchmark, on real
// SoftHSM2 tokens: the CA signing key on the CA token (root signed there
// through keywarden's provider), KRA keys generated on the KRA cards (or in
// software, for checks with `openssl cms -decrypt`), KRA certificates with
// EKU 1.3.6.1.4.1.311.21.6 issued by the CA and stored on their cards,
// users with software keys, and archives made the way the daemon makes
// them (hsm::SessionKey on the CA token + pki::BuildEnvelopedData). The
// KRA cards are closed (logged out) once provisioned: recovery opens them
// itself, as an operator's tool would.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/keys.h"
#include "hsm/provider/provider.h"
#include "hsm/symmetric.h"
#include "hsm/token.h"
#include "softhsm-fixtures/fixture.h"

namespace keywarden::testing {

struct Validity {
  long not_before = -60;              // seconds from now
  long not_after = 3600L * 24 * 365;  // seconds from now
};

struct RecoveryKra {
  std::string card;                        // token label; empty for a software KRA
  std::vector<uint8_t> key_id;             // CKA_ID of the key (and certificate) on the card
  ossl::UniquePtr<EVP_PKEY> software_key;  // software KRA only
  ossl::UniquePtr<X509> cert;
};

struct RecoveryUser {
  ossl::UniquePtr<EVP_PKEY> key;
  ossl::UniquePtr<X509> cert;
};

class RecoveryPki {
 public:
  struct Options {
    std::string ca_name = "CN=Recovery Test CA,O=keywarden";
    // KRA i (0-based) lives on this card; "" makes it a software key.
    std::vector<std::string> kra_cards = {SoftHsmFixture::kKraCard1, SoftHsmFixture::kKraCard2,
                                          SoftHsmFixture::kKraCard3};
    std::vector<Validity> kra_validity;  // per KRA; default valid for a year
  };

  // Needs a SoftHsmFixture already created (SOFTHSM2_CONF set).
  static absl::StatusOr<std::unique_ptr<RecoveryPki>> Create(const SoftHsmFixture& fixture,
                                                             const Options& options);
  static absl::StatusOr<std::unique_ptr<RecoveryPki>> Create(const SoftHsmFixture& fixture) {
    return Create(fixture, Options());
  }

  // A user with a fresh software RSA key and a certificate from the CA.
  absl::StatusOr<RecoveryUser> MakeUser(const std::string& cn, int bits = 2048);
  // A certificate from the CA for `public_key`; `kra` adds EKU 21.6.
  absl::StatusOr<ossl::UniquePtr<X509>> Issue(EVP_PKEY* public_key, const std::string& cn, bool kra,
                                              const Validity& validity = {});

  // The user's key archived to the KRAs with these indexes: PKCS#8 (or
  // `plaintext` if given) encrypted on the CA token.
  absl::StatusOr<std::vector<uint8_t>> Archive(
      const RecoveryUser& user, const std::vector<size_t>& kras,
      hsm::SymmetricAlgorithm algorithm = hsm::SymmetricAlgorithm::kDes3,
      hsm::WrapMechanism wrap = hsm::WrapMechanism::kRsaPkcs1,
      const std::vector<uint8_t>* plaintext = nullptr);
  // The recovery blob for an archive, signed by the CA key on the token.
  absl::StatusOr<std::vector<uint8_t>> Blob(const RecoveryUser& user,
                                            const std::vector<uint8_t>& envelope,
                                            const std::vector<size_t>& kras);

  X509* ca_cert() const { return ca_cert_.get(); }
  EVP_PKEY* ca_key() const { return ca_pkey_.get(); }
  const std::shared_ptr<hsm::CryptoContext>& crypto() const { return crypto_; }
  const std::shared_ptr<hsm::Token>& ca_token() const { return ca_token_; }
  std::vector<RecoveryKra>& kras() { return kras_; }

 private:
  RecoveryPki() = default;
  std::shared_ptr<hsm::CryptoContext> crypto_;
  std::shared_ptr<hsm::Token> ca_token_;
  ossl::UniquePtr<EVP_PKEY> ca_pkey_;
  ossl::UniquePtr<X509> ca_cert_;
  std::vector<RecoveryKra> kras_;
};

}  // namespace keywarden::testing
