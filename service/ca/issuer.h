// Builds and signs what the CA issues: end-entity certificates, exchange
// certificates and CRLs. The signing key is any EVP_PKEY (the token key via
// hsm::CryptoContext in the daemon); every signature is verified in software
// with the CA certificate's public key before it is returned.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "pki/certificate.h"
#include "service/config.h"
#include "service/storage/store.h"

namespace keywarden::service {

// An extension given as its DER value (extnValue contents).
struct RawExtension {
  std::string oid;
  std::vector<uint8_t> value;
  bool critical = false;
};

struct CertificateSpec {
  const X509_NAME* subject = nullptr;
  EVP_PKEY* public_key = nullptr;
  // The request's SubjectPublicKeyInfo of `public_key`, as parsed (a
  // PKCS#10's): copied into the certificate as it is, the exact key the
  // request proved possession of. Null: `public_key` is encoded, which with
  // OpenSSL 3.0's encoder and decoder costs more than the rest of building
  // the certificate. The certificate returned then has no decoded key
  // (X509_get0_pubkey is null): use `public_key`, or its DER.
  const X509_PUBKEY* spki = nullptr;
  int64_t not_before = 0;                       // unix seconds
  int64_t not_after = 0;                        // clipped to the CA's own notAfter
  std::vector<std::string> key_usage;           // names as in the configuration
  std::vector<std::string> extended_key_usage;  // names or dotted OIDs
  bool key_usage_critical = true;
  std::vector<RawExtension> extensions;  // added after the key identifiers, in order
};

struct RevokedEntry {
  std::string serial;  // hex
  int64_t revoked_at = 0;
  int reason = 0;  // RFC 5280 CRLReason
};

class Issuer {
 public:
  // `ca_certificate` must match `signing_key` (checked).
  static absl::StatusOr<std::unique_ptr<Issuer>> Create(OSSL_LIB_CTX* libctx,
                                                        const char* properties,
                                                        ossl::UniquePtr<X509> ca_certificate,
                                                        ossl::UniquePtr<EVP_PKEY> signing_key,
                                                        pki::SignatureOptions signature);

  X509* ca_certificate() const { return ca_.get(); }
  // The CA certificate decoded from its DER in software (pki::SoftwareCopy:
  // its public key no token object), made once: what the CA's own
  // signatures are checked with.
  X509* ca_certificate_software() const { return ca_software_.get(); }
  int64_t ca_not_after() const;
  // For other CA-signed structures (CMC responses, recovery blobs): the
  // signing key and where to fetch algorithms for it.
  EVP_PKEY* signing_key() const { return key_.get(); }
  OSSL_LIB_CTX* libctx() const { return libctx_; }
  const char* properties() const { return properties_.empty() ? nullptr : properties_.c_str(); }

  // Extensions every certificate issued from now on carries after the
  // spec's own: where relying parties find this issuer's CRL and
  // certificate (PublicationExtensions). Set once, before issuing.
  void SetPublicationExtensions(std::vector<RawExtension> extensions) {
    publication_ = std::move(extensions);
  }
  absl::StatusOr<ossl::UniquePtr<X509>> IssueCertificate(const CertificateSpec& spec) const;
  absl::StatusOr<ossl::UniquePtr<X509_CRL>> IssueCrl(const std::vector<RevokedEntry>& revoked,
                                                     int64_t crl_number, int64_t this_update,
                                                     int64_t next_update) const;

 private:
  Issuer() = default;
  absl::Status SignAndCheck(X509* cert) const;

  OSSL_LIB_CTX* libctx_ = nullptr;
  std::string properties_;
  ossl::UniquePtr<X509> ca_;
  ossl::UniquePtr<EVP_PKEY> key_;
  ossl::UniquePtr<X509> ca_software_;    // software copy of ca_, for checking
  ossl::UniquePtr<EVP_PKEY> ca_public_;  // software copy, for checking
  pki::SignatureOptions signature_;
  std::vector<RawExtension> publication_;
};

// [publication]'s cRLDistributionPoints and authorityInfoAccess (caIssuers)
// extensions, non-critical (RFC 5280), for the URLs configured; none when
// none are. INTERNAL if a URL (checked by the configuration) does not encode.
absl::StatusOr<std::vector<RawExtension>> PublicationExtensions(const Config::Publication& p);

// What template `t` adds to a certificate for `request` beyond its key
// usages: the subjectAltName (t.san: from the [[account]] of `owner`, or the
// names the request asks for, each checked with CheckAltNamesNoPrincipal
// for `owner` holding `owner_roles`), the certificate-template extension
// (v2 1.3.6.1.4.1.311.21.7 with t.oid and its versions, else the v1 name
// 1.3.6.1.4.1.311.20.2), and the request's S/MIME capabilities when
// t.smime_capabilities. The error carries the HRESULT of the refusal.
absl::StatusOr<std::vector<RawExtension>> TemplateExtensions(const Config& config,
                                                             const TemplateConfig& t,
                                                             X509_REQ* request,
                                                             const std::string& owner,
                                                             const std::vector<Role>& owner_roles);

// Serial (hex, as stored) of a certificate.
std::string SerialHex(const X509* cert);
std::string SerialHex(const ASN1_INTEGER* serial);
// Normalizes operator input: "61 1a:0b" -> "611a0b" (lower case, even length).
std::string NormalizeSerial(std::string_view text);
int64_t ToUnix(const ASN1_TIME* t);
// The database row for a certificate the CA issued.
CertificateRecord CertificateRecordFor(X509* cert, int64_t request_id,
                                       const std::string& template_name);

}  // namespace keywarden::service
