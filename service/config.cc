// keywarden.toml: strict parsing into service::Config.
//
// Every table is read by a Section that knows its full key path ("hsm",
// "template[2]"), so any message can name the file, the line and the key.
// Indices in key paths count from 1, as operators count entries in a file:
// "template[2]" is the second [[template]].
//
// Debian's toml++ shared library is built with exceptions only (there is no
// no-exceptions ABI to link against), so toml::parse_error is caught here and
// turned into a status: no exception leaves this file.
#include "service/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <map>
#include <utility>

#include <openssl/crypto.h>
#include <toml++/toml.h>

#include "absl/status/status.h"
#include "hsm/pin.h"
#include "hsm/strings.h"
#include "hsm/uri.h"
#include "service/publication_url.h"
#include "service/signing/algorithm.h"
#include "service/storage/postgres_database.h"
#include "service/toml_reader.h"

namespace keywarden::service {

namespace {

// The largest EC field size of the curves OpenSSL offers for certificates (P-521).
constexpr int kLargestEcFieldBits = 521;

using strict_toml::Choices;
using strict_toml::Context;
using strict_toml::JoinChoices;
using strict_toml::kIntMax;
using strict_toml::NodeLine;
using strict_toml::OneOf;
using strict_toml::Seconds;
using strict_toml::Section;
using strict_toml::TypeName;

// Longer than any certificate or CRL could sensibly live, and far from
// overflowing a system_clock time_point when added to now().
constexpr int64_t kMaxDurationSeconds = int64_t{36525} * 86400;  // 100 years

const Choices kKeyUsages = {"digitalSignature", "nonRepudiation", "keyEncipherment",
                            "dataEncipherment", "keyAgreement",   "keyCertSign",
                            "cRLSign"};
const Choices kExtendedKeyUsages = {"serverAuth",  "clientAuth",  "emailProtection",
                                    "codeSigning", "OCSPSigning", "timeStamping"};

// Dotted-decimal OID: at least two arcs, digits only, no empty arcs and no
// leading zeros (so that exact string comparison is OID comparison); the
// first arc is 0, 1 or 2 and under 0 and 1 the second is below 40 (X.660).
bool IsDottedOid(std::string_view s) {
  std::vector<std::string_view> arcs;
  for (size_t pos = 0;;) {
    size_t dot = s.find('.', pos);
    arcs.push_back(
        s.substr(pos, dot == std::string_view::npos ? std::string_view::npos : dot - pos));
    if (dot == std::string_view::npos) break;
    pos = dot + 1;
  }
  if (arcs.size() < 2) return false;
  for (std::string_view arc : arcs) {
    if (arc.empty()) return false;
    if (arc.size() > 1 && arc[0] == '0') return false;
    for (char c : arc) {
      if (c < '0' || c > '9') return false;
    }
  }
  if (arcs[0].size() != 1 || arcs[0][0] > '2') return false;
  if (arcs[0][0] != '2' && (arcs[1].size() > 2 || (arcs[1].size() == 2 && arcs[1][0] > '3'))) {
    return false;
  }
  return true;
}

bool IsSha1Thumbprint(std::string_view s) {
  if (s.size() != 40) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  });
}

// "7d", "12h", ...: the largest unit that divides the duration exactly.
std::string FormatDuration(Seconds d) {
  int64_t s = d.count();
  if (s != 0 && s % 86400 == 0) return StrCat(s / 86400, "d");
  if (s != 0 && s % 3600 == 0) return StrCat(s / 3600, "h");
  if (s != 0 && s % 60 == 0) return StrCat(s / 60, "m");
  return StrCat(s, "s");
}

absl::Status ReadCa(const Section& s, Config::Ca& ca) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"name", "certificate", "chain", "ceremony_transcript"}));
  KW_RETURN_IF_ERROR(s.ReadRequiredString("name", ca.name));
  KW_RETURN_IF_ERROR(s.ReadString("certificate", ca.certificate));
  KW_RETURN_IF_ERROR(s.ReadString("chain", ca.chain));
  KW_RETURN_IF_ERROR(s.ReadString("ceremony_transcript", ca.ceremony_transcript));
  ca.certificate = s.ctx().ResolvePath(ca.certificate);
  ca.chain = s.ctx().ResolvePath(ca.chain);
  ca.ceremony_transcript = s.ctx().ResolvePath(ca.ceremony_transcript);
  return absl::OkStatus();
}

absl::Status CheckUri(const Section& s, std::string_view key, const std::string& uri,
                      bool needs_object) {
  absl::StatusOr<hsm::Pkcs11Uri> parsed = hsm::Pkcs11Uri::Parse(uri);
  if (!parsed.ok()) return s.Invalid(key, std::string(parsed.status().message()));
  if (needs_object && !parsed->has_object_selector()) {
    return s.Invalid(key, StrCat("PKCS#11 URI \"", parsed->Redacted(),
                                 "\" names no key (add object=LABEL or id=HEX)"));
  }
  return absl::OkStatus();
}

// A PIN source the daemon can use (file:PATH or env:NAME, never a prompt);
// a relative PIN file is made relative to the configuration file, like
// every other path.
absl::Status CheckDaemonPinSource(const Section& s, std::string_view key, std::string& pin_source) {
  absl::StatusOr<hsm::PinSource> pin = hsm::PinSource::Parse(pin_source);
  if (!pin.ok()) return s.Invalid(key, std::string(pin.status().message()));
  if (pin_source == "prompt" || pin_source.starts_with("prompt:")) {
    return s.Invalid(key, "a daemon cannot prompt for the PIN; use file:PATH or env:NAME");
  }
  for (const char* prefix : {"file://", "file:"}) {
    if (pin_source.starts_with(prefix)) {
      const std::string path = pin_source.substr(std::string_view(prefix).size());
      pin_source = "file:" + s.ctx().ResolvePath(path);
      break;
    }
  }
  return absl::OkStatus();
}

absl::Status ReadHsm(const Section& s, Config::Hsm& h) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"module", "token", "pin_source", "signing_key", "max_sessions"}));
  KW_RETURN_IF_ERROR(s.ReadString("module", h.module));
  KW_RETURN_IF_ERROR(s.ReadRequiredString("token", h.token));
  KW_RETURN_IF_ERROR(CheckUri(s, "token", h.token, /*needs_object=*/false));
  KW_RETURN_IF_ERROR(s.ReadRequiredString("pin_source", h.pin_source));
  KW_RETURN_IF_ERROR(CheckDaemonPinSource(s, "pin_source", h.pin_source));
  KW_RETURN_IF_ERROR(s.ReadRequiredString("signing_key", h.signing_key));
  KW_RETURN_IF_ERROR(CheckUri(s, "signing_key", h.signing_key, /*needs_object=*/true));
  KW_RETURN_IF_ERROR(s.ReadInt("max_sessions", 1, 1024, h.max_sessions));
  return absl::OkStatus();
}

absl::Status ReadExchange(const Section& s, Config::Exchange& e) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"validity", "overlap", "key_algorithm"}));
  KW_RETURN_IF_ERROR(s.ReadDuration("validity", e.validity));
  KW_RETURN_IF_ERROR(s.ReadDuration("overlap", e.overlap));
  KW_RETURN_IF_ERROR(
      s.ReadChoice("key_algorithm", {"rsa2048", "rsa3072", "rsa4096"}, e.key_algorithm));
  if (e.overlap >= e.validity) {
    // Blame the key that is written down; if both are, the overlap.
    if (!s.Has("overlap")) {
      return s.Invalid("validity",
                       StrCat(FormatDuration(e.validity), " must be longer than exchange.overlap (",
                              FormatDuration(e.overlap), ", the default)"));
    }
    return s.Invalid("overlap",
                     StrCat(FormatDuration(e.overlap), " must be shorter than exchange.validity (",
                            FormatDuration(e.validity), ")"));
  }
  return absl::OkStatus();
}

absl::Status ReadDatabase(const Section& s, Config::Database& d) {
  KW_RETURN_IF_ERROR(s.CheckKeys(
      {"backend", "path", "connection", "password", "pool_size", "in_process_timeout"}));
  KW_RETURN_IF_ERROR(s.ReadChoice("backend", {"sqlite", "postgresql"}, d.backend));
  KW_RETURN_IF_ERROR(s.ReadString("path", d.path));
  KW_RETURN_IF_ERROR(s.ReadString("connection", d.connection));
  KW_RETURN_IF_ERROR(s.ReadString("password", d.password));
  KW_RETURN_IF_ERROR(s.ReadInt("pool_size", 1, 256, d.pool_size));
  KW_RETURN_IF_ERROR(s.ReadDuration("in_process_timeout", d.in_process_timeout));
  if (d.in_process_timeout.count() < 1) {
    return s.Invalid("in_process_timeout", "must be at least one second");
  }
  if (d.backend == "sqlite" && d.path.empty()) {
    if (!s.Has("path")) {
      return s.ctx().Error(s.line(),
                           "missing required key \"database.path\" (backend = \"sqlite\")");
    }
    return s.Invalid("path", "must not be empty with backend = \"sqlite\"");
  }
  if (d.backend == "postgresql" && d.connection.empty()) {
    if (!s.Has("connection")) {
      return s.ctx().Error(
          s.line(), "missing required key \"database.connection\" (backend = \"postgresql\")");
    }
    return s.Invalid("connection", "must not be empty with backend = \"postgresql\"");
  }
  if (d.backend == "postgresql") {
    if (absl::Status st = CheckPostgresConnectionString(d.connection); !st.ok()) {
      return s.Invalid("connection", std::string(st.message()));
    }
  }
  if (s.Has("password")) {
    if (d.password.starts_with("env:")) {
      if (d.password.size() == 4) return s.Invalid("password", "\"env:\" names no variable");
    } else if (d.password.starts_with("file:")) {
      const std::string path = d.password.substr(5);
      if (path.empty()) return s.Invalid("password", "\"file:\" names no file");
      d.password = "file:" + s.ctx().ResolvePath(path);
    } else {
      // Never echo the value: it may be the password itself.
      return s.Invalid("password",
                       "must say where the password is, \"file:PATH\" or \"env:NAME\" "
                       "(the password itself does not belong in the configuration)");
    }
  }
  d.path = s.ctx().ResolvePath(d.path);
  return absl::OkStatus();
}

absl::Status ReadServer(const Section& s, Config::Server& v) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"listen", "tls_certificate", "tls_key", "client_ca",
                                  "client_crls", "client_crl_optional", "threads"}));
  KW_RETURN_IF_ERROR(s.ReadString("listen", v.listen));
  if (v.listen.empty()) return s.Invalid("listen", "must not be empty");
  KW_RETURN_IF_ERROR(s.ReadRequiredString("tls_certificate", v.tls_certificate));
  KW_RETURN_IF_ERROR(s.ReadRequiredString("tls_key", v.tls_key));
  std::vector<uint32_t> lines;
  KW_RETURN_IF_ERROR(s.ReadStrings("client_ca", v.client_ca, &lines));
  if (!s.Has("client_ca")) return s.Missing("client_ca");
  if (v.client_ca.empty()) return s.Invalid("client_ca", "needs at least one CA certificate file");
  for (size_t i = 0; i < v.client_ca.size(); ++i) {
    if (v.client_ca[i].empty()) return s.InvalidAt(lines[i], "client_ca", "empty file name");
    v.client_ca[i] = s.ctx().ResolvePath(v.client_ca[i]);
  }
  KW_RETURN_IF_ERROR(s.ReadStrings("client_crls", v.client_crls, &lines));
  for (size_t i = 0; i < v.client_crls.size(); ++i) {
    if (v.client_crls[i].empty()) return s.InvalidAt(lines[i], "client_crls", "empty file name");
    v.client_crls[i] = s.ctx().ResolvePath(v.client_crls[i]);
  }
  KW_RETURN_IF_ERROR(s.ReadStrings("client_crl_optional", v.client_crl_optional, &lines));
  for (size_t i = 0; i < v.client_crl_optional.size(); ++i) {
    std::string& f = v.client_crl_optional[i];
    f = s.ctx().ResolvePath(f);
    if (std::find(v.client_ca.begin(), v.client_ca.end(), f) == v.client_ca.end()) {
      return s.InvalidAt(lines[i], "client_crl_optional",
                         StrCat("\"", f, "\" is not one of server.client_ca"));
    }
  }
  KW_RETURN_IF_ERROR(s.ReadInt("threads", 0, kIntMax, v.threads));
  v.tls_certificate = s.ctx().ResolvePath(v.tls_certificate);
  v.tls_key = s.ctx().ResolvePath(v.tls_key);
  return absl::OkStatus();
}

absl::Status ReadCrl(const Section& s, Config::Crl& c) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"validity"}));
  return s.ReadDuration("validity", c.validity);
}

absl::Status ReadAudit(const Section& s, Config::Audit& a) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"checkpoint_interval"}));
  return s.ReadDuration("checkpoint_interval", a.checkpoint_interval);
}

absl::Status ReadLog(const Section& s, Config::Log& l) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"format"}));
  return s.ReadChoice("format", {"text", "json", "journal"}, l.format);
}

absl::Status ReadMetrics(const Section& s, Config::Metrics& m) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"listen"}));
  KW_RETURN_IF_ERROR(s.ReadString("listen", m.listen));
  if (!s.Has("listen")) return absl::OkStatus();
  const size_t colon = m.listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return s.Invalid("listen",
                     StrCat("\"", m.listen, "\" is not HOST:PORT (e.g. \"127.0.0.1:9464\")"));
  }
  const std::string port = m.listen.substr(colon + 1);
  const bool digits = !port.empty() && port.size() <= 5 &&
                      port.find_first_not_of("0123456789") == std::string::npos;
  if (!digits || std::stoi(port) > 65535) {
    return s.Invalid("listen", StrCat("the port \"", port, "\" is not a number from 0 to 65535"));
  }
  return absl::OkStatus();
}

absl::Status ReadListen(const Section& s, const std::string& listen, const char* example) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return s.Invalid("listen",
                     StrCat("\"", listen, "\" is not HOST:PORT (e.g. \"", example, "\")"));
  }
  const std::string port = listen.substr(colon + 1);
  const bool digits = !port.empty() && port.size() <= 5 &&
                      port.find_first_not_of("0123456789") == std::string::npos;
  if (!digits || std::stoi(port) > 65535) {
    return s.Invalid("listen", StrCat("the port \"", port, "\" is not a number from 0 to 65535"));
  }
  return absl::OkStatus();
}

// At most this many URLs of each kind (each goes into every certificate).
constexpr size_t kMaxPublicationUrls = 8;

absl::Status ReadPublication(const Section& s, Config::Publication& p) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"listen", "crl_urls", "ca_issuers_urls"}));
  KW_RETURN_IF_ERROR(s.ReadString("listen", p.listen));
  if (s.Has("listen")) KW_RETURN_IF_ERROR(ReadListen(s, p.listen, "0.0.0.0:8080"));
  std::map<std::string, std::string> paths;  // path -> the key that serves it
  for (auto [key, urls] :
       {std::pair<const char*, std::vector<std::string>*>{"crl_urls", &p.crl_urls},
        {"ca_issuers_urls", &p.ca_issuers_urls}}) {
    std::vector<uint32_t> lines;
    KW_RETURN_IF_ERROR(s.ReadStrings(key, *urls, &lines));
    if (urls->size() > kMaxPublicationUrls) {
      return s.Invalid(key,
                       StrCat("lists ", urls->size(), " URLs; the limit is ", kMaxPublicationUrls));
    }
    for (size_t i = 0; i < urls->size(); ++i) {
      auto url = ParsePublicationUrl((*urls)[i]);
      if (!url.ok()) return s.InvalidAt(lines[i], key, std::string(url.status().message()));
      for (size_t j = 0; j < i; ++j) {
        if ((*urls)[j] == (*urls)[i]) {
          return s.InvalidAt(lines[i], key, StrCat("\"", (*urls)[i], "\" is listed twice"));
        }
      }
      // One path, one document: the listener answers a path with the CRL or
      // the CA certificate, never either.
      if (auto [it, inserted] = paths.emplace(url->path, key); !inserted && it->second != key) {
        return s.InvalidAt(lines[i], key,
                           StrCat("the path \"", url->path, "\" is also in ", s.KeyPath(it->second),
                                  "; the CRL and the CA certificate need paths of their own"));
      }
    }
  }
  if (!p.listen.empty() && p.crl_urls.empty() && p.ca_issuers_urls.empty()) {
    return s.Invalid("listen",
                     "is set but neither crl_urls nor ca_issuers_urls is: the listener would "
                     "serve nothing");
  }
  return absl::OkStatus();
}

absl::Status ReadKra(const Section& s, Config::Kra& k) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"certificates", "count", "threshold", "crls", "trust"}));
  std::vector<uint32_t> lines;
  KW_RETURN_IF_ERROR(s.ReadStrings("certificates", k.certificates, &lines));
  for (size_t i = 0; i < k.certificates.size(); ++i) {
    std::string& c = k.certificates[i];
    if (c.empty()) return s.InvalidAt(lines[i], "certificates", "empty entry");
    if (!IsSha1Thumbprint(c)) c = s.ctx().ResolvePath(c);
  }
  KW_RETURN_IF_ERROR(s.ReadInt("count", 1, kIntMax, k.count));
  if (!k.certificates.empty() && static_cast<size_t>(k.count) > k.certificates.size()) {
    // seed: "The number of recovery agents required by the CA must be less
    // than or equal to the number of available KRA certificates."
    return s.Invalid("count", StrCat("is ", k.count, " but only ", k.certificates.size(),
                                     " KRA certificate(s) are listed"));
  }
  KW_RETURN_IF_ERROR(s.ReadInt("threshold", 1, 255, k.threshold));
  if (k.threshold > k.count) {
    return s.Invalid("threshold", StrCat("is ", k.threshold, " but count is ", k.count,
                                         ": recovery would need more KRAs than hold a share"));
  }
  for (auto [key, files] : {std::pair{"crls", &k.crls}, std::pair{"trust", &k.trust}}) {
    std::vector<uint32_t> file_lines;
    KW_RETURN_IF_ERROR(s.ReadStrings(key, *files, &file_lines));
    for (size_t i = 0; i < files->size(); ++i) {
      if ((*files)[i].empty()) return s.InvalidAt(file_lines[i], key, "empty file name");
      (*files)[i] = s.ctx().ResolvePath((*files)[i]);
    }
  }
  return absl::OkStatus();
}

absl::Status ReadFlags(const Section& s, Config::Flags& f) {
  KW_RETURN_IF_ERROR(s.CheckKeys(
      {"role_separation", "enable_foreign", "save_bad_request_key", "archival_scheme"}));
  KW_RETURN_IF_ERROR(s.ReadBool("role_separation", f.role_separation));
  KW_RETURN_IF_ERROR(s.ReadBool("enable_foreign", f.enable_foreign));
  KW_RETURN_IF_ERROR(s.ReadBool("save_bad_request_key", f.save_bad_request_key));
  KW_RETURN_IF_ERROR(
      s.ReadChoice("archival_scheme", {"des3-rsa-pkcs1", "aes256-rsa-oaep"}, f.archival_scheme));
  return absl::OkStatus();
}

// Role names, or (with `principals`) RFC 4514 subjects too: an entry with
// an '=' is a subject.
absl::Status ReadRoleList(const Section& s, std::string_view key, std::vector<Role>& roles,
                          std::vector<std::string>* principals) {
  std::vector<std::string> names;
  std::vector<uint32_t> lines;
  KW_RETURN_IF_ERROR(s.ReadStrings(key, names, &lines));
  for (size_t i = 0; i < names.size(); ++i) {
    if (principals != nullptr && names[i].find('=') != std::string::npos) {
      if (std::find(principals->begin(), principals->end(), names[i]) != principals->end()) {
        return s.InvalidAt(lines[i], key, StrCat("\"", names[i], "\" is listed twice"));
      }
      principals->push_back(names[i]);
      continue;
    }
    std::optional<Role> role = ParseRole(names[i]);
    if (!role.has_value()) {
      return s.InvalidAt(
          lines[i], key,
          StrCat("unknown role \"", names[i],
                 "\" (expected one of: ca-administrator, certificate-manager, "
                 "backup-operator, auditor, enrollee, signer",
                 principals != nullptr ? "; or a principal such as \"CN=x,O=y\")" : ")"));
    }
    if (std::find(roles.begin(), roles.end(), *role) != roles.end()) {
      return s.InvalidAt(lines[i], key, StrCat("\"", names[i], "\" is listed twice"));
    }
    roles.push_back(*role);
  }
  return absl::OkStatus();
}

absl::Status ReadRole(const Section& s, const Config::Server& server, RoleBinding& r) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"principal", "issuer", "certificate_sha256", "roles"}));
  KW_RETURN_IF_ERROR(s.ReadString("principal", r.principal));
  KW_RETURN_IF_ERROR(s.ReadString("issuer", r.issuer));
  KW_RETURN_IF_ERROR(s.ReadString("certificate_sha256", r.certificate_sha256));
  if (s.Has("certificate_sha256")) {
    std::string hex;
    for (char c : r.certificate_sha256) {
      if (c != ':') hex.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    }
    if (hex.size() != 64 || hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return s.Invalid("certificate_sha256",
                       "expected the SHA-256 of a client certificate: 64 hex digits "
                       "(`openssl x509 -noout -fingerprint -sha256`)");
    }
    r.certificate_sha256 = hex;
    if (s.Has("issuer")) {
      return s.Invalid("issuer", "a pinned certificate (certificate_sha256) takes no issuer");
    }
    if (s.Has("principal") && r.principal.empty()) return s.Invalid("principal", "is empty");
  } else {
    // A subject alone is something anyone can get some CA to print: a role
    // needs the subject and the CA that must have issued it.
    if (!s.Has("principal")) {
      return s.ctx().Error(s.line(), StrCat("[[role]] at ", s.path(),
                                            " needs principal and issuer, or certificate_sha256"));
    }
    if (r.principal.empty()) return s.Invalid("principal", "is empty");
    if (!s.Has("issuer")) {
      return s.ctx().Error(
          s.line(), StrCat("missing required key \"", s.path(),
                           ".issuer\": the client CA (one of server.client_ca) that must have "
                           "issued the certificate of \"",
                           r.principal, "\" (or pin it with certificate_sha256)"));
    }
    r.issuer = s.ctx().ResolvePath(r.issuer);
    if (std::find(server.client_ca.begin(), server.client_ca.end(), r.issuer) ==
        server.client_ca.end()) {
      return s.Invalid("issuer", StrCat("\"", r.issuer, "\" is not one of server.client_ca"));
    }
  }
  if (!s.Has("roles")) return s.Missing("roles");
  KW_RETURN_IF_ERROR(ReadRoleList(s, "roles", r.roles, nullptr));
  if (r.roles.empty()) return s.Invalid("roles", "needs at least one role");
  return absl::OkStatus();
}

absl::Status ReadTemplate(const Section& s, TemplateConfig& t) {
  KW_RETURN_IF_ERROR(
      s.CheckKeys({"name", "oid", "major_version", "minor_version", "key_usage",
                   "extended_key_usage", "validity", "subject", "min_key_bits", "key_types", "pend",
                   "archival", "enrollees", "san", "san_names", "smime_capabilities"}));
  KW_RETURN_IF_ERROR(s.ReadRequiredString("name", t.name));
  KW_RETURN_IF_ERROR(s.ReadString("oid", t.oid));
  if (s.Has("oid") && !IsDottedOid(t.oid)) {
    return s.Invalid(
        "oid",
        StrCat("\"", t.oid, "\" is not a dotted-decimal OID (e.g. \"1.3.6.1.4.1.311.21.8.1.1\")"));
  }
  KW_RETURN_IF_ERROR(s.ReadInt("major_version", 0, kIntMax, t.major_version));
  KW_RETURN_IF_ERROR(s.ReadInt("minor_version", 0, kIntMax, t.minor_version));
  KW_RETURN_IF_ERROR(s.ReadStringSet("key_usage", kKeyUsages, nullptr, "", t.key_usage));
  KW_RETURN_IF_ERROR(s.ReadStringSet("extended_key_usage", kExtendedKeyUsages, IsDottedOid,
                                     " or a dotted-decimal OID", t.extended_key_usage));
  KW_RETURN_IF_ERROR(s.ReadDuration("validity", t.validity));
  std::string subject = t.subject == SubjectSource::kPrincipal ? "principal" : "request";
  KW_RETURN_IF_ERROR(s.ReadChoice("subject", {"request", "principal"}, subject));
  t.subject = subject == "principal" ? SubjectSource::kPrincipal : SubjectSource::kRequest;
  KW_RETURN_IF_ERROR(s.ReadInt("min_key_bits", 256, 16384, t.min_key_bits));
  KW_RETURN_IF_ERROR(s.ReadStringSet("key_types", {"rsa", "ec"}, nullptr, "", t.key_types));
  if (t.key_types.empty()) return s.Invalid("key_types", "needs at least one key type");
  if (std::find(t.key_types.begin(), t.key_types.end(), "rsa") == t.key_types.end() &&
      t.min_key_bits > kLargestEcFieldBits) {
    // min_key_bits defaults to 2048: an EC-only template must lower it.
    return s.Invalid("min_key_bits",
                     StrCat(t.min_key_bits, " bits, but the template takes only EC keys (at most ",
                            kLargestEcFieldBits,
                            " bits, P-521), so no request could pass: set min_key_bits to the "
                            "smallest curve size accepted, e.g. 256"));
  }
  KW_RETURN_IF_ERROR(s.ReadBool("pend", t.pend));
  std::string archival = t.archival == ArchivalPolicy::kRequired  ? "required"
                         : t.archival == ArchivalPolicy::kAllowed ? "allowed"
                                                                  : "none";
  KW_RETURN_IF_ERROR(s.ReadChoice("archival", {"none", "allowed", "required"}, archival));
  t.archival = archival == "required"  ? ArchivalPolicy::kRequired
               : archival == "allowed" ? ArchivalPolicy::kAllowed
                                       : ArchivalPolicy::kNone;
  KW_RETURN_IF_ERROR(ReadRoleList(s, "enrollees", t.enrollee_roles, &t.enrollee_principals));
  if (!s.Has("enrollees")) {
    if (std::string why = ConfersPower(t); !why.empty()) {
      return s.ctx().Error(s.line(), StrCat("template \"", t.name, "\" (", s.path(), ") ", why,
                                            ": it has no default enrollees; list who may enrol "
                                            "for it in \"enrollees\""));
    }
    t.enrollee_roles = {Role::kEnrollee};
  }
  std::string san = t.san == SanSource::kDirectory ? "directory"
                    : t.san == SanSource::kRequest ? "request"
                                                   : "none";
  KW_RETURN_IF_ERROR(s.ReadChoice("san", {"none", "directory", "request"}, san));
  t.san = san == "directory" ? SanSource::kDirectory
          : san == "request" ? SanSource::kRequest
                             : SanSource::kNone;
  KW_RETURN_IF_ERROR(
      s.ReadStringSet("san_names", {"upn", "email", "dns"}, nullptr, "", t.san_names));
  if (s.Has("san_names")) {
    if (t.san == SanSource::kNone) {
      return s.Invalid("san_names", "needs san = \"directory\" or san = \"request\"");
    }
    if (t.san_names.empty()) return s.Invalid("san_names", "needs at least one name type");
    if (t.san == SanSource::kDirectory &&
        std::find(t.san_names.begin(), t.san_names.end(), "dns") != t.san_names.end()) {
      return s.Invalid("san_names",
                       "\"dns\": an [[account]] has no DNS name (DNS names need san = "
                       "\"request\")");
    }
  }
  KW_RETURN_IF_ERROR(s.ReadBool("smime_capabilities", t.smime_capabilities));
  return absl::OkStatus();
}

// A name of an [[account]]: printable, no spaces, and for `key` its shape.
std::string AccountNameProblem(std::string_view key, const std::string& v) {
  for (unsigned char c : v) {
    if (c < 0x21 || c == 0x7f) return "holds a space or a control character";
  }
  if (v.size() > 1024) return "is longer than 1024 bytes";
  if (key == "upn" || key == "email") {
    const size_t at = v.find('@');
    if (at == std::string::npos || at == 0 || at + 1 == v.size() ||
        v.find('@', at + 1) != std::string::npos) {
      return StrCat("\"", v, "\" is not of the form user@domain");
    }
    if (v.find('\\') != std::string::npos) return StrCat("\"", v, "\" holds a backslash");
    return {};
  }
  // logon_name: DOMAIN\user
  const size_t slash = v.find('\\');
  if (slash == std::string::npos || slash == 0 || slash + 1 == v.size() ||
      v.find('\\', slash + 1) != std::string::npos) {
    return StrCat("\"", v,
                  "\" is not of the form DOMAIN\\user (NetBIOS domain, backslash, "
                  "sAMAccountName)");
  }
  const std::string_view domain = std::string_view(v).substr(0, slash);
  const std::string_view user = std::string_view(v).substr(slash + 1);
  if (domain.find_first_of("/:*?\"<>|@") != std::string_view::npos) {
    return StrCat("the domain \"", domain, "\" holds a character a NetBIOS name cannot have");
  }
  if (user.find_first_of("\"/[]:;|=,+*?<>@") != std::string_view::npos) {
    return StrCat("the user \"", user, "\" holds a character a sAMAccountName cannot have");
  }
  return {};
}

absl::Status ReadAccount(const Section& s, AccountConfig& a) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"principal", "upn", "logon_name", "email"}));
  KW_RETURN_IF_ERROR(s.ReadRequiredString("principal", a.principal));
  if (a.principal.find('=') == std::string::npos) {
    return s.Invalid("principal", StrCat("\"", a.principal,
                                         "\" is not an RFC 4514 subject such as "
                                         "\"CN=alice,O=Example\""));
  }
  KW_RETURN_IF_ERROR(s.ReadString("upn", a.upn));
  KW_RETURN_IF_ERROR(s.ReadString("logon_name", a.logon_name));
  KW_RETURN_IF_ERROR(s.ReadString("email", a.email));
  for (auto [key, value] : {std::pair<const char*, const std::string*>{"upn", &a.upn},
                            {"logon_name", &a.logon_name},
                            {"email", &a.email}}) {
    if (!s.Has(key)) continue;
    if (value->empty()) return s.Invalid(key, "must not be empty (leave the key out instead)");
    if (std::string why = AccountNameProblem(key, *value); !why.empty()) {
      return s.Invalid(key, why);
    }
  }
  if (a.upn.empty() && a.logon_name.empty() && a.email.empty()) {
    return s.ctx().Error(s.line(), StrCat("[[account]] at ", s.path(), " (", a.principal,
                                          ") needs at least one of upn, logon_name, email"));
  }
  return absl::OkStatus();
}

bool IsAliasChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

bool IsKnownAlgorithm(std::string_view name) {
  return signing::ParseAlgorithm(name).has_value();
}

// One [[signing.keys]] entry. Roles and templates are already read: every
// principal must hold the signer role and every template must exist.
absl::Status ReadSigningKey(const Section& s, const Config& config, SigningKeyConfig& k) {
  KW_RETURN_IF_ERROR(s.CheckKeys(
      {"alias", "key", "pin_source", "certificate", "algorithms", "principals", "templates"}));
  KW_RETURN_IF_ERROR(s.ReadRequiredString("alias", k.alias));
  if (k.alias.size() > 64 || !std::all_of(k.alias.begin(), k.alias.end(), IsAliasChar)) {
    return s.Invalid("alias",
                     StrCat("\"", k.alias, "\" must be 1 to 64 letters, digits, '.', '_' or '-'"));
  }
  KW_RETURN_IF_ERROR(s.ReadRequiredString("key", k.key));
  KW_RETURN_IF_ERROR(CheckUri(s, "key", k.key, /*needs_object=*/true));
  KW_RETURN_IF_ERROR(s.ReadString("pin_source", k.pin_source));
  if (s.Has("pin_source")) {
    if (k.pin_source.empty()) return s.Invalid("pin_source", "must not be empty");
    KW_RETURN_IF_ERROR(CheckDaemonPinSource(s, "pin_source", k.pin_source));
  }
  KW_RETURN_IF_ERROR(s.ReadString("certificate", k.certificate));
  if (s.Has("certificate") && k.certificate.empty()) {
    return s.Invalid("certificate", "must not be empty");
  }
  k.certificate = s.ctx().ResolvePath(k.certificate);

  KW_RETURN_IF_ERROR(
      s.ReadStringSet("algorithms", {}, IsKnownAlgorithm, signing::AlgorithmNames(), k.algorithms));
  if (!s.Has("algorithms")) return s.Missing("algorithms");
  if (k.algorithms.empty()) return s.Invalid("algorithms", "needs at least one algorithm");
  const bool any_ec = std::any_of(k.algorithms.begin(), k.algorithms.end(), [](const auto& a) {
    return signing::Info(*signing::ParseAlgorithm(a)).scheme == signing::Scheme::kEcdsa;
  });
  const bool any_rsa = std::any_of(k.algorithms.begin(), k.algorithms.end(), [](const auto& a) {
    return signing::Info(*signing::ParseAlgorithm(a)).scheme != signing::Scheme::kEcdsa;
  });
  if (any_ec && any_rsa) {
    return s.Invalid("algorithms",
                     "mixes RSA and ECDSA algorithms; a key is either RSA or EC (configure two "
                     "aliases for two keys)");
  }

  std::vector<uint32_t> lines;
  KW_RETURN_IF_ERROR(s.ReadStrings("principals", k.principals, &lines));
  if (!s.Has("principals")) return s.Missing("principals");
  if (k.principals.empty()) return s.Invalid("principals", "needs at least one principal");
  for (size_t i = 0; i < k.principals.size(); ++i) {
    const std::string& p = k.principals[i];
    if (p.empty()) return s.InvalidAt(lines[i], "principals", "empty principal");
    if (std::find(k.principals.begin(), k.principals.begin() + static_cast<std::ptrdiff_t>(i), p) !=
        k.principals.begin() + static_cast<std::ptrdiff_t>(i)) {
      return s.InvalidAt(lines[i], "principals", StrCat("\"", p, "\" is listed twice"));
    }
    const std::vector<Role> held = config.RolesOf(p);
    if (std::find(held.begin(), held.end(), Role::kSigner) == held.end()) {
      return s.InvalidAt(lines[i], "principals",
                         StrCat("\"", p,
                                "\" does not hold the signer role (give it one in a [[role]] "
                                "entry)"));
    }
  }

  std::vector<std::string> names;
  KW_RETURN_IF_ERROR(s.ReadStrings("templates", names, &lines));
  for (size_t i = 0; i < names.size(); ++i) {
    const TemplateConfig* t = config.FindTemplate(names[i]);
    if (t == nullptr) {
      return s.InvalidAt(lines[i], "templates",
                         StrCat("\"", names[i], "\" is not the name or OID of a [[template]]"));
    }
    if (t->pend || t->archival == ArchivalPolicy::kRequired) {
      return s.InvalidAt(lines[i], "templates",
                         StrCat("template \"", t->name, "\" ",
                                t->pend ? "waits for a Certificate Manager (pend = true)"
                                        : "requires key archival",
                                "; delegated issuance cannot do that"));
    }
    if (std::find(k.templates.begin(), k.templates.end(), t->name) != k.templates.end()) {
      return s.InvalidAt(lines[i], "templates", StrCat("\"", t->name, "\" is listed twice"));
    }
    k.templates.push_back(t->name);
  }
  return absl::OkStatus();
}

absl::Status ReadSigning(const Section& s, Config& config) {
  KW_RETURN_IF_ERROR(s.CheckKeys({"audit_interval", "keys"}));
  KW_RETURN_IF_ERROR(s.ReadDuration("audit_interval", config.signing.audit_interval));
  std::vector<Section> keys;
  KW_RETURN_IF_ERROR(s.Tables("keys", keys));
  std::map<std::string, std::string> aliases;  // alias -> "signing.keys[i]"
  for (const Section& entry : keys) {
    SigningKeyConfig k;
    KW_RETURN_IF_ERROR(ReadSigningKey(entry, config, k));
    if (auto [it, inserted] = aliases.emplace(k.alias, entry.path()); !inserted) {
      return entry.Invalid("alias",
                           StrCat("\"", k.alias, "\" is already the alias of ", it->second));
    }
    config.signing.keys.push_back(std::move(k));
  }
  return absl::OkStatus();
}

absl::Status ReadRoot(const Context& ctx, const toml::table& root, Config& config) {
  Section top(ctx, &root, "");
  KW_RETURN_IF_ERROR(
      top.CheckKeys({"ca", "hsm", "exchange", "database", "server", "crl", "kra", "flags", "role",
                     "template", "signing", "audit", "account", "log", "metrics", "publication"}));

  // Sections in the order of the example file, so the first error reported
  // is usually the first one in the file.
  struct {
    const char* name;
    absl::Status (*read)(const Section&, Config&);
  } const kSections[] = {
      {"ca", [](const Section& s, Config& c) { return ReadCa(s, c.ca); }},
      {"hsm", [](const Section& s, Config& c) { return ReadHsm(s, c.hsm); }},
      {"exchange", [](const Section& s, Config& c) { return ReadExchange(s, c.exchange); }},
      {"database", [](const Section& s, Config& c) { return ReadDatabase(s, c.database); }},
      {"server", [](const Section& s, Config& c) { return ReadServer(s, c.server); }},
      {"crl", [](const Section& s, Config& c) { return ReadCrl(s, c.crl); }},
      {"kra", [](const Section& s, Config& c) { return ReadKra(s, c.kra); }},
      {"flags", [](const Section& s, Config& c) { return ReadFlags(s, c.flags); }},
      {"audit", [](const Section& s, Config& c) { return ReadAudit(s, c.audit); }},
      {"log", [](const Section& s, Config& c) { return ReadLog(s, c.log); }},
      {"metrics", [](const Section& s, Config& c) { return ReadMetrics(s, c.metrics); }},
      {"publication",
       [](const Section& s, Config& c) { return ReadPublication(s, c.publication); }},
  };
  for (const auto& section : kSections) {
    absl::StatusOr<Section> s = top.Table(section.name);
    if (!s.ok()) return s.status();
    KW_RETURN_IF_ERROR(section.read(*s, config));
  }

  std::vector<Section> roles;
  KW_RETURN_IF_ERROR(top.Tables("role", roles));
  std::map<std::string, std::string> bound;  // issuer + principal, or pin -> "role[i]"
  for (const Section& s : roles) {
    RoleBinding binding;
    KW_RETURN_IF_ERROR(ReadRole(s, config.server, binding));
    const bool pinned = !binding.certificate_sha256.empty();
    const std::string key = pinned ? StrCat("sha256:", binding.certificate_sha256)
                                   : StrCat(binding.issuer, "\n", binding.principal);
    if (auto [it, inserted] = bound.emplace(key, s.path()); !inserted) {
      return pinned ? s.Invalid("certificate_sha256",
                                StrCat("this certificate is already bound in ", it->second,
                                       " (list all its roles there)"))
                    : s.Invalid("principal", StrCat("\"", binding.principal, "\" from ",
                                                    binding.issuer, " is already bound in ",
                                                    it->second, " (list all its roles there)"));
    }
    config.roles.push_back(std::move(binding));
  }

  std::vector<Section> templates;
  KW_RETURN_IF_ERROR(top.Tables("template", templates));
  std::map<std::string, std::string> names;  // lower-case name -> "template[i]"
  std::map<std::string, std::string> oids;   // oid -> "template[i]"
  for (const Section& s : templates) {
    TemplateConfig t;
    KW_RETURN_IF_ERROR(ReadTemplate(s, t));
    if (auto [it, inserted] = names.emplace(AsciiLower(t.name), s.path()); !inserted) {
      return s.Invalid("name", StrCat("\"", t.name, "\" is already the name of ", it->second,
                                      " (names are compared case-insensitively)"));
    }
    if (!t.oid.empty()) {
      if (auto [it, inserted] = oids.emplace(t.oid, s.path()); !inserted) {
        return s.Invalid("oid", StrCat("\"", t.oid, "\" is already the OID of ", it->second));
      }
    }
    config.templates.push_back(std::move(t));
  }

  std::vector<Section> accounts;
  KW_RETURN_IF_ERROR(top.Tables("account", accounts));
  // Each name belongs to one account; names differing only in ASCII case
  // are refused too (matching is exact: such a pair could only confuse).
  std::map<std::string, std::string> account_names;  // "key\nlower-case value" -> "account[i]"
  for (const Section& s : accounts) {
    AccountConfig a;
    KW_RETURN_IF_ERROR(ReadAccount(s, a));
    for (auto [key, value] : {std::pair<const char*, const std::string*>{"principal", &a.principal},
                              {"upn", &a.upn},
                              {"logon_name", &a.logon_name},
                              {"email", &a.email}}) {
      if (value->empty()) continue;
      const bool exact = std::string_view(key) == "principal";
      auto [it, inserted] =
          account_names.emplace(StrCat(key, "\n", exact ? *value : AsciiLower(*value)), s.path());
      if (!inserted) {
        return s.Invalid(key, StrCat("\"", *value, "\" is already the ", key, " of ", it->second,
                                     exact ? "" : " (compared case-insensitively)"));
      }
    }
    config.accounts.push_back(std::move(a));
  }

  // Last: signing keys name principals and templates read above.
  absl::StatusOr<Section> signing = top.Table("signing");
  if (!signing.ok()) return signing.status();
  KW_RETURN_IF_ERROR(ReadSigning(*signing, config));
  return absl::OkStatus();
}

absl::Status FileError(const std::string& path, int err) {
  std::string message = StrCat("configuration file ", path, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::FailedPreconditionError(message);
  }
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kCaAdministrator:
      return "ca-administrator";
    case Role::kCertificateManager:
      return "certificate-manager";
    case Role::kBackupOperator:
      return "backup-operator";
    case Role::kAuditor:
      return "auditor";
    case Role::kEnrollee:
      return "enrollee";
    case Role::kSigner:
      return "signer";
  }
  return "unknown";
}

std::optional<Role> ParseRole(std::string_view name) {
  for (Role r : {Role::kCaAdministrator, Role::kCertificateManager, Role::kBackupOperator,
                 Role::kAuditor, Role::kEnrollee, Role::kSigner}) {
    if (name == RoleName(r)) return r;
  }
  return std::nullopt;
}

bool IsCimcRole(Role role) {
  switch (role) {
    case Role::kCaAdministrator:
    case Role::kCertificateManager:
    case Role::kBackupOperator:
    case Role::kAuditor:
      return true;
    case Role::kEnrollee:
    case Role::kSigner:
      return false;
  }
  return false;
}

const TemplateConfig* Config::FindTemplate(std::string_view name_or_oid) const {
  if (name_or_oid.empty()) return nullptr;
  std::string lower = AsciiLower(name_or_oid);
  for (const TemplateConfig& t : templates) {
    if (AsciiLower(t.name) == lower) return &t;
  }
  for (const TemplateConfig& t : templates) {
    if (!t.oid.empty() && t.oid == name_or_oid) return &t;
  }
  return nullptr;
}

std::string ConfersPower(const TemplateConfig& t) {
  auto has = [](const std::vector<std::string>& v, std::string_view x) {
    return std::find(v.begin(), v.end(), x) != v.end();
  };
  if (has(t.extended_key_usage, "1.3.6.1.4.1.311.21.6")) {
    return "issues Key Recovery Agent certificates (EKU 1.3.6.1.4.1.311.21.6)";
  }
  if (has(t.extended_key_usage, "1.3.6.1.4.1.311.21.5")) {
    return "issues CA exchange certificates (EKU 1.3.6.1.4.1.311.21.5)";
  }
  if (has(t.key_usage, "keyCertSign") || has(t.key_usage, "cRLSign")) {
    return "issues CA certificates (keyCertSign or cRLSign)";
  }
  if (t.subject == SubjectSource::kRequest &&
      (t.extended_key_usage.empty() || has(t.extended_key_usage, "clientAuth") ||
       has(t.extended_key_usage, "2.5.29.37.0"))) {
    return "takes the subject from the request on a certificate a TLS client can present, so it "
           "could name a configured principal";
  }
  return {};
}

const AccountConfig* Config::AccountByPrincipal(std::string_view principal) const {
  for (const AccountConfig& a : accounts) {
    if (a.principal == principal) return &a;
  }
  return nullptr;
}

const AccountConfig* Config::AccountByUpn(std::string_view upn) const {
  for (const AccountConfig& a : accounts) {
    if (!a.upn.empty() && a.upn == upn) return &a;
  }
  return nullptr;
}

const AccountConfig* Config::AccountByLogonName(std::string_view logon_name) const {
  for (const AccountConfig& a : accounts) {
    if (!a.logon_name.empty() && a.logon_name == logon_name) return &a;
  }
  return nullptr;
}

const AccountConfig* Config::AccountByEmail(std::string_view email) const {
  for (const AccountConfig& a : accounts) {
    if (!a.email.empty() && a.email == email) return &a;
  }
  return nullptr;
}

std::vector<Role> Config::RolesOf(std::string_view principal) const {
  constexpr std::array<Role, 6> kAll = {Role::kCaAdministrator, Role::kCertificateManager,
                                        Role::kBackupOperator,  Role::kAuditor,
                                        Role::kEnrollee,        Role::kSigner};
  std::array<bool, kAll.size()> held{};
  for (const RoleBinding& b : roles) {
    if (b.principal != principal) continue;
    for (Role r : b.roles) held[static_cast<size_t>(r)] = true;
  }
  std::vector<Role> out;
  for (size_t i = 0; i < kAll.size(); ++i) {
    if (held[i]) out.push_back(kAll[i]);
  }
  return out;
}

absl::StatusOr<std::chrono::seconds> ParseDuration(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(StrCat("duration \"", text, "\": ", why));
  };
  constexpr std::string_view kForm =
      "expected a positive whole number and one unit (s, m, h or d), e.g. \"90s\", \"15m\", "
      "\"12h\", \"7d\"";
  if (text.size() < 2) return bad(kForm);
  int64_t unit = 0;
  switch (text.back()) {
    case 's':
      unit = 1;
      break;
    case 'm':
      unit = 60;
      break;
    case 'h':
      unit = 3600;
      break;
    case 'd':
      unit = 86400;
      break;
    default:
      return bad(kForm);
  }
  std::string_view digits = text.substr(0, text.size() - 1);
  for (char c : digits) {
    if (c < '0' || c > '9') return bad(kForm);
  }
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (ec == std::errc::result_out_of_range ||
      (ec == std::errc() && n > static_cast<uint64_t>(kMaxDurationSeconds / unit))) {
    return bad("too long (at most 100 years)");
  }
  if (ec != std::errc() || end != digits.data() + digits.size()) return bad(kForm);
  if (n == 0) return bad("must be positive");
  return std::chrono::seconds(static_cast<int64_t>(n) * unit);
}

absl::StatusOr<Config> ParseConfig(std::string_view toml_text, const std::string& source_name,
                                   const std::string& base_dir) {
  absl::StatusOr<toml::table> parsed = strict_toml::Parse(toml_text, source_name);
  if (!parsed.ok()) return parsed.status();
  const toml::table& root = *parsed;
  Context ctx(source_name, base_dir);
  Config config;
  config.source = source_name;
  try {
    KW_RETURN_IF_ERROR(ReadRoot(ctx, root, config));
  } catch (const std::exception& e) {  // std::bad_alloc, std::filesystem errors
    return absl::InternalError(StrCat(source_name, ": ", e.what()));
  }
  return config;
}

absl::StatusOr<Config> LoadConfig(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return FileError(path, errno);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return FileError(path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::FailedPreconditionError(
        StrCat("configuration file ", path, ": not a regular file"));
  }
  constexpr size_t kMaxSize = 4 << 20;
  std::string text;
  std::array<char, 8192> buf;
  for (;;) {
    ssize_t n = read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      return FileError(path, err);
    }
    if (n == 0) break;
    text.append(buf.data(), static_cast<size_t>(n));
    if (text.size() > kMaxSize) {
      close(fd);
      return absl::InvalidArgumentError(StrCat("configuration file ", path, ": larger than 4 MiB"));
    }
  }
  close(fd);

  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  std::string base_dir = ec ? std::filesystem::path(path).parent_path().string()
                            : absolute.lexically_normal().parent_path().string();
  return ParseConfig(text, path, base_dir);
}

absl::StatusOr<hsm::SecretString> ReadDatabasePassword(const Config::Database& database) {
  const std::string& source = database.password;
  if (source.empty()) return hsm::SecretString();
  constexpr size_t kMaxPassword = 4096;
  hsm::SecretString password;
  if (source.starts_with("env:")) {
    const std::string name = source.substr(4);
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) {
      return absl::NotFoundError(
          StrCat("database.password: environment variable ", name, " is not set"));
    }
    password = hsm::SecretString(v);
  } else if (source.starts_with("file:")) {
    const std::string path = source.substr(5);
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    auto file_error = [&](int err) {
      std::string message = StrCat("database.password: file ", path, ": ", std::strerror(err));
      return err == ENOENT || err == ENOTDIR ? absl::NotFoundError(message)
             : err == EACCES || err == EPERM ? absl::PermissionDeniedError(message)
                                             : absl::FailedPreconditionError(message);
    };
    if (fd < 0) return file_error(errno);
    std::string buf(kMaxPassword + 1, '\0');
    size_t got = 0;
    for (;;) {
      ssize_t n = read(fd, buf.data() + got, buf.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int err = errno;
        close(fd);
        OPENSSL_cleanse(buf.data(), buf.size());
        return file_error(err);
      }
      if (n == 0 || (got += static_cast<size_t>(n)) == buf.size()) break;
    }
    close(fd);
    const bool too_long = got > kMaxPassword;
    size_t len = got;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) --len;
    if (!too_long) password = hsm::SecretString(std::string_view(buf.data(), len));
    OPENSSL_cleanse(buf.data(), buf.size());
    if (too_long) {
      return absl::InvalidArgumentError(
          StrCat("database.password: file ", path, ": longer than ", kMaxPassword, " bytes"));
    }
  } else {
    return absl::InvalidArgumentError("database.password: expected \"file:PATH\" or \"env:NAME\"");
  }
  if (password.empty()) {
    return absl::InvalidArgumentError(StrCat(
        "database.password: ", source.starts_with("env:") ? "environment variable " : "file ",
        source.substr(source.find(':') + 1), " is empty"));
  }
  return password;
}

absl::StatusOr<std::unique_ptr<Store>> OpenConfiguredStore(const Config::Database& database) {
  DatabaseOptions options;
  options.backend = database.backend;
  options.path = database.path;
  options.connection = database.connection;
  options.pool_size = database.pool_size;
  if (database.backend == "postgresql") {
    auto password = ReadDatabasePassword(database);
    if (!password.ok()) return password.status();
    options.password.assign(password->view());
  }
  return OpenStore(options);
}

}  // namespace keywarden::service
