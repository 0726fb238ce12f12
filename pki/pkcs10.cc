#include "pki/pkcs10.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>

#include "absl/strings/cord.h"

#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/der.h"

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

// The subjectPKInfo element (tag, length and contents) as the request
// carries it: CertificationRequest -> certificationRequestInfo -> version,
// subject, subjectPKInfo. Empty if the layout is not that.
std::span<const uint8_t> SentSpki(std::span<const uint8_t> request_der) {
  DerReader top(request_der);
  DerElement request, info, version, subject, spki;
  if (!top.Expect(der::kSequence, &request)) return {};
  DerReader fields(request.contents);
  if (!fields.Expect(der::kSequence, &info)) return {};
  DerReader inner(info.contents);
  if (!inner.Expect(der::kInteger, &version) || !inner.Expect(der::kSequence, &subject) ||
      !inner.Expect(der::kSequence, &spki)) {
    return {};
  }
  return spki.whole;
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
    static const char kDigits[] = "0123456789abcdef";
    for (unsigned int i = 0; i < n; ++i) {
      out.push_back(kDigits[md[i] >> 4]);
      out.push_back(kDigits[md[i] & 0xf]);
    }
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

std::string KeyEncodingProblem(EVP_PKEY* key, std::span<const uint8_t> spki) {
  if (key == nullptr || spki.empty()) return "is missing";
  // OpenSSL decodes BER inside the key (a long-form length in an
  // RSAPublicKey, say) to the same key.
  unsigned char* encoded = nullptr;
  const int encoded_len = i2d_PUBKEY(key, &encoded);
  const bool der = encoded_len > 0 && spki.size() == static_cast<size_t>(encoded_len) &&
                   std::equal(spki.begin(), spki.end(), encoded);
  OPENSSL_free(encoded);
  ERR_clear_error();
  if (!der) return "is not in DER";
  if (!EVP_PKEY_is_a(key, "EC")) return {};
  // SubjectPublicKeyInfo { AlgorithmIdentifier { id-ecPublicKey, parameters },
  // BIT STRING { 0 unused bits, ECPoint } }: DER, as checked above.
  DerReader top(spki);
  DerElement info, algorithm, oid, parameters, bits;
  if (!top.Expect(der::kSequence, &info)) return "is not a SubjectPublicKeyInfo";
  DerReader fields(info.contents);
  if (!fields.Expect(der::kSequence, &algorithm) || !fields.Expect(der::kBitString, &bits)) {
    return "is not a SubjectPublicKeyInfo";
  }
  DerReader alg(algorithm.contents);
  if (!alg.Expect(der::kOid, &oid) || !alg.Next(&parameters) || parameters.tag != der::kOid) {
    return "does not name its curve (explicit or implicit EC parameters; RFC 5480 allows only "
           "a named curve)";
  }
  if (bits.contents.size() < 2 || bits.contents[0] != 0 || bits.contents[1] != 0x04) {
    return "is not an uncompressed EC point (compressed or hybrid form)";
  }
  return {};
}

absl::StatusOr<Pkcs10Request> ParsePkcs10(std::span<const uint8_t> data) {
  Pkcs10Request r;
  r.der = PemToDer(data);
  if (r.der.empty()) return absl::InvalidArgumentError("PKCS#10: the request is empty or bad PEM");
  const unsigned char* p = r.der.data();
  r.req.reset(d2i_X509_REQ(nullptr, &p, static_cast<long>(r.der.size())));
  if (!r.req)
    return hsm::OpenSslError("PKCS#10: not a certification request",
                             absl::StatusCode::kInvalidArgument);
  if (p != r.der.data() + r.der.size()) {
    return absl::InvalidArgumentError("PKCS#10: trailing bytes after the request");
  }
  EVP_PKEY* pub = X509_REQ_get0_pubkey(r.req.get());
  if (pub == nullptr)
    return hsm::OpenSslError("PKCS#10: unreadable public key", absl::StatusCode::kInvalidArgument);
  if (X509_REQ_verify(r.req.get(), pub) != 1) {
    ERR_clear_error();
    return RequestCheckError(
        RequestCheck::kSignature,
        "PKCS#10: the request's signature does not verify with its public key");
  }
  // The SubjectPublicKeyInfo as sent (CertificationRequest ->
  // certificationRequestInfo -> version, subject, subjectPKInfo).
  const std::span<const uint8_t> sent = SentSpki(r.der);
  if (const std::string problem = KeyEncodingProblem(pub, sent); !problem.empty()) {
    return absl::InvalidArgumentError(StrCat(
        "PKCS#10: the public key (SubjectPublicKeyInfo) ", problem,
        ": a key has one encoding only here, so that it is certified and found under one "
        "identity"));
  }
  r.spki_sha256_ = Sha256Hex(sent);
  r.empty_subject = X509_NAME_entry_count(X509_REQ_get_subject_name(r.req.get())) == 0;
  if (auto st = ReadTemplateExtensions(r); !st.ok()) return st;
  ReadNameValuePairs(r);
  return r;
}

}  // namespace keywarden::pki
