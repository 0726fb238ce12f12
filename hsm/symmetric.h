// Content-encryption keys made on the token for key archival. A SessionKey
// is a session object (CKA_TOKEN=FALSE) that is sensitive and extractable
// only by wrapping: its value never appears in host memory in the clear.
// It is destroyed when the SessionKey goes out of scope.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include <openssl/evp.h>
#include "absl/status/statusor.h"

#include "hsm/pkcs11.h"
#include "hsm/token.h"

namespace keywarden::hsm {

enum class SymmetricAlgorithm {
  kDes3,    // 24-byte DES-EDE3, CKM_DES3_CBC_PAD (the Windows archival scheme)
  kAes256,  // 32-byte AES, CKM_AES_CBC_PAD
};
enum class WrapMechanism {
  kRsaPkcs1,     // CKM_RSA_PKCS
  kRsaOaepSha1,  // CKM_RSA_PKCS_OAEP, SHA-1, MGF1-SHA1, no label
};

struct Ciphertext {
  std::vector<uint8_t> iv;
  std::vector<uint8_t> data;
};

class SessionKey {
 public:
  static absl::StatusOr<SessionKey> Generate(std::shared_ptr<Token> token,
                                             SymmetricAlgorithm algorithm);
  // KRA rollover (keywarden kra rewrap): a content key wrapped to an RSA
  // key of this token, unwrapped ON the token (C_UnwrapKey) into a session
  // object that is sensitive and extractable only by wrapping. `unwrapping_key`:
  // the private key (it needs CKA_UNWRAP). The token's refusal (e.g.
  // CKR_KEY_FUNCTION_NOT_PERMITTED for a key made without CKA_UNWRAP) is
  // returned as FAILED_PRECONDITION with the PKCS#11 code in the message.
  static absl::StatusOr<SessionKey> Unwrap(std::shared_ptr<Token> token, KeyHandle& unwrapping_key,
                                           WrapMechanism mechanism,
                                           std::span<const uint8_t> wrapped,
                                           SymmetricAlgorithm algorithm);
  // The fallback when the token cannot unwrap: a key value (decrypted on the
  // token with C_Decrypt, held only in wiped memory by the caller) made a
  // session object of the same kind, so wrapping still happens on the token.
  static absl::StatusOr<SessionKey> Import(std::shared_ptr<Token> token,
                                           std::span<const uint8_t> value,
                                           SymmetricAlgorithm algorithm);
  SessionKey(SessionKey&& other) noexcept;
  SessionKey& operator=(SessionKey&&) = delete;
  SessionKey(const SessionKey&) = delete;
  ~SessionKey();

  SymmetricAlgorithm algorithm() const { return algorithm_; }
  size_t key_length() const { return algorithm_ == SymmetricAlgorithm::kDes3 ? 24 : 32; }
  size_t block_size() const { return algorithm_ == SymmetricAlgorithm::kDes3 ? 8 : 16; }

  // CBC with PKCS#7 padding under a fresh IV taken from the token's RNG.
  absl::StatusOr<Ciphertext> Encrypt(std::span<const uint8_t> plaintext);

  // The key wrapped (C_WrapKey) to an RSA public key, e.g. a KRA certificate's.
  absl::StatusOr<std::vector<uint8_t>> WrapTo(EVP_PKEY* rsa_public, WrapMechanism mechanism);

  // For inspection (tests): the key object and the session that owns it.
  CK_OBJECT_HANDLE handle() const { return handle_; }
  Session& session() { return session_; }

 private:
  SessionKey(Session session, CK_OBJECT_HANDLE handle, SymmetricAlgorithm algorithm)
      : session_(std::move(session)), handle_(handle), algorithm_(algorithm) {}

  Session session_;  // held for the key's lifetime: session objects die with it
  CK_OBJECT_HANDLE handle_;
  SymmetricAlgorithm algorithm_;
};

}  // namespace keywarden::hsm
