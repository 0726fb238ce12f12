// The URLs a certificate gives relying parties for this CA's CRL and
// certificate ([publication] crl_urls, ca_issuers_urls), checked strictly:
// each one is written into every certificate the CA issues, so a typo would
// live as long as the certificates.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace keywarden::service {

// At most this many characters per URL.
inline constexpr size_t kMaxPublicationUrlLength = 1024;

struct HttpUrl {
  std::string host;  // as written (an IPv6 address without its brackets)
  int port = 80;
  std::string path;  // "/..." as written (percent-encoding kept), what the daemon serves
};

// "http://HOST[:PORT]/PATH": plain http only (RFC 5280 §4.2.1.13 and
// §8: a CRL or CA certificate fetched over https would need the revocation
// status of the TLS server first), a host name or IPv4/[IPv6] address, a
// port from 1 to 65535, and an absolute path naming a file: no query, no
// fragment, no empty, "." or ".." segment, no trailing "/", only RFC 3986
// path characters (percent-encoded octets allowed). The error says what is
// wrong with the URL.
absl::StatusOr<HttpUrl> ParsePublicationUrl(std::string_view url);

}  // namespace keywarden::service
