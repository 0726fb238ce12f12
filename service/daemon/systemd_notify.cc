#include "service/daemon/systemd_notify.h"

#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <chrono>

namespace keywarden::service {

SystemdNotifier::~SystemdNotifier() {
  StopWatchdog();
}

void SystemdNotifier::Ready(const std::string& status) {
  const std::string message = "READY=1\nSTATUS=" + status + "\nMAINPID=" + std::to_string(getpid());
  sd_notify(0, message.c_str());
  uint64_t usec = 0;
  // > 0 only when WATCHDOG_USEC is set (and WATCHDOG_PID, if set, is us).
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return;
  watchdog_usec_ = usec;
  const auto period = std::chrono::microseconds(usec / 2);
  watchdog_ = std::thread([this, period] {
    std::unique_lock<std::mutex> lock(mu_);
    do {
      sd_notify(0, "WATCHDOG=1");
    } while (!cv_.wait_for(lock, period, [this] { return stop_; }));
  });
}

void SystemdNotifier::Stopping(const std::string& status) {
  StopWatchdog();
  const std::string message = "STOPPING=1\nSTATUS=" + status;
  sd_notify(0, message.c_str());
}

void SystemdNotifier::StopWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
}

}  // namespace keywarden::service
