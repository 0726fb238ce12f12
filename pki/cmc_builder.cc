#include "pki/cmc_builder.h"

#include "pki/der.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <memory>

#include <openssl/asn1.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "hsm/keys.h"
#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/cmc.h"
#include "pki/private_key_blob.h"

namespace keywarden::pki {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr char kOidSignedData[] = "1.2.840.113549.1.7.2";
constexpr char kOidContentType[] = "1.2.840.113549.1.9.3";
constexpr char kOidMessageDigest[] = "1.2.840.113549.1.9.4";
constexpr char kOidRsaEncryption[] = "1.2.840.113549.1.1.1";
constexpr char kOidTemplateV2[] = "1.3.6.1.4.1.311.21.7";
constexpr char kOidTemplateV1[] = "1.3.6.1.4.1.311.20.2";
constexpr char kOidNameValuePair[] = "1.3.6.1.4.1.311.13.2.1";

absl::Status Bad(std::string_view what) {
  return absl::InvalidArgumentError(StrCat("archival request: ", what));
}

// --- a minimal DER writer (definite, minimal lengths) ---

using der::Concat;
using der::Tlv;

Bytes Seq(std::initializer_list<Bytes> parts) {
  return Tlv(0x30, Concat(parts));
}

// The contents of a DER SET OF: the elements sorted by their encodings (X.690 11.6).
Bytes SetOfContents(std::vector<Bytes> elements) {
  std::sort(elements.begin(), elements.end(), [](const Bytes& a, const Bytes& b) {
    // Byte-wise, a prefix first (std::vector's operator<, spelled out:
    // GCC 12 at -O3 warns about the memcmp its operator<=> inlines).
    const size_t n = std::min(a.size(), b.size());
    const int c = n == 0 ? 0 : std::memcmp(a.data(), b.data(), n);
    return c != 0 ? c < 0 : a.size() < b.size();
  });
  Bytes contents;
  for (const Bytes& e : elements) contents.insert(contents.end(), e.begin(), e.end());
  return contents;
}

Bytes SetOf(std::vector<Bytes> elements) {
  return Tlv(0x31, SetOfContents(std::move(elements)));
}

// An OID's DER (empty when `dotted` is not an OID).
Bytes Oid(const char* dotted) {
  ossl::UniquePtr<ASN1_OBJECT> obj(OBJ_txt2obj(dotted, 1));
  unsigned char* der = nullptr;
  const int len = obj ? i2d_ASN1_OBJECT(obj.get(), &der) : 0;
  Bytes out(der, der + std::max(len, 0));
  OPENSSL_free(der);
  return out;
}

// A non-negative INTEGER.
Bytes Integer(int64_t v) {
  Bytes contents;
  do {
    contents.insert(contents.begin(), static_cast<uint8_t>(v & 0xff));
    v >>= 8;
  } while (v > 0);
  if (contents[0] & 0x80) contents.insert(contents.begin(), 0);
  return Tlv(0x02, contents);
}

Bytes OctetString(std::span<const uint8_t> data) {
  return Tlv(0x04, Bytes(data.begin(), data.end()));
}

// `text` (UTF-8) as a DER string of `mask` (B_ASN1_BMPSTRING, B_ASN1_UTF8STRING);
// empty if it is not valid UTF-8 or does not fit the type.
Bytes DerString(const std::string& text, unsigned long mask) {
  ASN1_STRING* s = nullptr;
  if (ASN1_mbstring_copy(&s, reinterpret_cast<const unsigned char*>(text.data()),
                         static_cast<int>(text.size()), MBSTRING_UTF8, mask) < 0) {
    ERR_clear_error();
    return {};
  }
  ossl::UniquePtr<ASN1_STRING> owned(s);
  const uint8_t tag = mask == B_ASN1_BMPSTRING ? 0x1e : 0x0c;
  return Tlv(tag, Bytes(s->data, s->data + s->length));
}

// "SHA1" ... and the digest's AlgorithmIdentifier OID; null for others.
const char* DigestOid(const std::string& name) {
  if (name == "SHA1") return "1.3.14.3.2.26";
  if (name == "SHA256") return "2.16.840.1.101.3.4.2.1";
  if (name == "SHA384") return "2.16.840.1.101.3.4.2.2";
  if (name == "SHA512") return "2.16.840.1.101.3.4.2.3";
  return nullptr;
}

absl::StatusOr<std::string> CheckedDigest(const std::string& requested) {
  std::string name;
  for (char c : requested) {
    if (c != '-') name += static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
  }
  if (DigestOid(name) == nullptr) {
    return Bad(StrCat("unsupported digest \"", requested, "\" (SHA1, SHA256, SHA384, SHA512)"));
  }
  return name;
}

absl::StatusOr<Bytes> Digest(const std::string& name, std::span<const uint8_t> data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  ossl::UniquePtr<EVP_MD> md(EVP_MD_fetch(nullptr, name.c_str(), nullptr));
  if (!md || EVP_Digest(data.data(), data.size(), out, &len, md.get(), nullptr) != 1) {
    return hsm::OpenSslError(StrCat("archival request: ", name, " digest"));
  }
  return Bytes(out, out + len);
}

absl::Status CheckRequestKey(EVP_PKEY* key) {
  if (key == nullptr) return Bad("no key");
  if (EVP_PKEY_is_a(key, "RSA") != 1) {
    return Bad("the key to archive must be RSA (key archival encrypts RSA keys only)");
  }
  return absl::OkStatus();
}

// An X509_EXTENSION with DER `value`.
bool AddRawExtension(STACK_OF(X509_EXTENSION) * exts, const char* oid, bool critical,
                     const Bytes& value) {
  ossl::UniquePtr<ASN1_OBJECT> obj(OBJ_txt2obj(oid, 1));
  ossl::UniquePtr<ASN1_OCTET_STRING> data(ASN1_OCTET_STRING_new());
  if (!obj || !data || value.empty() ||
      ASN1_OCTET_STRING_set(data.get(), value.data(), static_cast<int>(value.size())) != 1) {
    return false;
  }
  X509_EXTENSION* ext =
      X509_EXTENSION_create_by_OBJ(nullptr, obj.get(), critical ? 1 : 0, data.get());
  if (ext == nullptr) return false;
  if (sk_X509_EXTENSION_push(exts, ext) == 0) {
    X509_EXTENSION_free(ext);
    return false;
  }
  return true;
}

struct ExtensionStackDeleter {
  void operator()(STACK_OF(X509_EXTENSION) * s) const {
    sk_X509_EXTENSION_pop_free(s, X509_EXTENSION_free);
  }
};

struct AsnTypeDeleter {
  void operator()(ASN1_TYPE* t) const { ASN1_TYPE_free(t); }
};
struct AttributeDeleter {
  void operator()(X509_ATTRIBUTE* a) const { X509_ATTRIBUTE_free(a); }
};

// An attribute whose one value is the DER `value` (a SEQUENCE or a string).
bool AddRawAttribute(X509_REQ* req, const char* oid, const Bytes& value) {
  ossl::UniquePtr<ASN1_OBJECT> obj(OBJ_txt2obj(oid, 1));
  const unsigned char* p = value.data();
  std::unique_ptr<ASN1_TYPE, AsnTypeDeleter> type(
      d2i_ASN1_TYPE(nullptr, &p, static_cast<long>(value.size())));
  if (!obj || !type || p != value.data() + value.size()) return false;
  std::unique_ptr<X509_ATTRIBUTE, AttributeDeleter> attr(X509_ATTRIBUTE_new());
  if (!attr || X509_ATTRIBUTE_set1_object(attr.get(), obj.get()) != 1) return false;
  // X509_ATTRIBUTE_set1_data copies an ASN1_TYPE's value for its own type.
  int tag = ASN1_TYPE_get(type.get());
  const void* data = tag == V_ASN1_SEQUENCE || tag == V_ASN1_SET
                         ? static_cast<const void*>(type->value.sequence)
                         : static_cast<const void*>(type->value.asn1_string);
  if (X509_ATTRIBUTE_set1_data(attr.get(), tag, data, -1) != 1) return false;
  return X509_REQ_add1_attr(req, attr.get()) == 1;
}

Bytes ClientInfoDer(const RequestClientInfo& info) {
  const Bytes machine = DerString(info.machine, B_ASN1_UTF8STRING);
  const Bytes user = DerString(info.user, B_ASN1_UTF8STRING);
  const Bytes process = DerString(info.process, B_ASN1_UTF8STRING);
  if (machine.empty() || user.empty() || process.empty() || info.client_id < 0) return {};
  return Seq({Integer(info.client_id), machine, user, process});
}

bool LooksLikeOid(const std::string& s) {
  ossl::UniquePtr<ASN1_OBJECT> obj(OBJ_txt2obj(s.c_str(), 1));
  return obj != nullptr;
}

}  // namespace

absl::StatusOr<std::vector<uint8_t>> BuildArchivalPkcs10(EVP_PKEY* key,
                                                         const ArchivalRequestOptions& o) {
  if (auto st = CheckRequestKey(key); !st.ok()) return st;
  auto digest = CheckedDigest(o.digest);
  if (!digest.ok()) return digest.status();

  ossl::UniquePtr<X509_REQ> req(X509_REQ_new());
  if (!req || X509_REQ_set_version(req.get(), X509_REQ_VERSION_1) != 1 ||
      X509_REQ_set_pubkey(req.get(), key) != 1) {
    return hsm::OpenSslError("archival request: PKCS#10");
  }
  if (o.subject != nullptr && X509_REQ_set_subject_name(req.get(), o.subject) != 1) {
    return hsm::OpenSslError("archival request: PKCS#10 subject");
  }

  std::unique_ptr<STACK_OF(X509_EXTENSION), ExtensionStackDeleter> exts(
      sk_X509_EXTENSION_new_null());
  if (!exts) return hsm::OpenSslError("archival request: extensions");
  if (!o.template_oid.empty()) {
    if (!LooksLikeOid(o.template_oid)) {
      return Bad(StrCat("template OID \"", o.template_oid, "\" is not a dotted OID"));
    }
    // CertificateTemplate ::= SEQUENCE { templateID OID, major, minor OPTIONAL }
    if (!AddRawExtension(exts.get(), kOidTemplateV2, false, Seq({Oid(o.template_oid.c_str())}))) {
      return hsm::OpenSslError("archival request: template extension");
    }
  }
  if (!o.template_name.empty()) {
    const Bytes bmp = DerString(o.template_name, B_ASN1_BMPSTRING);
    if (bmp.empty()) {
      return Bad(StrCat("template name \"", o.template_name, "\" is not valid UTF-8/BMP text"));
    }
    if (!AddRawExtension(exts.get(), kOidTemplateV1, false, bmp)) {
      return hsm::OpenSslError("archival request: template name extension");
    }
  }
  // The key archival CA refuses a signature-only key: ask for key encipherment.
  X509_EXTENSION* ku = X509V3_EXT_conf_nid(nullptr, nullptr, NID_key_usage,
                                           "critical,digitalSignature,keyEncipherment");
  if (ku == nullptr || sk_X509_EXTENSION_push(exts.get(), ku) == 0) {
    X509_EXTENSION_free(ku);
    return hsm::OpenSslError("archival request: keyUsage");
  }
  auto ski = hsm::PublicKeySha1(key);
  if (!ski.ok()) return ski.status();
  if (!AddRawExtension(exts.get(), "2.5.29.14", false, OctetString(*ski))) {
    return hsm::OpenSslError("archival request: subjectKeyIdentifier");
  }
  if (X509_REQ_add_extensions(req.get(), exts.get()) != 1) {
    return hsm::OpenSslError("archival request: extensionRequest");
  }

  if (!o.template_name.empty()) {
    const Bytes pair = Seq({DerString("CertificateTemplate", B_ASN1_BMPSTRING),
                            DerString(o.template_name, B_ASN1_BMPSTRING)});
    if (!AddRawAttribute(req.get(), kOidNameValuePair, pair)) {
      return hsm::OpenSslError("archival request: name/value pair attribute");
    }
  }
  if (o.client_info) {
    const Bytes info = ClientInfoDer(*o.client_info);
    if (info.empty()) return Bad("client info: machine, user and process must be UTF-8");
    if (!AddRawAttribute(req.get(), kOidRequestClientInfo, info)) {
      return hsm::OpenSslError("archival request: client info attribute");
    }
  }

  ossl::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  if (!ctx ||
      EVP_DigestSignInit_ex(ctx.get(), nullptr, digest->c_str(), nullptr, nullptr, key, nullptr) !=
          1 ||
      X509_REQ_sign_ctx(req.get(), ctx.get()) <= 0) {
    return hsm::OpenSslError("archival request: signing the PKCS#10");
  }
  unsigned char* der = nullptr;
  const int len = i2d_X509_REQ(req.get(), &der);
  if (len <= 0) return hsm::OpenSslError("archival request: encoding the PKCS#10");
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> EncryptKeyForArchival(EVP_PKEY* key,
                                                           X509* exchange_certificate,
                                                           const ArchivalRequestOptions& o) {
  if (auto st = CheckRequestKey(key); !st.ok()) return st;
  if (exchange_certificate == nullptr) return Bad("no CA exchange certificate");
  EVP_PKEY* recipient = X509_get0_pubkey(exchange_certificate);
  if (recipient == nullptr || EVP_PKEY_is_a(recipient, "RSA") != 1) {
    return Bad("the CA exchange certificate's key is not RSA");
  }
  auto plaintext = o.key_format == ArchivedKeyFormat::kPrivateKeyBlob
                       ? SerializePrivateKeyBlob(key, kCalgRsaKeyx)
                       : ToPkcs8(key);
  if (!plaintext.ok()) return plaintext.status();

  const EVP_CIPHER* cipher =
      o.cipher == ContentCipher::kDes3Cbc ? EVP_des_ede3_cbc() : EVP_aes_256_cbc();
  // A read-only BIO over the plaintext: nothing is copied outside SecretBytes
  // except inside OpenSSL's cipher, which wipes its state.
  ossl::UniquePtr<BIO> in(BIO_new_mem_buf(plaintext->data(), static_cast<int>(plaintext->size())));
  STACK_OF(X509)* recipients = sk_X509_new_null();
  if (!in || recipients == nullptr || sk_X509_push(recipients, exchange_certificate) == 0) {
    sk_X509_free(recipients);
    return hsm::OpenSslError("archival request: envelope");
  }
  // CMS_BINARY: the bytes as they are; no CMS_STREAM: one definite-length
  // DER encoding. Recipients are named by issuerAndSerialNumber (no
  // CMS_USE_KEYID) and RSA key transport is PKCS#1 v1.5, as Windows does.
  ossl::UniquePtr<CMS_ContentInfo> cms(CMS_encrypt(recipients, in.get(), cipher, CMS_BINARY));
  sk_X509_free(recipients);
  if (!cms) return hsm::OpenSslError("archival request: encrypting the key");
  unsigned char* der = nullptr;
  const int len = i2d_CMS_ContentInfo(cms.get(), &der);
  if (len <= 0) return hsm::OpenSslError("archival request: encoding the envelope");
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> BuildArchivalRequest(EVP_PKEY* key, X509* exchange_certificate,
                                                          const ArchivalRequestOptions& o) {
  auto digest = CheckedDigest(o.digest);
  if (!digest.ok()) return digest.status();
  auto pkcs10 = BuildArchivalPkcs10(key, o);
  if (!pkcs10.ok()) return pkcs10.status();
  auto envelope = EncryptKeyForArchival(key, exchange_certificate, o);
  if (!envelope.ok()) return envelope.status();
  auto key_hash = Digest(*digest, *envelope);
  if (!key_hash.ok()) return key_hash.status();

  // PKIData { controlSequence, reqSequence, cmsSequence, otherMsgSequence }
  std::vector<Bytes> attributes = {
      Seq({Oid(kOidEncryptedKeyHash), SetOf({OctetString(*key_hash)})})};
  if (o.client_info) {
    const Bytes info = ClientInfoDer(*o.client_info);
    if (info.empty()) return Bad("client info: machine, user and process must be UTF-8");
    attributes.push_back(Seq({Oid(kOidRequestClientInfo), SetOf({info})}));
  }
  // CmcAddAttributesInfo { dataReference 0, certReferences {1}, attributes }
  const Bytes add_attributes = Seq({Integer(0), Seq({Integer(1)}), SetOf(std::move(attributes))});
  const Bytes control = Seq({Integer(2), Oid(kOidCmcAddAttributes), SetOf({add_attributes})});
  const Bytes tagged_request = Tlv(0xa0, Concat({Integer(1), *pkcs10}));
  const Bytes pki_data = Seq({Seq({control}), Seq({tagged_request}), Seq({}), Seq({})});

  // Signed attributes: contentType and messageDigest, signed as a SET OF.
  auto message_digest = Digest(*digest, pki_data);
  if (!message_digest.ok()) return message_digest.status();
  const Bytes signed_attrs_contents =
      SetOfContents({Seq({Oid(kOidContentType), SetOf({Oid(kOidPkiData)})}),
                     Seq({Oid(kOidMessageDigest), SetOf({OctetString(*message_digest)})})});
  const Bytes signed_attrs = Tlv(0x31, signed_attrs_contents);
  ossl::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  size_t sig_len = 0;
  if (!ctx ||
      EVP_DigestSignInit_ex(ctx.get(), nullptr, digest->c_str(), nullptr, nullptr, key, nullptr) !=
          1 ||
      EVP_DigestSign(ctx.get(), nullptr, &sig_len, signed_attrs.data(), signed_attrs.size()) != 1) {
    return hsm::OpenSslError("archival request: signing");
  }
  Bytes signature(sig_len);
  if (EVP_DigestSign(ctx.get(), signature.data(), &sig_len, signed_attrs.data(),
                     signed_attrs.size()) != 1) {
    return hsm::OpenSslError("archival request: signing");
  }
  signature.resize(sig_len);

  auto ski = hsm::PublicKeySha1(key);
  if (!ski.ok()) return ski.status();
  const Bytes null = {0x05, 0x00};
  const Bytes digest_alg = Seq({Oid(DigestOid(*digest)), null});
  // In the SignerInfo the same SET is tagged [0] IMPLICIT.
  const Bytes signed_attrs_implicit = Tlv(0xa0, signed_attrs_contents);
  const Bytes archived_key = Seq({Oid(kOidArchivedKey), SetOf({*envelope})});
  const Bytes signer_info =
      Seq({Integer(3), Tlv(0x80, *ski), digest_alg, signed_attrs_implicit,
           Seq({Oid(kOidRsaEncryption), null}), Tlv(0x04, signature), Tlv(0xa1, archived_key)});
  const Bytes encap = Seq({Oid(kOidPkiData), Tlv(0xa0, OctetString(pki_data))});
  const Bytes signed_data = Seq({Integer(3), SetOf({digest_alg}), encap, SetOf({signer_info})});
  Bytes request = Seq({Oid(kOidSignedData), Tlv(0xa0, signed_data)});

  // What we send must be what the CA parses: check it the CA's way.
  auto parsed = ParseCmcRequest(request);
  if (!parsed.ok()) {
    return absl::InternalError(
        StrCat("archival request: the built request does not parse: ", parsed.status().message()));
  }
  return request;
}

}  // namespace keywarden::pki
