#include "hsm/keys.h"

#include "hsm/secret.h"
#include "hsm/strings.h"

#include <algorithm>
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/sha.h>

#include "hsm/status.h"

namespace keywarden::hsm {

namespace {

// DER OIDs of the named curves (CKA_EC_PARAMS).
const uint8_t kP256Oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
const uint8_t kP384Oid[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};

ossl::UniquePtr<BIGNUM> Bn(const std::vector<uint8_t>& be) {
  return ossl::UniquePtr<BIGNUM>(BN_bin2bn(be.data(), static_cast<int>(be.size()), nullptr));
}

absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> RsaPublicFromParts(const std::vector<uint8_t>& n,
                                                             const std::vector<uint8_t>& e) {
  auto bn_n = Bn(n), bn_e = Bn(e);
  ossl::UniquePtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  if (!bn_n || !bn_e || !bld ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get())) {
    return OpenSslError("RSA public key from token");
  }
  ossl::UniquePtr<OSSL_PARAM> params(OSSL_PARAM_BLD_to_param(bld.get()));
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* pkey = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) <= 0) {
    return OpenSslError("RSA public key from token");
  }
  return ossl::UniquePtr<EVP_PKEY>(pkey);
}

// CKA_EC_POINT is a DER OCTET STRING holding the uncompressed point.
absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> EcPublicFromParts(const std::vector<uint8_t>& ec_params,
                                                            const std::vector<uint8_t>& ec_point) {
  const unsigned char* p = ec_params.data();
  ASN1_OBJECT* oid = d2i_ASN1_OBJECT(nullptr, &p, static_cast<long>(ec_params.size()));
  if (oid == nullptr)
    return absl::InvalidArgumentError("EC key on token: CKA_EC_PARAMS is not a named curve");
  int nid = OBJ_obj2nid(oid);
  ASN1_OBJECT_free(oid);
  const char* group = OSSL_EC_curve_nid2name(nid);
  if (group == nullptr) return absl::InvalidArgumentError("EC key on token: unsupported curve");

  std::vector<uint8_t> point = ec_point;
  p = ec_point.data();
  if (ASN1_OCTET_STRING* os =
          d2i_ASN1_OCTET_STRING(nullptr, &p, static_cast<long>(ec_point.size()))) {
    point.assign(os->data, os->data + os->length);
    ASN1_OCTET_STRING_free(os);
  }
  ossl::UniquePtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
      !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                        point.size())) {
    return OpenSslError("EC public key from token");
  }
  ossl::UniquePtr<OSSL_PARAM> params(OSSL_PARAM_BLD_to_param(bld.get()));
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* pkey = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) <= 0) {
    return OpenSslError("EC public key from token");
  }
  return ossl::UniquePtr<EVP_PKEY>(pkey);
}

absl::StatusOr<std::vector<uint8_t>> BnParam(EVP_PKEY* key, const char* name) {
  BIGNUM* bn = nullptr;
  if (!EVP_PKEY_get_bn_param(key, name, &bn)) return OpenSslError(StrCat("read ", name));
  std::vector<uint8_t> out(static_cast<size_t>(BN_num_bytes(bn)));
  BN_bn2bin(bn, out.data());
  BN_free(bn);
  return out;
}

// Reads the public half of a private key object (and, for EC, of the public
// key object with the same CKA_ID, because EC private objects have no point).
absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> ReadPublicKey(Session& s, CK_OBJECT_HANDLE priv,
                                                        KeyType type,
                                                        const std::vector<uint8_t>& id) {
  if (type == KeyType::kRsa) {
    auto n = GetAttribute(s, priv, CKA_MODULUS);
    if (!n.ok()) return n.status();
    auto e = GetAttribute(s, priv, CKA_PUBLIC_EXPONENT);
    if (!e.ok()) return e.status();
    return RsaPublicFromParts(*n, *e);
  }
  auto params = GetAttribute(s, priv, CKA_EC_PARAMS);
  if (!params.ok()) return params.status();
  CK_OBJECT_CLASS pub_class = CKO_PUBLIC_KEY;
  std::vector<CK_ATTRIBUTE> match = {Attr(CKA_CLASS, pub_class)};
  if (!id.empty()) match.push_back(Attr(CKA_ID, id.data(), id.size()));
  auto pubs = FindObjects(s, match);
  if (!pubs.ok()) return pubs.status();
  for (CK_OBJECT_HANDLE h : *pubs) {
    auto point = GetAttribute(s, h, CKA_EC_POINT);
    if (point.ok()) return EcPublicFromParts(*params, *point);
  }
  return absl::NotFoundError(
      "EC private key on token has no public key object with the same CKA_ID");
}

absl::StatusOr<std::shared_ptr<TokenKey>> LoadTokenKey(std::shared_ptr<Token> token, Session& s,
                                                       CK_OBJECT_HANDLE priv) {
  auto key_type = GetAttribute(s, priv, CKA_KEY_TYPE);
  if (!key_type.ok()) return key_type.status();
  CK_KEY_TYPE kt;
  if (key_type->size() != sizeof kt) return absl::InternalError("CKA_KEY_TYPE has a wrong size");
  std::memcpy(&kt, key_type->data(), sizeof kt);
  auto key = std::make_shared<TokenKey>();
  if (kt == CKK_RSA) {
    key->type = KeyType::kRsa;
  } else if (kt == CKK_EC) {
    key->type = KeyType::kEc;
  } else {
    return absl::InvalidArgumentError(
        StrCat("key type ", kt, " is not supported (RSA and EC only)"));
  }
  if (auto label = GetAttribute(s, priv, CKA_LABEL); label.ok()) {
    key->label.assign(label->begin(), label->end());
  }
  if (auto id = GetAttribute(s, priv, CKA_ID); id.ok()) key->id = *id;
  auto pub = ReadPublicKey(s, priv, key->type, key->id);
  if (!pub.ok()) return pub.status();
  key->public_key = std::move(*pub);
  key->bits = static_cast<size_t>(EVP_PKEY_get_bits(key->public_key.get()));
  key->private_handle = priv;
  bool always_authenticate = false;
  if (auto a = GetAttribute(s, priv, CKA_ALWAYS_AUTHENTICATE); a.ok() && a->size() == 1) {
    always_authenticate = (*a)[0] != CK_FALSE;
  }
  key->handle =
      std::make_shared<KeyHandle>(priv, s.generation(), key->label, key->id, always_authenticate);
  key->token = std::move(token);
  return key;
}

std::string IdHex(std::span<const uint8_t> id) {
  return HexString(id);
}

}  // namespace

absl::StatusOr<KeyAlgorithm> ParseKeyAlgorithm(std::string_view name) {
  std::string n = AsciiLower(name);
  if (n == "rsa2048" || n == "rsa-2048") return KeyAlgorithm::kRsa2048;
  if (n == "rsa3072" || n == "rsa-3072") return KeyAlgorithm::kRsa3072;
  if (n == "rsa4096" || n == "rsa-4096") return KeyAlgorithm::kRsa4096;
  if (n == "ec-p256" || n == "p256" || n == "p-256" || n == "ecp256") return KeyAlgorithm::kEcP256;
  if (n == "ec-p384" || n == "p384" || n == "p-384" || n == "ecp384") return KeyAlgorithm::kEcP384;
  return absl::InvalidArgumentError(StrCat(
      "key algorithm \"", name, "\": expected rsa2048, rsa3072, rsa4096, ec-p256 or ec-p384"));
}

size_t KeyAlgorithmBits(KeyAlgorithm a) {
  switch (a) {
    case KeyAlgorithm::kRsa2048:
      return 2048;
    case KeyAlgorithm::kRsa3072:
      return 3072;
    case KeyAlgorithm::kRsa4096:
      return 4096;
    case KeyAlgorithm::kEcP256:
      return 256;
    case KeyAlgorithm::kEcP384:
      return 384;
  }
  return 0;
}

std::string KeyAlgorithmName(KeyAlgorithm a) {
  switch (a) {
    case KeyAlgorithm::kRsa2048:
      return "rsa2048";
    case KeyAlgorithm::kRsa3072:
      return "rsa3072";
    case KeyAlgorithm::kRsa4096:
      return "rsa4096";
    case KeyAlgorithm::kEcP256:
      return "ec-p256";
    case KeyAlgorithm::kEcP384:
      return "ec-p384";
  }
  return "unknown";
}

size_t TokenKey::MaxSignatureSize() const {
  return static_cast<size_t>(EVP_PKEY_get_size(public_key.get()));
}

std::string TokenKey::Describe() const {
  return StrCat(type == KeyType::kRsa ? "RSA-" : "EC-", bits, " key \"", label, "\" on token \"",
                token ? token->label() : "?", "\"");
}

absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> FindObjects(Session& s,
                                                          std::vector<CK_ATTRIBUTE> match) {
  CK_RV rv = s.Call("C_FindObjectsInit", s.fn()->C_FindObjectsInit, s.handle(), match.data(),
                    static_cast<CK_ULONG>(match.size()));
  if (rv != CKR_OK) return Pkcs11Error("C_FindObjectsInit", rv);
  std::vector<CK_OBJECT_HANDLE> out;
  CK_OBJECT_HANDLE batch[32];
  CK_ULONG n = 0;
  do {
    rv = s.Call("C_FindObjects", s.fn()->C_FindObjects, s.handle(), batch, CK_ULONG{32}, &n);
    if (rv != CKR_OK) break;
    out.insert(out.end(), batch, batch + n);
  } while (n == 32);
  CK_RV frv = s.Call("C_FindObjectsFinal", s.fn()->C_FindObjectsFinal, s.handle());
  if (rv != CKR_OK) return Pkcs11Error("C_FindObjects", rv);
  if (frv != CKR_OK) return Pkcs11Error("C_FindObjectsFinal", frv);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> GetAttribute(Session& s, CK_OBJECT_HANDLE object,
                                                  CK_ATTRIBUTE_TYPE type) {
  CK_ATTRIBUTE a{type, nullptr, 0};
  CK_RV rv = s.Call("C_GetAttributeValue", s.fn()->C_GetAttributeValue, s.handle(), object, &a,
                    CK_ULONG{1});
  if (rv != CKR_OK) return Pkcs11Error("C_GetAttributeValue", rv);
  if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
    return absl::NotFoundError("C_GetAttributeValue: attribute unavailable");
  }
  std::vector<uint8_t> out(a.ulValueLen);
  a.pValue = out.data();
  rv = s.Call("C_GetAttributeValue", s.fn()->C_GetAttributeValue, s.handle(), object, &a,
              CK_ULONG{1});
  if (rv != CKR_OK) return Pkcs11Error("C_GetAttributeValue", rv);
  out.resize(a.ulValueLen);
  return out;
}

bool LabelInUse(Session& s, std::string_view label, std::optional<CK_OBJECT_CLASS> object_class) {
  std::vector<CK_ATTRIBUTE> match = {Attr(CKA_LABEL, label.data(), label.size())};
  CK_OBJECT_CLASS cls = object_class.value_or(0);
  if (object_class) match.push_back(Attr(CKA_CLASS, cls));
  auto found = FindObjects(s, match);
  return !found.ok() || !found->empty();  // on error, assume in use: refuse rather than clobber
}

absl::StatusOr<std::vector<uint8_t>> PublicKeySha1(EVP_PKEY* key) {
  X509_PUBKEY* xpk = nullptr;
  if (!X509_PUBKEY_set(&xpk, key)) return OpenSslError("encode public key");
  const unsigned char* bits = nullptr;
  int len = 0;
  X509_PUBKEY_get0_param(nullptr, &bits, &len, nullptr, xpk);
  std::vector<uint8_t> out(SHA_DIGEST_LENGTH);
  SHA1(bits, static_cast<size_t>(len), out.data());
  X509_PUBKEY_free(xpk);
  return out;
}

absl::StatusOr<std::shared_ptr<TokenKey>> GenerateKeyPair(std::shared_ptr<Token> token,
                                                          const KeySpec& spec) {
  if (!token) return absl::InvalidArgumentError("generate key: no token");
  if (spec.label.empty()) return absl::InvalidArgumentError("generate key: a label is required");
  const bool rsa = spec.algorithm == KeyAlgorithm::kRsa2048 ||
                   spec.algorithm == KeyAlgorithm::kRsa3072 ||
                   spec.algorithm == KeyAlgorithm::kRsa4096;
  if (!rsa && spec.usage.decrypt) {
    return absl::InvalidArgumentError("generate key: EC keys cannot be used for decryption");
  }
  auto session = token->Acquire(Access::kReadWrite);
  if (!session.ok()) return session.status();
  Session& s = *session;
  if (LabelInUse(s, spec.label)) {
    return absl::AlreadyExistsError(StrCat("generate key: label \"", spec.label,
                                           "\" is already used on token \"", token->label(), "\""));
  }

  CK_ULONG bits = spec.algorithm == KeyAlgorithm::kRsa4096   ? 4096
                  : spec.algorithm == KeyAlgorithm::kRsa3072 ? 3072
                                                             : 2048;
  static const uint8_t kF4[] = {0x01, 0x00, 0x01};
  CK_BBOOL sign = spec.usage.sign ? CK_TRUE : CK_FALSE;
  CK_BBOOL decrypt = spec.usage.decrypt ? CK_TRUE : CK_FALSE;
  const std::string& label = spec.label;

  std::vector<CK_ATTRIBUTE> pub = {
      Attr(CKA_TOKEN, kTrue), Attr(CKA_PRIVATE, kFalse),
      Attr(CKA_VERIFY, sign), Attr(CKA_ENCRYPT, decrypt),
      Attr(CKA_WRAP, kFalse), Attr(CKA_LABEL, label.data(), label.size()),
  };
  std::vector<CK_ATTRIBUTE> priv = {
      Attr(CKA_TOKEN, kTrue),
      Attr(CKA_PRIVATE, kTrue),
      Attr(CKA_SENSITIVE, kTrue),
      Attr(CKA_EXTRACTABLE, kFalse),
      Attr(CKA_SIGN, sign),
      Attr(CKA_DECRYPT, decrypt),
      // A decryption key may also unwrap: KRA rollover unwraps an archive's
      // content key into a sensitive session object on the card instead of
      // decrypting it into host memory (keywarden kra rewrap).
      Attr(CKA_UNWRAP, decrypt),
      Attr(CKA_DERIVE, kFalse),
      Attr(CKA_LABEL, label.data(), label.size()),
  };
  if (!spec.id.empty()) {
    pub.push_back(Attr(CKA_ID, spec.id.data(), spec.id.size()));
    priv.push_back(Attr(CKA_ID, spec.id.data(), spec.id.size()));
  }
  CK_MECHANISM mech{};
  if (rsa) {
    mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
    pub.push_back(Attr(CKA_MODULUS_BITS, bits));
    pub.push_back(Attr(CKA_PUBLIC_EXPONENT, kF4, sizeof kF4));
  } else {
    mech.mechanism = CKM_EC_KEY_PAIR_GEN;
    if (spec.algorithm == KeyAlgorithm::kEcP256) {
      pub.push_back(Attr(CKA_EC_PARAMS, kP256Oid, sizeof kP256Oid));
    } else {
      pub.push_back(Attr(CKA_EC_PARAMS, kP384Oid, sizeof kP384Oid));
    }
  }
  CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
  CK_RV rv = s.Call("C_GenerateKeyPair", s.fn()->C_GenerateKeyPair, s.handle(), &mech, pub.data(),
                    static_cast<CK_ULONG>(pub.size()), priv.data(),
                    static_cast<CK_ULONG>(priv.size()), &hpub, &hpriv);
  if (rv != CKR_OK) {
    return Pkcs11Error("C_GenerateKeyPair", rv,
                       StrCat("generate ", KeyAlgorithmName(spec.algorithm), " key \"", label,
                              "\" on token \"", token->label(), "\""));
  }
  std::vector<uint8_t> id = spec.id;
  if (id.empty()) {
    // Read the public key from the public object (EC private objects carry no point).
    ossl::UniquePtr<EVP_PKEY> pk;
    if (rsa) {
      auto n = GetAttribute(s, hpub, CKA_MODULUS);
      auto e = GetAttribute(s, hpub, CKA_PUBLIC_EXPONENT);
      if (!n.ok()) return n.status();
      if (!e.ok()) return e.status();
      auto k = RsaPublicFromParts(*n, *e);
      if (!k.ok()) return k.status();
      pk = std::move(*k);
    } else {
      auto params = GetAttribute(s, hpub, CKA_EC_PARAMS);
      auto point = GetAttribute(s, hpub, CKA_EC_POINT);
      if (!params.ok()) return params.status();
      if (!point.ok()) return point.status();
      auto k = EcPublicFromParts(*params, *point);
      if (!k.ok()) return k.status();
      pk = std::move(*k);
    }
    auto sha1 = PublicKeySha1(pk.get());
    if (!sha1.ok()) return sha1.status();
    id = *sha1;
    CK_ATTRIBUTE set_id = Attr(CKA_ID, id.data(), id.size());
    for (CK_OBJECT_HANDLE h : {hpub, hpriv}) {
      rv = s.Call("C_SetAttributeValue", s.fn()->C_SetAttributeValue, s.handle(), h, &set_id,
                  CK_ULONG{1});
      if (rv != CKR_OK) return Pkcs11Error("C_SetAttributeValue", rv, "set CKA_ID of new key");
    }
  }
  return LoadTokenKey(std::move(token), s, hpriv);
}

absl::StatusOr<std::shared_ptr<TokenKey>> FindPrivateKey(std::shared_ptr<Token> token,
                                                         std::string_view label,
                                                         std::span<const uint8_t> id) {
  if (!token) return absl::InvalidArgumentError("find key: no token");
  if (label.empty() && id.empty()) {
    return absl::InvalidArgumentError("find key: give an object label or id");
  }
  auto session = token->Acquire();
  if (!session.ok()) return session.status();
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  std::vector<CK_ATTRIBUTE> match = {Attr(CKA_CLASS, cls)};
  if (!label.empty()) match.push_back(Attr(CKA_LABEL, label.data(), label.size()));
  if (!id.empty()) match.push_back(Attr(CKA_ID, id.data(), id.size()));
  auto found = FindObjects(*session, match);
  if (!found.ok()) return found.status();
  std::string what = StrCat(label.empty() ? "" : StrCat("label \"", label, "\""),
                            !label.empty() && !id.empty() ? " and " : "",
                            id.empty() ? "" : StrCat("id ", IdHex(id)));
  if (found->empty()) {
    return absl::NotFoundError(StrCat("no private key with ", what, " on token \"", token->label(),
                                      "\"", token->logged_in() ? "" : " (not logged in)"));
  }
  if (found->size() > 1) {
    return absl::FailedPreconditionError(
        StrCat(found->size(), " private keys with ", what, " on token \"", token->label(), "\""));
  }
  return LoadTokenKey(std::move(token), *session, (*found)[0]);
}

absl::StatusOr<std::shared_ptr<TokenKey>> FindPrivateKey(std::shared_ptr<Token> token,
                                                         const Pkcs11Uri& uri) {
  if (uri.object_class() && *uri.object_class() != CKO_PRIVATE_KEY) {
    return absl::InvalidArgumentError(
        StrCat("PKCS#11 URI \"", uri.Redacted(), "\" does not name a private key"));
  }
  if (!uri.has_object_selector()) {
    return absl::InvalidArgumentError(
        StrCat("PKCS#11 URI \"", uri.Redacted(), "\" names no key (give object= or id=)"));
  }
  return FindPrivateKey(std::move(token), uri.object_label(), uri.object_id());
}

absl::StatusOr<CK_OBJECT_HANDLE> ImportCertificate(Token& token, X509* cert, std::string_view label,
                                                   std::span<const uint8_t> id) {
  if (cert == nullptr) return absl::InvalidArgumentError("import certificate: no certificate");
  unsigned char* der = nullptr;
  int der_len = i2d_X509(cert, &der);
  unsigned char* subj = nullptr;
  int subj_len = i2d_X509_NAME(X509_get_subject_name(cert), &subj);
  unsigned char* iss = nullptr;
  int iss_len = i2d_X509_NAME(X509_get_issuer_name(cert), &iss);
  unsigned char* serial = nullptr;
  int serial_len = i2d_ASN1_INTEGER(X509_get_serialNumber(cert), &serial);
  auto cleanup = [&] {
    OPENSSL_free(der);
    OPENSSL_free(subj);
    OPENSSL_free(iss);
    OPENSSL_free(serial);
  };
  if (der_len <= 0 || subj_len <= 0 || iss_len <= 0 || serial_len <= 0) {
    cleanup();
    return OpenSslError("import certificate: encode");
  }
  auto session = token.Acquire(Access::kReadWrite);
  if (!session.ok()) {
    cleanup();
    return session.status();
  }
  if (!label.empty() && LabelInUse(*session, label, CKO_CERTIFICATE)) {
    cleanup();
    return absl::AlreadyExistsError(StrCat("import certificate: label \"", label,
                                           "\" is already used on token \"", token.label(), "\""));
  }
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  CK_CERTIFICATE_TYPE ctype = CKC_X_509;
  std::vector<CK_ATTRIBUTE> t = {
      Attr(CKA_CLASS, cls),           Attr(CKA_CERTIFICATE_TYPE, ctype),
      Attr(CKA_TOKEN, kTrue),         Attr(CKA_PRIVATE, kFalse),
      Attr(CKA_VALUE, der, der_len),  Attr(CKA_SUBJECT, subj, subj_len),
      Attr(CKA_ISSUER, iss, iss_len), Attr(CKA_SERIAL_NUMBER, serial, serial_len),
  };
  if (!label.empty()) t.push_back(Attr(CKA_LABEL, label.data(), label.size()));
  if (!id.empty()) t.push_back(Attr(CKA_ID, id.data(), id.size()));
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = session->Call("C_CreateObject", session->fn()->C_CreateObject, session->handle(),
                           t.data(), static_cast<CK_ULONG>(t.size()), &h);
  cleanup();
  if (rv != CKR_OK) return Pkcs11Error("C_CreateObject", rv, "import certificate");
  return h;
}

namespace {

absl::StatusOr<CK_OBJECT_HANDLE> CreatePublicKeyObject(Session& s, EVP_PKEY* key, bool on_token,
                                                       bool wrap, std::string_view label,
                                                       std::span<const uint8_t> id) {
  if (key == nullptr) return absl::InvalidArgumentError("public key object: no key");
  CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
  CK_BBOOL token_flag = on_token ? CK_TRUE : CK_FALSE;
  CK_BBOOL wrap_flag = wrap ? CK_TRUE : CK_FALSE;
  std::vector<CK_ATTRIBUTE> t = {Attr(CKA_CLASS, cls), Attr(CKA_TOKEN, token_flag),
                                 Attr(CKA_PRIVATE, kFalse)};
  if (!label.empty()) t.push_back(Attr(CKA_LABEL, label.data(), label.size()));
  if (!id.empty()) t.push_back(Attr(CKA_ID, id.data(), id.size()));
  CK_KEY_TYPE kt;
  std::vector<uint8_t> a, b;
  if (EVP_PKEY_is_a(key, "RSA")) {
    kt = CKK_RSA;
    auto n = BnParam(key, OSSL_PKEY_PARAM_RSA_N);
    auto e = BnParam(key, OSSL_PKEY_PARAM_RSA_E);
    if (!n.ok()) return n.status();
    if (!e.ok()) return e.status();
    a = std::move(*n);
    b = std::move(*e);
    t.push_back(Attr(CKA_KEY_TYPE, kt));
    t.push_back(Attr(CKA_MODULUS, a.data(), a.size()));
    t.push_back(Attr(CKA_PUBLIC_EXPONENT, b.data(), b.size()));
    t.push_back(Attr(CKA_WRAP, wrap_flag));
    t.push_back(Attr(CKA_ENCRYPT, wrap_flag));
    t.push_back(Attr(CKA_VERIFY, kTrue));
  } else if (EVP_PKEY_is_a(key, "EC")) {
    kt = CKK_EC;
    char group[64];
    size_t glen = 0;
    if (!EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                        &glen)) {
      return OpenSslError("public key object: EC group");
    }
    int nid = OBJ_txt2nid(group);
    if (nid == NID_undef) nid = EC_curve_nist2nid(group);
    ASN1_OBJECT* oid = OBJ_nid2obj(nid);
    unsigned char* oid_der = nullptr;
    int oid_len = i2d_ASN1_OBJECT(oid, &oid_der);
    if (oid_len <= 0) return OpenSslError("public key object: EC curve OID");
    a.assign(oid_der, oid_der + oid_len);
    OPENSSL_free(oid_der);
    size_t plen = 0;
    EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0, &plen);
    std::vector<uint8_t> point(plen);
    if (!EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, point.data(), plen, &plen)) {
      return OpenSslError("public key object: EC point");
    }
    ASN1_OCTET_STRING* os = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(os, point.data(), static_cast<int>(plen));
    unsigned char* os_der = nullptr;
    int os_len = i2d_ASN1_OCTET_STRING(os, &os_der);
    ASN1_OCTET_STRING_free(os);
    if (os_len <= 0) return OpenSslError("public key object: EC point encoding");
    b.assign(os_der, os_der + os_len);
    OPENSSL_free(os_der);
    t.push_back(Attr(CKA_KEY_TYPE, kt));
    t.push_back(Attr(CKA_EC_PARAMS, a.data(), a.size()));
    t.push_back(Attr(CKA_EC_POINT, b.data(), b.size()));
    t.push_back(Attr(CKA_VERIFY, kTrue));
  } else {
    return absl::InvalidArgumentError("public key object: only RSA and EC keys are supported");
  }
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = s.Call("C_CreateObject", s.fn()->C_CreateObject, s.handle(), t.data(),
                    static_cast<CK_ULONG>(t.size()), &h);
  if (rv != CKR_OK) return Pkcs11Error("C_CreateObject", rv, "create public key object");
  return h;
}

}  // namespace

absl::StatusOr<CK_OBJECT_HANDLE> ImportPublicKey(Token& token, EVP_PKEY* key,
                                                 std::string_view label,
                                                 std::span<const uint8_t> id) {
  auto session = token.Acquire(Access::kReadWrite);
  if (!session.ok()) return session.status();
  if (!label.empty() && LabelInUse(*session, label, CKO_PUBLIC_KEY)) {
    return absl::AlreadyExistsError(StrCat("import public key: label \"", label,
                                           "\" is already used on token \"", token.label(), "\""));
  }
  return CreatePublicKeyObject(*session, key, /*on_token=*/true, /*wrap=*/false, label, id);
}

absl::StatusOr<std::shared_ptr<TokenKey>> ImportRsaPrivateKey(std::shared_ptr<Token> token,
                                                              EVP_PKEY* key, std::string_view label,
                                                              const KeyUsage& usage) {
  if (!token) return absl::InvalidArgumentError("import key: no token");
  if (key == nullptr || !EVP_PKEY_is_a(key, "RSA")) {
    return absl::InvalidArgumentError("import key: only RSA private keys can be imported");
  }
  auto id = PublicKeySha1(key);
  if (!id.ok()) return id.status();
  const char* names[] = {OSSL_PKEY_PARAM_RSA_N,         OSSL_PKEY_PARAM_RSA_E,
                         OSSL_PKEY_PARAM_RSA_D,         OSSL_PKEY_PARAM_RSA_FACTOR1,
                         OSSL_PKEY_PARAM_RSA_FACTOR2,   OSSL_PKEY_PARAM_RSA_EXPONENT1,
                         OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1};
  std::vector<SecretBytes> parts;
  for (const char* name : names) {
    auto v = BnParam(key, name);
    if (!v.ok()) {
      return absl::InvalidArgumentError(
          StrCat("import key: the key has no ", name, " (a token key, or a public key)"));
    }
    parts.emplace_back(std::span<const uint8_t>(*v));
    OPENSSL_cleanse(v->data(), v->size());
  }
  auto session = token->Acquire(Access::kReadWrite);
  if (!session.ok()) return session.status();
  if (label.empty() || LabelInUse(*session, label)) {
    return absl::AlreadyExistsError(StrCat("import key: label \"", label,
                                           "\" is empty or already used on token \"",
                                           token->label(), "\""));
  }
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_KEY_TYPE kt = CKK_RSA;
  const CK_BBOOL sign = usage.sign ? CK_TRUE : CK_FALSE;
  const CK_BBOOL decrypt = usage.decrypt ? CK_TRUE : CK_FALSE;
  std::vector<CK_ATTRIBUTE> t = {
      Attr(CKA_CLASS, cls),
      Attr(CKA_KEY_TYPE, kt),
      Attr(CKA_TOKEN, kTrue),
      Attr(CKA_PRIVATE, kTrue),
      Attr(CKA_SENSITIVE, kTrue),
      Attr(CKA_EXTRACTABLE, kFalse),
      Attr(CKA_SIGN, sign),
      Attr(CKA_DECRYPT, decrypt),
      Attr(CKA_UNWRAP, decrypt),
      Attr(CKA_LABEL, label.data(), label.size()),
      Attr(CKA_ID, id->data(), id->size()),
      Attr(CKA_MODULUS, parts[0].data(), parts[0].size()),
      Attr(CKA_PUBLIC_EXPONENT, parts[1].data(), parts[1].size()),
      Attr(CKA_PRIVATE_EXPONENT, parts[2].data(), parts[2].size()),
      Attr(CKA_PRIME_1, parts[3].data(), parts[3].size()),
      Attr(CKA_PRIME_2, parts[4].data(), parts[4].size()),
      Attr(CKA_EXPONENT_1, parts[5].data(), parts[5].size()),
      Attr(CKA_EXPONENT_2, parts[6].data(), parts[6].size()),
      Attr(CKA_COEFFICIENT, parts[7].data(), parts[7].size()),
  };
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  CK_RV rv = session->Call("C_CreateObject", session->fn()->C_CreateObject, session->handle(),
                           t.data(), static_cast<CK_ULONG>(t.size()), &handle);
  if (rv != CKR_OK) return Pkcs11Error("C_CreateObject (RSA private key)", rv);
  return LoadTokenKey(std::move(token), *session, handle);
}

absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> PublicKeyFromObject(Session& session,
                                                              CK_OBJECT_HANDLE public_object) {
  auto type = GetAttribute(session, public_object, CKA_KEY_TYPE);
  if (!type.ok()) return type.status();
  CK_KEY_TYPE kt = 0;
  if (type->size() != sizeof kt) return absl::DataLossError("CKA_KEY_TYPE has a wrong size");
  std::memcpy(&kt, type->data(), sizeof kt);
  if (kt == CKK_RSA) {
    auto n = GetAttribute(session, public_object, CKA_MODULUS);
    if (!n.ok()) return n.status();
    auto e = GetAttribute(session, public_object, CKA_PUBLIC_EXPONENT);
    if (!e.ok()) return e.status();
    return RsaPublicFromParts(*n, *e);
  }
  if (kt == CKK_EC) {
    auto params = GetAttribute(session, public_object, CKA_EC_PARAMS);
    if (!params.ok()) return params.status();
    auto point = GetAttribute(session, public_object, CKA_EC_POINT);
    if (!point.ok()) return point.status();
    return EcPublicFromParts(*params, *point);
  }
  return absl::InvalidArgumentError(
      StrCat("public key object of key type ", kt, " is neither RSA nor EC"));
}

absl::StatusOr<CK_OBJECT_HANDLE> CreateRsaWrappingKey(Session& session, EVP_PKEY* key) {
  if (key == nullptr || !EVP_PKEY_is_a(key, "RSA")) {
    return absl::InvalidArgumentError("wrap: the recipient key must be an RSA public key");
  }
  return CreatePublicKeyObject(session, key, /*on_token=*/false, /*wrap=*/true, {}, {});
}

absl::StatusOr<std::vector<ossl::UniquePtr<X509>>> FindCertificates(Token& token,
                                                                    std::string_view label,
                                                                    std::span<const uint8_t> id) {
  auto session = token.Acquire();
  if (!session.ok()) return session.status();
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  std::vector<CK_ATTRIBUTE> match = {Attr(CKA_CLASS, cls)};
  if (!label.empty()) match.push_back(Attr(CKA_LABEL, label.data(), label.size()));
  if (!id.empty()) match.push_back(Attr(CKA_ID, id.data(), id.size()));
  auto found = FindObjects(*session, match);
  if (!found.ok()) return found.status();
  std::vector<ossl::UniquePtr<X509>> out;
  for (CK_OBJECT_HANDLE h : *found) {
    auto der = GetAttribute(*session, h, CKA_VALUE);
    if (!der.ok()) return der.status();
    const unsigned char* p = der->data();
    X509* x = d2i_X509(nullptr, &p, static_cast<long>(der->size()));
    if (x == nullptr) return OpenSslError("certificate object on token does not parse");
    out.emplace_back(x);
  }
  return out;
}

}  // namespace keywarden::hsm
