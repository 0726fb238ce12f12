// Bounded audit: rejections are recorded at most once a minute per key
// (principal, event and a bounded classification), with the count of the
// refusals the record stands for, and no record's details exceed
// kMaxAuditDetailsBytes. Values echoed in errors and records go through
// Echo(). Used by the door (server/rpc.cc), submissions (ca/authority.cc)
// and delegated signing (signing/delegated_signer.cc).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

namespace keywarden::service {

inline constexpr size_t kMaxAuditDetailsBytes = 4096;

// At most one audit record a minute per key, carrying how many refusals
// happened since the last one: a client that keeps sending what is refused
// cannot flood the log. The key must come from a bounded set per principal
// (an authenticated principal, an event name, a method, a configured alias,
// an HRESULT), never from the client's free input.
class RefusalLimiter {
 public:
  explicit RefusalLimiter(std::chrono::steady_clock::duration period = std::chrono::minutes(1))
      : period_(period) {}

  // 0: not now; otherwise the number of refusals this record stands for.
  int64_t Take(const std::string& key) {
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> lock(mu_);
    if (seen_.size() > 10000) seen_.clear();
    Entry& e = seen_[key];
    ++e.count;
    if (e.recorded && now - e.last < period_) return 0;
    e.recorded = true;
    e.last = now;
    return std::exchange(e.count, 0);
  }

 private:
  struct Entry {
    bool recorded = false;
    std::chrono::steady_clock::time_point last;
    int64_t count = 0;  // refusals since the last record
  };
  const std::chrono::steady_clock::duration period_;
  std::mutex mu_;
  std::map<std::string, Entry> seen_;
};

// A value echoed in an error or an audit record: at most `max_bytes` of it,
// cut at a UTF-8 character boundary; bytes that are not UTF-8 and control
// characters are written as \xNN; "...(N bytes)" when it was cut.
inline std::string Echo(std::string_view value, size_t max_bytes = 128) {
  std::string out;
  size_t i = 0;
  while (i < value.size()) {
    const auto c = static_cast<unsigned char>(value[i]);
    const size_t len = c < 0x80           ? 1
                       : (c >> 5) == 0x6  ? 2
                       : (c >> 4) == 0xe  ? 3
                       : (c >> 3) == 0x1e ? 4
                                          : 0;
    bool valid = len > 0 && i + len <= value.size();
    for (size_t k = 1; valid && k < len; ++k) {
      valid = (static_cast<unsigned char>(value[i + k]) & 0xc0) == 0x80;
    }
    if (valid && len > 1) {  // overlong, surrogate and out-of-range forms
      const auto c1 = static_cast<unsigned char>(value[i + 1]);
      if ((len == 2 && c < 0xc2) || (len == 3 && c == 0xe0 && c1 < 0xa0) ||
          (len == 3 && c == 0xed && c1 >= 0xa0) || (len == 4 && c == 0xf0 && c1 < 0x90) ||
          (len == 4 && (c > 0xf4 || (c == 0xf4 && c1 >= 0x90)))) {
        valid = false;
      }
    }
    const bool escape = !valid || c < 0x20 || c == 0x7f;
    if (out.size() + (escape ? 4 : len) > max_bytes) {
      out += "...(" + std::to_string(value.size()) + " bytes)";
      return out;
    }
    if (escape) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
      ++i;
    } else {
      out.append(value.substr(i, len));
      i += len;
    }
  }
  return out;
}

// An audit record's details, at most kMaxAuditDetailsBytes: larger ones are
// replaced by {"truncated": true, "bytes": N, "prefix": "<the start>"}.
inline std::string BoundAuditDetails(const std::string& details_json) {
  if (details_json.size() <= kMaxAuditDetailsBytes) return details_json;
  return nlohmann::json{{"truncated", true},
                        {"bytes", details_json.size()},
                        {"prefix", Echo(details_json, kMaxAuditDetailsBytes / 2)}}
      .dump();
}

}  // namespace keywarden::service
