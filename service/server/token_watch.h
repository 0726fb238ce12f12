// Watches the CA token: while it is down (a token fault, see hsm/token.h)
// the health service says NOT_SERVING and recovery is tried in the
// background (Token::CheckAvailable, with the token's backoff), so service
// resumes without a restart even when no client calls; outage and recovery
// are audited (hsm.unavailable, hsm.recovered) from this thread, never from
// the request that met the fault.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/health_check_service_interface.h>

#include "hsm/token.h"

namespace keywarden::service {

class TokenWatch {
 public:
  using AuditFn = std::function<void(const std::string& event, const std::string& details_json)>;

  // Starts watching; `health` may be null (no health service).
  // `recovered`, if set, runs on the watch's thread after each recovery
  // (the daemon runs the archival self-test again there).
  TokenWatch(std::shared_ptr<hsm::Token> token, grpc::HealthCheckServiceInterface* health,
             AuditFn audit, std::function<void()> recovered = nullptr);
  ~TokenWatch();  // stops
  TokenWatch(const TokenWatch&) = delete;
  TokenWatch& operator=(const TokenWatch&) = delete;

 private:
  void Run();

  std::shared_ptr<hsm::Token> token_;
  grpc::HealthCheckServiceInterface* health_;
  AuditFn audit_;
  std::function<void()> recovered_;
  std::mutex mu_;
  std::condition_variable cv_;
  struct Event {
    bool up;
    std::string detail;
  };
  std::deque<Event> events_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace keywarden::service
