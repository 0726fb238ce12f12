// systemd's notification protocol (sd_notify(3)) for keywardend, a
// Type=notify service: READY=1 once it serves, STOPPING=1 when it begins to
// stop, and WATCHDOG=1 at half the interval systemd asks for
// (WATCHDOG_USEC, WatchdogSec=). Without NOTIFY_SOCKET (not run by systemd)
// every call does nothing.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace keywarden::service {

class SystemdNotifier {
 public:
  SystemdNotifier() = default;
  ~SystemdNotifier();  // stops the watchdog pings
  SystemdNotifier(const SystemdNotifier&) = delete;
  SystemdNotifier& operator=(const SystemdNotifier&) = delete;

  // READY=1 with a STATUS= line and MAINPID=; then, when systemd enabled
  // the watchdog for this process, starts pinging it.
  void Ready(const std::string& status);
  // STOPPING=1 with a STATUS= line; stops the watchdog pings.
  void Stopping(const std::string& status);

  // The watchdog interval systemd asked for (0: none).
  uint64_t watchdog_usec() const { return watchdog_usec_; }

 private:
  void StopWatchdog();

  uint64_t watchdog_usec_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread watchdog_;
};

}  // namespace keywarden::service
