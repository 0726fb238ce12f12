#include "pki/pkcs10.h"

#include <openssl/asn1t.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "absl/strings/cord.h"

#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/der.h"
#include "pki/spki.h"

namespace keywarden::pki {
namespace {

constexpr char kTemplateV2Oid[] = "1.3.6.1.4.1.311.21.7";
constexpr char kTemplateV1Oid[] = "1.3.6.1.4.1.311.20.2";
constexpr char kNameValuePairOid[] = "1.3.6.1.4.1.311.13.2.1";

std::string ObjText(const ASN1_OBJECT* obj) {
  char buf[128];
  int n = OBJ_obj2txt(buf, sizeof buf, obj, 1);
  return n > 0 && n < static_cast<int>(sizeof buf) ? std::string(buf) : std::string();
}

absl::Status ReadTemplateExtensions(Pkcs10Request& r) {
  STACK_OF(X509_EXTENSION)* exts = X509_REQ_get_extensions(r.req.get());
  absl::Status status;
  for (int i = 0; exts != nullptr && i < sk_X509_EXTENSION_num(exts); ++i) {
    X509_EXTENSION* ext = sk_X509_EXTENSION_value(exts, i);
    std::string oid = ObjText(X509_EXTENSION_get_object(ext));
    ASN1_OCTET_STRING* value = X509_EXTENSION_get_data(ext);
    std::span<const uint8_t> data(value->data, static_cast<size_t>(value->length));
    if (oid == kTemplateV2Oid) {
      DerReader outer(data);
      DerElement seq, id, major, minor;
      if (!outer.Expect(der::kSequence, &seq) || !outer.empty()) {
        status = absl::InvalidArgumentError(
            "PKCS#10: template extension 1.3.6.1.4.1.311.21.7 is malformed");
        break;
      }
      DerReader inner(seq.contents);
      if (!inner.Expect(der::kOid, &id) || (r.template_oid = OidToText(id.contents)).empty()) {
        status = absl::InvalidArgumentError("PKCS#10: template extension has no valid OID");
        break;
      }
      if (inner.Expect(der::kInteger, &major)) ReadSmallInt(major.contents, &r.template_major);
      if (inner.Expect(der::kInteger, &minor)) ReadSmallInt(minor.contents, &r.template_minor);
    } else if (oid == kTemplateV1Oid) {
      DerReader reader(data);
      DerElement name;
      std::string text;
      if (reader.Next(&name) &&
          (name.tag == der::kBmpString ? BmpToUtf8(name.contents, &text)
           : (name.tag == der::kUtf8String || name.tag == der::kPrintableString)
               ? (text.assign(name.contents.begin(), name.contents.end()), true)
               : false)) {
        r.template_name = text;
      } else {
        status = absl::InvalidArgumentError(
            "PKCS#10: template name extension 1.3.6.1.4.1.311.20.2 is malformed");
        break;
      }
    }
  }
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  ERR_clear_error();  // a request without extensions leaves a harmless error
  return status;
}

// CertificateTemplate=NAME in the enrollment name/value pair attribute.
void ReadNameValuePairs(Pkcs10Request& r) {
  for (int i = 0; i < X509_REQ_get_attr_count(r.req.get()); ++i) {
    X509_ATTRIBUTE* attr = X509_REQ_get_attr(r.req.get(), i);
    if (ObjText(X509_ATTRIBUTE_get0_object(attr)) != kNameValuePairOid) continue;
    for (int j = 0; j < X509_ATTRIBUTE_count(attr); ++j) {
      ASN1_TYPE* t = X509_ATTRIBUTE_get0_type(attr, j);
      if (t == nullptr || t->type != V_ASN1_SEQUENCE) continue;
      DerReader outer({t->value.sequence->data, static_cast<size_t>(t->value.sequence->length)});
      DerElement seq, name, value;
      if (!outer.Expect(der::kSequence, &seq)) continue;
      DerReader inner(seq.contents);
      std::string n, v;
      if (inner.Expect(der::kBmpString, &name) && inner.Expect(der::kBmpString, &value) &&
          BmpToUtf8(name.contents, &n) && BmpToUtf8(value.contents, &v) &&
          AsciiLower(n) == "certificatetemplate" && r.template_name.empty()) {
        r.template_name = v;
      }
    }
  }
}

// A DER element decoded by OpenSSL's d2i function for its type, which must
// use every byte of it.
template <typename T>
ossl::UniquePtr<T> D2iWhole(T* (*d2i)(T**, const unsigned char**, long),
                            std::span<const uint8_t> element) {
  const unsigned char* p = element.data();
  ossl::UniquePtr<T> out(d2i(nullptr, &p, static_cast<long>(element.size())));
  if (out && p != element.data() + element.size()) out.reset();
  return out;
}

// The request's X509_REQ from its parts, without decoding its public key
// (the caller has, with ReadPublicKey): X509_REQ_get0_pubkey is null on
// it, Pkcs10Request::public_key() is the key. False on a malformed part.
bool BuildRequest(const DerElement& subject, const DerElement& spki,
                  std::span<const uint8_t> attributes, Pkcs10Request& r) {
  r.req.reset(X509_REQ_new());
  auto name = D2iWhole(d2i_X509_NAME, subject.whole);
  if (!r.req || !name || X509_REQ_set_subject_name(r.req.get(), name.get()) != 1) return false;
  // AlgorithmIdentifier and key bits as sent, as d2i_X509_REQ keeps them.
  DerReader top(spki.contents);
  DerElement algorithm, bits;
  if (!top.Expect(der::kSequence, &algorithm) || !top.Expect(der::kBitString, &bits) ||
      bits.contents.empty() || bits.contents[0] != 0) {
    return false;
  }
  ossl::UniquePtr<X509_ALGOR> alg = D2iWhole(d2i_X509_ALGOR, algorithm.whole);
  if (!alg ||
      !SetSpkiParts(X509_REQ_get_X509_PUBKEY(r.req.get()), alg.get(), bits.contents.subspan(1))) {
    return false;
  }
  DerReader set(attributes);
  while (!set.empty()) {
    DerElement attribute;
    if (!set.Expect(der::kSequence, &attribute)) return false;
    auto a = D2iWhole(d2i_X509_ATTRIBUTE, attribute.whole);
    if (!a || X509_REQ_add1_attr(r.req.get(), a.get()) != 1) return false;
  }
  return true;
}

}  // namespace

std::vector<uint8_t> PemToDer(std::span<const uint8_t> data) {
  static constexpr std::string_view kBegin = "-----BEGIN ";
  std::string_view text(reinterpret_cast<const char*>(data.data()), data.size());
  if (text.find(kBegin) == std::string_view::npos) return {data.begin(), data.end()};
  ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* der = nullptr;
  long len = 0;
  std::vector<uint8_t> out;
  if (PEM_read_bio(bio.get(), &name, &header, &der, &len) == 1) out.assign(der, der + len);
  OPENSSL_free(name);
  OPENSSL_free(header);
  OPENSSL_free(der);
  ERR_clear_error();
  return out;
}

std::string SniffRequestFormat(std::span<const uint8_t> data) {
  DerReader top(data);
  DerElement outer, first;
  if (!top.Expect(der::kSequence, &outer) || !top.empty()) return {};
  DerReader inner(outer.contents);
  if (!inner.Next(&first)) return {};
  // ContentInfo starts with an OID; CertificationRequest with the info SEQUENCE.
  if (first.tag == der::kOid) return "cmc";
  if (first.tag == der::kSequence) return "pkcs10";
  return {};
}

absl::Status RequestCheckError(RequestCheck check, const std::string& message) {
  absl::Status st = absl::InvalidArgumentError(message);
  st.SetPayload(kRequestCheckPayload, absl::Cord(RequestCheckName(check)));
  return st;
}

RequestCheck RequestCheckOf(const absl::Status& status) {
  const auto payload = status.GetPayload(kRequestCheckPayload);
  if (!payload) return RequestCheck::kStructure;
  for (RequestCheck c :
       {RequestCheck::kKeyHash, RequestCheck::kMessageDigest, RequestCheck::kSignature,
        RequestCheck::kSigner, RequestCheck::kAlgorithm}) {
    if (*payload == RequestCheckName(c)) return c;
  }
  return RequestCheck::kStructure;
}

const char* RequestCheckName(RequestCheck check) {
  switch (check) {
    case RequestCheck::kKeyHash:
      return "key-hash";
    case RequestCheck::kMessageDigest:
      return "message-digest";
    case RequestCheck::kSignature:
      return "signature";
    case RequestCheck::kSigner:
      return "signer";
    case RequestCheck::kAlgorithm:
      return "algorithm";
    case RequestCheck::kStructure:
      break;
  }
  return "structure";
}

std::string Sha256Hex(std::span<const uint8_t> data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  std::string out;
  if (EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr) == 1) {
    out = HexString({md, n});
  }
  ERR_clear_error();
  return out;
}

std::string SpkiSha256(EVP_PKEY* key) {
  if (key == nullptr) return {};
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(key, &der);
  std::string out;
  if (len > 0) out = Sha256Hex({der, static_cast<size_t>(len)});
  OPENSSL_free(der);
  ERR_clear_error();
  return out;
}

absl::StatusOr<Pkcs10Request> ParsePkcs10(std::span<const uint8_t> data) {
  Pkcs10Request r;
  r.der = PemToDer(data);
  if (r.der.empty()) return absl::InvalidArgumentError("PKCS#10: the request is empty or bad PEM");
  // CertificationRequest { certificationRequestInfo { version, subject,
  // subjectPKInfo, [0] attributes }, signatureAlgorithm, signature }, read
  // part by part: d2i_X509_REQ would decode the public key with OpenSSL
  // 3.0's decoders, several times what reading it from its parts costs.
  DerReader top(r.der);
  DerElement request, info, sig_alg, signature, version, subject, spki, attributes;
  if (!top.Expect(der::kSequence, &request)) {
    return absl::InvalidArgumentError("PKCS#10: not a certification request");
  }
  if (!top.empty()) return absl::InvalidArgumentError("PKCS#10: trailing bytes after the request");
  DerReader fields(request.contents);
  if (!fields.Expect(der::kSequence, &info) || !fields.Expect(der::kSequence, &sig_alg) ||
      !fields.Expect(der::kBitString, &signature) || !fields.empty()) {
    return absl::InvalidArgumentError(
        "PKCS#10: not a certification request (request info, signature algorithm, signature)");
  }
  DerReader parts(info.contents);
  int64_t version_number = -1;
  if (!parts.Expect(der::kInteger, &version) || !ReadSmallInt(version.contents, &version_number) ||
      version_number != 0) {
    return absl::InvalidArgumentError("PKCS#10: the request's version is not v1 (0)");
  }
  if (!parts.Expect(der::kSequence, &subject) || !parts.Expect(der::kSequence, &spki)) {
    return absl::InvalidArgumentError("PKCS#10: the request has no subject or public key");
  }
  uint8_t tag = 0;
  if (parts.PeekTag(&tag) && tag == der::ContextConstructed(0) && !parts.Next(&attributes)) {
    return absl::InvalidArgumentError("PKCS#10: malformed attributes");
  }
  if (!parts.empty()) {
    return absl::InvalidArgumentError("PKCS#10: unexpected data after the request's attributes");
  }
  auto key = ReadPublicKey(spki.whole);
  if (!key.ok()) {
    if (key.status().code() != absl::StatusCode::kInvalidArgument) return key.status();
    return absl::InvalidArgumentError(
        StrCat("PKCS#10: the public key (SubjectPublicKeyInfo) ", key.status().message(),
               ": a key has one encoding only here, so that it is certified and found under one "
               "identity"));
  }
  r.key_ = std::move(*key);
  if (!BuildRequest(subject, spki, attributes.contents, r)) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        "PKCS#10: malformed subject, public key or attributes in the request");
  }
  // The signature over certificationRequestInfo exactly as sent (an ANY
  // holding a SEQUENCE encodes as its bytes), as X509_REQ_verify checks it.
  ossl::UniquePtr<X509_ALGOR> alg = D2iWhole(d2i_X509_ALGOR, sig_alg.whole);
  ossl::UniquePtr<ASN1_BIT_STRING> sig = D2iWhole(d2i_ASN1_BIT_STRING, signature.whole);
  ossl::UniquePtr<ASN1_STRING> signed_info(ASN1_STRING_type_new(V_ASN1_SEQUENCE));
  ASN1_TYPE signed_any{};
  if (!alg || !sig || !signed_info ||
      ASN1_STRING_set(signed_info.get(), info.whole.data(), static_cast<int>(info.whole.size())) !=
          1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("PKCS#10: malformed signature algorithm or signature");
  }
  signed_any.type = V_ASN1_SEQUENCE;
  signed_any.value.sequence = signed_info.get();
  if (ASN1_item_verify(ASN1_ITEM_rptr(ASN1_ANY), alg.get(), sig.get(), &signed_any, r.key_.get()) !=
      1) {
    ERR_clear_error();
    return RequestCheckError(
        RequestCheck::kSignature,
        "PKCS#10: the request's signature does not verify with its public key");
  }
  if (X509_REQ_set1_signature_algo(r.req.get(), alg.get()) != 1) {
    return hsm::OpenSslError("PKCS#10: copy the signature algorithm");
  }
  X509_REQ_set0_signature(r.req.get(), sig.release());
  r.spki_sha256_ = Sha256Hex(spki.whole);
  r.empty_subject = X509_NAME_entry_count(X509_REQ_get_subject_name(r.req.get())) == 0;
  if (auto st = ReadTemplateExtensions(r); !st.ok()) return st;
  ReadNameValuePairs(r);
  return r;
}

}  // namespace keywarden::pki
