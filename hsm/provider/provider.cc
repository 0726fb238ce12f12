#include "hsm/provider/provider.h"

#include <openssl/core_names.h>
#include <openssl/params.h>

#include "hsm/provider/internal.h"
#include "hsm/status.h"

namespace keywarden::hsm {
namespace provider {

void RaiseError(const std::string& message) {
  ERR_raise_data(ERR_LIB_USER, ERR_R_OPERATION_FAIL, "%s", message.c_str());
}

void RaiseError(const absl::Status& status) {
  // A token fault keeps its kind through OpenSSL (OpenSslError turns it
  // back into UNAVAILABLE, the CA's side), however deep the call was.
  ERR_raise_data(ERR_LIB_USER, IsHsmFault(status) ? kTokenFaultReason : ERR_R_OPERATION_FAIL, "%s",
                 std::string(status.message()).c_str());
}

const EVP_MD* FindDigest(const char* name) {
  struct Digests {
    EVP_MD* md[5];
  };
  static const Digests* digests = [] {
    auto* d = new Digests{
        {EVP_MD_fetch(nullptr, "SHA1", nullptr), EVP_MD_fetch(nullptr, "SHA224", nullptr),
         EVP_MD_fetch(nullptr, "SHA256", nullptr), EVP_MD_fetch(nullptr, "SHA384", nullptr),
         EVP_MD_fetch(nullptr, "SHA512", nullptr)}};
    return d;
  }();
  if (name == nullptr) return nullptr;
  for (EVP_MD* md : digests->md) {
    if (md != nullptr && EVP_MD_is_a(md, name)) return md;
  }
  return nullptr;
}

bool Pkcs11HashFor(const EVP_MD* md, CK_MECHANISM_TYPE* hash, CK_RSA_PKCS_MGF_TYPE* mgf) {
  if (md == nullptr) return false;
  struct Map {
    const char* name;
    CK_MECHANISM_TYPE hash;
    CK_RSA_PKCS_MGF_TYPE mgf;
  };
  static const Map kMap[] = {
      {"SHA1", CKM_SHA_1, CKG_MGF1_SHA1},      {"SHA224", CKM_SHA224, CKG_MGF1_SHA224},
      {"SHA256", CKM_SHA256, CKG_MGF1_SHA256}, {"SHA384", CKM_SHA384, CKG_MGF1_SHA384},
      {"SHA512", CKM_SHA512, CKG_MGF1_SHA512},
  };
  for (const auto& m : kMap) {
    if (EVP_MD_is_a(md, m.name)) {
      *hash = m.hash;
      *mgf = m.mgf;
      return true;
    }
  }
  return false;
}

namespace {

const OSSL_ALGORITHM kKeymgmt[] = {
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", "provider=keywarden-pkcs11", kRsaKeymgmt,
     "RSA keys on a PKCS#11 token"},
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", "provider=keywarden-pkcs11", kEcKeymgmt,
     "EC keys on a PKCS#11 token"},
    {nullptr, nullptr, nullptr, nullptr},
};
const OSSL_ALGORITHM kSignature[] = {
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", "provider=keywarden-pkcs11", kRsaSignature,
     "RSA PKCS#1 v1.5 and PSS signatures on a PKCS#11 token"},
    {"ECDSA", "provider=keywarden-pkcs11", kEcdsaSignature, "ECDSA on a PKCS#11 token"},
    {nullptr, nullptr, nullptr, nullptr},
};
const OSSL_ALGORITHM kAsymCipher[] = {
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", "provider=keywarden-pkcs11", kRsaAsymCipher,
     "RSA decryption on a PKCS#11 token"},
    {nullptr, nullptr, nullptr, nullptr},
};

const OSSL_ALGORITHM* Query(void*, int operation_id, int* no_cache) {
  *no_cache = 0;
  switch (operation_id) {
    case OSSL_OP_KEYMGMT:
      return kKeymgmt;
    case OSSL_OP_SIGNATURE:
      return kSignature;
    case OSSL_OP_ASYM_CIPHER:
      return kAsymCipher;
    default:
      return nullptr;
  }
}

const OSSL_PARAM kProviderParams[] = {
    OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_NAME, nullptr, 0),
    OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_VERSION, nullptr, 0),
    OSSL_PARAM_int(OSSL_PROV_PARAM_STATUS, nullptr),
    OSSL_PARAM_END,
};
const OSSL_PARAM* GettableParams(void*) {
  return kProviderParams;
}

int GetParams(void*, OSSL_PARAM params[]) {
  OSSL_PARAM* p;
  if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME)) != nullptr &&
      !OSSL_PARAM_set_utf8_ptr(p, "keywarden PKCS#11 provider")) {
    return 0;
  }
  if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION)) != nullptr &&
      !OSSL_PARAM_set_utf8_ptr(p, "0.1.0")) {
    return 0;
  }
  if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS)) != nullptr &&
      !OSSL_PARAM_set_int(p, 1)) {
    return 0;
  }
  return 1;
}

void Teardown(void*) {}

const OSSL_DISPATCH kProviderDispatch[] = {
    Fn(OSSL_FUNC_PROVIDER_QUERY_OPERATION, Query),
    Fn(OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, GettableParams),
    Fn(OSSL_FUNC_PROVIDER_GET_PARAMS, GetParams),
    Fn(OSSL_FUNC_PROVIDER_TEARDOWN, Teardown),
    {0, nullptr},
};

int ProviderInit(const OSSL_CORE_HANDLE*, const OSSL_DISPATCH*, const OSSL_DISPATCH** out,
                 void** provctx) {
  *out = kProviderDispatch;
  *provctx = nullptr;
  return 1;
}

}  // namespace
}  // namespace provider

absl::StatusOr<std::shared_ptr<CryptoContext>> CryptoContext::Create() {
  std::shared_ptr<CryptoContext> ctx(new CryptoContext());
  ctx->libctx_ = OSSL_LIB_CTX_new();
  if (ctx->libctx_ == nullptr) return OpenSslError("create OpenSSL library context");
  // The default provider first: with no property query OpenSSL uses the
  // first implementation it finds, so software keys keep their own provider
  // and token keys are served by ours (OpenSSL retries with the key's own
  // provider when the first one cannot take the key).
  ctx->default_ = OSSL_PROVIDER_load(ctx->libctx_, "default");
  if (ctx->default_ == nullptr) return OpenSslError("load OpenSSL default provider");
  if (!OSSL_PROVIDER_add_builtin(ctx->libctx_, kProviderName, provider::ProviderInit)) {
    return OpenSslError("register keywarden provider");
  }
  ctx->keywarden_ = OSSL_PROVIDER_load(ctx->libctx_, kProviderName);
  if (ctx->keywarden_ == nullptr) return OpenSslError("load keywarden provider");
  return ctx;
}

CryptoContext::~CryptoContext() {
  if (keywarden_ != nullptr) OSSL_PROVIDER_unload(keywarden_);
  if (default_ != nullptr) OSSL_PROVIDER_unload(default_);
  OSSL_LIB_CTX_free(libctx_);
}

absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> CryptoContext::Load(std::shared_ptr<TokenKey> key) const {
  if (!key || !key->public_key) return absl::InvalidArgumentError("load key: no token key");
  const char* type = key->type == KeyType::kRsa ? "RSA" : "EC";
  ossl::UniquePtr<EVP_PKEY_CTX> pctx(
      EVP_PKEY_CTX_new_from_name(libctx_, type, "provider=keywarden-pkcs11"));
  if (!pctx || EVP_PKEY_fromdata_init(pctx.get()) <= 0) {
    return OpenSslError("load token key into OpenSSL");
  }
  std::shared_ptr<TokenKey>* ref = &key;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(provider::kParamTokenKey, &ref, sizeof ref),
      OSSL_PARAM_construct_end(),
  };
  EVP_PKEY* pkey = nullptr;
  if (EVP_PKEY_fromdata(pctx.get(), &pkey, EVP_PKEY_KEYPAIR, params) <= 0) {
    return OpenSslError("load token key into OpenSSL");
  }
  return ossl::UniquePtr<EVP_PKEY>(pkey);
}

bool IsTokenKey(const EVP_PKEY* key) {
  if (key == nullptr) return false;
  const OSSL_PROVIDER* prov = EVP_PKEY_get0_provider(key);
  return prov != nullptr && std::string_view(OSSL_PROVIDER_get0_name(prov)) == kProviderName;
}

}  // namespace keywarden::hsm
