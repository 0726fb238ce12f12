// Work that exactly one keywardend replica of a cluster does at a time
// (renewing the exchange key, publishing the CRL) runs under a lease in the
// shared store (Store::AcquireLease). Each process names itself with a
// replica id; a lease it holds is given back when the ScopedLease goes away,
// and expires by itself after its ttl if the process dies holding it.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "service/storage/store.h"

namespace keywarden::service {

// "HOST:PID:RANDOM" (16 hex digits of randomness): unique per process, and
// readable in the leases table and the log.
const std::string& ReplicaId();

class ScopedLease {
 public:
  using Clock = std::function<int64_t()>;
  static constexpr int64_t kTtlSeconds = 60;

  // Takes lease `name` for this replica when it is free or expired; nullptr
  // (not an error) when another replica holds it. An error only for a store
  // fault. Within one process the holder id is the same for every thread,
  // so a process-wide mutex per name is taken first (waiting for another
  // thread of this replica that holds the lease): one thread's release can
  // never leave another thread here working without it.
  static absl::StatusOr<std::unique_ptr<ScopedLease>> TryTake(Store& store, const std::string& name,
                                                              int64_t now);
  // TryTake every 100 ms until it succeeds or `wait` has passed (then
  // nullptr). `*waited` (when given) says whether it was held by another
  // replica at the first try.
  static absl::StatusOr<std::unique_ptr<ScopedLease>> Take(Store& store, const std::string& name,
                                                           const Clock& clock,
                                                           std::chrono::milliseconds wait,
                                                           bool* waited = nullptr);
  ~ScopedLease();
  ScopedLease(const ScopedLease&) = delete;
  ScopedLease& operator=(const ScopedLease&) = delete;

 private:
  ScopedLease(Store& store, std::string name, std::unique_lock<std::mutex> local)
      : store_(store), name_(std::move(name)), local_(std::move(local)) {}
  Store& store_;
  std::string name_;
  std::unique_lock<std::mutex> local_;  // released after the lease
};

}  // namespace keywarden::service
