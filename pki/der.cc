#include "pki/der.h"

#include <openssl/asn1.h>
#include <openssl/evp.h>
#include <openssl/objects.h>

#include <algorithm>

namespace keywarden::pki {

bool DerReader::Next(DerElement* out) {
  if (rest_.size() < 2) return false;
  const uint8_t tag = rest_[0];
  if ((tag & 0x1f) == 0x1f) return false;  // high tag numbers: not used here
  size_t len = rest_[1];
  size_t header = 2;
  if (len & 0x80) {
    const size_t n = len & 0x7f;
    if (n == 0 || n > 4 || rest_.size() < 2 + n) return false;  // indefinite or huge
    len = 0;
    for (size_t i = 0; i < n; ++i) len = (len << 8) | rest_[2 + i];
    if (rest_[2] == 0 || len < 0x80) return false;  // not minimal
    header += n;
  }
  if (len > rest_.size() - header) return false;
  out->tag = tag;
  out->contents = rest_.subspan(header, len);
  out->whole = rest_.subspan(0, header + len);
  rest_ = rest_.subspan(header + len);
  return true;
}

bool DerReader::Expect(uint8_t tag, DerElement* out) {
  uint8_t t;
  if (!PeekTag(&t) || t != tag) return false;
  return Next(out);
}

bool DerReader::PeekTag(uint8_t* tag) const {
  if (rest_.empty()) return false;
  *tag = rest_[0];
  return true;
}

std::string OidToText(std::span<const uint8_t> c) {
  if (c.empty() || (c.back() & 0x80)) return {};
  std::string out;
  uint64_t value = 0;
  bool first = true;
  size_t digits = 0;
  for (uint8_t b : c) {
    if (digits == 0 && b == 0x80) return {};  // non-minimal
    if (++digits > 9) return {};              // arcs beyond 63 bits: refuse
    value = (value << 7) | (b & 0x7f);
    if (b & 0x80) continue;
    if (first) {
      const uint64_t a = value < 40 ? 0 : value < 80 ? 1 : 2;
      out = std::to_string(a) + "." + std::to_string(value - a * 40);
      first = false;
    } else {
      // Two appends, not `"." + std::to_string(...)`: GCC 12 at -O3 reports
      // a false -Wrestrict in the inlined insert of the latter (bug 105329).
      out += '.';
      out += std::to_string(value);
    }
    value = 0;
    digits = 0;
  }
  return out;
}

bool ReadSmallInt(std::span<const uint8_t> c, int64_t* out) {
  if (c.empty() || c.size() > 4 || (c[0] & 0x80)) return false;
  if (c.size() > 1 && c[0] == 0 && !(c[1] & 0x80)) return false;  // not minimal
  int64_t v = 0;
  for (uint8_t b : c) v = (v << 8) | b;
  *out = v;
  return true;
}

bool BmpToUtf8(std::span<const uint8_t> c, std::string* out) {
  if (c.size() % 2 != 0) return false;
  out->clear();
  for (size_t i = 0; i < c.size(); i += 2) {
    uint32_t cp = (static_cast<uint32_t>(c[i]) << 8) | c[i + 1];
    if (cp >= 0xd800 && cp <= 0xdfff) return false;  // BMPString has no surrogates
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else {
      out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
  }
  return true;
}

std::string Base64Encode(std::span<const uint8_t> data) {
  std::string out(4 * ((data.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data.data(),
                                static_cast<int>(data.size()));
  out.resize(static_cast<size_t>(std::max(n, 0)));
  return out;
}

std::vector<uint8_t> Base64Decode(const std::string& text) {
  std::vector<uint8_t> out(text.size());
  const int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0) return {};
  size_t pad = 0;
  for (auto it = text.rbegin(); it != text.rend() && *it == '='; ++it) ++pad;
  out.resize(static_cast<size_t>(n) - std::min(pad, static_cast<size_t>(n)));
  return out;
}

namespace der {

Bytes Tlv(uint8_t tag, std::span<const uint8_t> contents) {
  Bytes out{tag};
  const size_t n = contents.size();
  if (n < 0x80) {
    out.push_back(static_cast<uint8_t>(n));
  } else {
    Bytes len;
    for (size_t v = n; v > 0; v >>= 8) len.insert(len.begin(), static_cast<uint8_t>(v & 0xff));
    out.push_back(static_cast<uint8_t>(0x80 | len.size()));
    out.insert(out.end(), len.begin(), len.end());
  }
  out.insert(out.end(), contents.begin(), contents.end());
  return out;
}

Bytes Concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

Bytes Oid(const char* dotted) {
  ASN1_OBJECT* obj = OBJ_txt2obj(dotted, 1);
  unsigned char* der = nullptr;
  int len = obj != nullptr ? i2d_ASN1_OBJECT(obj, &der) : 0;
  Bytes out(der, der + std::max(len, 0));
  OPENSSL_free(der);
  ASN1_OBJECT_free(obj);
  return out;
}

Bytes SmallInteger(uint64_t value) {
  Bytes contents;
  do {
    contents.insert(contents.begin(), static_cast<uint8_t>(value & 0xff));
    value >>= 8;
  } while (value != 0);
  if (contents.front() & 0x80) contents.insert(contents.begin(), 0x00);
  return Tlv(kInteger, contents);
}

}  // namespace der
}  // namespace keywarden::pki
