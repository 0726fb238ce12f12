// Shared between the provider's operation files. Not for use outside hsm/provider.
#pragma once

#include <memory>
#include <string>

#include <openssl/core_dispatch.h>
#include <openssl/err.h>

#include "absl/status/status.h"
#include "hsm/keys.h"
#include "hsm/ossl.h"

namespace keywarden::hsm::provider {

// Parameter that carries a std::shared_ptr<TokenKey>* into keymgmt import.
// Only CryptoContext::Load sets it: it never comes from outside the process.
inline constexpr char kParamTokenKey[] = "keywarden.token-key";

// The provider's key object ("keydata"). Either backed by a token key, or
// public-only (imported from another provider so OpenSSL can compare a
// certificate's key with a token key).
struct ProvKey {
  KeyType type = KeyType::kRsa;
  std::shared_ptr<TokenKey> token_key;  // null when public-only
  EVP_PKEY* pub = nullptr;              // software public key, owned (ref-counted)

  ~ProvKey() { EVP_PKEY_free(pub); }
};

// Puts a message on the calling thread's OpenSSL error queue.
void RaiseError(const std::string& message);
void RaiseError(const absl::Status& status);

// Digests fetched once from the default library context.
const EVP_MD* FindDigest(const char* name);
// PKCS#11 hash and MGF for a digest; false if the token has no such mechanism.
bool Pkcs11HashFor(const EVP_MD* md, CK_MECHANISM_TYPE* hash, CK_RSA_PKCS_MGF_TYPE* mgf);

// One entry of a dispatch table: OpenSSL stores every function as void(*)(void).
template <typename F>
OSSL_DISPATCH Fn(int id, F f) {
  return OSSL_DISPATCH{id, reinterpret_cast<void (*)(void)>(f)};
}

extern const OSSL_DISPATCH kRsaKeymgmt[];
extern const OSSL_DISPATCH kEcKeymgmt[];
extern const OSSL_DISPATCH kRsaSignature[];
extern const OSSL_DISPATCH kEcdsaSignature[];
extern const OSSL_DISPATCH kRsaAsymCipher[];

}  // namespace keywarden::hsm::provider
