// A strict DER reader for the few structures OpenSSL has no parser for
// (Windows template extensions, CMC PKIData). Definite, minimal lengths
// only; single-byte tags (all PKIX/CMS structures here use them). Every
// read is bounds-checked: malformed input gives false, never a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

namespace keywarden::pki {

namespace der {
inline constexpr uint8_t kBoolean = 0x01;
inline constexpr uint8_t kInteger = 0x02;
inline constexpr uint8_t kBitString = 0x03;
inline constexpr uint8_t kOctetString = 0x04;
inline constexpr uint8_t kNull = 0x05;
inline constexpr uint8_t kOid = 0x06;
inline constexpr uint8_t kUtf8String = 0x0c;
inline constexpr uint8_t kPrintableString = 0x13;
inline constexpr uint8_t kIa5String = 0x16;
inline constexpr uint8_t kBmpString = 0x1e;
inline constexpr uint8_t kSequence = 0x30;
inline constexpr uint8_t kSet = 0x31;
inline constexpr uint8_t ContextConstructed(int n) {
  return static_cast<uint8_t>(0xa0 | n);
}
inline constexpr uint8_t ContextPrimitive(int n) {
  return static_cast<uint8_t>(0x80 | n);
}
// Writing DER (definite, minimal lengths) for the structures built by hand.
using Bytes = std::vector<uint8_t>;
Bytes Tlv(uint8_t tag, std::span<const uint8_t> contents);
Bytes Concat(std::initializer_list<Bytes> parts);
// The whole OBJECT IDENTIFIER TLV of a dotted OID; empty if not an OID.
Bytes Oid(const char* dotted);
// INTEGER TLV of a non-negative value.
Bytes SmallInteger(uint64_t value);
inline const Bytes kNullValue = {0x05, 0x00};
}  // namespace der

// Base64 (RFC 4648, no line breaks) for binary values kept as text.
std::string Base64Encode(std::span<const uint8_t> data);
// Empty on malformed input.
std::vector<uint8_t> Base64Decode(const std::string& text);

struct DerElement {
  uint8_t tag = 0;
  std::span<const uint8_t> contents;  // the value octets
  std::span<const uint8_t> whole;     // tag + length + contents
};

class DerReader {
 public:
  explicit DerReader(std::span<const uint8_t> data) : rest_(data) {}

  bool empty() const { return rest_.empty(); }
  // Reads the next element; false (and nothing consumed) if malformed.
  bool Next(DerElement* out);
  // Reads the next element only if it has `tag`.
  bool Expect(uint8_t tag, DerElement* out);
  bool PeekTag(uint8_t* tag) const;

 private:
  std::span<const uint8_t> rest_;
};

// Dotted-decimal text of OID contents ("1.3.6.1.4.1.311.21.7"); empty if malformed.
std::string OidToText(std::span<const uint8_t> contents);
// Small non-negative INTEGER contents; false if negative or over 2^31.
bool ReadSmallInt(std::span<const uint8_t> contents, int64_t* out);
// BMPString contents (UTF-16BE) to UTF-8; false on malformed surrogates/odd length.
bool BmpToUtf8(std::span<const uint8_t> contents, std::string* out);

}  // namespace keywarden::pki
