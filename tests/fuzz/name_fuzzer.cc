// libFuzzer target: distinguished names as operators and configurations
// write them (RFC 4514 or OpenSSL's /A=B/ form). Never a crash; a name that
// parses formats to a string that parses to the same name (principals are
// compared as formatted strings, so formatting must be stable).
#include <openssl/x509.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "pki/certificate.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden::pki;
  auto name = ParseName(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!name.ok()) return 0;
  const std::string once = FormatName(name->get());
  auto again = ParseName(once);
  if (!again.ok()) abort();
  if (FormatName(again->get()) != once) abort();
  return 0;
}
