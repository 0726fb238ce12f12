// libFuzzer target: the files operators hand the daemon for trust and
// revocation ([server] client_ca / client_crls, [kra] trust / crls): PEM
// certificates and CRLs in PEM or DER. Never a crash; a CRL that parses
// re-encodes.
#include <openssl/x509.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "pki/certificate.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden::pki;
  const std::span<const uint8_t> input(data, size);
  for (const auto& cert : ParsePemCertificates(input))
    (void)FormatName(X509_get_subject_name(cert.get()));
  auto crls = ParseCrls(input, "fuzz");
  if (crls.ok()) {
    for (const auto& crl : *crls) {
      unsigned char* der = nullptr;
      if (i2d_X509_CRL(crl.get(), &der) <= 0) abort();
      OPENSSL_free(der);
      (void)FormatName(X509_CRL_get_issuer(crl.get()));
    }
  }
  return 0;
}
