// The threads that run a callback-API service's handlers, so that token
// operations and database commits never hold up gRPC's own threads (1.51
// runs callbacks on max(2, cores/2) of them).
#ifndef KEYWARDEN_SERVICE_SERVER_WORKERS_H_
#define KEYWARDEN_SERVICE_SERVER_WORKERS_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "service/config.h"

namespace keywarden::service {

// `[server] threads` when set; else kWorkersPerCore per core. A handler
// waits for its group's commit (an audit record, a certificate, an
// archive), and with one worker per core the cores sat idle meanwhile
// (issue_bench, archival_bench; docs/DECISIONS.md).
int ServiceWorkerCount(const Config& config);

class Workers {
 public:
  explicit Workers(int n);
  // Runs what is queued, then joins.
  ~Workers();
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  // The queue's lock is held only to push and pop.
  void Post(std::function<void()> job);

 private:
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace keywarden::service

#endif  // KEYWARDEN_SERVICE_SERVER_WORKERS_H_
