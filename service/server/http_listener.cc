#include "service/server/http_listener.h"

#include <httplib.h>

#include "hsm/strings.h"

namespace keywarden::service {

absl::StatusOr<std::unique_ptr<HttpListener>> HttpListener::Start(
    const std::string& section, const std::string& listen, size_t max_body,
    const std::function<void(httplib::Server&)>& routes) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size()) {
    return absl::InvalidArgumentError(StrCat(section, ".listen \"", listen, "\" is not HOST:PORT"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = 0;
  try {
    size_t used = 0;
    port = std::stoi(listen.substr(colon + 1), &used);
    if (used != listen.size() - colon - 1 || port < 0 || port > 65535) throw std::out_of_range("");
  } catch (const std::exception&) {
    return absl::InvalidArgumentError(
        StrCat(section, ".listen \"", listen, "\": the port is not a number from 0 to 65535"));
  }

  std::unique_ptr<HttpListener> self(new HttpListener());
  self->server_ = std::make_unique<httplib::Server>();
  httplib::Server& s = *self->server_;
  s.set_read_timeout(5, 0);
  s.set_write_timeout(5, 0);
  s.set_keep_alive_max_count(10);
  s.set_payload_max_length(max_body);
  routes(s);

  if (port == 0) {
    port = s.bind_to_any_port(host);
    if (port < 0) port = 0;
  } else if (!s.bind_to_port(host, port)) {
    port = 0;
  }
  if (port == 0) {
    return absl::UnavailableError(StrCat("the ", section, " listener cannot listen on ", listen,
                                         " (address in use, or not an address of this host)"));
  }
  self->host_ = host;
  self->port_ = port;
  self->thread_ = std::thread([server = self->server_.get()] { server->listen_after_bind(); });
  return self;
}

HttpListener::~HttpListener() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace keywarden::service
