#include "service/server/publication_endpoint.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <ctime>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "service/ca/issuer.h"
#include "service/observe/log.h"
#include "service/publication_url.h"
#include "service/server/http_listener.h"

namespace keywarden::service {
namespace {

constexpr char kCrlType[] = "application/pkix-crl";
constexpr char kCertType[] = "application/pkix-cert";
// How long a relying party may keep the CA certificate without asking again.
constexpr int64_t kCaCertificateMaxAge = 86400;

int64_t Now() {
  return static_cast<int64_t>(std::time(nullptr));
}

std::string Body(const std::vector<uint8_t>& der) {
  return std::string(reinterpret_cast<const char*>(der.data()), der.size());
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// httplib matches a route (a regular expression) against the request's
// percent-decoded path: the configured path, decoded, with every other
// character than a letter or digit escaped, matches that path only.
std::string ExactPath(const std::string& path) {
  std::string decoded;
  for (size_t i = 0; i < path.size(); ++i) {
    if (path[i] == '%' && i + 2 < path.size() && HexValue(path[i + 1]) >= 0 &&
        HexValue(path[i + 2]) >= 0) {
      decoded.push_back(static_cast<char>(HexValue(path[i + 1]) * 16 + HexValue(path[i + 2])));
      i += 2;
    } else {
      decoded.push_back(path[i]);
    }
  }
  std::string pattern;
  for (char c : decoded) {
    if (std::isalnum(static_cast<unsigned char>(c)) != 0) {
      pattern.push_back(c);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      const auto b = static_cast<unsigned char>(c);
      pattern += "\\x";
      pattern.push_back(kHex[b >> 4]);
      pattern.push_back(kHex[b & 15]);
    }
  }
  return pattern;
}

}  // namespace

std::string HttpDate(int64_t unix_seconds) {
  const time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm {};
  gmtime_r(&t, &tm);
  // Spelled out rather than strftime's %a/%b, which follow the locale.
  static constexpr const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char buf[64];
  const int n = std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d GMT",
                              kDays[tm.tm_wday % 7], tm.tm_mday, kMonths[tm.tm_mon % 12],
                              tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return std::string(buf, n > 0 ? static_cast<size_t>(n) : 0);
}

absl::StatusOr<PublicationEndpoint::Content> PublicationEndpoint::ContentOf(
    const Config& config, CertificateAuthority& ca) {
  Content c;
  for (const auto& url : config.publication.crl_urls) {
    auto parsed = ParsePublicationUrl(url);
    if (!parsed.ok()) return parsed.status();
    c.crl_paths.push_back(parsed->path);
  }
  for (const auto& url : config.publication.ca_issuers_urls) {
    auto parsed = ParsePublicationUrl(url);
    if (!parsed.ok()) return parsed.status();
    c.ca_issuers_paths.push_back(parsed->path);
  }
  c.crl = [&ca] { return ca.CurrentCrl(); };
  c.ca_certificate = pki::CertificateDer(ca.certificate());
  c.ca_not_before = ToUnix(X509_get0_notBefore(ca.certificate()));
  return c;
}

absl::StatusOr<std::unique_ptr<PublicationEndpoint>> PublicationEndpoint::Start(
    const std::string& listen, Content content) {
  if (content.ca_certificate.empty()) {
    return absl::InvalidArgumentError("publication: no CA certificate to serve");
  }

  auto listener = HttpListener::Start("publication", listen, 1024, [&](httplib::Server& s) {
    // Relying parties are anyone: small requests, short timeouts, no bodies.
    // Only GET and HEAD (httplib answers HEAD with the GET handler, without
    // the body); the rest is 405 whatever the path.
    s.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
      if (req.method == "GET" || req.method == "HEAD")
        return httplib::Server::HandlerResponse::Unhandled;
      res.status = 405;
      res.set_header("Allow", "GET, HEAD");
      res.set_content("method not allowed: only GET and HEAD\n", "text/plain; charset=utf-8");
      return httplib::Server::HandlerResponse::Handled;
    });
    s.set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (res.status == 404) res.set_content("not found\n", "text/plain; charset=utf-8");
    });

    auto crl_fn = std::move(content.crl);
    for (const auto& path : content.crl_paths) {
      // Registered as exact literal paths (httplib patterns are regexes).
      s.Get(ExactPath(path), [crl_fn](const httplib::Request&, httplib::Response& res) {
        auto crl = crl_fn();
        if (!crl.ok()) {
          // The CA's fault (database, token), never the relying party's;
          // logged at most once a minute however many ask meanwhile.
          static std::atomic<int64_t> last_logged{0};
          const int64_t now = Now();
          int64_t last = last_logged.load();
          if (now - last >= 60 && last_logged.compare_exchange_strong(last, now)) {
            log::Warn("publication: no CRL to serve",
                      nlohmann::json{{"error", std::string(crl.status().message())}});
          }
          res.status = 503;
          res.set_header("Retry-After", "30");
          res.set_content("the CRL is not available right now\n", "text/plain; charset=utf-8");
          return;
        }
        const int64_t now = Now();
        res.set_header("Last-Modified", HttpDate(crl->this_update));
        res.set_header("Expires", HttpDate(crl->next_update));
        res.set_header("Cache-Control",
                       StrCat("public, max-age=", std::max<int64_t>(0, crl->next_update - now)));
        res.set_header("ETag", StrCat("\"", crl->number, "\""));
        res.set_content(Body(crl->der), kCrlType);
      });
    }
    const std::string cert = Body(content.ca_certificate);
    const int64_t not_before = content.ca_not_before;
    for (const auto& path : content.ca_issuers_paths) {
      s.Get(ExactPath(path), [cert, not_before](const httplib::Request&, httplib::Response& res) {
        res.set_header("Last-Modified", HttpDate(not_before));
        res.set_header("Expires", HttpDate(Now() + kCaCertificateMaxAge));
        res.set_header("Cache-Control", StrCat("public, max-age=", kCaCertificateMaxAge));
        res.set_content(cert, kCertType);
      });
    }
  });
  if (!listener.ok()) return listener.status();
  std::unique_ptr<PublicationEndpoint> self(new PublicationEndpoint());
  self->listener_ = std::move(*listener);
  return self;
}

}  // namespace keywarden::service
