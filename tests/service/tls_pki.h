// A software TLS PKI for tests (not the CA under test): EC P-256 keys and
// certificates made with the OpenSSL API, for the daemon's server
// certificate, client certificates and the CAs that issue them.
#pragma once

#include <string>

#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "hsm/ossl.h"
#include "pki/certificate.h"

namespace keywarden::testing {

struct TlsIssued {
  ossl::UniquePtr<EVP_PKEY> key;
  ossl::UniquePtr<X509> cert;
};

// Self-signed when `issuer` is null; valid from an hour ago for 30 days.
// `san` and `eku` are OpenSSL extension values ("DNS:localhost",
// "clientAuth"), or null for none.
inline TlsIssued MakeTlsCertificate(const std::string& subject, const TlsIssued* issuer, bool ca,
                                    const char* san = nullptr, const char* eku = nullptr) {
  TlsIssued out;
  out.key.reset(EVP_EC_gen("P-256"));
  out.cert.reset(X509_new());
  X509* x = out.cert.get();
  X509_set_version(x, X509_VERSION_3);
  auto serial = pki::RandomSerial();
  X509_set_serialNumber(x, serial->get());
  auto name = pki::ParseName(subject);
  X509_set_subject_name(x, name->get());
  X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer->cert.get()) : name->get());
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600L * 24 * 30);
  X509_set_pubkey(x, out.key.get());
  X509* signer_cert = issuer ? issuer->cert.get() : x;
  pki::AddExtension(x, signer_cert, NID_basic_constraints,
                    ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  pki::AddExtension(x, signer_cert, NID_key_usage,
                    ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature,keyAgreement");
  pki::AddExtension(x, signer_cert, NID_subject_key_identifier, "hash");
  if (san != nullptr) pki::AddExtension(x, signer_cert, NID_subject_alt_name, san);
  if (eku != nullptr) pki::AddExtension(x, signer_cert, NID_ext_key_usage, eku);
  X509_sign(x, issuer ? issuer->key.get() : out.key.get(), EVP_sha256());
  return out;
}

}  // namespace keywarden::testing
