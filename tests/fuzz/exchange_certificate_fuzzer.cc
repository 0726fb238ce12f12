// libFuzzer target: the CA exchange certificate and chain a client receives
// before it encrypts its private key to them (`keywarden request`): DER
// certificates back to back, the first the exchange certificate, checked
// as the client checks them. Never a crash.
#include <openssl/x509.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "pki/exchange_certificate.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden;
  std::vector<ossl::UniquePtr<X509>> certs;
  const unsigned char* p = data;
  const unsigned char* end = data + size;
  while (p < end && certs.size() < 8) {
    X509* x = d2i_X509(nullptr, &p, static_cast<long>(end - p));
    if (x == nullptr) break;
    certs.emplace_back(x);
  }
  if (certs.empty()) return 0;
  pki::ExchangeTrust trust;
  for (size_t i = 1; i < certs.size(); ++i) trust.ca_chain.push_back(certs[i].get());
  (void)pki::VerifyExchangeCertificate(certs[0].get(), trust);
  return 0;
}
