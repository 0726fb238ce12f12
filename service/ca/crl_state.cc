#include "service/ca/crl_state.h"

#include <charconv>
#include <chrono>
#include <limits>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace keywarden::service {
namespace {

using nlohmann::json;

absl::StatusOr<int64_t> ParseInt(const std::string& text, const std::string& what) {
  int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " holds \"", text, "\", not a non-negative integer"));
  }
  return value;
}

}  // namespace

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

// Store or Transaction: both read settings the same way.
template <typename Settings>
absl::StatusOr<int64_t> Highest(Settings& settings) {
  int64_t highest = 0;
  if (auto counter = settings.GetSetting(kCrlNumberSetting); counter.ok()) {
    auto n = ParseInt(*counter, absl::StrCat("setting \"", kCrlNumberSetting, "\""));
    if (!n.ok()) return n.status();
    highest = *n;
  } else if (!absl::IsNotFound(counter.status())) {
    return counter.status();
  }
  if (auto current = settings.GetSetting(kCrlCurrentSetting); current.ok()) {
    json j = json::parse(*current, nullptr, false);
    if (j.is_object() && j.contains("number") && j["number"].is_number_integer()) {
      highest = std::max(highest, j["number"].get<int64_t>());
    }
  } else if (!absl::IsNotFound(current.status())) {
    return current.status();
  }
  return highest;
}

}  // namespace

absl::StatusOr<int64_t> HighestCrlNumber(Store& store) {
  return Highest(store);
}

absl::StatusOr<int64_t> NextCrlNumber(Store& store, int64_t now_micros) {
  int64_t next = 0;
  // One unit of work, serialized with every other publisher (any replica):
  // two CRLs never get the same number.
  absl::Status st = store.Transact("handing out a CRL number", [&](Transaction& t) -> absl::Status {
    if (absl::Status locked = t.Lock(kCrlNumberSetting); !locked.ok()) return locked;
    auto highest = Highest(t);
    if (!highest.ok()) return highest.status();
    if (*highest == std::numeric_limits<int64_t>::max()) {
      return absl::OutOfRangeError("the CRL number is at its maximum");
    }
    next = std::max(*highest + 1, now_micros);
    return t.PutSetting(kCrlNumberSetting, std::to_string(next));
  });
  if (!st.ok()) return st;
  return next;
}

absl::StatusOr<std::vector<CarriedRevocation>> CarriedRevocations(Store& store) {
  std::vector<CarriedRevocation> out;
  auto text = store.GetSetting(kCarriedRevocationsSetting);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) return out;
    return text.status();
  }
  json j = json::parse(*text, nullptr, false);
  if (!j.is_array()) {
    return absl::FailedPreconditionError(
        absl::StrCat("setting \"", kCarriedRevocationsSetting, "\" is not a JSON array"));
  }
  for (const auto& e : j) {
    if (!e.is_object() || !e.contains("serial") || !e["serial"].is_string() ||
        !e.contains("reason") || !e["reason"].is_number_integer() || !e.contains("revoked_at") ||
        !e["revoked_at"].is_number_integer()) {
      return absl::FailedPreconditionError(absl::StrCat("setting \"", kCarriedRevocationsSetting,
                                                        "\" holds a malformed entry: ", e.dump()));
    }
    out.push_back(
        {e["serial"].get<std::string>(), e["reason"].get<int>(), e["revoked_at"].get<int64_t>()});
  }
  return out;
}

absl::Status PutCarriedRevocations(Store& store,
                                   const std::vector<CarriedRevocation>& revocations) {
  json j = json::array();
  for (const auto& r : revocations) {
    j.push_back({{"serial", r.serial}, {"reason", r.reason}, {"revoked_at", r.revoked_at}});
  }
  return store.PutSetting(kCarriedRevocationsSetting, j.dump());
}

}  // namespace keywarden::service
