// Private keys that live on a token, and the public objects beside them.
// Generated private keys are always CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE
// and never extractable: only their public part ever leaves the token.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "hsm/pkcs11.h"
#include "hsm/token.h"
#include "hsm/uri.h"

namespace keywarden::hsm {

enum class KeyAlgorithm { kRsa2048, kRsa3072, kRsa4096, kEcP256, kEcP384 };
enum class KeyType { kRsa, kEc };

// "rsa2048", "rsa3072", "rsa4096", "ec-p256", "ec-p384" (also "p256"...).
absl::StatusOr<KeyAlgorithm> ParseKeyAlgorithm(std::string_view name);
std::string KeyAlgorithmName(KeyAlgorithm algorithm);
// The RSA modulus or EC field size: 2048, 3072, 4096, 256, 384.
size_t KeyAlgorithmBits(KeyAlgorithm algorithm);

struct KeyUsage {
  bool sign = true;
  bool decrypt = false;  // RSA only: key transport (CMS KeyTransRecipientInfo)
};

struct KeySpec {
  KeyAlgorithm algorithm = KeyAlgorithm::kRsa2048;
  std::string label;
  // CKA_ID; when empty it is set to the SHA-1 of the public key bits, which is
  // also the subject key identifier of certificates for the key.
  std::vector<uint8_t> id;
  KeyUsage usage;
};

// A private key on a token, with its public part read from the token.
struct TokenKey {
  std::shared_ptr<Token> token;
  CK_OBJECT_HANDLE private_handle = CK_INVALID_HANDLE;  // as found; may be void after recovery
  // What operations use: found again after a module re-initialisation.
  std::shared_ptr<KeyHandle> handle;
  KeyType type = KeyType::kRsa;
  std::string label;
  std::vector<uint8_t> id;
  size_t bits = 0;
  // Software public key (default library context).
  ossl::UniquePtr<EVP_PKEY> public_key;

  // Bytes of the largest signature / decryption output for this key.
  size_t MaxSignatureSize() const;
  std::string Describe() const;  // "RSA-2048 key \"ca-signing\" on token \"keywarden-ca\""
};

// Generates a key pair on the token. Refuses a label already used by any
// object on the token.
absl::StatusOr<std::shared_ptr<TokenKey>> GenerateKeyPair(std::shared_ptr<Token> token,
                                                          const KeySpec& spec);

// The private key named by the URI's object label and/or id.
absl::StatusOr<std::shared_ptr<TokenKey>> FindPrivateKey(std::shared_ptr<Token> token,
                                                         const Pkcs11Uri& uri);
absl::StatusOr<std::shared_ptr<TokenKey>> FindPrivateKey(std::shared_ptr<Token> token,
                                                         std::string_view label,
                                                         std::span<const uint8_t> id = {});

// Token objects (CKA_TOKEN=TRUE, public) for a certificate or a public key.
// Refuse a label already used by an object of the same class (a certificate
// conventionally shares label and CKA_ID with its key).
absl::StatusOr<CK_OBJECT_HANDLE> ImportCertificate(Token& token, X509* cert, std::string_view label,
                                                   std::span<const uint8_t> id);
absl::StatusOr<CK_OBJECT_HANDLE> ImportPublicKey(Token& token, EVP_PKEY* key,
                                                 std::string_view label,
                                                 std::span<const uint8_t> id);

// Imports an existing software RSA private key to the token (CKA_TOKEN,
// CKA_PRIVATE, CKA_SENSITIVE, not extractable; CKA_ID = SHA-1 of the public
// key bits), e.g. a key being moved onto an HSM. Refuses a label in use.
absl::StatusOr<std::shared_ptr<TokenKey>> ImportRsaPrivateKey(std::shared_ptr<Token> token,
                                                              EVP_PKEY* key, std::string_view label,
                                                              const KeyUsage& usage);

// Certificates on the token with the given label and/or id (either may be empty).
absl::StatusOr<std::vector<ossl::UniquePtr<X509>>> FindCertificates(Token& token,
                                                                    std::string_view label,
                                                                    std::span<const uint8_t> id);

// SHA-1 of the subjectPublicKey BIT STRING contents (RFC 5280 key id method 1).
absl::StatusOr<std::vector<uint8_t>> PublicKeySha1(EVP_PKEY* key);

// Low-level object helpers shared by the layers above.
absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> FindObjects(Session& session,
                                                          std::vector<CK_ATTRIBUTE> match);
absl::StatusOr<std::vector<uint8_t>> GetAttribute(Session& session, CK_OBJECT_HANDLE object,
                                                  CK_ATTRIBUTE_TYPE type);
// True when an object with `label` (of `object_class`, if given) exists, or
// when the search itself fails (callers refuse rather than risk a clash).
bool LabelInUse(Session& session, std::string_view label,
                std::optional<CK_OBJECT_CLASS> object_class = std::nullopt);

// The software public key of a public-key object (RSA or EC) on the token.
absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> PublicKeyFromObject(Session& session,
                                                              CK_OBJECT_HANDLE public_object);

// Session object (CKA_TOKEN=FALSE) for an RSA public key, usable to wrap.
absl::StatusOr<CK_OBJECT_HANDLE> CreateRsaWrappingKey(Session& session, EVP_PKEY* key);

}  // namespace keywarden::hsm
