// libFuzzer target: PFX files as `keywarden mergepfx`, `recoverkey` output
// checks and `importpfx` read them (pki::ReadPkcs12), with the password the
// seeds were made with and with an empty one. Never a crash.
#include <cstddef>
#include <cstdint>
#include <span>

#include "hsm/secret.h"
#include "pki/pkcs12.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden;
  const std::span<const uint8_t> input(data, size);
  (void)pki::ReadPkcs12(input, hsm::SecretString("fuzz"));
  (void)pki::ReadPkcs12(input, hsm::SecretString());
  return 0;
}
