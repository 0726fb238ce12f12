// libFuzzer target: the archived private key is client-chosen plaintext
// (the client encrypts it), so its parsers must never crash, and whatever the
// blob parser accepts must be one key that serializes back to the same bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "pki/private_key_blob.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace pki = keywarden::pki;
  const std::span<const uint8_t> input(data, size);
  pki::KeySpec spec = pki::KeySpec::kExchange;
  auto key = pki::ParsePrivateKeyBlob(input, &spec);
  if (key.ok()) {
    // Every field has a fixed size and one encoding, so an accepted blob is
    // exactly what the writer produces for its key.
    auto again = pki::SerializePrivateKeyBlob(key->get(), static_cast<uint32_t>(spec));
    if (!again.ok() || again->size() != size || std::memcmp(again->data(), data, size) != 0) {
      std::abort();
    }
  }
  (void)pki::ParsePrivateKeyPlaintext(input, nullptr, nullptr);
  return 0;
}
