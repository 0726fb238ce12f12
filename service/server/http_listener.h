// A plain-HTTP listener (cpp-httplib) on a thread of its own, shared by the
// metrics listener (http_endpoint.h) and the publication listener
// (publication_endpoint.h): parses "HOST:PORT" ("[v6]:PORT"; port 0 picks a
// free one), sets the limits every such listener has (5 s read and write
// timeouts, at most 10 requests per connection, a body limit), lets the
// caller register its routes, binds and serves until destroyed.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace httplib {
class Server;
}

namespace keywarden::service {

class HttpListener {
 public:
  // `section` names the listener in errors: "metrics" gives "metrics.listen
  // ... is not HOST:PORT" and "the metrics listener cannot listen on ...".
  static absl::StatusOr<std::unique_ptr<HttpListener>> Start(
      const std::string& section, const std::string& listen, size_t max_body,
      const std::function<void(httplib::Server&)>& routes);
  ~HttpListener();  // stops listening, joins the thread
  HttpListener(const HttpListener&) = delete;
  HttpListener& operator=(const HttpListener&) = delete;

  const std::string& host() const { return host_; }
  int port() const { return port_; }

 private:
  HttpListener() = default;
  std::unique_ptr<httplib::Server> server_;
  std::string host_;
  int port_ = 0;
  std::thread thread_;
};

}  // namespace keywarden::service
