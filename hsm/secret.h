// Buffers for key material and PINs: wiped with OPENSSL_cleanse when they
// are destroyed or cleared, and never printable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace keywarden::hsm {

class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(size_t size) : bytes_(size) {}
  explicit SecretBytes(std::span<const uint8_t> data) : bytes_(data.begin(), data.end()) {}
  SecretBytes(const SecretBytes& other) : bytes_(other.bytes_) {}
  SecretBytes& operator=(const SecretBytes& other);
  SecretBytes(SecretBytes&& other) noexcept;
  SecretBytes& operator=(SecretBytes&& other) noexcept;
  ~SecretBytes() { Clear(); }

  uint8_t* data() { return bytes_.data(); }
  const uint8_t* data() const { return bytes_.data(); }
  size_t size() const { return bytes_.size(); }
  bool empty() const { return bytes_.empty(); }
  std::span<const uint8_t> span() const { return bytes_; }
  // Shrinks to n bytes, wiping the tail first.
  void Truncate(size_t n);
  void Clear();

 private:
  std::vector<uint8_t> bytes_;
};

// A PIN or password. Kept as characters because PKCS#11 PINs are UTF-8.
class SecretString {
 public:
  SecretString() = default;
  explicit SecretString(std::string_view s) : value_(s) {}
  SecretString(const SecretString& other) : value_(other.value_) {}
  SecretString& operator=(const SecretString& other);
  SecretString(SecretString&& other) noexcept;
  SecretString& operator=(SecretString&& other) noexcept;
  ~SecretString() { Clear(); }

  std::string_view view() const { return value_; }
  bool empty() const { return value_.empty(); }
  void Clear();

 private:
  std::string value_;
};

}  // namespace keywarden::hsm
