// Key management for token keys: import of a token-key reference (or of a
// public key, for comparisons), public-parameter queries, export of the
// public part only, and match.
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/params.h>

#include "hsm/provider/internal.h"

namespace keywarden::hsm::provider {
namespace {

constexpr int kPublicSelection =
    OSSL_KEYMGMT_SELECT_PUBLIC_KEY | OSSL_KEYMGMT_SELECT_ALL_PARAMETERS;

void* NewRsa(void*) {
  auto* k = new ProvKey();
  k->type = KeyType::kRsa;
  return k;
}
void* NewEc(void*) {
  auto* k = new ProvKey();
  k->type = KeyType::kEc;
  return k;
}
void Free(void* keydata) {
  delete static_cast<ProvKey*>(keydata);
}

int Has(const void* keydata, int selection) {
  const auto* k = static_cast<const ProvKey*>(keydata);
  if (k == nullptr) return 0;
  if ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) == 0 &&
      (selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS) == 0) {
    return 1;
  }
  if ((selection & (OSSL_KEYMGMT_SELECT_PUBLIC_KEY | OSSL_KEYMGMT_SELECT_ALL_PARAMETERS)) != 0 &&
      k->pub == nullptr) {
    return 0;
  }
  if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && k->token_key == nullptr) return 0;
  return 1;
}

int Match(const void* a, const void* b, int) {
  const auto* ka = static_cast<const ProvKey*>(a);
  const auto* kb = static_cast<const ProvKey*>(b);
  if (ka == nullptr || kb == nullptr || ka->pub == nullptr || kb->pub == nullptr) return 0;
  // The public halves decide: a key pair is identified by its public key.
  return EVP_PKEY_eq(ka->pub, kb->pub) == 1 ? 1 : 0;
}

bool HasPrivateComponents(const OSSL_PARAM params[], KeyType type) {
  if (type == KeyType::kRsa) {
    return OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_RSA_D) != nullptr ||
           OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_RSA_FACTOR1) != nullptr;
  }
  return OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_PRIV_KEY) != nullptr;
}

int Import(void* keydata, int selection, const OSSL_PARAM params[]) {
  auto* k = static_cast<ProvKey*>(keydata);
  if (k == nullptr || params == nullptr) return 0;
  if (const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, kParamTokenKey)) {
    const void* ptr = nullptr;
    size_t len = 0;
    if (!OSSL_PARAM_get_octet_string_ptr(p, &ptr, &len) ||
        len != sizeof(std::shared_ptr<TokenKey>*)) {
      return 0;
    }
    std::shared_ptr<TokenKey>* ref;
    std::memcpy(&ref, ptr, sizeof ref);
    if (ref == nullptr || !*ref || !(*ref)->public_key) return 0;
    if (((*ref)->type == KeyType::kRsa) != (k->type == KeyType::kRsa)) return 0;
    k->token_key = *ref;
    EVP_PKEY_up_ref(k->token_key->public_key.get());
    EVP_PKEY_free(k->pub);
    k->pub = k->token_key->public_key.get();
    return 1;
  }
  // Key material from another provider: only a public key is meaningful here
  // (used to compare a certificate with a token key). Refusing private keys
  // makes OpenSSL fall back to the software key's own provider.
  if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) == 0) return 0;
  if (HasPrivateComponents(params, k->type)) return 0;
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(
      EVP_PKEY_CTX_new_from_name(nullptr, k->type == KeyType::kRsa ? "RSA" : "EC", nullptr));
  EVP_PKEY* pub = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &pub, EVP_PKEY_PUBLIC_KEY, const_cast<OSSL_PARAM*>(params)) <=
          0) {
    return 0;
  }
  EVP_PKEY_free(k->pub);
  k->pub = pub;
  return 1;
}

const OSSL_PARAM kRsaPublicTypes[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM kEcPublicTypes[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM* RsaTypes(int) {
  return kRsaPublicTypes;
}
const OSSL_PARAM* EcTypes(int) {
  return kEcPublicTypes;
}

int Export(void* keydata, int selection, OSSL_CALLBACK* cb, void* cbarg) {
  auto* k = static_cast<ProvKey*>(keydata);
  if (k == nullptr || k->pub == nullptr) return 0;
  // The private half never leaves the token.
  if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0) return 0;
  OSSL_PARAM* params = nullptr;
  if (EVP_PKEY_todata(k->pub,
                      selection & kPublicSelection ? EVP_PKEY_PUBLIC_KEY : EVP_PKEY_KEY_PARAMETERS,
                      &params) <= 0) {
    return 0;
  }
  int ok = cb(params, cbarg);
  OSSL_PARAM_free(params);
  return ok;
}

int GetParams(void* keydata, OSSL_PARAM params[]) {
  auto* k = static_cast<ProvKey*>(keydata);
  if (k == nullptr || k->pub == nullptr) return 0;
  // Everything asked of a key here (size, security bits, maximum signature
  // size, default digest, public components) follows from the public key.
  return EVP_PKEY_get_params(k->pub, params);
}

const OSSL_PARAM kRsaGettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, nullptr),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM kEcGettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, nullptr),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM* RsaGettable(void*) {
  return kRsaGettable;
}
const OSSL_PARAM* EcGettable(void*) {
  return kEcGettable;
}

const char* RsaOperationName(int) {
  return "RSA";
}
const char* EcOperationName(int operation) {
  return operation == OSSL_OP_SIGNATURE ? "ECDSA" : nullptr;
}

void* Dup(const void* keydata, int) {
  const auto* k = static_cast<const ProvKey*>(keydata);
  if (k == nullptr) return nullptr;
  auto* d = new ProvKey();
  d->type = k->type;
  d->token_key = k->token_key;
  if (k->pub != nullptr) {
    EVP_PKEY_up_ref(k->pub);
    d->pub = k->pub;
  }
  return d;
}

}  // namespace

#define KEYWARDEN_KEYMGMT(name, newfn, types, gettable, opname) \
  const OSSL_DISPATCH name[] = {                                \
      Fn(OSSL_FUNC_KEYMGMT_NEW, newfn),                         \
      Fn(OSSL_FUNC_KEYMGMT_FREE, Free),                         \
      Fn(OSSL_FUNC_KEYMGMT_HAS, Has),                           \
      Fn(OSSL_FUNC_KEYMGMT_MATCH, Match),                       \
      Fn(OSSL_FUNC_KEYMGMT_IMPORT, Import),                     \
      Fn(OSSL_FUNC_KEYMGMT_IMPORT_TYPES, types),                \
      Fn(OSSL_FUNC_KEYMGMT_EXPORT, Export),                     \
      Fn(OSSL_FUNC_KEYMGMT_EXPORT_TYPES, types),                \
      Fn(OSSL_FUNC_KEYMGMT_GET_PARAMS, GetParams),              \
      Fn(OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, gettable),          \
      Fn(OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, opname),       \
      Fn(OSSL_FUNC_KEYMGMT_DUP, Dup),                           \
      {0, nullptr},                                             \
  };

KEYWARDEN_KEYMGMT(kRsaKeymgmt, NewRsa, RsaTypes, RsaGettable, RsaOperationName)
KEYWARDEN_KEYMGMT(kEcKeymgmt, NewEc, EcTypes, EcGettable, EcOperationName)

#undef KEYWARDEN_KEYMGMT

}  // namespace keywarden::hsm::provider
