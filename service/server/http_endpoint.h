// The metrics listener ([metrics] listen): plain HTTP, no client
// certificate, meant for loopback or a management network.
//   GET /metrics  Prometheus text exposition (service/observe/metrics.h)
//   GET /healthz  200 "ok": the process is up and answering
//   GET /readyz   200 "ready" or 503 "not ready", one line per check
//                 (service/server/readiness.h)
// Anything else is 404; only GET (and HEAD) are answered.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "service/server/http_listener.h"
#include "service/server/readiness.h"

namespace keywarden::service {

class HttpEndpoint {
 public:
  using ReadinessFn = std::function<Readiness::State()>;
  // `listen`: "HOST:PORT" ("[v6]:PORT"); port 0 picks a free one.
  static absl::StatusOr<std::unique_ptr<HttpEndpoint>> Start(const std::string& listen,
                                                             ReadinessFn readiness);
  ~HttpEndpoint() = default;  // stops listening
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  const std::string& host() const { return listener_->host(); }
  int port() const { return listener_->port(); }

 private:
  HttpEndpoint() = default;
  std::unique_ptr<HttpListener> listener_;
};

}  // namespace keywarden::service
