// RSA decryption with token keys: PKCS#1 v1.5 (CMS key transport, the
// Windows archival format), OAEP, and raw. Encryption is a public-key
// operation and stays with OpenSSL's default provider.
#include <cstring>
#include <string>
#include <vector>

#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rsa.h>

#include "hsm/provider/internal.h"
#include "hsm/status.h"

namespace keywarden::hsm::provider {
namespace {

struct CipherCtx {
  std::shared_ptr<TokenKey> key;
  int pad = RSA_PKCS1_PADDING;
  const EVP_MD* oaep_md = nullptr;  // default SHA-1
  const EVP_MD* mgf1 = nullptr;     // default: the OAEP digest
  std::vector<uint8_t> label;
};

void* NewCtx(void*) {
  return new CipherCtx();
}
void FreeCtx(void* ctx) {
  delete static_cast<CipherCtx*>(ctx);
}
void* DupCtx(void* ctx) {
  return new CipherCtx(*static_cast<CipherCtx*>(ctx));
}

int SetCtxParams(void* vctx, const OSSL_PARAM params[]);

int DecryptInit(void* ctx, void* keydata, const OSSL_PARAM params[]) {
  auto* c = static_cast<CipherCtx*>(ctx);
  auto* k = static_cast<ProvKey*>(keydata);
  if (k == nullptr || !k->token_key || k->type != KeyType::kRsa) {
    RaiseError("keywarden provider: this key has no private RSA half on a token");
    return 0;
  }
  c->key = k->token_key;
  return SetCtxParams(c, params);
}

int Decrypt(void* ctx, unsigned char* out, size_t* outlen, size_t outsize, const unsigned char* in,
            size_t inlen) {
  auto* c = static_cast<CipherCtx*>(ctx);
  if (!c->key) return 0;
  const size_t max = c->key->MaxSignatureSize();
  if (out == nullptr) {
    *outlen = max;
    return 1;
  }
  CK_RSA_PKCS_OAEP_PARAMS oaep{};
  CK_MECHANISM mech{CKM_RSA_PKCS, nullptr, 0};
  if (c->pad == RSA_PKCS1_OAEP_PADDING) {
    const EVP_MD* md = c->oaep_md ? c->oaep_md : FindDigest("SHA1");
    const EVP_MD* mgf = c->mgf1 ? c->mgf1 : md;
    CK_RSA_PKCS_MGF_TYPE unused_mgf;
    CK_MECHANISM_TYPE unused_hash;
    if (!Pkcs11HashFor(md, &oaep.hashAlg, &unused_mgf) ||
        !Pkcs11HashFor(mgf, &unused_hash, &oaep.mgf)) {
      RaiseError("keywarden provider: OAEP digest not supported by PKCS#11");
      return 0;
    }
    oaep.source = CKZ_DATA_SPECIFIED;
    oaep.pSourceData = c->label.empty() ? nullptr : c->label.data();
    oaep.ulSourceDataLen = static_cast<CK_ULONG>(c->label.size());
    mech = CK_MECHANISM{CKM_RSA_PKCS_OAEP, &oaep, sizeof oaep};
  } else if (c->pad == RSA_NO_PADDING) {
    mech.mechanism = CKM_RSA_X_509;
  } else if (c->pad != RSA_PKCS1_PADDING) {
    RaiseError("keywarden provider: unsupported RSA padding for decryption");
    return 0;
  }
  auto plain = c->key->token->Decrypt(*c->key->handle, mech, {in, inlen}, max);
  if (!plain.ok()) {
    RaiseError(plain.status());
    return 0;
  }
  if (plain->size() > outsize) {
    RaiseError("keywarden provider: decryption output buffer too small");
    return 0;
  }
  std::memcpy(out, plain->data(), plain->size());
  *outlen = plain->size();
  return 1;
}

const EVP_MD* DigestParam(const OSSL_PARAM* p) {
  const char* name = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(p, &name)) return nullptr;
  return FindDigest(name);
}

int SetCtxParams(void* vctx, const OSSL_PARAM params[]) {
  auto* c = static_cast<CipherCtx*>(vctx);
  if (params == nullptr) return 1;
  const OSSL_PARAM* p;
  if ((p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_PAD_MODE)) != nullptr) {
    int pad = -1;
    if (p->data_type == OSSL_PARAM_INTEGER) {
      if (!OSSL_PARAM_get_int(p, &pad)) return 0;
    } else {
      const char* s = nullptr;
      if (!OSSL_PARAM_get_utf8_string_ptr(p, &s)) return 0;
      if (std::strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0) pad = RSA_PKCS1_PADDING;
      if (std::strcmp(s, OSSL_PKEY_RSA_PAD_MODE_OAEP) == 0) pad = RSA_PKCS1_OAEP_PADDING;
      if (std::strcmp(s, OSSL_PKEY_RSA_PAD_MODE_NONE) == 0) pad = RSA_NO_PADDING;
    }
    if (pad != RSA_PKCS1_PADDING && pad != RSA_PKCS1_OAEP_PADDING && pad != RSA_NO_PADDING) {
      RaiseError("keywarden provider: RSA decryption uses PKCS#1 v1.5, OAEP or no padding");
      return 0;
    }
    c->pad = pad;
  }
  if ((p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST)) != nullptr) {
    if ((c->oaep_md = DigestParam(p)) == nullptr) return 0;
  }
  if ((p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST)) != nullptr) {
    if ((c->mgf1 = DigestParam(p)) == nullptr) return 0;
  }
  if ((p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL)) != nullptr) {
    const void* data = nullptr;
    size_t len = 0;
    if (!OSSL_PARAM_get_octet_string_ptr(p, &data, &len)) return 0;
    auto* b = static_cast<const uint8_t*>(data);
    c->label.assign(b, b + len);
  }
  return 1;
}

int GetCtxParams(void* vctx, OSSL_PARAM params[]) {
  auto* c = static_cast<CipherCtx*>(vctx);
  OSSL_PARAM* p;
  if ((p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_PAD_MODE)) != nullptr) {
    if (p->data_type == OSSL_PARAM_INTEGER) {
      if (!OSSL_PARAM_set_int(p, c->pad)) return 0;
    } else {
      const char* s = c->pad == RSA_PKCS1_OAEP_PADDING ? OSSL_PKEY_RSA_PAD_MODE_OAEP
                      : c->pad == RSA_NO_PADDING       ? OSSL_PKEY_RSA_PAD_MODE_NONE
                                                       : OSSL_PKEY_RSA_PAD_MODE_PKCSV15;
      if (!OSSL_PARAM_set_utf8_string(p, s)) return 0;
    }
  }
  const EVP_MD* md = c->oaep_md ? c->oaep_md : FindDigest("SHA1");
  if ((p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST)) != nullptr) {
    if (!OSSL_PARAM_set_utf8_string(p, EVP_MD_get0_name(md))) return 0;
  }
  if ((p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST)) != nullptr) {
    if (!OSSL_PARAM_set_utf8_string(p, EVP_MD_get0_name(c->mgf1 ? c->mgf1 : md))) return 0;
  }
  if ((p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL)) != nullptr) {
    if (!OSSL_PARAM_set_octet_ptr(p, c->label.empty() ? nullptr : c->label.data(),
                                  c->label.size())) {
      return 0;
    }
  }
  return 1;
}

const OSSL_PARAM kCtxParams[] = {
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM* CtxParams(void*, void*) {
  return kCtxParams;
}

}  // namespace

const OSSL_DISPATCH kRsaAsymCipher[] = {
    Fn(OSSL_FUNC_ASYM_CIPHER_NEWCTX, NewCtx),
    Fn(OSSL_FUNC_ASYM_CIPHER_FREECTX, FreeCtx),
    Fn(OSSL_FUNC_ASYM_CIPHER_DUPCTX, DupCtx),
    Fn(OSSL_FUNC_ASYM_CIPHER_DECRYPT_INIT, DecryptInit),
    Fn(OSSL_FUNC_ASYM_CIPHER_DECRYPT, Decrypt),
    Fn(OSSL_FUNC_ASYM_CIPHER_GET_CTX_PARAMS, GetCtxParams),
    Fn(OSSL_FUNC_ASYM_CIPHER_GETTABLE_CTX_PARAMS, CtxParams),
    Fn(OSSL_FUNC_ASYM_CIPHER_SET_CTX_PARAMS, SetCtxParams),
    Fn(OSSL_FUNC_ASYM_CIPHER_SETTABLE_CTX_PARAMS, CtxParams),
    {0, nullptr},
};

}  // namespace keywarden::hsm::provider
