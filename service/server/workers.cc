#include "service/server/workers.h"

#include <algorithm>

namespace keywarden::service {

int ServiceWorkerCount(const Config& config) {
  constexpr unsigned kWorkersPerCore = 4;
  if (config.server.threads > 0) return config.server.threads;
  return static_cast<int>(kWorkersPerCore * std::max(2u, std::thread::hardware_concurrency()));
}

Workers::Workers(int n) {
  for (int i = 0; i < n; ++i) threads_.emplace_back([this] { Loop(); });
}

Workers::~Workers() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void Workers::Post(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void Workers::Loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job();
  }
}

}  // namespace keywarden::service
