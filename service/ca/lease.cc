#include "service/ca/lease.h"

#include <unistd.h>

#include <map>
#include <thread>

#include <openssl/rand.h>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "service/observe/log.h"

namespace keywarden::service {

const std::string& ReplicaId() {
  static const std::string id = [] {
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') {
      std::snprintf(host, sizeof host, "unknown-host");
    }
    uint8_t nonce[8] = {};
    if (RAND_bytes(nonce, sizeof nonce) != 1) {
      // The clock instead: with the host and the pid still unique in
      // practice (RAND_bytes failing means a broken OpenSSL anyway).
      const uint64_t t =
          static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
      for (size_t i = 0; i < sizeof nonce; ++i) nonce[i] = static_cast<uint8_t>(t >> (8 * i));
    }
    return StrCat(host, ":", static_cast<long>(getpid()), ":", HexString(nonce));
  }();
  return id;
}

namespace {

// One mutex per lease name for the whole process (never freed: a handful
// of names).
std::mutex& LocalMutex(const std::string& name) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<std::mutex>>* by_name =
      new std::map<std::string, std::unique_ptr<std::mutex>>();
  std::lock_guard<std::mutex> lock(mu);
  auto& m = (*by_name)[name];
  if (!m) m = std::make_unique<std::mutex>();
  return *m;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ScopedLease>> ScopedLease::TryTake(Store& store,
                                                                  const std::string& name,
                                                                  int64_t now) {
  std::unique_lock<std::mutex> local(LocalMutex(name));
  auto got = store.AcquireLease(name, ReplicaId(), now, kTtlSeconds);
  if (!got.ok()) return got.status();
  if (!*got) return std::unique_ptr<ScopedLease>();
  return std::unique_ptr<ScopedLease>(new ScopedLease(store, name, std::move(local)));
}

absl::StatusOr<std::unique_ptr<ScopedLease>> ScopedLease::Take(Store& store,
                                                               const std::string& name,
                                                               const Clock& clock,
                                                               std::chrono::milliseconds wait,
                                                               bool* waited) {
  const auto deadline = std::chrono::steady_clock::now() + wait;
  if (waited != nullptr) *waited = false;
  for (;;) {
    auto lease = TryTake(store, name, clock());
    if (!lease.ok() || *lease) return lease;
    if (waited != nullptr) *waited = true;
    if (std::chrono::steady_clock::now() >= deadline) return lease;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

ScopedLease::~ScopedLease() {
  if (auto st = store_.ReleaseLease(name_, ReplicaId()); !st.ok()) {
    // It expires by itself after its ttl; another replica waits that long.
    log::Warn("lease not released",
              nlohmann::json{{"lease", name_}, {"error", std::string(st.message())}});
  }
}

}  // namespace keywarden::service
