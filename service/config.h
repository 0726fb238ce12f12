// keywarden.toml: the daemon's whole configuration, strictly parsed. An
// unknown table or key, a wrong type, or a value out of range is an error
// that names the file, the key and what was expected. Relative paths are
// taken relative to the configuration file's directory.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/secret.h"
#include "service/storage/store.h"

namespace keywarden::service {

enum class Role {
  kCaAdministrator,     // "ca-administrator"
  kCertificateManager,  // "certificate-manager"
  kBackupOperator,      // "backup-operator"
  kAuditor,             // "auditor"
  kEnrollee,            // "enrollee"
  kSigner,              // "signer"
};
const char* RoleName(Role role);
std::optional<Role> ParseRole(std::string_view name);
// The four Common Criteria CIMC roles that role separation keeps apart.
bool IsCimcRole(Role role);

enum class ArchivalPolicy { kNone, kAllowed, kRequired };  // "none", "allowed", "required"
enum class SubjectSource { kRequest, kPrincipal };         // "request", "principal"
// Where an issued certificate's subjectAltName comes from: nowhere, the
// requester's [[account]] (Windows "Build from this Active Directory
// information"), or the request (Windows "Supply in the request"; each
// name still checked, see CheckAltNamesNoPrincipal).
enum class SanSource { kNone, kDirectory, kRequest };  // "none", "directory", "request"

struct TemplateConfig {
  std::string name;  // required, unique
  std::string oid;   // optional, unique; dotted decimal
  int major_version = 100;
  int minor_version = 0;
  std::vector<std::string> key_usage;  // digitalSignature, nonRepudiation, keyEncipherment,
                                       // dataEncipherment, keyAgreement, keyCertSign, cRLSign
  std::vector<std::string> extended_key_usage;  // serverAuth, clientAuth, emailProtection,
                                                // codeSigning, OCSPSigning, timeStamping,
                                                // or a dotted OID
  std::chrono::seconds validity{std::chrono::hours(24 * 365)};
  // Where the subject comes from; with kRequest an empty request subject
  // still falls back to the principal (Windows autoenrollment sends none).
  SubjectSource subject = SubjectSource::kRequest;
  int min_key_bits = 2048;                       // RSA modulus / EC field size floor
  std::vector<std::string> key_types = {"rsa"};  // "rsa", "ec"
  bool pend = false;                             // wait for a Certificate Manager
  ArchivalPolicy archival = ArchivalPolicy::kNone;
  // Who may enrol (`enrollees`): role names and principals (RFC 4514
  // subjects). A template that confers power (see ConfersPower) has no
  // default; any other template defaults to the enrollee role.
  std::vector<Role> enrollee_roles;
  std::vector<std::string> enrollee_principals;
  // subjectAltName (`san`) and which names it holds (`san_names`: "upn",
  // "email", and with kRequest also "dns"). With kDirectory each listed name
  // is required: a requester whose account lacks it is denied
  // (CERTSRV_E_SUBJECT_UPN_REQUIRED / _EMAIL_REQUIRED); with kRequest a
  // requested name of another type is refused.
  SanSource san = SanSource::kNone;
  std::vector<std::string> san_names = {"upn", "email"};
  // Copy the request's S/MIME capabilities (1.2.840.113549.1.9.15).
  bool smime_capabilities = false;
};

// [[account]]: the directory. One person (or machine) and the names it is
// known by on Windows: the subject of its certificates (the principal it
// authenticates as), its UPN, its down-level logon name and its e-mail.
// getkey finds an account's archived keys by any of these names, exactly.
struct AccountConfig {
  std::string principal;  // RFC 4514 subject ("CN=alice,O=Example"), required, unique
  std::string upn;        // "alice@corp.example.com", unique
  std::string
      logon_name;     // down-level logon name: NETBIOS-DOMAIN, backslash, sAMAccountName; unique
  std::string email;  // "alice@example.com", unique
};

// Why a template's certificates make their holder powerful, or empty: a
// Key Recovery Agent or CA exchange EKU, a CA certificate (keyCertSign,
// cRLSign), or a subject taken from the request on a certificate that a
// TLS client could present (no EKU, clientAuth or anyExtendedKeyUsage), so
// it could name a configured principal. Such templates must list enrollees.
std::string ConfersPower(const TemplateConfig& t);

// [[signing.keys]]: a named key that other CA services (an issuing front
// end, an OCSP responder, a timestamp service) sign with over gRPC.
struct SigningKeyConfig {
  std::string alias;                    // required, unique; letters, digits, '.', '_', '-'
  std::string key;                      // PKCS#11 URI of the private key (required); any token
  std::string pin_source;               // file:PATH / env:NAME; for a token other than the CA token
  std::string certificate;              // optional PEM file: the key's certificate, then its chain
  std::vector<std::string> algorithms;  // >= 1 of service/signing/algorithm.h
  std::vector<std::string> principals;  // >= 1; each holds the signer role
  std::vector<std::string> templates;   // template names IssueCertificate may use
};

// A role belongs to a client certificate, never to a subject string alone:
// either its subject *and* the client CA it chains to, or its SHA-256.
struct RoleBinding {
  std::string principal;           // client certificate subject, RFC 4514 ("CN=alice,O=Example")
  std::string issuer;              // one of [server] client_ca (resolved path) the cert chains to
  std::string certificate_sha256;  // or: the pinned certificate (lower-case hex of its DER's hash)
  std::vector<Role> roles;
};

struct Config {
  std::string source;  // the file it came from (for messages)

  struct Ca {
    std::string name;         // required
    std::string certificate;  // PEM file of the CA certificate (required to serve)
    std::string chain;        // optional PEM file: issuers above the CA, leaf-most first
    // optional: the signed transcript of the key ceremony that made the CA
    // key; the KRA certificates it lists are recorded in the database.
    std::string ceremony_transcript;
  } ca;

  struct Hsm {
    std::string module;       // path or p11-kit name; may also be in the URIs
    std::string token;        // PKCS#11 URI of the CA token (required)
    std::string pin_source;   // file:PATH / env:NAME (required: a daemon cannot prompt)
    std::string signing_key;  // PKCS#11 URI of the CA signing key (required)
    int max_sessions = 16;    // 1..1024
  } hsm;

  struct Exchange {
    std::chrono::seconds validity{std::chrono::hours(24 * 7)};
    std::chrono::seconds overlap{std::chrono::hours(24)};  // must be < validity
    std::string key_algorithm = "rsa2048";                 // RSA only: rsa2048/3072/4096
  } exchange;

  struct Database {
    std::string backend = "sqlite";  // "sqlite" or "postgresql"
    std::string path;                // sqlite: database file (required for sqlite)
    std::string connection;          // postgresql: libpq connection string (no password in it)
    // postgresql: where the password is, "file:PATH" (relative to the
    // configuration file) or "env:NAME"; never the password itself. Empty:
    // none (peer or certificate authentication, or a passfile).
    std::string password;
    int pool_size = 8;  // postgresql: at most this many connections (1..256)
    // postgresql: a request still marked in process after this long was
    // interrupted (its replica died) and is failed by the others; younger
    // ones may be in process on another replica. Longer than any request
    // takes. (SQLite has one daemon: it fails them all at start.)
    std::chrono::seconds in_process_timeout{std::chrono::minutes(10)};
  } database;

  struct Server {
    std::string listen = "127.0.0.1:8443";
    std::string tls_certificate;         // PEM (required)
    std::string tls_key;                 // PEM (required)
    std::vector<std::string> client_ca;  // PEM files of CAs whose client certs are accepted (>= 1)
    // Revocation of client certificates from CAs other than this one: CRL
    // files (PEM or DER), reloaded on SIGHUP and when they change. This CA's
    // own revocations are applied live from its database.
    std::vector<std::string> client_crls;
    // client_ca files whose certificates are accepted when no current CRL of
    // theirs is loaded (revocation is then not checked for them).
    std::vector<std::string> client_crl_optional;
    // 0: four per usable core (pki/cores.h) for the callback workers, one
    // per usable core elsewhere.
    int threads = 0;
  } server;

  struct Crl {
    std::chrono::seconds validity{std::chrono::hours(24 * 7)};  // nextUpdate - thisUpdate
  } crl;

  struct Kra {
    std::vector<std::string> certificates;  // PEM files or SHA-1 thumbprints of issued certs
    int count = 1;                          // N per archival; 1..len(certificates)
    // k of those N needed to recover (docs/THRESHOLD.md); 1..count. 1: any
    // one KRA recovers (Windows-format archives); k >= 2: threshold archives.
    int threshold = 1;
    // Revocation and chain material for KRA certificates issued by other
    // CAs (this CA's own database answers for the KRAs it issued): CRL files
    // (PEM or DER) and issuer certificates (PEM). A foreign KRA without a
    // current CRL from its issuer is unusable ("revocation offline").
    std::vector<std::string> crls;
    std::vector<std::string> trust;
  } kra;

  struct Flags {
    bool role_separation = false;                    // RoleSeparationEnabled
    bool enable_foreign = false;                     // KRAF_ENABLEFOREIGN
    bool save_bad_request_key = false;               // KRAF_SAVEBADREQUESTKEY
    std::string archival_scheme = "des3-rsa-pkcs1";  // or "aes256-rsa-oaep"
  } flags;

  std::vector<RoleBinding> roles;
  std::vector<TemplateConfig> templates;
  std::vector<AccountConfig> accounts;

  struct Signing {
    // How often per-principal, per-key signature counts go to the audit log.
    std::chrono::seconds audit_interval{std::chrono::minutes(1)};
    std::vector<SigningKeyConfig> keys;
  } signing;

  struct Audit {
    // How often the head of the audit chain is signed (a checkpoint) when
    // records were appended since the last one; also at every clean stop.
    std::chrono::seconds checkpoint_interval{std::chrono::minutes(5)};
    // Not read from the file: keywardend --accept-broken-audit (start on an
    // audit log that does not verify, recording that it was told to).
    bool accept_broken = false;
  } audit;

  struct Log {
    // The operational log on stderr (not the audit log): "text" (one
    // key=value line per event), "json" (one JSON object per line) or
    // "journal" (systemd's journal, natively, with KEYWARDEN_* fields; also
    // chosen by itself when stderr is the journal's stream).
    std::string format = "text";
  } log;

  struct Metrics {
    // The plain-HTTP listener for /metrics, /healthz and /readyz
    // ("HOST:PORT"; port 0 picks a free one, logged). Empty: no listener.
    std::string listen;
  } metrics;

  // [publication]: where relying parties find this CA's CRL and
  // certificate (RFC 5280). Every certificate the CA issues (and its
  // exchange certificates) carries crl_urls as cRLDistributionPoints and
  // ca_issuers_urls as authorityInfoAccess caIssuers; with `listen` the
  // daemon serves both itself over plain HTTP at the URLs' paths
  // (service/server/publication_endpoint.h). URLs: service/publication_url.h.
  struct Publication {
    std::string listen;  // "HOST:PORT"; empty: the daemon serves nothing (copied elsewhere)
    std::vector<std::string> crl_urls;         // <= 8, http:// only
    std::vector<std::string> ca_issuers_urls;  // <= 8, http:// only
  } publication;

  // Lookup helpers.
  const TemplateConfig* FindTemplate(std::string_view name_or_oid) const;
  // Every role bound to this subject, through any issuer: what some
  // certificate with this subject could be granted. (Which roles a given
  // client certificate holds is decided by service/trust/client_trust.h.)
  std::vector<Role> RolesOf(std::string_view principal) const;
  // The [[account]] with exactly this principal / UPN / logon name / e-mail
  // (byte for byte: no case folding, no partial match); null when none.
  const AccountConfig* AccountByPrincipal(std::string_view principal) const;
  const AccountConfig* AccountByUpn(std::string_view upn) const;
  const AccountConfig* AccountByLogonName(std::string_view logon_name) const;
  const AccountConfig* AccountByEmail(std::string_view email) const;
};

// Durations: "90s", "15m", "12h", "7d" (one unit, positive integer).
absl::StatusOr<std::chrono::seconds> ParseDuration(std::string_view text);

// `source_name` is used in messages; `base_dir` resolves relative paths.
absl::StatusOr<Config> ParseConfig(std::string_view toml_text, const std::string& source_name,
                                   const std::string& base_dir);
absl::StatusOr<Config> LoadConfig(const std::string& path);

// Reads the database password from database.password ("file:PATH" or
// "env:NAME"; a file's trailing newline dropped). Empty when none is
// configured. The buffers it went through are wiped; the result wipes
// itself when destroyed.
absl::StatusOr<hsm::SecretString> ReadDatabasePassword(const Config::Database& database);

// Opens the CA database the configuration names (OpenStore in
// service/storage/store.h), the password read from its source and wiped
// after connecting.
absl::StatusOr<std::unique_ptr<Store>> OpenConfiguredStore(const Config::Database& database);

}  // namespace keywarden::service
