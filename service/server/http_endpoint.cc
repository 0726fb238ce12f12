#include "service/server/http_endpoint.h"

#include <httplib.h>

#include "hsm/strings.h"
#include "service/observe/metrics.h"
#include "service/server/http_listener.h"

namespace keywarden::service {

absl::StatusOr<std::unique_ptr<HttpEndpoint>> HttpEndpoint::Start(const std::string& listen,
                                                                  ReadinessFn readiness) {
  auto listener = HttpListener::Start("metrics", listen, 4096, [&](httplib::Server& s) {
    s.Get("/metrics", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics::Render(), "text/plain; version=0.0.4; charset=utf-8");
    });
    s.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain; charset=utf-8");
    });
    s.Get("/readyz", [readiness](const httplib::Request&, httplib::Response& res) {
      const Readiness::State state = readiness();
      std::string body = state.ready ? "ready\n" : "not ready\n";
      for (const auto& c : state.checks) {
        body += c.name + ": " + (c.ok ? "ok" : "FAILED") +
                (c.detail.empty() ? "" : " - " + c.detail) + "\n";
      }
      res.status = state.ready ? 200 : 503;
      res.set_content(body, "text/plain; charset=utf-8");
    });
  });
  if (!listener.ok()) return listener.status();
  std::unique_ptr<HttpEndpoint> self(new HttpEndpoint());
  self->listener_ = std::move(*listener);
  return self;
}

}  // namespace keywarden::service
