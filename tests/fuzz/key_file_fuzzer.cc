// libFuzzer target: the key and certificate files `keywarden verifykeys`
// reads (PEM, encrypted PEM, DER PKCS#8/PKCS#1, PRIVATEKEYBLOB, PFX with
// every key; certificates and public keys in PEM or DER). The password of
// a protected file is "fuzz", as in the seeds deploy/fuzz.sh makes. Never
// a crash, never a terminal prompt.
#include <cstddef>
#include <cstdint>

#include "pki/key_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden;
  const std::span<const uint8_t> bytes(data, size);
  (void)pki::ParsePrivateKeyFile(
      bytes, "fuzz", [] { return absl::StatusOr<hsm::SecretString>(hsm::SecretString("fuzz")); });
  (void)pki::ParsePublicKeyFile(bytes, "fuzz");
  return 0;
}
