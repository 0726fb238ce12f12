// libFuzzer target: keywarden.toml, parsed strictly (service/config.cc).
// Never a crash or an escaping exception; every refusal names the file.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "service/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto config = keywarden::service::ParseConfig(
      std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.toml", "/nonexistent");
  if (!config.ok() && config.status().message().find("fuzz.toml") == std::string_view::npos) {
    abort();
  }
  return 0;
}
