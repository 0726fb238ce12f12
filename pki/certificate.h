// Certificate building shared by the daemon and the CLI: names, serial
// numbers, self-signed roots. Signing goes through whatever EVP_PKEY is
// given, so a token key (hsm::CryptoContext) signs on the token.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "hsm/token.h"

namespace keywarden::pki {

// "CN=Demo Root CA,O=keywarden,C=DE" (RFC 4514: most specific RDN first) or
// "/C=DE/O=keywarden/CN=Demo Root CA" (OpenSSL style, in encoding order).
// Backslash escapes a separator. Unknown attribute types are errors.
absl::StatusOr<ossl::UniquePtr<X509_NAME>> ParseName(std::string_view text);
// RFC 4514 string of a name.
std::string FormatName(const X509_NAME* name);

// The value of the most specific CN in an RFC 4514 string (the first one:
// RFC 4514 lists RDNs most specific first), with escapes undone; empty when
// there is none. Accepts "CN", "commonName" and "2.5.4.3" as the type, '+'
// between attributes of a multi-valued RDN, quoted values and spaces around
// separators (RFC 2253/1779 leftovers some tools still print).
std::string CommonNameOfRfc4514(std::string_view dn);

// A positive random serial of `bytes` bytes (at least 8: 64 bits of entropy
// minus the sign bit).
absl::StatusOr<ossl::UniquePtr<ASN1_INTEGER>> RandomSerial(size_t bytes = 16);
// The same from the token's random number generator (C_GenerateRandom).
absl::StatusOr<ossl::UniquePtr<ASN1_INTEGER>> TokenRandomSerial(hsm::Token& token,
                                                                size_t bytes = 16);

struct SignatureOptions {
  std::string digest = "SHA256";
  bool rsa_pss = false;  // RSASSA-PSS, salt = digest length
};

struct RootCaOptions {
  const X509_NAME* subject = nullptr;
  int validity_days = 3650;
  int path_length = -1;  // -1: no pathLenConstraint
  SignatureOptions signature;
  const ASN1_INTEGER* serial = nullptr;  // copied; null: RandomSerial()
};

// A self-signed CA certificate: v3, random serial, basicConstraints
// critical CA:TRUE, keyUsage critical keyCertSign+cRLSign+digitalSignature,
// subject key identifier (SHA-1 of the key bits) and authority key identifier.
// The signature is checked against the key's public half before returning.
absl::StatusOr<ossl::UniquePtr<X509>> MakeSelfSignedRoot(OSSL_LIB_CTX* libctx, EVP_PKEY* key,
                                                         const RootCaOptions& options);

// A PKCS#10 request for a subordinate CA key (signed with `key`, which may
// be a token key), asking for basicConstraints CA:TRUE; its signature is
// checked in software before returning.
absl::StatusOr<ossl::UniquePtr<X509_REQ>> MakeCaRequest(OSSL_LIB_CTX* libctx, EVP_PKEY* key,
                                                        const X509_NAME* subject,
                                                        const SignatureOptions& signature,
                                                        bool ca = true);
// The same without the CA extensions: a plain request for an end-entity
// key on a token (e.g. a KRA card's key); the CA's template decides usage.
inline absl::StatusOr<ossl::UniquePtr<X509_REQ>> MakeKeyRequest(OSSL_LIB_CTX* libctx, EVP_PKEY* key,
                                                                const X509_NAME* subject,
                                                                const SignatureOptions& signature) {
  return MakeCaRequest(libctx, key, subject, signature, /*ca=*/false);
}

// Checks that `cert` is a CA certificate for `key` that chains, by
// signature and validity, to one of `issuers` (the last of which may be a
// self-signed root); used when installing a subordinate CA certificate.
absl::Status CheckSubordinateCertificate(X509* cert, EVP_PKEY* key,
                                         const std::vector<ossl::UniquePtr<X509>>& issuers);

std::string ToPem(X509_REQ* request);

// Signs `cert` (already filled in) with `key`.
absl::Status SignCertificate(OSSL_LIB_CTX* libctx, X509* cert, EVP_PKEY* key,
                             const SignatureOptions& options);

// Checks that `cert`'s signature verifies with `issuer_public`.
absl::Status VerifySignature(X509* cert, EVP_PKEY* issuer_public);

// SHA-1 and SHA-256 thumbprints (lower-case hex) of a certificate's DER.
std::string Sha1Thumbprint(X509* cert);
std::string Sha256Thumbprint(X509* cert);

std::string ToPem(X509* cert);

// DER of a certificate (empty if it does not encode).
std::vector<uint8_t> CertificateDer(X509* cert);

// The subjectPublicKeyInfo element (tag, length, contents) of a DER
// certificate, found by walking its outer structure without decoding the
// key; empty if the layout is not a certificate's.
std::span<const uint8_t> CertificateSpki(std::span<const uint8_t> der);

// The certificate re-decoded from its DER. A certificate whose public key
// was set from a token key caches that EVP_PKEY; checks of a token's
// signature must use a software copy of the public key instead.
ossl::UniquePtr<X509> SoftwareCopy(X509* cert);

// Every PEM certificate in a file (a certificate, or a chain leaf-first).
absl::StatusOr<std::vector<ossl::UniquePtr<X509>>> ReadPemCertificates(const std::string& path);
// Every PEM certificate in `pem` (none: an empty vector; text around them is ignored).
std::vector<ossl::UniquePtr<X509>> ParsePemCertificates(std::span<const uint8_t> pem);

// Every CRL in a file, PEM (one or more) or DER. The error names the file.
absl::StatusOr<std::vector<ossl::UniquePtr<X509_CRL>>> ReadCrlFile(const std::string& path);
// The same from bytes; `source` names them in the error.
absl::StatusOr<std::vector<ossl::UniquePtr<X509_CRL>>> ParseCrls(std::span<const uint8_t> bytes,
                                                                 std::string_view source);

// Adds an X509v3 extension written in OpenSSL's config syntax
// ("critical,CA:TRUE"); `issuer` provides the authority key identifier.
bool AddExtension(X509* cert, X509* issuer, int nid, const std::string& value);

}  // namespace keywarden::pki
