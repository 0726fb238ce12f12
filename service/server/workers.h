// The threads that run a callback-API service's handlers, so that token
// operations and database commits never hold up gRPC's own threads (1.51
// runs callbacks on max(2, cores/2) of them).
#ifndef KEYWARDEN_SERVICE_SERVER_WORKERS_H_
#define KEYWARDEN_SERVICE_SERVER_WORKERS_H_

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
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

// `Job` is a small copyable callable, kept by value in the queue (no
// allocation per call on the signing path).
template <typename Job>
class Workers {
 public:
  explicit Workers(int n) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { Loop(); });
  }
  // Runs what is queued, then joins.
  ~Workers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  // The queue's lock is held only to push and pop.
  void Post(const Job& job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(job);
    }
    cv_.notify_one();
  }

 private:
  void Loop() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = queue_.front();
        queue_.pop_front();
      }
      job();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;  // guarded by mu_
  bool stopping_ = false;  // guarded by mu_
  std::vector<std::thread> threads_;
};

// One unary callback-API call for a worker: its handler runs on `target`
// with the call's context, request and response, and the call's reactor is
// finished with the handler's status. Six words, kept by value in the queue.
template <typename Target>
struct UnaryCall {
  grpc::Status (*run)(Target&, const grpc::ServerContextBase&, const void* in, void* out) = nullptr;
  Target* target = nullptr;
  grpc::CallbackServerContext* context = nullptr;
  const void* in = nullptr;
  void* out = nullptr;
  grpc::ServerUnaryReactor* reactor = nullptr;

  void operator()() const { reactor->Finish(run(*target, *context, in, out)); }
};

// Hands a call to `workers` and returns the reactor gRPC waits on.
// `Handle` is a grpc::Status (Target::*)(const grpc::ServerContextBase&,
// const In&, Out*).
template <auto Handle, typename Target, typename In, typename Out>
grpc::ServerUnaryReactor* PostUnary(Workers<UnaryCall<Target>>& workers, Target& target,
                                    grpc::CallbackServerContext* context, const In* in, Out* out) {
  UnaryCall<Target> call;
  call.run = [](Target& t, const grpc::ServerContextBase& c, const void* i, void* o) {
    return (t.*Handle)(c, *static_cast<const In*>(i), static_cast<Out*>(o));
  };
  call.target = &target;
  call.context = context;
  call.in = in;
  call.out = out;
  call.reactor = context->DefaultReactor();
  workers.Post(call);
  return call.reactor;
}

}  // namespace keywarden::service

#endif  // KEYWARDEN_SERVICE_SERVER_WORKERS_H_
