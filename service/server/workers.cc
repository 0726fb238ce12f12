#include "service/server/workers.h"

#include <algorithm>

namespace keywarden::service {

int ServiceWorkerCount(const Config& config) {
  constexpr unsigned kWorkersPerCore = 4;
  if (config.server.threads > 0) return config.server.threads;
  return static_cast<int>(kWorkersPerCore * std::max(2u, std::thread::hardware_concurrency()));
}

}  // namespace keywarden::service
