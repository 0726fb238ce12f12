// The publication listener ([publication] listen): plain HTTP, no client
// certificate, for relying parties (RFC 5280 §4.2.1.13 and §4.2.2.1,
// RFC 2585). At the path of each configured URL:
//   crl_urls         the current CRL, DER, application/pkix-crl
//   ca_issuers_urls  the CA certificate, DER, application/pkix-cert
// with Last-Modified (thisUpdate / notBefore), Expires (nextUpdate) and
// Cache-Control. GET and HEAD only (anything else 405); any other path
// 404. The CRL is the newest one in the database (CertificateAuthority::
// CurrentCrl), so every replica serves the same one.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "service/ca/authority.h"
#include "service/server/http_listener.h"

namespace keywarden::service {

class PublicationEndpoint {
 public:
  using CrlFn = std::function<absl::StatusOr<CrlInfo>()>;
  struct Content {
    std::vector<std::string> crl_paths;  // URL paths ("/pki/ca.crl")
    std::vector<std::string> ca_issuers_paths;
    CrlFn crl;                            // the current CRL
    std::vector<uint8_t> ca_certificate;  // DER
    int64_t ca_not_before = 0;            // unix seconds (Last-Modified)
  };
  // `listen`: "HOST:PORT" ("[v6]:PORT"); port 0 picks a free one.
  static absl::StatusOr<std::unique_ptr<PublicationEndpoint>> Start(const std::string& listen,
                                                                    Content content);
  // The paths of `config`'s URLs, the CA's CRL and certificate.
  static absl::StatusOr<Content> ContentOf(const Config& config, CertificateAuthority& ca);
  ~PublicationEndpoint() = default;  // stops listening
  PublicationEndpoint(const PublicationEndpoint&) = delete;
  PublicationEndpoint& operator=(const PublicationEndpoint&) = delete;

  const std::string& host() const { return listener_->host(); }
  int port() const { return listener_->port(); }

 private:
  PublicationEndpoint() = default;
  std::unique_ptr<HttpListener> listener_;
};

// RFC 9110 IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
std::string HttpDate(int64_t unix_seconds);

}  // namespace keywarden::service
