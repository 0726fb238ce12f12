// libFuzzer target: the CMC request parser reads whatever an enrolling
// client sends, so it must never crash or read out of bounds.
#include <cstddef>
#include <cstdint>
#include <span>

#include "pki/cmc.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)keywarden::pki::ParseCmcRequest(std::span<const uint8_t>(data, size));
  return 0;
}
