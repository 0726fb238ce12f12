#include "pki/recovery_blob.h"

#include <algorithm>
#include <cstring>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "absl/strings/cord.h"
#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/der.h"

namespace keywarden::pki {
namespace {

using hsm::OpenSslError;
using Bytes = std::vector<uint8_t>;

constexpr char kErrorPayload[] = "type.keywarden.pki/recovery-blob-error";
constexpr char kIdData[] = "1.2.840.113549.1.7.1";
constexpr char kIdSignedData[] = "1.2.840.113549.1.7.2";
constexpr char kIdEnvelopedData[] = "1.2.840.113549.1.7.3";

absl::Status Fail(RecoveryBlobError kind, absl::StatusCode code, std::string_view message) {
  absl::Status status(code, StrCat("recovery blob: ", message));
  status.SetPayload(kErrorPayload, absl::Cord(std::string(RecoveryBlobErrorName(kind))));
  return status;
}
absl::Status Malformed(std::string_view message) {
  return Fail(RecoveryBlobError::kMalformed, absl::StatusCode::kDataLoss, message);
}

// Another reference to a certificate the blob already holds: X509_dup
// would re-encode and re-decode it (its public key through OpenSSL 3's
// decoders, the most expensive part of opening a blob).
ossl::UniquePtr<X509> Shared(X509* cert) {
  X509_up_ref(cert);
  return ossl::UniquePtr<X509>(cert);
}

template <typename T, typename F>
Bytes Der(T* object, F i2d) {
  unsigned char* der = nullptr;
  int len = i2d(object, &der);
  Bytes out(der, der + std::max(len, 0));
  OPENSSL_free(der);
  return out;
}

Bytes Sha1(X509* cert) {
  unsigned char buf[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!X509_digest(cert, EVP_sha1(), buf, &len)) return {};
  return Bytes(buf, buf + len);
}

std::string OidText(const ASN1_OBJECT* obj, bool numeric) {
  char buf[128];
  int n = OBJ_obj2txt(buf, sizeof buf, obj, numeric ? 1 : 0);
  return n > 0 ? std::string(buf, std::min<size_t>(static_cast<size_t>(n), sizeof buf - 1)) : "";
}

std::string Subject(X509* cert) {
  return FormatName(X509_get_subject_name(cert));
}

std::string SerialHex(const ASN1_INTEGER* serial) {
  return HexString({serial->data, static_cast<size_t>(serial->length)});
}

struct StackDeleter {
  void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};
using CertStack = std::unique_ptr<STACK_OF(X509), StackDeleter>;

// Certificates in a list, each once (by DER).
class CertSet {
 public:
  void Add(X509* cert) {
    if (cert == nullptr) return;
    Bytes der = CertificateDer(cert);
    if (std::find(seen_.begin(), seen_.end(), der) != seen_.end()) return;
    seen_.push_back(std::move(der));
    certs_.push_back(cert);
  }
  const std::vector<X509*>& certs() const { return certs_; }

 private:
  std::vector<Bytes> seen_;
  std::vector<X509*> certs_;
};

// The AlgorithmIdentifier OID of the envelope's content encryption:
// ContentInfo { OID, [0] EnvelopedData { version, [0] originatorInfo OPTIONAL,
// SET recipientInfos, SEQ encryptedContentInfo { OID, SEQ { OID, ... } } } }.
std::string ContentCipherOf(std::span<const uint8_t> content_info) {
  DerReader top(content_info);
  DerElement ci, oid, explicit0, env, version, recips, eci, ctype, alg, alg_oid;
  if (!top.Expect(der::kSequence, &ci)) return {};
  DerReader r(ci.contents);
  if (!r.Expect(der::kOid, &oid) || !r.Expect(der::ContextConstructed(0), &explicit0)) return {};
  DerReader e(explicit0.contents);
  if (!e.Expect(der::kSequence, &env)) return {};
  DerReader body(env.contents);
  if (!body.Expect(der::kInteger, &version)) return {};
  uint8_t tag = 0;
  if (body.PeekTag(&tag) && tag == der::ContextConstructed(0)) {
    DerElement skip;
    if (!body.Next(&skip)) return {};
  }
  if (!body.Expect(der::kSet, &recips) || !body.Expect(der::kSequence, &eci)) return {};
  DerReader ec(eci.contents);
  if (!ec.Expect(der::kOid, &ctype) || !ec.Expect(der::kSequence, &alg)) return {};
  DerReader a(alg.contents);
  if (!a.Expect(der::kOid, &alg_oid)) return {};
  const std::string dotted = OidToText(alg_oid.contents);
  if (dotted.empty()) return {};
  ossl::UniquePtr<ASN1_OBJECT> obj(OBJ_txt2obj(dotted.c_str(), 1));
  return obj ? OidText(obj.get(), false) : dotted;
}

// SignedData version and digestAlgorithms, which OpenSSL parses but does
// not check: version must be what RFC 5652 §5.1 gives for this content,
// and digestAlgorithms exactly the signer's digest.
absl::Status CheckSignedDataHeader(std::span<const uint8_t> blob, int64_t expected_version,
                                   const Bytes& signer_digest_oid) {
  DerReader top(blob);
  DerElement ci, oid, explicit0, sd, version, algs;
  if (!top.Expect(der::kSequence, &ci)) return Malformed("not a DER SEQUENCE");
  DerReader r(ci.contents);
  if (!r.Expect(der::kOid, &oid) || !r.Expect(der::ContextConstructed(0), &explicit0)) {
    return Malformed("ContentInfo is not { OID, [0] content }");
  }
  DerReader e(explicit0.contents);
  if (!e.Expect(der::kSequence, &sd)) return Malformed("SignedData is not a SEQUENCE");
  DerReader s(sd.contents);
  int64_t v = -1;
  if (!s.Expect(der::kInteger, &version) || !ReadSmallInt(version.contents, &v)) {
    return Malformed("SignedData has no version");
  }
  if (v != expected_version) {
    return Malformed(StrCat("SignedData version is ", v, ", expected ", expected_version));
  }
  if (!s.Expect(der::kSet, &algs)) return Malformed("SignedData has no digestAlgorithms");
  DerReader a(algs.contents);
  DerElement alg, alg_oid;
  if (!a.Expect(der::kSequence, &alg) || !a.empty()) {
    return Malformed("digestAlgorithms must list exactly the signer's digest");
  }
  DerReader ao(alg.contents);
  if (!ao.Expect(der::kOid, &alg_oid) ||
      !std::equal(alg_oid.whole.begin(), alg_oid.whole.end(), signer_digest_oid.begin(),
                  signer_digest_oid.end())) {
    return Malformed("digestAlgorithms does not match the signer's digest algorithm");
  }
  return absl::OkStatus();
}

// The X509_STORE_CTX error text for a chain that did not verify.
std::string ChainError(X509_STORE_CTX* ctx) {
  const int err = X509_STORE_CTX_get_error(ctx);
  X509* at = X509_STORE_CTX_get_current_cert(ctx);
  return StrCat(X509_verify_cert_error_string(err),
                at != nullptr ? StrCat(" (at \"", Subject(at), "\")") : std::string());
}

// The blob just made, checked before it leaves without opening it as a KRA
// does (ParseRecoveryBlob decodes every certificate's public key again
// through OpenSSL 3's decoders, ~20 % of a daemon's retrieval). In the DER
// that will leave: the eContent is `content`; the signature over the
// signed attributes, as encoded, verifies with `ca_public` (software); the
// signed messageDigest is the digest of that content. In memory: every
// certificate of `certs` whose issuer (by name) is also there verifies
// with that issuer's key (`ca_certificate` with `ca_public`), so a user
// chain with the wrong CA certificate in it is found here, not by the KRA;
// and every certificate is the user's, the CA's, a KRA's or an issuer of
// the user's or a KRA's (ParseRecoveryBlob's step 7).
// Any failure (or a structure this walk does not know) falls back to the
// full ParseRecoveryBlob, whose verdict then decides.
bool BuiltBlobVerifies(std::span<const uint8_t> der, std::span<const uint8_t> content,
                       const std::string& digest, EVP_PKEY* ca_public, X509* ca_certificate,
                       X509* user_certificate, const std::vector<X509*>& kra_certificates,
                       const std::vector<X509*>& certs) {
  DerReader top(der);
  DerElement ci, oid, explicit0, sd, version, algs, encap;
  if (!top.Expect(der::kSequence, &ci) || !top.empty()) return false;
  DerReader r(ci.contents);
  if (!r.Expect(der::kOid, &oid) || !r.Expect(der::ContextConstructed(0), &explicit0)) return false;
  DerReader e(explicit0.contents);
  if (!e.Expect(der::kSequence, &sd)) return false;
  DerReader s(sd.contents);
  if (!s.Expect(der::kInteger, &version) || !s.Expect(der::kSet, &algs) ||
      !s.Expect(der::kSequence, &encap)) {
    return false;
  }
  // encapContentInfo { eContentType, [0] EXPLICIT OCTET STRING eContent }
  DerReader ec(encap.contents);
  DerElement ctype, ex0, octets;
  if (!ec.Expect(der::kOid, &ctype) || !ec.Expect(der::ContextConstructed(0), &ex0)) return false;
  DerReader eo(ex0.contents);
  if (!eo.Expect(der::kOctetString, &octets) || !eo.empty() ||
      !std::equal(octets.contents.begin(), octets.contents.end(), content.begin(), content.end())) {
    return false;
  }
  // [0] certificates and [1] crls are skipped; then signerInfos, one signer.
  DerElement el, signer_infos;
  while (s.Next(&el)) {
    if (el.tag == der::kSet) {
      signer_infos = el;
      break;
    }
  }
  if (signer_infos.tag != der::kSet) return false;
  DerReader sis(signer_infos.contents);
  DerElement si, sv, sid, dalg, attrs, salg, sig;
  if (!sis.Expect(der::kSequence, &si) || !sis.empty()) return false;
  DerReader sr(si.contents);
  if (!sr.Expect(der::kInteger, &sv) || !sr.Next(&sid) || !sr.Expect(der::kSequence, &dalg) ||
      !sr.Expect(der::ContextConstructed(0), &attrs) || !sr.Expect(der::kSequence, &salg) ||
      !sr.Expect(der::kOctetString, &sig)) {
    return false;
  }
  // The signature covers the attributes with their SET tag (RFC 5652 5.4).
  Bytes signed_attrs(attrs.whole.begin(), attrs.whole.end());
  signed_attrs[0] = der::kSet;
  ossl::UniquePtr<EVP_MD_CTX> verify(EVP_MD_CTX_new());
  if (!verify ||
      EVP_DigestVerifyInit_ex(verify.get(), nullptr, digest.c_str(), nullptr, nullptr, ca_public,
                              nullptr) != 1 ||
      EVP_DigestVerify(verify.get(), sig.contents.data(), sig.contents.size(), signed_attrs.data(),
                       signed_attrs.size()) != 1) {
    ERR_clear_error();
    return false;
  }
  // messageDigest (1.2.840.113549.1.9.4) among the verified attributes.
  std::span<const uint8_t> signed_digest;
  DerReader ar(attrs.contents);
  while (!ar.empty()) {
    DerElement attr, aoid, values, value;
    if (!ar.Expect(der::kSequence, &attr)) return false;
    DerReader aa(attr.contents);
    if (!aa.Expect(der::kOid, &aoid) || !aa.Expect(der::kSet, &values)) return false;
    if (OidToText(aoid.contents) != "1.2.840.113549.1.9.4") continue;
    DerReader v(values.contents);
    if (!signed_digest.empty() || !v.Expect(der::kOctetString, &value) || !v.empty()) return false;
    signed_digest = value.contents;
  }
  unsigned char computed[EVP_MAX_MD_SIZE];
  unsigned int computed_len = 0;
  ossl::UniquePtr<EVP_MD> md(EVP_MD_fetch(nullptr, digest.c_str(), nullptr));
  if (!md ||
      EVP_Digest(content.data(), content.size(), computed, &computed_len, md.get(), nullptr) != 1 ||
      signed_digest.size() != computed_len ||
      std::memcmp(signed_digest.data(), computed, computed_len) != 0) {
    ERR_clear_error();
    return false;
  }
  // Every certificate with its issuer at hand verifies with it.
  for (X509* c : certs) {
    bool named = false, verified = false;
    for (X509* issuer : certs) {
      if (X509_NAME_cmp(X509_get_subject_name(issuer), X509_get_issuer_name(c)) != 0) continue;
      EVP_PKEY* key = X509_cmp(issuer, ca_certificate) == 0 ? ca_public : X509_get0_pubkey(issuer);
      if (key == nullptr) continue;
      named = true;
      if (X509_verify(c, key) == 1) {
        verified = true;
        break;
      }
    }
    ERR_clear_error();
    if (named && !verified) return false;
  }
  // Every certificate has its place, as ParseRecoveryBlob's step 7 sorts
  // them: the user's and its issuers, the CA's, the KRAs' and their issuers.
  std::vector<X509*> placed;
  auto issuers_of = [&](X509* c) {
    for (int depth = 0; depth < 10; ++depth) {
      if (X509_check_issued(c, c) == X509_V_OK) break;  // self-signed: the root
      X509* next = nullptr;
      for (X509* candidate : certs) {
        if (next == nullptr && X509_check_issued(candidate, c) == X509_V_OK) next = candidate;
      }
      if (next == nullptr || std::find(placed.begin(), placed.end(), next) != placed.end()) break;
      placed.push_back(next);
      c = next;
    }
  };
  placed.push_back(user_certificate);
  issuers_of(user_certificate);
  placed.push_back(ca_certificate);
  for (X509* kra : kra_certificates) {
    placed.push_back(kra);
    issuers_of(kra);
  }
  ERR_clear_error();
  for (X509* c : certs) {
    bool found = false;
    for (X509* p : placed) found = found || X509_cmp(p, c) == 0;
    if (!found) return false;
  }
  return true;
}

}  // namespace

std::string_view RecoveryBlobErrorName(RecoveryBlobError error) {
  switch (error) {
    case RecoveryBlobError::kNone:
      return "none";
    case RecoveryBlobError::kMalformed:
      return "malformed";
    case RecoveryBlobError::kBadSignature:
      return "bad-signature";
    case RecoveryBlobError::kCertificateTampered:
      return "certificate-tampered";
    case RecoveryBlobError::kUntrustedSigner:
      return "untrusted-signer";
    case RecoveryBlobError::kMissingCertHash:
      return "missing-cert-hash";
    case RecoveryBlobError::kUserCertificateMissing:
      return "user-certificate-missing";
    case RecoveryBlobError::kNotEnveloped:
      return "not-enveloped";
  }
  return "unknown";
}

RecoveryBlobError RecoveryBlobErrorOf(const absl::Status& status) {
  if (status.ok()) return RecoveryBlobError::kNone;
  auto payload = status.GetPayload(kErrorPayload);
  if (!payload.has_value()) return RecoveryBlobError::kNone;
  const std::string name(*payload);
  for (auto e : {RecoveryBlobError::kMalformed, RecoveryBlobError::kBadSignature,
                 RecoveryBlobError::kCertificateTampered, RecoveryBlobError::kUntrustedSigner,
                 RecoveryBlobError::kMissingCertHash, RecoveryBlobError::kUserCertificateMissing,
                 RecoveryBlobError::kNotEnveloped}) {
    if (RecoveryBlobErrorName(e) == name) return e;
  }
  return RecoveryBlobError::kNone;
}

bool RecoveryRecipient::Matches(X509* cert) const {
  if (cert == nullptr) return false;
  if (issuer && serial) {
    return X509_NAME_cmp(issuer.get(), X509_get_issuer_name(cert)) == 0 &&
           ASN1_INTEGER_cmp(serial.get(), X509_get0_serialNumber(cert)) == 0;
  }
  const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(cert);
  return !subject_key_id.empty() && ski != nullptr &&
         static_cast<size_t>(ski->length) == subject_key_id.size() &&
         std::memcmp(ski->data, subject_key_id.data(), subject_key_id.size()) == 0;
}

std::string RecoveryRecipient::Describe() const {
  if (certificate != nullptr) {
    return StrCat("\"", Subject(certificate), "\" (SHA-1 ", Sha1Thumbprint(certificate), ")");
  }
  if (issuer && serial) {
    return StrCat("issuer \"", FormatName(issuer.get()), "\" serial ", SerialHex(serial.get()),
                  " (certificate not in the blob)");
  }
  return StrCat("subject key id ", HexString(subject_key_id), " (certificate not in the blob)");
}

absl::StatusOr<std::vector<uint8_t>> BuildRecoveryBlob(OSSL_LIB_CTX* libctx, const char* propq,
                                                       const RecoveryBlobInput& in) {
  auto bad = [](std::string_view what) {
    return absl::InvalidArgumentError(StrCat("recovery blob: ", what));
  };
  if (in.ca_key == nullptr || in.ca_certificate == nullptr) return bad("no CA key or certificate");
  if (in.user_certificate == nullptr) return bad("no user certificate");
  if (in.enveloped_data.empty()) return bad("no archived key (EnvelopedData)");
  if (in.digest != "SHA256" && in.digest != "SHA384" && in.digest != "SHA512") {
    return bad(StrCat("digest \"", in.digest, "\": use SHA256, SHA384 or SHA512"));
  }
  if (EVP_PKEY_eq(X509_get0_pubkey(in.ca_certificate), in.ca_key) != 1) {
    ERR_clear_error();
    return bad(StrCat("the CA key is not the key of \"", Subject(in.ca_certificate), "\""));
  }

  // The archive must be a CMS EnvelopedData whose every recipient has one
  // of the KRA certificates given, and every KRA certificate a recipient.
  const unsigned char* p = in.enveloped_data.data();
  ossl::UniquePtr<CMS_ContentInfo> envelope(
      d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(in.enveloped_data.size())));
  if (!envelope || p != in.enveloped_data.data() + in.enveloped_data.size() ||
      OBJ_obj2nid(CMS_get0_type(envelope.get())) != NID_pkcs7_enveloped) {
    ERR_clear_error();
    return bad("the archived key is not a DER CMS EnvelopedData ContentInfo");
  }
  STACK_OF(CMS_RecipientInfo)* infos = CMS_get0_RecipientInfos(envelope.get());
  if (infos == nullptr || sk_CMS_RecipientInfo_num(infos) == 0) {
    return bad("the EnvelopedData has no recipient");
  }
  std::vector<bool> kra_used(in.kra_certificates.size(), false);
  // A threshold archive's recipients are keywarden shares (pki/threshold.h).
  const bool is_threshold = threshold::IsThresholdEnvelope(in.enveloped_data);
  if (is_threshold) {
    auto env = threshold::ParseThresholdEnvelope(in.enveloped_data);
    if (!env.ok()) return bad(std::string(env.status().message()));
    for (const threshold::ShareEntry& share : env->shares) {
      bool found = false;
      for (size_t k = 0; k < in.kra_certificates.size(); ++k) {
        if (share.Names(in.kra_certificates[k])) kra_used[k] = found = true;
      }
      if (!found) {
        return absl::NotFoundError(StrCat("recovery blob: no KRA certificate given for ",
                                          share.Describe(), " (Cannot find object or property)"));
      }
    }
  }
  for (int i = 0; !is_threshold && i < sk_CMS_RecipientInfo_num(infos); ++i) {
    CMS_RecipientInfo* ri = sk_CMS_RecipientInfo_value(infos, i);
    if (CMS_RecipientInfo_type(ri) != CMS_RECIPINFO_TRANS) {
      return bad("the EnvelopedData has a recipient that is not key transport");
    }
    bool found = false;
    for (size_t k = 0; k < in.kra_certificates.size(); ++k) {
      if (in.kra_certificates[k] != nullptr &&
          CMS_RecipientInfo_ktri_cert_cmp(ri, in.kra_certificates[k]) == 0) {
        kra_used[k] = found = true;
      }
    }
    if (!found) {
      ASN1_OCTET_STRING* keyid = nullptr;
      X509_NAME* issuer = nullptr;
      ASN1_INTEGER* serial = nullptr;
      CMS_RecipientInfo_ktri_get0_signer_id(ri, &keyid, &issuer, &serial);
      return absl::NotFoundError(
          StrCat("recovery blob: no KRA certificate given for recipient ",
                 issuer != nullptr
                     ? StrCat("issuer \"", FormatName(issuer), "\" serial ", SerialHex(serial))
                     : StrCat("subject key id ",
                              keyid != nullptr
                                  ? HexString({keyid->data, static_cast<size_t>(keyid->length)})
                                  : std::string("?")),
                 " (Cannot find object or property)"));
    }
  }
  for (size_t k = 0; k < in.kra_certificates.size(); ++k) {
    if (!kra_used[k]) {
      return bad(in.kra_certificates[k] == nullptr
                     ? std::string("a KRA certificate is null")
                     : StrCat("KRA certificate \"", Subject(in.kra_certificates[k]),
                              "\" is not a recipient of the archived key"));
    }
  }

  CertSet certs;
  certs.Add(in.user_certificate);
  for (X509* c : in.user_chain) certs.Add(c);
  for (X509* c : in.kra_certificates) certs.Add(c);
  certs.Add(in.ca_certificate);
  for (X509* c : in.ca_chain) certs.Add(c);

  const unsigned int flags = CMS_BINARY | CMS_PARTIAL | CMS_NOSMIMECAP | CMS_NOCERTS;
  ossl::UniquePtr<CMS_ContentInfo> cms(
      CMS_sign_ex(nullptr, nullptr, nullptr, nullptr, flags, libctx, propq));
  if (!cms) return OpenSslError("recovery blob: new SignedData");
  for (X509* c : certs.certs()) {
    if (CMS_add1_cert(cms.get(), c) != 1) return OpenSslError("recovery blob: add certificate");
  }
  ossl::UniquePtr<EVP_MD> md(EVP_MD_fetch(libctx, in.digest.c_str(), propq));
  if (!md) return OpenSslError(StrCat("recovery blob: digest ", in.digest));
  CMS_SignerInfo* si = CMS_add1_signer(cms.get(), in.ca_certificate, in.ca_key, md.get(), flags);
  if (si == nullptr) return OpenSslError("recovery blob: add signer");
  const Bytes user_hash = Sha1(in.user_certificate);
  ossl::UniquePtr<ASN1_OBJECT> hash_oid(OBJ_txt2obj(kArchivedKeyCertHashOid, 1));
  if (user_hash.size() != 20 || !hash_oid ||
      CMS_signed_add1_attr_by_OBJ(si, hash_oid.get(), V_ASN1_OCTET_STRING, user_hash.data(),
                                  static_cast<int>(user_hash.size())) != 1) {
    return OpenSslError("recovery blob: archived-key certificate hash attribute");
  }
  ossl::UniquePtr<BIO> content(
      BIO_new_mem_buf(in.enveloped_data.data(), static_cast<int>(in.enveloped_data.size())));
  if (!content || CMS_final(cms.get(), content.get(), nullptr, CMS_BINARY) != 1) {
    return OpenSslError(
        StrCat("recovery blob: sign with the key of \"", Subject(in.ca_certificate), "\""));
  }
  Bytes out = Der(cms.get(), i2d_CMS_ContentInfo);
  if (out.empty()) return OpenSslError("recovery blob: encode");

  // Verify what was made, in software: with the caller's software copy of
  // the CA certificate, the signature, the digest and the certificates as
  // BuiltBlobVerifies does; otherwise (or if that does not pass) as a KRA
  // will, the signature and that every certificate has its place (a user
  // chain with a stranger in it is the caller's mistake, found here rather
  // than by the KRA).
  if (in.ca_certificate_software != nullptr &&
      BuiltBlobVerifies(out, in.enveloped_data, in.digest,
                        X509_get0_pubkey(in.ca_certificate_software), in.ca_certificate,
                        in.user_certificate, in.kra_certificates, certs.certs())) {
    return out;
  }
  std::vector<ossl::UniquePtr<X509>> anchor;
  anchor.push_back(in.ca_certificate_software != nullptr ? Shared(in.ca_certificate_software)
                                                         : SoftwareCopy(in.ca_certificate));
  auto check = ParseRecoveryBlob(out, anchor);
  if (!check.ok()) {
    return absl::InternalError(
        StrCat("recovery blob: the blob just made does not verify: ", check.status().message()));
  }
  return out;
}

absl::StatusOr<RecoveryBlob> ParseRecoveryBlob(
    std::span<const uint8_t> der, const std::vector<ossl::UniquePtr<X509>>& trust_anchors,
    const RecoveryBlobVerifyOptions& options) {
  if (trust_anchors.empty()) {
    return absl::InvalidArgumentError(
        "recovery blob: no trust anchor given (the CA certificate the blob must chain to)");
  }
  if (der.empty()) return Malformed("empty");

  // 1. Strict DER CMS SignedData.
  const unsigned char* p = der.data();
  ossl::UniquePtr<CMS_ContentInfo> cms(
      d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der.size())));
  if (!cms) {
    ERR_clear_error();
    return Malformed("not a DER CMS ContentInfo (damaged or not a recovery blob)");
  }
  if (p != der.data() + der.size()) {
    return Malformed(StrCat(der.data() + der.size() - p, " bytes after the blob"));
  }
  if (Der(cms.get(), i2d_CMS_ContentInfo) != Bytes(der.begin(), der.end())) {
    return Malformed("not DER: the encoding is not canonical (damaged?)");
  }
  if (OidText(CMS_get0_type(cms.get()), true) != kIdSignedData) {
    return Malformed(
        StrCat("content type is ", OidText(CMS_get0_type(cms.get()), false), ", not signedData"));
  }
  const std::string econtent_type = OidText(CMS_get0_eContentType(cms.get()), true);
  if (econtent_type != kIdData && econtent_type != kIdEnvelopedData) {
    return Fail(RecoveryBlobError::kNotEnveloped, absl::StatusCode::kDataLoss,
                StrCat("signed content type is ", OidText(CMS_get0_eContentType(cms.get()), false),
                       ", not data or envelopedData"));
  }
  ASN1_OCTET_STRING** econtent = CMS_get0_content(cms.get());
  if (econtent == nullptr || *econtent == nullptr) {
    return Malformed("the signed content is detached (no archived key inside)");
  }
  const Bytes content((*econtent)->data, (*econtent)->data + (*econtent)->length);
  STACK_OF(CMS_SignerInfo)* signers = CMS_get0_SignerInfos(cms.get());
  if (signers == nullptr || sk_CMS_SignerInfo_num(signers) != 1) {
    return Malformed(StrCat("expected one signer, found ",
                            signers == nullptr ? 0 : sk_CMS_SignerInfo_num(signers)));
  }
  CMS_SignerInfo* si = sk_CMS_SignerInfo_value(signers, 0);
  {
    ASN1_OCTET_STRING* keyid = nullptr;
    X509_NAME* issuer = nullptr;
    ASN1_INTEGER* serial = nullptr;
    X509_ALGOR* dig = nullptr;
    CMS_SignerInfo_get0_signer_id(si, &keyid, &issuer, &serial);
    CMS_SignerInfo_get0_algs(si, nullptr, nullptr, &dig, nullptr);
    const ASN1_OBJECT* dig_oid = nullptr;
    if (dig != nullptr) X509_ALGOR_get0(&dig_oid, nullptr, nullptr, dig);
    if (dig_oid == nullptr) return Malformed("signer has no digest algorithm");
    Bytes dig_der = Der(const_cast<ASN1_OBJECT*>(dig_oid), i2d_ASN1_OBJECT);
    const int64_t version = (econtent_type == kIdData && keyid == nullptr) ? 1 : 3;
    if (auto st = CheckSignedDataHeader(der, version, dig_der); !st.ok()) return st;
  }

  // 2. The signature, by the certificate in the blob it names.
  CertStack certs(CMS_get1_certs(cms.get()));
  if (!certs || sk_X509_num(certs.get()) == 0) return Malformed("no certificates");
  if (CMS_set1_signers_certs(cms.get(), nullptr, 0) < 1) {
    ERR_clear_error();
    return Fail(RecoveryBlobError::kUntrustedSigner, absl::StatusCode::kPermissionDenied,
                "the signing CA certificate is not in the blob");
  }
  X509* signer = nullptr;
  CMS_SignerInfo_get0_algs(si, nullptr, &signer, nullptr, nullptr);
  if (signer == nullptr) return Malformed("signer certificate not set");
  if (CMS_SignerInfo_verify(si) != 1) {
    ERR_clear_error();
    return Fail(RecoveryBlobError::kBadSignature, absl::StatusCode::kDataLoss,
                StrCat("the signature of \"", Subject(signer),
                       "\" does not verify: the blob was altered or damaged"));
  }
  // The signed messageDigest against the content (CMS_SignerInfo_verify
  // covers the attributes only).
  X509_ALGOR* dig = nullptr;
  CMS_SignerInfo_get0_algs(si, nullptr, nullptr, &dig, nullptr);
  const ASN1_OBJECT* dig_oid = nullptr;
  X509_ALGOR_get0(&dig_oid, nullptr, nullptr, dig);
  const std::string digest_name = OidText(dig_oid, false);
  ossl::UniquePtr<EVP_MD> md(EVP_MD_fetch(nullptr, OidText(dig_oid, true).c_str(), nullptr));
  if (!md) {
    ERR_clear_error();
    return Malformed(StrCat("unknown digest algorithm ", digest_name));
  }
  auto* signed_digest = static_cast<ASN1_OCTET_STRING*>(CMS_signed_get0_data_by_OBJ(
      si, OBJ_nid2obj(NID_pkcs9_messageDigest), -3, V_ASN1_OCTET_STRING));
  unsigned char computed[EVP_MAX_MD_SIZE];
  unsigned int computed_len = 0;
  if (signed_digest == nullptr) return Malformed("no messageDigest attribute");
  if (EVP_Digest(content.data(), content.size(), computed, &computed_len, md.get(), nullptr) != 1) {
    return OpenSslError("recovery blob: digest");
  }
  if (static_cast<unsigned int>(signed_digest->length) != computed_len ||
      std::memcmp(signed_digest->data, computed, computed_len) != 0) {
    return Fail(RecoveryBlobError::kBadSignature, absl::StatusCode::kDataLoss,
                "the archived key does not match the signed digest: the blob was altered");
  }
  auto* content_type = static_cast<ASN1_OBJECT*>(
      CMS_signed_get0_data_by_OBJ(si, OBJ_nid2obj(NID_pkcs9_contentType), -3, V_ASN1_OBJECT));
  if (content_type == nullptr || OidText(content_type, true) != econtent_type) {
    return Malformed("the signed contentType attribute does not match the content");
  }

  // 3. The signer chains to an anchor the operator gave.
  RecoveryBlob blob;
  blob.digest = digest_name;
  ossl::UniquePtr<X509_STORE> store(X509_STORE_new());
  if (!store) return OpenSslError("recovery blob: trust store");
  for (const auto& anchor : trust_anchors) {
    if (X509_STORE_add_cert(store.get(), anchor.get()) != 1) {
      return OpenSslError("recovery blob: add trust anchor");
    }
  }
  ossl::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), signer, certs.get()) != 1) {
    return OpenSslError("recovery blob: chain context");
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_PARTIAL_CHAIN);
  if (options.verify_time != 0) X509_VERIFY_PARAM_set_time(param, options.verify_time);
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    const std::string why = ChainError(ctx.get());
    ERR_clear_error();
    if (err == X509_V_ERR_CERT_SIGNATURE_FAILURE) {
      return Fail(
          RecoveryBlobError::kCertificateTampered, absl::StatusCode::kDataLoss,
          StrCat("the signing CA certificate \"", Subject(signer), "\" was altered: ", why));
    }
    return Fail(RecoveryBlobError::kUntrustedSigner, absl::StatusCode::kPermissionDenied,
                StrCat("signed by \"", Subject(signer),
                       "\", which does not chain to a trusted CA certificate: ", why));
  }
  blob.signer = Shared(signer);
  {
    CertStack chain(X509_STORE_CTX_get1_chain(ctx.get()));
    for (int i = 1; chain && i < sk_X509_num(chain.get()); ++i) {
      blob.signer_chain.push_back(Shared(sk_X509_value(chain.get(), i)));
    }
  }

  // 4. Every certificate is well formed, and signed by its issuer when a
  // certificate of that name is at hand (in the blob or the anchors; by
  // name alone, so that an altered extension cannot hide the issuer).
  std::vector<X509*> issuers;
  for (int i = 0; i < sk_X509_num(certs.get()); ++i)
    issuers.push_back(sk_X509_value(certs.get(), i));
  for (const auto& a : trust_anchors) issuers.push_back(a.get());
  for (int i = 0; i < sk_X509_num(certs.get()); ++i) {
    X509* c = sk_X509_value(certs.get(), i);
    if ((X509_get_extension_flags(c) & EXFLAG_INVALID) != 0) {
      ERR_clear_error();
      return Fail(
          RecoveryBlobError::kCertificateTampered, absl::StatusCode::kDataLoss,
          StrCat("certificate \"", Subject(c), "\" has malformed extensions: it was altered"));
    }
    bool named = false, verified = false;
    for (X509* issuer : issuers) {
      if (X509_NAME_cmp(X509_get_subject_name(issuer), X509_get_issuer_name(c)) != 0) continue;
      EVP_PKEY* key = X509_get0_pubkey(issuer);
      if (key == nullptr) continue;
      named = true;
      if (X509_verify(c, key) == 1) {
        verified = true;
        break;
      }
    }
    ERR_clear_error();
    if (named && !verified) {
      return Fail(RecoveryBlobError::kCertificateTampered, absl::StatusCode::kDataLoss,
                  StrCat("certificate \"", Subject(c), "\" does not verify with its issuer \"",
                         FormatName(X509_get_issuer_name(c)), "\": it was altered"));
    }
  }

  // 5. szOID_ARCHIVED_KEY_CERT_HASH names the user certificate.
  ossl::UniquePtr<ASN1_OBJECT> hash_oid(OBJ_txt2obj(kArchivedKeyCertHashOid, 1));
  if (!hash_oid || CMS_signed_get_attr_by_OBJ(si, hash_oid.get(), -1) < 0) {
    return Fail(RecoveryBlobError::kMissingCertHash, absl::StatusCode::kDataLoss,
                StrCat("no signed ", kArchivedKeyCertHashOid,
                       " (archived key certificate hash) attribute"));
  }
  const int at = CMS_signed_get_attr_by_OBJ(si, hash_oid.get(), -1);
  if (CMS_signed_get_attr_by_OBJ(si, hash_oid.get(), at) >= 0) {
    return Fail(RecoveryBlobError::kMissingCertHash, absl::StatusCode::kDataLoss,
                StrCat("more than one ", kArchivedKeyCertHashOid, " attribute"));
  }
  X509_ATTRIBUTE* attr = CMS_signed_get_attr(si, at);
  ASN1_TYPE* value = X509_ATTRIBUTE_count(attr) == 1 ? X509_ATTRIBUTE_get0_type(attr, 0) : nullptr;
  if (value == nullptr || value->type != V_ASN1_OCTET_STRING ||
      value->value.octet_string->length != 20) {
    return Fail(RecoveryBlobError::kMissingCertHash, absl::StatusCode::kDataLoss,
                StrCat("the ", kArchivedKeyCertHashOid,
                       " attribute is not one 20-byte OCTET STRING (SHA-1)"));
  }
  const Bytes user_hash(value->value.octet_string->data, value->value.octet_string->data + 20);
  for (int i = 0; i < sk_X509_num(certs.get()); ++i) {
    X509* c = sk_X509_value(certs.get(), i);
    if (Sha1(c) == user_hash) {
      blob.user_certificate = Shared(c);
      break;
    }
  }
  if (!blob.user_certificate) {
    return Fail(RecoveryBlobError::kUserCertificateMissing, absl::StatusCode::kDataLoss,
                StrCat("no certificate in the blob has the signed user certificate hash ",
                       HexString(user_hash), " (missing or altered)"));
  }

  // 6. The archived key: a CMS EnvelopedData.
  Bytes envelope = content;
  if (econtent_type == kIdEnvelopedData) {
    // eContent may be the EnvelopedData itself (SEQUENCE { INTEGER version,
    // ... }) rather than its ContentInfo: give it one.
    DerReader r(content);
    DerElement seq;
    uint8_t tag = 0;
    if (r.Expect(der::kSequence, &seq) && r.empty() && DerReader(seq.contents).PeekTag(&tag) &&
        tag == der::kInteger) {
      ossl::UniquePtr<ASN1_OBJECT> env_oid(OBJ_txt2obj(kIdEnvelopedData, 1));
      Bytes body = Der(env_oid.get(), i2d_ASN1_OBJECT);
      const Bytes wrapped = der::Tlv(der::ContextConstructed(0), content);
      body.insert(body.end(), wrapped.begin(), wrapped.end());
      envelope = der::Tlv(der::kSequence, body);
    }
  }
  const unsigned char* e = envelope.data();
  ossl::UniquePtr<CMS_ContentInfo> env(
      d2i_CMS_ContentInfo(nullptr, &e, static_cast<long>(envelope.size())));
  if (!env || e != envelope.data() + envelope.size() ||
      OBJ_obj2nid(CMS_get0_type(env.get())) != NID_pkcs7_enveloped) {
    ERR_clear_error();
    return Fail(RecoveryBlobError::kNotEnveloped, absl::StatusCode::kDataLoss,
                "the signed content is not a CMS EnvelopedData");
  }
  STACK_OF(CMS_RecipientInfo)* infos = CMS_get0_RecipientInfos(env.get());
  if (infos == nullptr || sk_CMS_RecipientInfo_num(infos) == 0) {
    return Fail(RecoveryBlobError::kNotEnveloped, absl::StatusCode::kDataLoss,
                "the EnvelopedData has no recipient");
  }
  blob.enveloped_data = std::move(envelope);
  blob.content_cipher = ContentCipherOf(blob.enveloped_data);
  if (threshold::IsThresholdEnvelope(blob.enveloped_data)) {
    auto shares = threshold::ParseThresholdEnvelope(blob.enveloped_data);
    if (!shares.ok()) {
      return Fail(RecoveryBlobError::kNotEnveloped, absl::StatusCode::kDataLoss,
                  std::string(shares.status().message()));
    }
    for (const threshold::ShareEntry& share : shares->shares) {
      RecoveryRecipient r;
      const unsigned char* in = share.issuer.data();
      r.issuer.reset(d2i_X509_NAME(nullptr, &in, static_cast<long>(share.issuer.size())));
      in = share.serial.data();
      r.serial.reset(d2i_ASN1_INTEGER(nullptr, &in, static_cast<long>(share.serial.size())));
      if (!r.issuer || !r.serial) {
        ERR_clear_error();
        return Fail(RecoveryBlobError::kNotEnveloped, absl::StatusCode::kDataLoss,
                    StrCat("threshold ", share.Describe(), ": unreadable KRA name"));
      }
      r.key_transport =
          StrCat("threshold share ", share.index, " of ", shares->n, " (", shares->k, " needed), ",
                 share.transport == KeyTransport::kRsaPkcs1 ? "rsaEncryption" : "rsaesOaep");
      r.share_index = share.index;
      blob.recipients.push_back(std::move(r));
    }
    blob.threshold = std::move(*shares);
  }
  for (int i = 0; !blob.threshold && i < sk_CMS_RecipientInfo_num(infos); ++i) {
    CMS_RecipientInfo* ri = sk_CMS_RecipientInfo_value(infos, i);
    RecoveryRecipient r;
    if (CMS_RecipientInfo_type(ri) != CMS_RECIPINFO_TRANS) {
      r.key_transport = "not key transport";
      blob.recipients.push_back(std::move(r));
      continue;
    }
    ASN1_OCTET_STRING* keyid = nullptr;
    X509_NAME* issuer = nullptr;
    ASN1_INTEGER* serial = nullptr;
    X509_ALGOR* alg = nullptr;
    CMS_RecipientInfo_ktri_get0_signer_id(ri, &keyid, &issuer, &serial);
    CMS_RecipientInfo_ktri_get0_algs(ri, nullptr, nullptr, &alg);
    if (issuer != nullptr && serial != nullptr) {
      r.issuer.reset(X509_NAME_dup(issuer));
      r.serial.reset(ASN1_INTEGER_dup(serial));
    } else if (keyid != nullptr) {
      r.subject_key_id.assign(keyid->data, keyid->data + keyid->length);
    }
    if (alg != nullptr) {
      const ASN1_OBJECT* obj = nullptr;
      X509_ALGOR_get0(&obj, nullptr, nullptr, alg);
      r.key_transport = OidText(obj, false);
    }
    blob.recipients.push_back(std::move(r));
  }

  // 7. Sort the certificates: the user's and its issuers, the KRA
  // certificates (recipients) and their issuers, the signer's chain. A
  // certificate that is none of these was altered (a changed name or
  // serial no longer links it) or does not belong: refused, so that what
  // the blob shows the KRA is what the CA put in it.
  const int count = sk_X509_num(certs.get());
  std::vector<bool> placed(static_cast<size_t>(count), false);
  auto place = [&](X509* c) {
    for (int i = 0; i < count; ++i) {
      if (X509_cmp(sk_X509_value(certs.get(), i), c) == 0) placed[static_cast<size_t>(i)] = true;
    }
  };
  // Issuers of `c` found in the blob, nearest first.
  auto issuers_of = [&](X509* c) {
    std::vector<X509*> chain;
    for (int depth = 0; depth < 10; ++depth) {
      if (X509_check_issued(c, c) == X509_V_OK) break;  // self-signed: the root
      X509* next = nullptr;
      for (int i = 0; i < count && next == nullptr; ++i) {
        X509* candidate = sk_X509_value(certs.get(), i);
        if (X509_check_issued(candidate, c) == X509_V_OK) next = candidate;
      }
      if (next == nullptr || std::find(chain.begin(), chain.end(), next) != chain.end()) break;
      chain.push_back(next);
      c = next;
    }
    return chain;
  };
  place(blob.user_certificate.get());
  for (X509* c : issuers_of(blob.user_certificate.get())) {
    blob.user_chain.push_back(Shared(c));
    place(c);
  }
  place(blob.signer.get());
  for (const auto& c : blob.signer_chain) place(c.get());
  for (int i = 0; i < count; ++i) {
    X509* c = sk_X509_value(certs.get(), i);
    for (RecoveryRecipient& r : blob.recipients) {
      if (r.certificate == nullptr && r.Matches(c)) {
        blob.kra_certificates.push_back(Shared(c));
        r.certificate = blob.kra_certificates.back().get();
        place(c);
        for (X509* issuer : issuers_of(c)) place(issuer);
        break;
      }
    }
  }
  ERR_clear_error();
  for (int i = 0; i < count; ++i) {
    if (!placed[static_cast<size_t>(i)]) {
      return Fail(RecoveryBlobError::kCertificateTampered, absl::StatusCode::kDataLoss,
                  StrCat("certificate \"", Subject(sk_X509_value(certs.get(), i)),
                         "\" is not the user's, a KRA's, or in their or the CA's chain: it was "
                         "altered, or does not belong in a recovery blob"));
    }
  }

  ASN1_TYPE* time = nullptr;
  int time_at = CMS_signed_get_attr_by_NID(si, NID_pkcs9_signingTime, -1);
  if (time_at >= 0) {
    X509_ATTRIBUTE* ta = CMS_signed_get_attr(si, time_at);
    time = X509_ATTRIBUTE_count(ta) == 1 ? X509_ATTRIBUTE_get0_type(ta, 0) : nullptr;
  }
  if (time != nullptr && (time->type == V_ASN1_UTCTIME || time->type == V_ASN1_GENERALIZEDTIME)) {
    struct tm tm {};
    if (ASN1_TIME_to_tm(time->value.utctime, &tm) == 1) blob.signing_time = timegm(&tm);
  }
  return blob;
}

absl::StatusOr<std::vector<uint8_t>> RecoveryBlobDer(std::span<const uint8_t> file_bytes) {
  static constexpr std::string_view kPem = "-----BEGIN ";
  std::string_view head(reinterpret_cast<const char*>(file_bytes.data()),
                        std::min(file_bytes.size(), size_t{64}));
  if (head.find(kPem) == std::string_view::npos) {
    return Bytes(file_bytes.begin(), file_bytes.end());
  }
  ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(file_bytes.data(), static_cast<int>(file_bytes.size())));
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* data = nullptr;
  long len = 0;
  if (!bio || PEM_read_bio(bio.get(), &name, &header, &data, &len) != 1) {
    ERR_clear_error();
    return Malformed("PEM file does not decode");
  }
  const std::string label = name;
  Bytes out(data, data + len);
  OPENSSL_free(name);
  OPENSSL_free(header);
  OPENSSL_free(data);
  if (label != "PKCS7" && label != "CMS") {
    return Malformed(StrCat("PEM label \"", label, "\" is not PKCS7 or CMS"));
  }
  return out;
}

}  // namespace keywarden::pki
