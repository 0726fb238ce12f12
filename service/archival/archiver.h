// Key archival on the CA (seed: "Key Verification", "Key Encryption";
// ARCHITECTURE.md §4 steps 3-4).
//
// A submitted key arrives encrypted to a CA exchange certificate. The
// archiver decrypts it with that exchange key on the token (the RSA step
// runs on the token; the key is chosen by the RecipientInfo's issuer and
// serial among the unexpired exchange certificates), checks it (RSA, not a
// signature-only AT_SIGNATURE blob, pairs with the request's public key by
// encrypting random data with one and decrypting with the other), then
// archives it: a fresh 3DES (or AES-256) key made on the token encrypts the
// PKCS#8 on the token, and is wrapped on the token to each of the next N
// valid KRAs. The result is a CMS EnvelopedData only a KRA can open.
// Plaintext key bytes live in zeroing buffers and are wiped before any
// method returns, on success and on every error.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "hsm/provider/provider.h"
#include "hsm/selftest.h"
#include "hsm/token.h"
#include "service/archival/kra_registry.h"
#include "service/ca/exchange.h"
#include "service/storage/store.h"

namespace keywarden::service {

class KeyArchiver {
 public:
  // `scheme`: "des3-rsa-pkcs1" (Windows, default) or "aes256-rsa-oaep".
  // `threshold`: [kra] threshold; 1 makes Windows-format archives (the
  // content key wrapped whole to each KRA on the token), k >= 2 threshold
  // archives (pki/threshold.h, docs/THRESHOLD.md).
  KeyArchiver(std::shared_ptr<hsm::Token> token, std::shared_ptr<hsm::CryptoContext> crypto,
              ExchangeKeys& exchange, KraRegistry& kras, std::string scheme, int threshold = 1)
      : token_(std::move(token)),
        crypto_(std::move(crypto)),
        exchange_(exchange),
        kras_(kras),
        scheme_(std::move(scheme)),
        threshold_(threshold) {}

  // A CMC request's encrypted key (the whole 1.3.6.1.4.1.311.21.13
  // ContentInfo) for a request whose public key is `request_public`.
  // `encrypted_key_hash` (the 21.21 value, already checked by the parser)
  // is recorded with the archive.
  absl::StatusOr<ArchivedKey> ArchiveSubmitted(std::span<const uint8_t> encrypted_key,
                                               const std::vector<uint8_t>& encrypted_key_hash,
                                               EVP_PKEY* request_public);

  // Manual archival (importpfx): a key already in memory, checked against
  // the certificate's public key the same way.
  absl::StatusOr<ArchivedKey> ArchiveKey(EVP_PKEY* private_key, EVP_PKEY* certificate_public);

  // The archival self-test (seed: events 86/88): the archival subset of
  // `keywarden token selftest` on the CA token (the configured scheme's
  // content key and CBC, the wrap to a KRA, the exchange key's size and
  // decryption), run at start and after a token outage is recovered.
  struct SelfTest {
    enum class State { kNotRun, kPassed, kFailed } state = State::kNotRun;
    std::string failures;  // SelfTestFailures: "<check> -> <CKR_...> (...)"; ...
    std::vector<hsm::SelfTestCheck> checks;
  };
  // Runs it and keeps its verdict, except when a token fault interrupted
  // it (then the previous verdict stays; the run after recovery decides).
  SelfTest RunSelfTest(CK_ULONG exchange_bits);
  SelfTest self_test() const;
  // OK unless the last self-test failed: then the seed's event 86 error
  // (0x80090019 NTE_KEYSET_NOT_DEF, FAILED_PRECONDITION, marked as a
  // mechanism refusal: the CA's side, never the client's) naming the
  // failed checks. Every archival is refused with it.
  absl::Status SelfTestRefusal() const;

 private:
  // Decrypts the submitted ContentInfo with the matching exchange key.
  absl::StatusOr<hsm::SecretBytes> Decrypt(std::span<const uint8_t> encrypted_key);
  // Checks `private_key` against `public_key` and archives its PKCS#8.
  absl::StatusOr<ArchivedKey> Archive(EVP_PKEY* private_key, EVP_PKEY* public_key,
                                      std::vector<uint8_t> hash);
  absl::StatusOr<std::shared_ptr<EVP_PKEY>> ExchangeKey(const ExchangeCertificate& x);
  // The k >= 2 envelope of `pkcs8` to the selected KRAs.
  absl::StatusOr<std::vector<uint8_t>> ThresholdEnvelope(
      const hsm::SecretBytes& pkcs8, const std::vector<std::shared_ptr<X509>>& kras, bool modern);

  std::shared_ptr<hsm::Token> token_;
  std::shared_ptr<hsm::CryptoContext> crypto_;
  ExchangeKeys& exchange_;
  KraRegistry& kras_;
  std::string scheme_;
  int threshold_ = 1;
  mutable std::mutex self_test_mu_;
  SelfTest self_test_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<EVP_PKEY>> exchange_keys_;  // by exchange serial
};

}  // namespace keywarden::service
