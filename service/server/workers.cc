#include "service/server/workers.h"

#include <algorithm>

#include "pki/cores.h"

namespace keywarden::service {

int ServiceWorkerCount(const Config& config) {
  constexpr unsigned kWorkersPerCore = 4;
  if (config.server.threads > 0) return config.server.threads;
  return static_cast<int>(kWorkersPerCore * std::max<size_t>(2, pki::UsableCores()));
}

}  // namespace keywarden::service
