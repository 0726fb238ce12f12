#include "pki/cmc_response.h"

#include <algorithm>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/cmc.h"
#include "pki/der.h"

namespace keywarden::pki {
namespace {

using der::Bytes;
using der::Concat;
using der::Oid;
using der::SmallInteger;
using der::Tlv;

// The ContentInfo `der` (a SignedData) with its certificates field left
// out, every other byte as it was; empty if `der` is not laid out so. The
// signature covers the signed attributes (whose messageDigest covers the
// content), never the certificates, so this copy verifies exactly when
// `der` does -- without decoding the certificates' public keys, which
// OpenSSL 3.0 makes the dearest part of a CMS decode.
Bytes WithoutCertificates(std::span<const uint8_t> der) {
  DerReader outer(der);
  DerElement content_info, type, explicit0, signed_data, e;
  if (!outer.Expect(der::kSequence, &content_info) || !outer.empty()) return {};
  DerReader ci(content_info.contents);
  if (!ci.Expect(der::kOid, &type) || !ci.Expect(der::ContextConstructed(0), &explicit0) ||
      !ci.empty()) {
    return {};
  }
  DerReader wrapper(explicit0.contents);
  if (!wrapper.Expect(der::kSequence, &signed_data) || !wrapper.empty()) return {};
  DerReader fields(signed_data.contents);
  Bytes kept;
  while (!fields.empty()) {
    if (!fields.Next(&e)) return {};
    if (e.tag == der::ContextConstructed(0)) continue;  // certificates [0] IMPLICIT
    kept.insert(kept.end(), e.whole.begin(), e.whole.end());
  }
  Bytes inner = Tlv(der::ContextConstructed(0), Tlv(der::kSequence, kept));
  Bytes body(type.whole.begin(), type.whole.end());
  body.insert(body.end(), inner.begin(), inner.end());
  return Tlv(der::kSequence, body);
}

Bytes Utf8(const std::string& s) {
  return Tlv(der::kUtf8String,
             std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

Bytes Attribute(const char* oid, const Bytes& value) {
  return Tlv(der::kSequence, Concat({Oid(oid), Tlv(der::kSet, value)}));
}

}  // namespace

absl::StatusOr<std::vector<uint8_t>> BuildCmcResponse(OSSL_LIB_CTX* libctx, const char* propq,
                                                      EVP_PKEY* ca_key, X509* ca_certificate,
                                                      const CmcResponseSpec& spec,
                                                      X509* ca_software) {
  if (spec.request_body_part < 0) return absl::InvalidArgumentError("negative body part id");
  const uint64_t part = static_cast<uint64_t>(spec.request_body_part);

  // CMCStatusInfo ::= SEQUENCE { cMCStatus, bodyList SEQUENCE OF BodyPartID,
  //   statusString UTF8String OPTIONAL, otherInfo CHOICE { failInfo, ... } OPTIONAL }
  Bytes status_info = Concat(
      {SmallInteger(static_cast<uint64_t>(spec.status)), Tlv(der::kSequence, SmallInteger(part))});
  if (!spec.status_string.empty()) {
    Bytes s = Utf8(spec.status_string);
    status_info.insert(status_info.end(), s.begin(), s.end());
  }
  if (spec.status == CmcStatus::kFailed && spec.fail_info >= 0) {
    Bytes f = SmallInteger(static_cast<uint64_t>(spec.fail_info));
    status_info.insert(status_info.end(), f.begin(), f.end());
  }
  Bytes controls = Tlv(der::kSequence, Concat({SmallInteger(1), Oid(kOidCmcStatusInfo),
                                               Tlv(der::kSet, Tlv(der::kSequence, status_info))}));

  Bytes attributes;
  if (spec.issued != nullptr) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (X509_digest(spec.issued, EVP_sha1(), md, &n) != 1) {
      return hsm::OpenSslError("hash the issued certificate");
    }
    Bytes a = Attribute(kOidIssuedCertHash, Tlv(der::kOctetString, Bytes(md, md + n)));
    attributes.insert(attributes.end(), a.begin(), a.end());
  }
  if (!spec.encrypted_key_hash.empty()) {
    Bytes a = Attribute(kOidEncryptedKeyHash, Tlv(der::kOctetString, spec.encrypted_key_hash));
    attributes.insert(attributes.end(), a.begin(), a.end());
  }
  if (!attributes.empty()) {
    // CmcAddAttributesInfo { dataReference 0, certReferences { part }, attributes SET }
    Bytes add =
        Tlv(der::kSequence, Concat({SmallInteger(0), Tlv(der::kSequence, SmallInteger(part)),
                                    Tlv(der::kSet, attributes)}));
    Bytes c = Tlv(der::kSequence,
                  Concat({SmallInteger(2), Oid(kOidCmcAddAttributes), Tlv(der::kSet, add)}));
    controls.insert(controls.end(), c.begin(), c.end());
  }
  const Bytes response = Tlv(
      der::kSequence,
      Concat({Tlv(der::kSequence, controls), Tlv(der::kSequence, {}), Tlv(der::kSequence, {})}));

  ossl::UniquePtr<STACK_OF(X509)> certs(sk_X509_new_null());
  for (X509* c : spec.certificates) {
    // The signer's certificate is added by CMS itself.
    if (c == nullptr || X509_cmp(c, ca_certificate) == 0) continue;
    if (sk_X509_push(certs.get(), c) <= 0) return hsm::OpenSslError("sk_X509_push");
  }
  ossl::UniquePtr<BIO> in(BIO_new_mem_buf(response.data(), static_cast<int>(response.size())));
  const unsigned flags = CMS_BINARY | CMS_PARTIAL | CMS_NOSMIMECAP;
  ossl::UniquePtr<CMS_ContentInfo> cms(
      CMS_sign_ex(ca_certificate, ca_key, certs.get(), nullptr, flags, libctx, propq));
  if (!cms) return hsm::OpenSslError("CMS_sign_ex (CMC response)");
  ossl::UniquePtr<ASN1_OBJECT> type(OBJ_txt2obj(kOidPkiResponse, 1));
  if (CMS_set1_eContentType(cms.get(), type.get()) != 1 ||
      CMS_final(cms.get(), in.get(), nullptr, flags) != 1) {
    return hsm::OpenSslError("sign the CMC response");
  }
  unsigned char* out = nullptr;
  const int len = i2d_CMS_ContentInfo(cms.get(), &out);
  if (len <= 0) return hsm::OpenSslError("encode the CMC response");
  std::vector<uint8_t> der(out, out + len);
  OPENSSL_free(out);
  // Verify what was made, in software, before it leaves (as for
  // certificates, CRLs and recovery blobs): its very bytes, but for the
  // certificates it carries, which the signature does not cover.
  const Bytes signed_part = WithoutCertificates(der);
  if (absl::Status check =
          VerifyCmcResponse(signed_part.empty() ? std::span<const uint8_t>(der)
                                                : std::span<const uint8_t>(signed_part),
                            ca_certificate, ca_software);
      !check.ok()) {
    return absl::InternalError(
        StrCat("CMC response: the response just signed does not verify: ", check.message()));
  }
  return der;
}

absl::Status VerifyCmcResponse(std::span<const uint8_t> der, X509* ca_certificate,
                               X509* ca_software) {
  if (ca_certificate == nullptr) {
    return absl::InvalidArgumentError("CMC response: no CA certificate to verify it with");
  }
  if (der.empty()) return absl::DataLossError("CMC response: empty");
  const unsigned char* p = der.data();
  ossl::UniquePtr<CMS_ContentInfo> cms(
      d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der.size())));
  if (!cms) {
    ERR_clear_error();
    return absl::DataLossError("CMC response: not a DER CMS ContentInfo");
  }
  if (p != der.data() + der.size()) {
    return absl::DataLossError(
        StrCat("CMC response: ", der.data() + der.size() - p, " bytes after the ContentInfo"));
  }
  if (OBJ_obj2nid(CMS_get0_type(cms.get())) != NID_pkcs7_signed) {
    return absl::DataLossError("CMC response: not a CMS SignedData");
  }
  ossl::UniquePtr<ASN1_OBJECT> pki_response(OBJ_txt2obj(kOidPkiResponse, 1));
  if (OBJ_cmp(CMS_get0_eContentType(cms.get()), pki_response.get()) != 0) {
    return absl::DataLossError(StrCat(
        "CMC response: the signed content is not id-cct-PKIResponse (", kOidPkiResponse, ")"));
  }
  STACK_OF(CMS_SignerInfo)* signers = CMS_get0_SignerInfos(cms.get());
  if (signers == nullptr || sk_CMS_SignerInfo_num(signers) != 1) {
    return absl::DataLossError(StrCat("CMC response: expected one signer, found ",
                                      signers == nullptr ? 0 : sk_CMS_SignerInfo_num(signers)));
  }
  // Only the CA certificate given here may be the signer (CMS_NOINTERN: the
  // certificates inside the message are not searched for it), and its public
  // key is decoded afresh, so a token key object plays no part.
  ossl::UniquePtr<X509> copy;
  X509* ca = ca_software;
  if (ca == nullptr) {
    copy = SoftwareCopy(ca_certificate);
    ca = copy.get();
  }
  ossl::UniquePtr<STACK_OF(X509)> certs(sk_X509_new_null());
  if (ca == nullptr || !certs || sk_X509_push(certs.get(), ca) <= 0) {
    return hsm::OpenSslError("CMC response: prepare the CA certificate");
  }
  const unsigned flags = CMS_BINARY | CMS_NOINTERN | CMS_NO_SIGNER_CERT_VERIFY;
  const int ok = CMS_verify(cms.get(), certs.get(), nullptr, nullptr, nullptr, flags);
  sk_X509_pop(certs.get());  // not the stack's to free
  if (ok != 1) {
    const unsigned long err = ERR_peek_last_error();
    char text[256] = {0};
    if (err != 0) ERR_error_string_n(err, text, sizeof text);
    ERR_clear_error();
    return absl::DataLossError(
        StrCat("CMC response: the signature does not verify with the CA certificate ",
               FormatName(X509_get_subject_name(ca_certificate)), " (",
               err != 0 ? text : "no detail", ")"));
  }
  return absl::OkStatus();
}

absl::Status VerifyCmcResponseCarries(std::span<const uint8_t> der, X509* ca_certificate,
                                      std::span<const uint8_t> issued) {
  if (absl::Status st = VerifyCmcResponse(der, ca_certificate); !st.ok()) return st;
  const unsigned char* p = der.data();
  ossl::UniquePtr<CMS_ContentInfo> cms(
      d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der.size())));
  if (!cms) return hsm::OpenSslError("CMC response: decode", absl::StatusCode::kDataLoss);
  STACK_OF(X509)* certs = CMS_get1_certs(cms.get());
  bool found = false;
  for (int i = 0; certs != nullptr && i < sk_X509_num(certs) && !found; ++i) {
    const std::vector<uint8_t> c = CertificateDer(sk_X509_value(certs, i));
    found = c.size() == issued.size() && std::equal(c.begin(), c.end(), issued.begin());
  }
  sk_X509_pop_free(certs, X509_free);
  if (!found) {
    return absl::DataLossError("CMC response: the issued certificate is not in it");
  }
  return absl::OkStatus();
}

}  // namespace keywarden::pki
