#include "service/server/token_watch.h"

#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "service/observe/log.h"

namespace keywarden::service {

TokenWatch::TokenWatch(std::shared_ptr<hsm::Token> token, grpc::HealthCheckServiceInterface* health,
                       AuditFn audit, std::function<void()> recovered)
    : token_(std::move(token)),
      health_(health),
      audit_(std::move(audit)),
      recovered_(std::move(recovered)) {
  token_->SetAvailabilityListener([this](bool up, const std::string& detail) {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(Event{up, detail});
    cv_.notify_all();
  });
  // A fault met before the listener was set: say so now.
  if (!token_->available()) {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(Event{false, "token \"" + token_->label() + "\" is down at start"});
  }
  thread_ = std::thread([this] { Run(); });
}

TokenWatch::~TokenWatch() {
  token_->SetAvailabilityListener(nullptr);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void TokenWatch::Run() {
  using nlohmann::json;
  std::unique_lock<std::mutex> lock(mu_);
  bool serving = true;
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(250),
                 [&] { return stopping_ || !events_.empty(); });
    if (stopping_) break;
    std::deque<Event> events;
    events.swap(events_);
    lock.unlock();
    for (const Event& e : events) {
      if (health_ != nullptr && e.up != serving) health_->SetServingStatus(e.up);
      serving = e.up;
      if (e.up) {
        log::Info("token recovered", json{{"token", token_->label()}, {"detail", e.detail}});
      } else {
        log::Error("token unavailable", json{{"token", token_->label()}, {"reason", e.detail}});
      }
      audit_(e.up ? "hsm.recovered" : "hsm.unavailable",
             json{{"token", token_->label()}, {e.up ? "detail" : "reason", e.detail}}.dump());
      if (e.up && recovered_) recovered_();
    }
    // Recovery is tried here too, so the token comes back with no client
    // calling (the token's backoff paces the attempts).
    if (!token_->available()) (void)token_->CheckAvailable();
    lock.lock();
  }
}

}  // namespace keywarden::service
