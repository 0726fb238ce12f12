#include "hsm/secret.h"

#include <openssl/crypto.h>

namespace keywarden::hsm {

SecretBytes& SecretBytes::operator=(const SecretBytes& other) {
  if (this != &other) {
    Clear();
    bytes_ = other.bytes_;
  }
  return *this;
}

SecretBytes::SecretBytes(SecretBytes&& other) noexcept : bytes_(std::move(other.bytes_)) {
  other.bytes_.clear();
}

SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    Clear();
    bytes_ = std::move(other.bytes_);
    other.bytes_.clear();
  }
  return *this;
}

void SecretBytes::Truncate(size_t n) {
  if (n >= bytes_.size()) return;
  OPENSSL_cleanse(bytes_.data() + n, bytes_.size() - n);
  bytes_.resize(n);
}

void SecretBytes::Clear() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
  bytes_.clear();
}

SecretString& SecretString::operator=(const SecretString& other) {
  if (this != &other) {
    Clear();
    value_ = other.value_;
  }
  return *this;
}

SecretString::SecretString(SecretString&& other) noexcept {
  // Copy then wipe: moving a short string copies its inline buffer, which
  // would otherwise leave the PIN behind in `other`.
  value_ = other.value_;
  other.Clear();
}

SecretString& SecretString::operator=(SecretString&& other) noexcept {
  if (this != &other) {
    Clear();
    value_ = other.value_;
    other.Clear();
  }
  return *this;
}

void SecretString::Clear() {
  // Wipe the whole capacity: the inline (SSO) buffer may hold old characters.
  if (value_.capacity() > 0) OPENSSL_cleanse(value_.data(), value_.capacity());
  value_.clear();
}

}  // namespace keywarden::hsm
