// libFuzzer target: what keywardend does with the bytes of a Submit before
// any policy (service/ca/authority.cc): PEM or DER, sniffed as PKCS#10 or
// CMS, then parsed (a CMC request as received and as the CA stores it, with
// the encrypted key removed). Never a crash; a parsed CMC request without
// its key must parse again as a stored one.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "pki/cmc.h"
#include "pki/pkcs10.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden::pki;
  const std::span<const uint8_t> input(data, size);
  const std::vector<uint8_t> der = PemToDer(input);
  const std::string format = SniffRequestFormat(der);
  (void)ParsePkcs10(input);
  if (format == "pkcs10") {
    (void)ParsePkcs10(der);
  } else if (format == "cmc") {
    auto cmc = ParseCmcRequest(der);
    (void)ParseCmcRequest(der, /*allow_removed_key=*/true);
    if (cmc.ok() && cmc->encrypted_key) {
      // What is stored must be what the CA can read back on approval.
      if (!ParseCmcRequest(cmc->without_encrypted_key, /*allow_removed_key=*/true).ok()) abort();
    }
  }
  return 0;
}
