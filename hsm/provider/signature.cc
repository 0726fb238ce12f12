// Signatures with token keys: RSA PKCS#1 v1.5, RSA-PSS and ECDSA. The
// message is hashed in software; the token signs the digest (CKM_RSA_PKCS
// over a DigestInfo, CKM_RSA_PKCS_PSS, CKM_ECDSA). ECDSA's r||s from the
// token is returned as a DER ECDSA-Sig-Value.
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

struct SigCtx {
  KeyType type = KeyType::kRsa;
  std::shared_ptr<TokenKey> key;
  const EVP_MD* md = nullptr;  // static, from FindDigest
  const EVP_MD* mgf1 = nullptr;
  int pad = RSA_PKCS1_PADDING;
  int saltlen = RSA_PSS_SALTLEN_DIGEST;
  EVP_MD_CTX* mdctx = nullptr;  // for DigestSign

  ~SigCtx() { EVP_MD_CTX_free(mdctx); }
};

// DER prefixes of DigestInfo { AlgorithmIdentifier, OCTET STRING digest }.
struct DigestInfoPrefix {
  const char* name;
  std::vector<uint8_t> prefix;
};
const std::vector<DigestInfoPrefix>& Prefixes() {
  static const auto* p = new std::vector<DigestInfoPrefix>{
      {"SHA1",
       {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14}},
      {"SHA224",
       {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04,
        0x05, 0x00, 0x04, 0x1c}},
      {"SHA256",
       {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20}},
      {"SHA384",
       {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
        0x05, 0x00, 0x04, 0x30}},
      {"SHA512",
       {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
        0x05, 0x00, 0x04, 0x40}},
  };
  return *p;
}

const std::vector<uint8_t>* PrefixFor(const EVP_MD* md) {
  for (const auto& p : Prefixes()) {
    if (EVP_MD_is_a(md, p.name)) return &p.prefix;
  }
  return nullptr;
}

void* NewRsa(void*, const char*) {
  return new SigCtx();
}
void* NewEc(void*, const char*) {
  auto* c = new SigCtx();
  c->type = KeyType::kEc;
  return c;
}
void FreeCtx(void* ctx) {
  delete static_cast<SigCtx*>(ctx);
}

void* DupCtx(void* ctx) {
  auto* src = static_cast<SigCtx*>(ctx);
  auto* d = new SigCtx();
  d->type = src->type;
  d->key = src->key;
  d->md = src->md;
  d->mgf1 = src->mgf1;
  d->pad = src->pad;
  d->saltlen = src->saltlen;
  if (src->mdctx != nullptr) {
    d->mdctx = EVP_MD_CTX_new();
    if (d->mdctx == nullptr || !EVP_MD_CTX_copy_ex(d->mdctx, src->mdctx)) {
      delete d;
      return nullptr;
    }
  }
  return d;
}

int SetCtxParams(void* vctx, const OSSL_PARAM params[]);

int Init(SigCtx* c, void* keydata, const OSSL_PARAM params[]) {
  auto* k = static_cast<ProvKey*>(keydata);
  if (k == nullptr || !k->token_key) {
    RaiseError("keywarden provider: this key has no private half on a token");
    return 0;
  }
  if ((k->type == KeyType::kEc) != (c->type == KeyType::kEc)) return 0;
  c->key = k->token_key;
  return SetCtxParams(c, params);
}

int SignInit(void* ctx, void* keydata, const OSSL_PARAM params[]) {
  return Init(static_cast<SigCtx*>(ctx), keydata, params);
}

int PssSaltLength(const SigCtx* c) {
  const int hlen = EVP_MD_get_size(c->md);
  const int em_len = static_cast<int>((c->key->bits - 1 + 7) / 8);
  switch (c->saltlen) {
    case RSA_PSS_SALTLEN_DIGEST:
      return hlen;
    case RSA_PSS_SALTLEN_MAX:
    case RSA_PSS_SALTLEN_AUTO:  // when signing, "auto" is the maximum
      return em_len - hlen - 2;
    default:
      return c->saltlen;
  }
}

absl::StatusOr<std::vector<uint8_t>> SignDigest(SigCtx* c, const unsigned char* tbs,
                                                size_t tbslen) {
  TokenKey& key = *c->key;
  const size_t max = key.MaxSignatureSize();
  std::span<const uint8_t> in(tbs, tbslen);
  if (c->md != nullptr && tbslen != static_cast<size_t>(EVP_MD_get_size(c->md))) {
    return absl::InvalidArgumentError("sign: digest length does not match the digest algorithm");
  }
  if (c->type == KeyType::kEc) {
    CK_MECHANISM mech{CKM_ECDSA, nullptr, 0};
    auto rs = key.token->Sign(*key.handle, mech, in, max);
    if (!rs.ok()) return rs.status();
    if (rs->empty() || rs->size() % 2 != 0)
      return absl::InternalError("ECDSA: odd signature from token");
    const int half = static_cast<int>(rs->size() / 2);
    ossl::UniquePtr<ECDSA_SIG> sig(ECDSA_SIG_new());
    BIGNUM* r = BN_bin2bn(rs->data(), half, nullptr);
    BIGNUM* s = BN_bin2bn(rs->data() + half, half, nullptr);
    if (!sig || !r || !s || !ECDSA_SIG_set0(sig.get(), r, s)) {
      BN_free(r);
      BN_free(s);
      return absl::InternalError("ECDSA: cannot encode signature");
    }
    unsigned char* der = nullptr;
    int len = i2d_ECDSA_SIG(sig.get(), &der);
    if (len <= 0) return absl::InternalError("ECDSA: cannot encode signature");
    std::vector<uint8_t> out(der, der + len);
    OPENSSL_free(der);
    return out;
  }
  if (c->pad == RSA_PKCS1_PSS_PADDING) {
    if (c->md == nullptr) return absl::InvalidArgumentError("RSA-PSS: no digest set");
    CK_RSA_PKCS_PSS_PARAMS pss{};
    CK_RSA_PKCS_MGF_TYPE unused;
    if (!Pkcs11HashFor(c->md, &pss.hashAlg, &unused) ||
        !Pkcs11HashFor(c->mgf1 ? c->mgf1 : c->md, &unused, &pss.mgf)) {
      return absl::InvalidArgumentError("RSA-PSS: digest not supported by PKCS#11");
    }
    int salt = PssSaltLength(c);
    if (salt < 0) return absl::InvalidArgumentError("RSA-PSS: salt length too long for the key");
    pss.sLen = static_cast<CK_ULONG>(salt);
    CK_MECHANISM mech{CKM_RSA_PKCS_PSS, &pss, sizeof pss};
    return key.token->Sign(*key.handle, mech, in, max);
  }
  if (c->pad != RSA_PKCS1_PADDING) {
    return absl::InvalidArgumentError("RSA sign: only PKCS#1 v1.5 and PSS padding are supported");
  }
  CK_MECHANISM mech{CKM_RSA_PKCS, nullptr, 0};
  if (c->md == nullptr) return key.token->Sign(*key.handle, mech, in, max);
  const std::vector<uint8_t>* prefix = PrefixFor(c->md);
  if (prefix == nullptr) return absl::InvalidArgumentError("RSA sign: digest has no DigestInfo");
  std::vector<uint8_t> info(*prefix);
  info.insert(info.end(), tbs, tbs + tbslen);
  return key.token->Sign(*key.handle, mech, info, max);
}

int Sign(void* ctx, unsigned char* sig, size_t* siglen, size_t sigsize, const unsigned char* tbs,
         size_t tbslen) {
  auto* c = static_cast<SigCtx*>(ctx);
  if (!c->key) return 0;
  if (sig == nullptr) {
    *siglen = c->key->MaxSignatureSize();
    return 1;
  }
  auto out = SignDigest(c, tbs, tbslen);
  if (!out.ok()) {
    RaiseError(out.status());
    return 0;
  }
  if (out->size() > sigsize) {
    RaiseError("keywarden provider: signature buffer too small");
    return 0;
  }
  std::memcpy(sig, out->data(), out->size());
  *siglen = out->size();
  return 1;
}

int DigestSignInit(void* ctx, const char* mdname, void* keydata, const OSSL_PARAM params[]) {
  auto* c = static_cast<SigCtx*>(ctx);
  if (!Init(c, keydata, params)) return 0;
  if (mdname != nullptr && *mdname != '\0') {
    c->md = FindDigest(mdname);
    if (c->md == nullptr) {
      RaiseError(std::string("keywarden provider: unsupported digest ") + mdname);
      return 0;
    }
  }
  if (c->md == nullptr) c->md = FindDigest("SHA256");
  if (c->mdctx == nullptr) c->mdctx = EVP_MD_CTX_new();
  return c->mdctx != nullptr && EVP_DigestInit_ex(c->mdctx, c->md, nullptr);
}

int DigestSignUpdate(void* ctx, const unsigned char* data, size_t len) {
  auto* c = static_cast<SigCtx*>(ctx);
  return c->mdctx != nullptr && EVP_DigestUpdate(c->mdctx, data, len);
}

int DigestSignFinal(void* ctx, unsigned char* sig, size_t* siglen, size_t sigsize) {
  auto* c = static_cast<SigCtx*>(ctx);
  if (c->mdctx == nullptr || !c->key) return 0;
  if (sig == nullptr) {
    *siglen = c->key->MaxSignatureSize();
    return 1;
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  if (!EVP_DigestFinal_ex(c->mdctx, digest, &dlen)) return 0;
  return Sign(ctx, sig, siglen, sigsize, digest, dlen);
}

// The AlgorithmIdentifier a certificate, CRL or CMS structure should carry.
std::vector<uint8_t> AlgorithmId(const SigCtx* c) {
  std::vector<uint8_t> out;
  if (c->md == nullptr) return out;
  ossl::UniquePtr<X509_ALGOR> alg(X509_ALGOR_new());
  if (!alg) return out;
  const int md_nid = EVP_MD_get_type(c->md);
  if (c->type == KeyType::kRsa && c->pad == RSA_PKCS1_PSS_PADDING) {
    RSA_PSS_PARAMS* pss = RSA_PSS_PARAMS_new();
    if (pss == nullptr) return out;
    const EVP_MD* mgf1 = c->mgf1 ? c->mgf1 : c->md;
    bool ok = true;
    if (!EVP_MD_is_a(c->md, "SHA1")) {
      pss->hashAlgorithm = X509_ALGOR_new();
      ok = ok && pss->hashAlgorithm != nullptr;
      if (ok) X509_ALGOR_set_md(pss->hashAlgorithm, c->md);
    }
    if (ok && !EVP_MD_is_a(mgf1, "SHA1")) {
      ossl::UniquePtr<X509_ALGOR> mgf_hash(X509_ALGOR_new());
      ASN1_STRING* packed = nullptr;
      ok = mgf_hash != nullptr;
      if (ok) {
        X509_ALGOR_set_md(mgf_hash.get(), mgf1);
        packed = ASN1_item_pack(mgf_hash.get(), ASN1_ITEM_rptr(X509_ALGOR), nullptr);
        pss->maskGenAlgorithm = X509_ALGOR_new();
        ok = packed != nullptr && pss->maskGenAlgorithm != nullptr;
      }
      if (ok) {
        X509_ALGOR_set0(pss->maskGenAlgorithm, OBJ_nid2obj(NID_mgf1), V_ASN1_SEQUENCE, packed);
      } else {
        ASN1_STRING_free(packed);
      }
    }
    const int salt = PssSaltLength(c);
    if (ok && salt != 20) {
      pss->saltLength = ASN1_INTEGER_new();
      ok = pss->saltLength != nullptr && ASN1_INTEGER_set(pss->saltLength, salt);
    }
    ASN1_STRING* params =
        ok ? ASN1_item_pack(pss, ASN1_ITEM_rptr(RSA_PSS_PARAMS), nullptr) : nullptr;
    RSA_PSS_PARAMS_free(pss);
    if (params == nullptr) return out;
    X509_ALGOR_set0(alg.get(), OBJ_nid2obj(NID_rsassaPss), V_ASN1_SEQUENCE, params);
  } else {
    int sig_nid = NID_undef;
    const int pkey_nid = c->type == KeyType::kRsa ? NID_rsaEncryption : NID_X9_62_id_ecPublicKey;
    if (!OBJ_find_sigid_by_algs(&sig_nid, md_nid, pkey_nid)) return out;
    X509_ALGOR_set0(alg.get(), OBJ_nid2obj(sig_nid),
                    c->type == KeyType::kRsa ? V_ASN1_NULL : V_ASN1_UNDEF, nullptr);
  }
  unsigned char* der = nullptr;
  int len = i2d_X509_ALGOR(alg.get(), &der);
  if (len > 0) out.assign(der, der + len);
  OPENSSL_free(der);
  return out;
}

int GetCtxParams(void* vctx, OSSL_PARAM params[]) {
  auto* c = static_cast<SigCtx*>(vctx);
  OSSL_PARAM* p;
  if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_ALGORITHM_ID)) != nullptr) {
    std::vector<uint8_t> der = AlgorithmId(c);
    if (der.empty() || !OSSL_PARAM_set_octet_string(p, der.data(), der.size())) return 0;
  }
  if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST)) != nullptr) {
    if (!OSSL_PARAM_set_utf8_string(p, c->md ? EVP_MD_get0_name(c->md) : "")) return 0;
  }
  if (c->type == KeyType::kRsa) {
    if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PAD_MODE)) != nullptr) {
      if (p->data_type == OSSL_PARAM_INTEGER) {
        if (!OSSL_PARAM_set_int(p, c->pad)) return 0;
      } else if (!OSSL_PARAM_set_utf8_string(p,
                                             c->pad == RSA_PKCS1_PSS_PADDING ? "pss" : "pkcs1")) {
        return 0;
      }
    }
    if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN)) != nullptr) {
      if (p->data_type == OSSL_PARAM_INTEGER) {
        if (!OSSL_PARAM_set_int(p, c->saltlen)) return 0;
      } else {
        const char* v = c->saltlen == RSA_PSS_SALTLEN_DIGEST ? "digest"
                        : c->saltlen == RSA_PSS_SALTLEN_MAX  ? "max"
                        : c->saltlen == RSA_PSS_SALTLEN_AUTO ? "auto"
                                                             : nullptr;
        std::string n = v ? v : std::to_string(c->saltlen);
        if (!OSSL_PARAM_set_utf8_string(p, n.c_str())) return 0;
      }
    }
    if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST)) != nullptr) {
      const EVP_MD* m = c->mgf1 ? c->mgf1 : c->md;
      if (!OSSL_PARAM_set_utf8_string(p, m ? EVP_MD_get0_name(m) : "")) return 0;
    }
  }
  return 1;
}

int SetCtxParams(void* vctx, const OSSL_PARAM params[]) {
  auto* c = static_cast<SigCtx*>(vctx);
  if (params == nullptr) return 1;
  const OSSL_PARAM* p;
  if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST)) != nullptr) {
    const char* name = nullptr;
    if (!OSSL_PARAM_get_utf8_string_ptr(p, &name)) return 0;
    const EVP_MD* md = FindDigest(name);
    if (md == nullptr) {
      RaiseError(std::string("keywarden provider: unsupported digest ") + name);
      return 0;
    }
    c->md = md;
  }
  if (c->type != KeyType::kRsa) return 1;
  if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE)) != nullptr) {
    int pad = 0;
    if (p->data_type == OSSL_PARAM_INTEGER) {
      if (!OSSL_PARAM_get_int(p, &pad)) return 0;
    } else {
      const char* s = nullptr;
      if (!OSSL_PARAM_get_utf8_string_ptr(p, &s)) return 0;
      if (std::strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0) {
        pad = RSA_PKCS1_PADDING;
      } else if (std::strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PSS) == 0) {
        pad = RSA_PKCS1_PSS_PADDING;
      } else {
        pad = -1;
      }
    }
    if (pad != RSA_PKCS1_PADDING && pad != RSA_PKCS1_PSS_PADDING) {
      RaiseError("keywarden provider: RSA signatures use PKCS#1 v1.5 or PSS padding");
      return 0;
    }
    c->pad = pad;
  }
  if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN)) != nullptr) {
    int salt = 0;
    if (p->data_type == OSSL_PARAM_INTEGER) {
      if (!OSSL_PARAM_get_int(p, &salt)) return 0;
    } else {
      const char* s = nullptr;
      if (!OSSL_PARAM_get_utf8_string_ptr(p, &s)) return 0;
      if (std::strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) == 0) {
        salt = RSA_PSS_SALTLEN_DIGEST;
      } else if (std::strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_MAX) == 0) {
        salt = RSA_PSS_SALTLEN_MAX;
      } else if (std::strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO) == 0) {
        salt = RSA_PSS_SALTLEN_AUTO;
      } else {
        salt = std::atoi(s);
      }
    }
    if (salt < RSA_PSS_SALTLEN_MAX) return 0;
    c->saltlen = salt;
  }
  if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST)) != nullptr) {
    const char* name = nullptr;
    if (!OSSL_PARAM_get_utf8_string_ptr(p, &name)) return 0;
    const EVP_MD* md = FindDigest(name);
    if (md == nullptr) return 0;
    c->mgf1 = md;
  }
  return 1;
}

const OSSL_PARAM kRsaGettableCtx[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM kRsaSettableCtx[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM kEcGettableCtx[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM kEcSettableCtx[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0),
    OSSL_PARAM_END,
};
const OSSL_PARAM* RsaGettable(void*, void*) {
  return kRsaGettableCtx;
}
const OSSL_PARAM* RsaSettable(void*, void*) {
  return kRsaSettableCtx;
}
const OSSL_PARAM* EcGettable(void*, void*) {
  return kEcGettableCtx;
}
const OSSL_PARAM* EcSettable(void*, void*) {
  return kEcSettableCtx;
}

}  // namespace

#define KEYWARDEN_SIGNATURE(name, newfn, gettable, settable)        \
  const OSSL_DISPATCH name[] = {                                    \
      Fn(OSSL_FUNC_SIGNATURE_NEWCTX, newfn),                        \
      Fn(OSSL_FUNC_SIGNATURE_FREECTX, FreeCtx),                     \
      Fn(OSSL_FUNC_SIGNATURE_DUPCTX, DupCtx),                       \
      Fn(OSSL_FUNC_SIGNATURE_SIGN_INIT, SignInit),                  \
      Fn(OSSL_FUNC_SIGNATURE_SIGN, Sign),                           \
      Fn(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, DigestSignInit),     \
      Fn(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, DigestSignUpdate), \
      Fn(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, DigestSignFinal),   \
      Fn(OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, GetCtxParams),         \
      Fn(OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, gettable),        \
      Fn(OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, SetCtxParams),         \
      Fn(OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, settable),        \
      {0, nullptr},                                                 \
  };

KEYWARDEN_SIGNATURE(kRsaSignature, NewRsa, RsaGettable, RsaSettable)
KEYWARDEN_SIGNATURE(kEcdsaSignature, NewEc, EcGettable, EcSettable)

#undef KEYWARDEN_SIGNATURE

}  // namespace keywarden::hsm::provider
