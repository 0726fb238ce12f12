#include "service/publication_url.h"

#include <cctype>

#include "hsm/strings.h"

namespace keywarden::service {
namespace {

bool IsHex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// RFC 3986 pchar without '%' (checked separately): unreserved, sub-delims, ':' and '@'.
bool IsPathChar(char c) {
  if (std::isalnum(static_cast<unsigned char>(c)) != 0) return true;
  switch (c) {
    case '-':
    case '.':
    case '_':
    case '~':
    case '!':
    case '$':
    case '&':
    case '\'':
    case '(':
    case ')':
    case '*':
    case '+':
    case ',':
    case ';':
    case '=':
    case ':':
    case '@':
      return true;
    default:
      return false;
  }
}

bool IsHostNameChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '.';
}

}  // namespace

absl::StatusOr<HttpUrl> ParsePublicationUrl(std::string_view url) {
  auto bad = [&](std::string_view why) {
    // The URL is echoed bounded: it comes from the operator's own file.
    std::string shown(url.substr(0, 200));
    if (url.size() > 200) shown += "...";
    return absl::InvalidArgumentError(StrCat("\"", shown, "\" ", why));
  };
  if (url.empty()) return bad("is empty");
  if (url.size() > kMaxPublicationUrlLength) {
    return bad(
        StrCat("is ", url.size(), " characters long; the limit is ", kMaxPublicationUrlLength));
  }
  for (char c : url) {
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      return bad("holds a space, a control or a non-ASCII character (percent-encode it)");
    }
  }
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    const size_t colon = url.find("://");
    const std::string scheme(colon == std::string_view::npos ? "" : url.substr(0, colon));
    if (scheme == "https") {
      return bad(
          "uses https: a relying party would need the revocation status of the TLS server "
          "before it could fetch the revocation status it asks for (RFC 5280 section 8); "
          "use http:// -- the CRL and the certificate are signed");
    }
    return bad(
        "is not an http:// URL (keywarden serves its CRL and CA certificate over plain HTTP; "
        "other schemes such as ldap:// are not published by it)");
  }
  std::string_view rest = url.substr(kScheme.size());
  const size_t slash = rest.find('/');
  if (slash == std::string_view::npos)
    return bad("has no path (e.g. http://pki.example.com/ca.crl)");
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = rest.substr(slash);
  if (authority.find('@') != std::string_view::npos) return bad("holds user information (\"@\")");

  HttpUrl out;
  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("has an IPv6 address without its \"]\"");
    std::string_view v6 = authority.substr(1, close - 1);
    if (v6.empty() || v6.find_first_not_of("0123456789abcdefABCDEF:.") != std::string_view::npos) {
      return bad("has a malformed IPv6 address");
    }
    out.host = std::string(v6);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("has characters after its IPv6 address");
      port_text = after.substr(1);
      if (port_text.empty()) return bad("has an empty port");
    }
  } else {
    const size_t colon = authority.find(':');
    std::string_view host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      if (port_text.empty()) return bad("has an empty port");
    }
    if (host.empty()) return bad("has no host");
    for (char c : host) {
      if (!IsHostNameChar(c))
        return bad(StrCat("has a host with the character '", std::string(1, c), "'"));
    }
    if (host.front() == '.' || host.front() == '-' || host.back() == '-' ||
        host.find("..") != std::string_view::npos) {
      return bad("has a malformed host name");
    }
    out.host = std::string(host);
  }
  if (!port_text.empty()) {
    if (port_text.size() > 5 ||
        port_text.find_first_not_of("0123456789") != std::string_view::npos) {
      return bad("has a port that is not a number from 1 to 65535");
    }
    out.port = std::stoi(std::string(port_text));
    if (out.port < 1 || out.port > 65535)
      return bad("has a port that is not a number from 1 to 65535");
  }

  if (path.find('?') != std::string_view::npos) return bad("has a query (\"?\"): name a file");
  if (path.find('#') != std::string_view::npos) return bad("has a fragment (\"#\")");
  if (path.size() < 2 || path.back() == '/')
    return bad("names a directory, not a file (its path ends with \"/\")");
  size_t start = 1;  // after the leading '/'
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view segment = path.substr(start, end - start);
    if (segment.empty()) return bad("has an empty path segment (\"//\")");
    if (segment == "." || segment == "..") return bad("has a \".\" or \"..\" path segment");
    for (size_t i = 0; i < segment.size(); ++i) {
      const char c = segment[i];
      if (c == '%') {
        if (i + 2 >= segment.size() || !IsHex(segment[i + 1]) || !IsHex(segment[i + 2])) {
          return bad("has a \"%\" not followed by two hexadecimal digits");
        }
        i += 2;
        continue;
      }
      if (!IsPathChar(c)) {
        return bad(
            StrCat("has the character '", std::string(1, c), "' in its path (percent-encode it)"));
      }
    }
    start = end + 1;
  }
  out.path = std::string(path);
  return out;
}

}  // namespace keywarden::service
