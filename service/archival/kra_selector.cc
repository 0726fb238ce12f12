#include "service/archival/kra_selector.h"

#include <random>

#include "hsm/strings.h"
#include "service/errors.h"

namespace keywarden::service {

KraSelector::KraSelector(size_t configured, std::vector<size_t> valid, size_t per_archival,
                         size_t start)
    : configured_(configured),
      valid_(std::move(valid)),
      per_archival_(per_archival),
      position_(valid_.empty() ? 0 : start % valid_.size()) {}

KraSelector KraSelector::WithRandomStart(size_t configured, std::vector<size_t> valid,
                                         size_t per_archival) {
  std::random_device rd;
  const size_t start =
      valid.empty() ? 0 : std::uniform_int_distribution<size_t>(0, valid.size() - 1)(rd);
  return KraSelector(configured, std::move(valid), per_archival, start);
}

absl::Status KraSelector::Usable() const {
  if (configured_ == 0 || per_archival_ == 0) return Error(hresult::kKeyArchivalNotConfigured);
  if (valid_.size() < per_archival_) {
    return Error(hresult::kNoValidKra, StrCat(valid_.size(), " of ", configured_,
                                              " configured KRA certificates are valid; ",
                                              per_archival_, " are needed per archival"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<size_t>> KraSelector::Next() {
  if (auto st = Usable(); !st.ok()) return st;
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<size_t> out;
  out.reserve(per_archival_);
  for (size_t k = 0; k < per_archival_; ++k) out.push_back(valid_[(position_ + k) % valid_.size()]);
  position_ = (position_ + per_archival_) % valid_.size();
  return out;
}

}  // namespace keywarden::service
