// seed: KRA round robin. "When the CA service starts, a random start point
// in the KRA list is chosen. [N] of the KRAs will be chosen from that start
// point and then for each subsequent archival operation, the list order
// will be incremented by [N]." Only valid KRAs take part; with fewer valid
// than N every archival is refused (0x8009400b), with none configured too
// (0x8009400a).
#pragma once

#include <cstddef>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"

namespace keywarden::service {

class KraSelector {
 public:
  // `configured`: KRAs listed in the configuration; `valid`: indexes (into
  // that list) of those that passed validation, in list order; `per_archival`:
  // N. `start` is the first position in `valid` (random in the daemon).
  KraSelector(size_t configured, std::vector<size_t> valid, size_t per_archival, size_t start);
  // With a random start, as at service start.
  static KraSelector WithRandomStart(size_t configured, std::vector<size_t> valid,
                                     size_t per_archival);

  // The N configured-list indexes for the next archival, and advance by N.
  // Thread-safe: concurrent archivals get consecutive, distinct windows.
  absl::StatusOr<std::vector<size_t>> Next();

  // Whether archival is possible at all (the same refusal Next() would give).
  absl::Status Usable() const;

 private:
  size_t configured_;
  std::vector<size_t> valid_;
  size_t per_archival_;
  mutable std::mutex mu_;
  size_t position_;
};

}  // namespace keywarden::service
