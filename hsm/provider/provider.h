// An OpenSSL library context in which token keys are ordinary EVP_PKEYs.
//
// The context holds OpenSSL's default provider (digests, ciphers, public-key
// operations on certificates) and keywarden's own in-process provider,
// registered with OSSL_PROVIDER_add_builtin. The provider implements, for
// keys on a PKCS#11 token: key management (public parameters and export of
// the public part only, match against certificates), signature (RSA PKCS#1
// v1.5 and PSS, ECDSA; hashing in software, the token signs the digest) and
// asymmetric decryption (RSA PKCS#1 v1.5, OAEP, raw). With it, X509_sign,
// X509_CRL_sign, CMS_sign, CMS_decrypt, EVP_DigestSign and EVP_PKEY_decrypt
// work on token keys unchanged: pass this context's libctx() to the _ex
// variants of OpenSSL calls that take one.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "hsm/keys.h"
#include "hsm/ossl.h"

namespace keywarden::hsm {

inline constexpr char kProviderName[] = "keywarden-pkcs11";

// Property query for hot paths that know they use a token key: OpenSSL then
// fetches keywarden's implementation first instead of first trying the
// default provider (which cannot take the key) on every operation. It is a
// preference ("?"), so a software key given by mistake still works.
inline constexpr char kTokenKeyProperties[] = "?provider=keywarden-pkcs11";

class CryptoContext {
 public:
  static absl::StatusOr<std::shared_ptr<CryptoContext>> Create();
  ~CryptoContext();
  CryptoContext(const CryptoContext&) = delete;
  CryptoContext& operator=(const CryptoContext&) = delete;

  OSSL_LIB_CTX* libctx() const { return libctx_; }

  // An EVP_PKEY whose private operations run on the token. Its public part
  // exports and encodes like any other key (X509_set_pubkey, i2d_PUBKEY).
  absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> Load(std::shared_ptr<TokenKey> key) const;

 private:
  CryptoContext() = default;
  OSSL_LIB_CTX* libctx_ = nullptr;
  OSSL_PROVIDER* default_ = nullptr;
  OSSL_PROVIDER* keywarden_ = nullptr;
};

// True when `key` is served by keywarden's provider (its private half is on a token).
bool IsTokenKey(const EVP_PKEY* key);

}  // namespace keywarden::hsm
