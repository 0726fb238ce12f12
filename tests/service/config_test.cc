// keywarden.toml parsing: pure parsing, no token needed.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "service/config.h"
#include "tests/test_util.h"

namespace keywarden::testing {
namespace {

using service::ArchivalPolicy;
using service::Config;
using service::ParseConfig;
using service::ParseDuration;
using service::Role;
using service::SanSource;
using service::SubjectSource;
using service::TemplateConfig;
using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr hours kDay(24);

// The smallest valid configuration. Line numbers matter to the tests:
// [hsm] is line 4, [database] line 9, [server] line 12, client_ca line 15.
constexpr std::string_view kMinimal = R"([ca]
name = "Test CA"

[hsm]
token = "pkcs11:token=keywarden-ca"
pin_source = "env:KEYWARDEN_CA_PIN"
signing_key = "pkcs11:token=keywarden-ca;object=ca-key"

[database]
path = "keywarden.db"

[server]
tls_certificate = "tls.pem"
tls_key = "tls.key"
client_ca = ["clients.pem"]
)";

absl::StatusOr<Config> Parse(std::string_view text, const std::string& base_dir = "/etc/kw") {
  return ParseConfig(text, "keywarden.toml", base_dir);
}

// kMinimal with `from` (which must occur) replaced by `to`.
std::string Minimal(std::string_view from, std::string_view to) {
  std::string text(kMinimal);
  size_t at = text.find(from);
  if (at == std::string::npos) {
    ADD_FAILURE() << "test bug: \"" << from << "\" is not in the minimal config";
    return text;
  }
  text.replace(at, from.size(), to);
  return text;
}

// kMinimal followed by `extra` (after a blank line, so `extra` starts on line 17).
std::string MinimalPlus(std::string_view extra) {
  return std::string(kMinimal) + "\n" + std::string(extra);
}

// The message of a parse that must fail with INVALID_ARGUMENT.
std::string ErrorOf(std::string_view text) {
  absl::StatusOr<Config> config = Parse(text);
  if (config.ok()) return "<parsed without error>";
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
  return std::string(config.status().message());
}

std::string ReadText(const std::string& path) {
  std::vector<uint8_t> bytes = ReadFile(path);
  return std::string(bytes.begin(), bytes.end());
}

// --- The example file --------------------------------------------------------

TEST(ConfigExampleTest, ParsesWithTheDocumentedValues) {
  std::string text = ReadText(KEYWARDEN_EXAMPLE_CONFIG);
  ASSERT_FALSE(text.empty()) << KEYWARDEN_EXAMPLE_CONFIG;
  absl::StatusOr<Config> c = ParseConfig(text, "keywarden.example.toml", "/etc/keywarden");
  ASSERT_TRUE(c.ok()) << c.status();

  EXPECT_EQ(c->source, "keywarden.example.toml");
  EXPECT_EQ(c->ca.name, "Example Issuing CA");
  EXPECT_EQ(c->ca.certificate, "/etc/keywarden/ca.pem");
  EXPECT_EQ(c->ca.chain, "/etc/keywarden/chain.pem");

  EXPECT_EQ(c->hsm.module, "/usr/lib/softhsm/libsofthsm2.so");
  EXPECT_EQ(c->hsm.token, "pkcs11:token=keywarden-ca");
  EXPECT_EQ(c->hsm.pin_source, "file:/run/credentials/keywardend.service/ca-pin");
  EXPECT_EQ(c->hsm.signing_key, "pkcs11:token=keywarden-ca;object=ca-key;type=private");
  EXPECT_EQ(c->hsm.max_sessions, 16);

  EXPECT_EQ(c->exchange.validity, 7 * kDay);
  EXPECT_EQ(c->exchange.overlap, kDay);
  EXPECT_EQ(c->exchange.key_algorithm, "rsa2048");

  EXPECT_EQ(c->database.backend, "sqlite");
  EXPECT_EQ(c->database.path, "/var/lib/keywarden/keywarden.db");
  EXPECT_EQ(c->database.connection, "");

  EXPECT_EQ(c->server.listen, "0.0.0.0:8443");
  EXPECT_EQ(c->server.tls_certificate, "/etc/keywarden/tls/server.pem");
  EXPECT_EQ(c->server.tls_key, "/etc/keywarden/tls/server.key");
  EXPECT_EQ(c->server.client_ca,
            (std::vector<std::string>{"/etc/keywarden/ca.pem", "/etc/keywarden/partner-ca.pem"}));
  EXPECT_EQ(c->server.threads, 0);

  EXPECT_EQ(c->crl.validity, 7 * kDay);
  EXPECT_EQ(c->log.format, "text");
  EXPECT_EQ(c->metrics.listen, "127.0.0.1:9464");
  EXPECT_EQ(c->publication.listen, "0.0.0.0:8080");
  EXPECT_EQ(c->publication.crl_urls,
            std::vector<std::string>{"http://pki.example.com/keywarden/ca.crl"});
  EXPECT_EQ(c->publication.ca_issuers_urls,
            std::vector<std::string>{"http://pki.example.com/keywarden/ca.crt"});

  EXPECT_EQ(c->kra.certificates,
            (std::vector<std::string>{"/etc/keywarden/kra/alice-kra.pem",
                                      "/etc/keywarden/kra/bob-kra.pem",
                                      "3f2a5c7e9b1d4f6a8c0e2b4d6f8a0c2e4b6d8f0a"}));
  EXPECT_EQ(c->kra.count, 2);

  EXPECT_TRUE(c->flags.role_separation);
  EXPECT_FALSE(c->flags.enable_foreign);
  EXPECT_FALSE(c->flags.save_bad_request_key);
  EXPECT_EQ(c->flags.archival_scheme, "des3-rsa-pkcs1");

  ASSERT_EQ(c->roles.size(), 7u);
  EXPECT_EQ(c->RolesOf("CN=Alice Admin,O=Example"),
            (std::vector<Role>{Role::kCaAdministrator, Role::kEnrollee}));
  EXPECT_EQ(c->roles[0].issuer, "/etc/keywarden/ca.pem");
  EXPECT_EQ(c->roles[2].certificate_sha256,
            "5d0f2c417e9ab3c8146ed2903ba75ce108f46b2d93c57a1e4fb0d628e3910c7b");
  EXPECT_EQ(c->roles[4].issuer, "/etc/keywarden/partner-ca.pem");
  EXPECT_EQ(c->server.client_crls, std::vector<std::string>{"/etc/keywarden/partner-ca.crl"});
  EXPECT_EQ(c->RolesOf("CN=Bob Officer,O=Example"), std::vector<Role>{Role::kCertificateManager});
  EXPECT_EQ(c->RolesOf("CN=Backup Service,O=Example"), std::vector<Role>{Role::kBackupOperator});
  EXPECT_EQ(c->RolesOf("CN=Carol Auditor,O=Example"), std::vector<Role>{Role::kAuditor});
  EXPECT_EQ(c->RolesOf("CN=Enrollment Gateway,O=Example"), std::vector<Role>{Role::kEnrollee});
  EXPECT_EQ(c->RolesOf("CN=Build Service,O=Example"),
            (std::vector<Role>{Role::kEnrollee, Role::kSigner}));

  ASSERT_EQ(c->templates.size(), 4u);
  const TemplateConfig& user = c->templates[0];
  EXPECT_EQ(user.name, "User");
  EXPECT_EQ(user.oid, "1.3.6.1.4.1.311.21.8.1.1");
  EXPECT_EQ(user.major_version, 100);
  EXPECT_EQ(user.minor_version, 0);
  EXPECT_EQ(user.key_usage, (std::vector<std::string>{"digitalSignature", "keyEncipherment"}));
  EXPECT_EQ(user.extended_key_usage, (std::vector<std::string>{"clientAuth", "emailProtection"}));
  EXPECT_EQ(user.validity, 365 * kDay);
  EXPECT_EQ(user.subject, SubjectSource::kRequest);
  EXPECT_EQ(user.min_key_bits, 2048);
  EXPECT_EQ(user.key_types, std::vector<std::string>{"rsa"});
  EXPECT_FALSE(user.pend);
  EXPECT_EQ(user.archival, ArchivalPolicy::kAllowed);

  EXPECT_EQ(user.san, SanSource::kRequest);
  EXPECT_EQ(user.san_names, (std::vector<std::string>{"upn", "email"}));
  EXPECT_FALSE(user.smime_capabilities);

  const TemplateConfig& archival = c->templates[1];
  EXPECT_EQ(archival.name, "UserArchival");
  EXPECT_EQ(archival.subject, SubjectSource::kPrincipal);
  EXPECT_EQ(archival.archival, ArchivalPolicy::kRequired);
  EXPECT_EQ(archival.minor_version, 1);
  EXPECT_EQ(archival.san, SanSource::kDirectory);
  EXPECT_EQ(archival.san_names, (std::vector<std::string>{"upn", "email"}));
  EXPECT_TRUE(archival.smime_capabilities);

  // The directory.
  ASSERT_EQ(c->accounts.size(), 1u);
  EXPECT_EQ(c->accounts[0].principal, "CN=Alice Example,O=Example");
  EXPECT_EQ(c->accounts[0].upn, "alice@corp.example.com");
  EXPECT_EQ(c->accounts[0].logon_name, "CORP\\alice");
  EXPECT_EQ(c->accounts[0].email, "alice@example.com");
  EXPECT_EQ(c->AccountByLogonName("CORP\\alice"), &c->accounts[0]);
  EXPECT_EQ(c->AccountByUpn("alice@corp.example.com"), &c->accounts[0]);
  EXPECT_EQ(c->AccountByEmail("alice@example.com"), &c->accounts[0]);
  EXPECT_EQ(c->AccountByPrincipal("CN=Alice Example,O=Example"), &c->accounts[0]);

  const TemplateConfig& web = c->templates[2];
  EXPECT_EQ(web.name, "WebServer");
  EXPECT_EQ(web.extended_key_usage, std::vector<std::string>{"serverAuth"});
  EXPECT_FALSE(web.pend);
  EXPECT_EQ(web.validity, 90 * kDay);
  EXPECT_EQ(web.archival, ArchivalPolicy::kNone);

  const TemplateConfig& kra = c->templates[3];
  EXPECT_EQ(kra.name, "KeyRecoveryAgent");
  EXPECT_EQ(kra.extended_key_usage, std::vector<std::string>{"1.3.6.1.4.1.311.21.6"});
  EXPECT_EQ(kra.key_usage, std::vector<std::string>{"keyEncipherment"});
  EXPECT_TRUE(kra.pend);
  EXPECT_EQ(kra.archival, ArchivalPolicy::kNone);
  // Powerful templates name their enrollees; the others default to the role.
  EXPECT_EQ(kra.enrollee_principals, std::vector<std::string>{"CN=Key Recovery Officer,O=Example"});
  EXPECT_TRUE(kra.enrollee_roles.empty());
  EXPECT_EQ(user.enrollee_principals, (std::vector<std::string>{"CN=Enrollment Gateway,O=Example",
                                                                "CN=Alice Admin,O=Example"}));
  EXPECT_EQ(web.enrollee_roles, std::vector<Role>{Role::kEnrollee});
}

TEST(ConfigExampleTest, LoadsFromDiskWithPathsRelativeToItsDirectory) {
  absl::StatusOr<Config> c = service::LoadConfig(KEYWARDEN_EXAMPLE_CONFIG);
  ASSERT_TRUE(c.ok()) << c.status();
  std::string dir(KEYWARDEN_EXAMPLE_CONFIG);
  dir.resize(dir.rfind('/'));
  EXPECT_EQ(c->source, KEYWARDEN_EXAMPLE_CONFIG);
  EXPECT_EQ(c->ca.certificate, dir + "/ca.pem");
  EXPECT_EQ(c->server.tls_key, dir + "/tls/server.key");
}

// --- Defaults ----------------------------------------------------------------

TEST(ConfigTest, MinimalConfigGetsTheDocumentedDefaults) {
  absl::StatusOr<Config> c = Parse(kMinimal);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ca.certificate, "");
  EXPECT_EQ(c->ca.chain, "");
  EXPECT_EQ(c->hsm.module, "");
  EXPECT_EQ(c->hsm.max_sessions, 16);
  EXPECT_EQ(c->exchange.validity, 7 * kDay);
  EXPECT_EQ(c->exchange.overlap, kDay);
  EXPECT_EQ(c->exchange.key_algorithm, "rsa2048");
  EXPECT_EQ(c->database.backend, "sqlite");
  EXPECT_EQ(c->database.connection, "");
  EXPECT_EQ(c->server.listen, "127.0.0.1:8443");
  EXPECT_EQ(c->server.threads, 0);
  EXPECT_EQ(c->crl.validity, 7 * kDay);
  EXPECT_TRUE(c->kra.certificates.empty());
  EXPECT_EQ(c->kra.count, 1);
  EXPECT_FALSE(c->flags.role_separation);
  EXPECT_FALSE(c->flags.enable_foreign);
  EXPECT_FALSE(c->flags.save_bad_request_key);
  EXPECT_EQ(c->flags.archival_scheme, "des3-rsa-pkcs1");
  EXPECT_TRUE(c->roles.empty());
  EXPECT_TRUE(c->templates.empty());
  EXPECT_EQ(c->log.format, "text");
  EXPECT_EQ(c->metrics.listen, "");  // no metrics listener unless asked for
  // No URLs in certificates and no publication listener unless asked for.
  EXPECT_TRUE(c->publication.crl_urls.empty());
  EXPECT_TRUE(c->publication.ca_issuers_urls.empty());
  EXPECT_EQ(c->publication.listen, "");
}

TEST(ConfigTest, LogFormatAndMetricsListenAreRead) {
  absl::StatusOr<Config> c =
      Parse(MinimalPlus("[log]\nformat = \"json\"\n[metrics]\nlisten = \"[::1]:0\"\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->log.format, "json");
  EXPECT_EQ(c->metrics.listen, "[::1]:0");
  auto journal = Parse(MinimalPlus("[log]\nformat = \"journal\"\n"));
  ASSERT_TRUE(journal.ok()) << journal.status();
  EXPECT_EQ(journal->log.format, "journal");
}

TEST(ConfigStrictTest, LogFormatMustBeTextJsonOrJournal) {
  EXPECT_EQ(ErrorOf(MinimalPlus("[log]\nformat = \"xml\"\n")),
            "keywarden.toml:18: key \"log.format\": \"xml\" is not one of: text, json, journal");
  EXPECT_THAT(ErrorOf(MinimalPlus("[log]\nlevel = \"debug\"\n")),
              StartsWith("keywarden.toml:18: unknown key \"log.level\" (expected one of: format)"));
}

TEST(ConfigStrictTest, MetricsListenMustBeHostAndPort) {
  EXPECT_EQ(ErrorOf(MinimalPlus("[metrics]\nlisten = \"9464\"\n")),
            "keywarden.toml:18: key \"metrics.listen\": \"9464\" is not HOST:PORT (e.g. "
            "\"127.0.0.1:9464\")");
  EXPECT_EQ(ErrorOf(MinimalPlus("[metrics]\nlisten = \"127.0.0.1:70000\"\n")),
            "keywarden.toml:18: key \"metrics.listen\": the port \"70000\" is not a number "
            "from 0 to 65535");
  EXPECT_EQ(ErrorOf(MinimalPlus("[metrics]\nlisten = \"127.0.0.1:http\"\n")),
            "keywarden.toml:18: key \"metrics.listen\": the port \"http\" is not a number "
            "from 0 to 65535");
}

TEST(ConfigTest, PublicationUrlsAndListenAreRead) {
  absl::StatusOr<Config> c = Parse(MinimalPlus(
      "[publication]\nlisten = \"[::1]:0\"\ncrl_urls = [\"http://pki.example.com/a%20b.crl\", "
      "\"http://10.0.0.1:8080/ca.crl\", \"http://[2001:db8::1]/ca.crl\"]\n"
      "ca_issuers_urls = [\"http://pki.example.com/x/ca.crt\"]\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->publication.listen, "[::1]:0");
  EXPECT_EQ(c->publication.crl_urls, (std::vector<std::string>{"http://pki.example.com/a%20b.crl",
                                                               "http://10.0.0.1:8080/ca.crl",
                                                               "http://[2001:db8::1]/ca.crl"}));
  EXPECT_EQ(c->publication.ca_issuers_urls,
            std::vector<std::string>{"http://pki.example.com/x/ca.crt"});
  // URLs without a listener: in certificates, served by someone else.
  c = Parse(MinimalPlus("[publication]\ncrl_urls = [\"http://pki.example.com/ca.crl\"]\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->publication.listen, "");
}

TEST(ConfigStrictTest, PublicationUrlsAreHttpUrlsOfFilesEachOnce) {
  auto crl = [](const std::string& url) {
    return ErrorOf(MinimalPlus("[publication]\ncrl_urls = [\"" + url + "\"]\n"));
  };
  const std::string at = "keywarden.toml:18: key \"publication.crl_urls\": ";
  EXPECT_THAT(crl("https://pki.example.com/ca.crl"),
              StartsWith(at + "\"https://pki.example.com/ca.crl\" uses https"));
  EXPECT_THAT(crl("ldap:///CN=ca,CN=CDP?certificateRevocationList"),
              StartsWith(at + "\"ldap:///CN=ca,CN=CDP?certificateRevocationList\" is not an "
                              "http:// URL"));
  EXPECT_EQ(crl("http://pki.example.com"),
            at + "\"http://pki.example.com\" has no path (e.g. http://pki.example.com/ca.crl)");
  EXPECT_EQ(crl("http://pki.example.com/"),
            at + "\"http://pki.example.com/\" names a directory, not a file (its path ends with "
                 "\"/\")");
  EXPECT_EQ(crl("http://pki.example.com/ca.crl?v=1"),
            at + "\"http://pki.example.com/ca.crl?v=1\" has a query (\"?\"): name a file");
  EXPECT_EQ(crl("http://pki.example.com/ca.crl#x"),
            at + "\"http://pki.example.com/ca.crl#x\" has a fragment (\"#\")");
  EXPECT_EQ(crl("http://pki.example.com/../ca.crl"),
            at + "\"http://pki.example.com/../ca.crl\" has a \".\" or \"..\" path segment");
  EXPECT_EQ(crl("http://pki.example.com//ca.crl"),
            at + "\"http://pki.example.com//ca.crl\" has an empty path segment (\"//\")");
  EXPECT_EQ(crl("http://pki.example.com/ca crl"),
            at + "\"http://pki.example.com/ca crl\" holds a space, a control or a non-ASCII "
                 "character (percent-encode it)");
  EXPECT_EQ(crl("http://pki.example.com/ca%2.crl"),
            at + "\"http://pki.example.com/ca%2.crl\" has a \"%\" not followed by two "
                 "hexadecimal digits");
  EXPECT_EQ(crl("http://pki.example.com/<ca>.crl"),
            at + "\"http://pki.example.com/<ca>.crl\" has the character '<' in its path "
                 "(percent-encode it)");
  EXPECT_EQ(crl("http://pki.example.com:0/ca.crl"),
            at + "\"http://pki.example.com:0/ca.crl\" has a port that is not a number from 1 to "
                 "65535");
  EXPECT_EQ(crl("http://pki.example.com:80x/ca.crl"),
            at + "\"http://pki.example.com:80x/ca.crl\" has a port that is not a number from 1 "
                 "to 65535");
  EXPECT_EQ(crl("http://user@pki.example.com/ca.crl"),
            at + "\"http://user@pki.example.com/ca.crl\" holds user information (\"@\")");
  EXPECT_EQ(crl("http:///ca.crl"), at + "\"http:///ca.crl\" has no host");
  EXPECT_EQ(crl("http://pki_example.com/ca.crl"),
            at + "\"http://pki_example.com/ca.crl\" has a host with the character '_'");
  EXPECT_THAT(crl("http://pki.example.com/" + std::string(1100, 'a')),
              HasSubstr("characters long; the limit is 1024"));

  // Each URL once; one path, one document; at most 8; a listener serves something.
  EXPECT_EQ(ErrorOf(MinimalPlus("[publication]\ncrl_urls = [\"http://a.example/ca.crl\",\n"
                                "  \"http://a.example/ca.crl\"]\n")),
            "keywarden.toml:19: key \"publication.crl_urls\": \"http://a.example/ca.crl\" is "
            "listed twice");
  EXPECT_EQ(ErrorOf(MinimalPlus("[publication]\ncrl_urls = [\"http://a.example/ca\"]\n"
                                "ca_issuers_urls = [\"http://b.example/ca\"]\n")),
            "keywarden.toml:19: key \"publication.ca_issuers_urls\": the path \"/ca\" is also in "
            "publication.crl_urls; the CRL and the CA certificate need paths of their own");
  std::string nine;
  for (int i = 0; i < 9; ++i) nine += StrCat(i ? ", " : "", "\"http://a.example/", i, ".crl\"");
  EXPECT_EQ(ErrorOf(MinimalPlus("[publication]\ncrl_urls = [" + nine + "]\n")),
            "keywarden.toml:18: key \"publication.crl_urls\": lists 9 URLs; the limit is 8");
  EXPECT_EQ(ErrorOf(MinimalPlus("[publication]\nlisten = \"0.0.0.0:8080\"\n")),
            "keywarden.toml:18: key \"publication.listen\": is set but neither crl_urls nor "
            "ca_issuers_urls is: the listener would serve nothing");
  EXPECT_EQ(ErrorOf(MinimalPlus("[publication]\nlisten = \"8080\"\n")),
            "keywarden.toml:18: key \"publication.listen\": \"8080\" is not HOST:PORT (e.g. "
            "\"0.0.0.0:8080\")");
  EXPECT_THAT(ErrorOf(MinimalPlus("[publication]\nocsp_urls = []\n")),
              StartsWith("keywarden.toml:18: unknown key \"publication.ocsp_urls\" (expected one "
                         "of: listen, crl_urls, ca_issuers_urls)"));
  EXPECT_EQ(ErrorOf(MinimalPlus("[publication]\ncrl_urls = \"http://a.example/ca.crl\"\n")),
            "keywarden.toml:18: key \"publication.crl_urls\": expected an array of strings, got "
            "a string");
}

TEST(ConfigTest, TemplateWithOnlyANameAndItsEnrolleesGetsTheDocumentedDefaults) {
  absl::StatusOr<Config> c = Parse(
      MinimalPlus("[[template]]\nname = \"Plain\"\nenrollees = [\"auditor\", \"CN=x,O=y\"]\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->templates.size(), 1u);
  const TemplateConfig& t = c->templates[0];
  EXPECT_EQ(t.name, "Plain");
  EXPECT_EQ(t.oid, "");
  EXPECT_EQ(t.major_version, 100);
  EXPECT_EQ(t.minor_version, 0);
  EXPECT_TRUE(t.key_usage.empty());
  EXPECT_TRUE(t.extended_key_usage.empty());
  EXPECT_EQ(t.validity, 365 * kDay);
  EXPECT_EQ(t.subject, SubjectSource::kRequest);
  EXPECT_EQ(t.min_key_bits, 2048);
  EXPECT_EQ(t.key_types, std::vector<std::string>{"rsa"});
  EXPECT_FALSE(t.pend);
  EXPECT_EQ(t.archival, ArchivalPolicy::kNone);
  EXPECT_EQ(t.enrollee_roles, std::vector<Role>{Role::kAuditor});
  EXPECT_EQ(t.enrollee_principals, std::vector<std::string>{"CN=x,O=y"});
  EXPECT_EQ(t.san, SanSource::kNone);
  EXPECT_EQ(t.san_names, (std::vector<std::string>{"upn", "email"}));
  EXPECT_FALSE(t.smime_capabilities);
  EXPECT_TRUE(c->accounts.empty());
}

// [[account]]: every name is matched exactly, never by case or in part.
TEST(ConfigAccountTest, AccountsAreFoundByEachNameExactlyOnly) {
  absl::StatusOr<Config> c = Parse(MinimalPlus(R"([[account]]
principal = "CN=Frank Foreign,O=Example"
upn = "frank@corp.example"
logon_name = 'CORP\fra'
email = "frank@example.com"

[[account]]
principal = "CN=Bob,O=Example"
logon_name = 'CORP\bob'

[[template]]
name = "Mail"
extended_key_usage = ["emailProtection"]
san = "request"
san_names = ["upn", "email", "dns"]
smime_capabilities = true
)"));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->accounts.size(), 2u);
  const service::AccountConfig* frank = &c->accounts[0];
  EXPECT_EQ(c->AccountByLogonName("CORP\\fra"), frank);
  EXPECT_EQ(c->AccountByLogonName("NOSUCHDOMAIN\\fra"), nullptr);
  EXPECT_EQ(c->AccountByLogonName("corp\\fra"), nullptr);
  EXPECT_EQ(c->AccountByLogonName("CORP\\fr"), nullptr);
  EXPECT_EQ(c->AccountByLogonName("fra"), nullptr);
  EXPECT_EQ(c->AccountByUpn("frank@corp.example"), frank);
  EXPECT_EQ(c->AccountByUpn("Frank@corp.example"), nullptr);
  EXPECT_EQ(c->AccountByUpn("frank@corp"), nullptr);
  EXPECT_EQ(c->AccountByEmail("frank@example.com"), frank);
  EXPECT_EQ(c->AccountByEmail("frank@corp.example"), nullptr);  // a UPN is not an e-mail
  EXPECT_EQ(c->AccountByPrincipal("CN=Frank Foreign,O=Example"), frank);
  EXPECT_EQ(c->AccountByPrincipal("CN=Frank Foreign"), nullptr);
  EXPECT_EQ(c->AccountByUpn(""), nullptr);  // Bob has none: "" is no UPN
  ASSERT_EQ(c->templates.size(), 1u);
  EXPECT_EQ(c->templates[0].san, SanSource::kRequest);
  EXPECT_EQ(c->templates[0].san_names, (std::vector<std::string>{"upn", "email", "dns"}));
  EXPECT_TRUE(c->templates[0].smime_capabilities);
}

TEST(ConfigTest, ATemplateThatConfersNoPowerDefaultsToTheEnrolleeRole) {
  absl::StatusOr<Config> c = Parse(
      MinimalPlus("[[template]]\nname = \"Mail\"\nextended_key_usage = [\"emailProtection\"]\n"
                  "[[template]]\nname = \"Self\"\nsubject = \"principal\"\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  for (const TemplateConfig& t : c->templates) {
    EXPECT_EQ(t.enrollee_roles, std::vector<Role>{Role::kEnrollee}) << t.name;
    EXPECT_TRUE(t.enrollee_principals.empty()) << t.name;
  }
}

TEST(ConfigTest, RolesBindToAnIssuerOrAPinnedCertificate) {
  absl::StatusOr<Config> c = Parse(Minimal(
      "client_ca = [\"clients.pem\"]\n",
      "client_ca = [\"clients.pem\", \"/etc/partner.pem\"]\nclient_crls = [\"partner.crl\"]\n"
      "client_crl_optional = [\"clients.pem\"]\n[[role]]\nprincipal = \"CN=a\"\n"
      "issuer = \"clients.pem\"\nroles = [\"auditor\"]\n[[role]]\nprincipal = \"CN=a\"\n"
      "issuer = \"/etc/partner.pem\"\nroles = [\"enrollee\"]\n[[role]]\n"
      "certificate_sha256 = \"AB:" +
          std::string(62, 'c') + "\"\nroles = [\"signer\"]\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->server.client_crls, std::vector<std::string>{"/etc/kw/partner.crl"});
  EXPECT_EQ(c->server.client_crl_optional, std::vector<std::string>{"/etc/kw/clients.pem"});
  ASSERT_EQ(c->roles.size(), 3u);
  EXPECT_EQ(c->roles[0].issuer, "/etc/kw/clients.pem");
  EXPECT_EQ(c->roles[1].issuer, "/etc/partner.pem");
  EXPECT_EQ(c->roles[2].certificate_sha256, "ab" + std::string(62, 'c'));
  EXPECT_EQ(c->roles[2].principal, "");
  // The same subject through two issuers: a subject could be granted both.
  EXPECT_EQ(c->RolesOf("CN=a"), (std::vector<Role>{Role::kAuditor, Role::kEnrollee}));
}

// --- Strictness --------------------------------------------------------------

TEST(ConfigStrictTest, UnknownTopLevelTableNamesFileLineAndTable) {
  EXPECT_THAT(ErrorOf(MinimalPlus("[ldap]\nhost = \"ldap.example.com\"\n")),
              StartsWith("keywarden.toml:17: unknown table \"ldap\" (expected one of: ca, hsm,"));
}

TEST(ConfigStrictTest, UnknownKeyInHsmNamesFileLineAndKeyPath) {
  EXPECT_THAT(ErrorOf(Minimal("[hsm]\n", "[hsm]\npin = \"1234\"\n")),
              StartsWith("keywarden.toml:5: unknown key \"hsm.pin\" (expected one of: module, "
                         "token, pin_source, signing_key, max_sessions)"));
}

TEST(ConfigStrictTest, UnknownKeyInSecondTemplateNamesTheEntry) {
  std::string text = MinimalPlus(
      "[[template]]\n"             // 17
      "name = \"User\"\n"          // 18
      "subject = \"principal\"\n"  // 19
      "[[template]]\n"             // 20
      "name = \"WebServer\"\n"     // 21
      "pendd = true\n");           // 22
  EXPECT_THAT(ErrorOf(text), StartsWith("keywarden.toml:22: unknown key \"template[2].pendd\" "
                                        "(expected one of: name, oid, major_version,"));
}

TEST(ConfigStrictTest, UnknownKeyInRoleNamesTheEntry) {
  EXPECT_THAT(ErrorOf(MinimalPlus("[[role]]\nprinciple = \"CN=alice\"\nroles = [\"auditor\"]\n")),
              StartsWith("keywarden.toml:18: unknown key \"role[1].principle\""));
}

TEST(ConfigStrictTest, OfSeveralUnknownKeysTheFirstInTheFileIsReported) {
  // toml++ keeps keys sorted; the report must still follow the file.
  EXPECT_THAT(ErrorOf(Minimal("[hsm]\n", "[hsm]\nzzz = 1\naaa = 2\n")),
              StartsWith("keywarden.toml:5: unknown key \"hsm.zzz\""));
}

TEST(ConfigStrictTest, WrongTypeNamesKeyAndExpectedType) {
  EXPECT_THAT(ErrorOf(Minimal("[hsm]\n", "[hsm]\nmax_sessions = \"16\"\n")),
              StartsWith("keywarden.toml:5: key \"hsm.max_sessions\": expected an integer, got "
                         "a string"));
}

TEST(ConfigStrictTest, WrongElementTypeInArrayNamesTheElement) {
  EXPECT_THAT(ErrorOf(Minimal("[\"clients.pem\"]", "[\"clients.pem\", 2]")),
              StartsWith("keywarden.toml:15: key \"server.client_ca[2]\": expected a string, got "
                         "an integer"));
}

TEST(ConfigStrictTest, SingleStringWhereAnArrayIsNeededIsWrongType) {
  EXPECT_THAT(ErrorOf(Minimal("[\"clients.pem\"]", "\"clients.pem\"")),
              HasSubstr("key \"server.client_ca\": expected an array of strings, got a string"));
}

TEST(ConfigStrictTest, BooleanGivenAsStringIsWrongType) {
  EXPECT_THAT(ErrorOf(MinimalPlus("[flags]\nrole_separation = \"yes\"\n")),
              HasSubstr("key \"flags.role_separation\": expected a boolean"));
}

TEST(ConfigTest, SaveBadRequestKeyIsReadFromFlags) {
  absl::StatusOr<Config> c = Parse(MinimalPlus("[flags]\nsave_bad_request_key = true\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->flags.save_bad_request_key);
  EXPECT_FALSE(c->flags.enable_foreign);
  EXPECT_THAT(ErrorOf(MinimalPlus("[flags]\nsave_bad_request_key = \"yes\"\n")),
              HasSubstr("key \"flags.save_bad_request_key\": expected a boolean"));
  EXPECT_THAT(ErrorOf(MinimalPlus("[flags]\nsave_bad_request_keys = true\n")),
              HasSubstr("unknown key \"flags.save_bad_request_keys\""));
}

TEST(ConfigStrictTest, DurationGivenAsIntegerIsWrongType) {
  EXPECT_THAT(ErrorOf(MinimalPlus("[crl]\nvalidity = 7\n")),
              HasSubstr("key \"crl.validity\": expected a duration string"));
}

TEST(ConfigStrictTest, SectionThatIsNotATableIsWrongType) {
  EXPECT_THAT(ErrorOf(MinimalPlus("[[flags]]\nenable_foreign = true\n")),
              HasSubstr("key \"flags\": expected a table ([flags]), got an array"));
}

TEST(ConfigStrictTest, TemplateAsSingleTableIsWrongType) {
  EXPECT_THAT(ErrorOf(MinimalPlus("[template]\nname = \"User\"\n")),
              HasSubstr("key \"template\": expected an array of tables ([[template]]), got a "
                        "table"));
}

TEST(ConfigStrictTest, SyntaxErrorShowsLineColumnAndDescription) {
  std::string message = ErrorOf(Minimal("path = \"keywarden.db\"", "path = \"keywarden.db"));
  EXPECT_THAT(message, ::testing::ContainsRegex("^keywarden\\.toml:10:[0-9]+: TOML syntax error: "))
      << message;
}

TEST(ConfigStrictTest, DuplicateKeyIsASyntaxError) {
  EXPECT_THAT(ErrorOf(Minimal("[ca]\n", "[ca]\nname = \"A\"\n")),
              ::testing::ContainsRegex("^keywarden\\.toml:3:[0-9]+: TOML syntax error: "));
}

// --- Validation: one rule per case --------------------------------------------

struct ValidationCase {
  std::string name;
  std::string text;
  std::vector<std::string> expected;  // substrings of the message
};

void PrintTo(const ValidationCase& c, std::ostream* os) {
  *os << c.name;
}

std::string Template(std::string_view body) {
  return "[[template]]\nname = \"T\"\n" + std::string(body) + "\n";
}

std::vector<ValidationCase> ValidationCases() {
  return {
      {"MissingCaName",
       Minimal("name = \"Test CA\"\n", ""),
       {"keywarden.toml:1: missing required key \"ca.name\""}},
      {"MissingCaSection",
       Minimal("[ca]\nname = \"Test CA\"\n", ""),
       {"keywarden.toml: missing required key \"ca.name\""}},
      {"EmptyCaName", Minimal("\"Test CA\"", "\"\""), {"\"ca.name\"", "must not be empty"}},
      {"MissingHsmToken",
       Minimal("token = \"pkcs11:token=keywarden-ca\"\n", ""),
       {"missing required key \"hsm.token\""}},
      {"HsmTokenNotAUri",
       Minimal("\"pkcs11:token=keywarden-ca\"", "\"keywarden-ca\""),
       {"keywarden.toml:5: key \"hsm.token\"", "must start with \"pkcs11:\""}},
      {"MissingPinSource",
       Minimal("pin_source = \"env:KEYWARDEN_CA_PIN\"\n", ""),
       {"missing required key \"hsm.pin_source\""}},
      {"PinSourcePrompt",
       Minimal("\"env:KEYWARDEN_CA_PIN\"", "\"prompt\""),
       {"key \"hsm.pin_source\"", "cannot prompt"}},
      {"PinSourcePromptWithText",
       Minimal("\"env:KEYWARDEN_CA_PIN\"", "\"prompt:CA PIN: \""),
       {"key \"hsm.pin_source\"", "cannot prompt"}},
      {"PinSourceUnparsable",
       Minimal("\"env:KEYWARDEN_CA_PIN\"", "\"hunter2\""),
       {"key \"hsm.pin_source\"", "expected file:PATH, env:NAME"}},
      {"MissingSigningKey",
       Minimal("signing_key = \"pkcs11:token=keywarden-ca;object=ca-key\"\n", ""),
       {"missing required key \"hsm.signing_key\""}},
      {"SigningKeyNotAUri",
       Minimal("\"pkcs11:token=keywarden-ca;object=ca-key\"", "\"ca-key\""),
       {"key \"hsm.signing_key\"", "PKCS#11 URI"}},
      {"SigningKeyNamesNoObject",
       Minimal("\"pkcs11:token=keywarden-ca;object=ca-key\"", "\"pkcs11:token=keywarden-ca\""),
       {"key \"hsm.signing_key\"", "names no key"}},
      {"MaxSessionsZero",
       Minimal("[hsm]\n", "[hsm]\nmax_sessions = 0\n"),
       {"key \"hsm.max_sessions\"", "0 is out of range (1..1024)"}},
      {"MaxSessionsTooMany",
       Minimal("[hsm]\n", "[hsm]\nmax_sessions = 1025\n"),
       {"key \"hsm.max_sessions\"", "1025 is out of range (1..1024)"}},
      {"MissingTlsCertificate",
       Minimal("tls_certificate = \"tls.pem\"\n", ""),
       {"keywarden.toml:12: missing required key \"server.tls_certificate\""}},
      {"MissingTlsKey",
       Minimal("tls_key = \"tls.key\"\n", ""),
       {"missing required key \"server.tls_key\""}},
      {"MissingClientCa",
       Minimal("client_ca = [\"clients.pem\"]\n", ""),
       {"missing required key \"server.client_ca\""}},
      {"EmptyClientCa",
       Minimal("[\"clients.pem\"]", "[]"),
       {"key \"server.client_ca\"", "at least one"}},
      {"SqliteWithoutPath",
       Minimal("path = \"keywarden.db\"\n", ""),
       {"missing required key \"database.path\""}},
      {"PostgresqlWithoutConnection",
       Minimal("path = \"keywarden.db\"\n", "backend = \"postgresql\"\n"),
       {"missing required key \"database.connection\""}},
      {"PoolSizeZero",
       Minimal("path = \"keywarden.db\"\n",
               "backend = \"postgresql\"\nconnection = \"host=db\"\npool_size = 0\n"),
       {"key \"database.pool_size\"", "0 is out of range (1..256)"}},
      {"PoolSizeTooLarge",
       Minimal("path = \"keywarden.db\"\n",
               "backend = \"postgresql\"\nconnection = \"host=db\"\npool_size = 257\n"),
       {"key \"database.pool_size\"", "257 is out of range (1..256)"}},
      {"PoolSizeNotAnInteger",
       Minimal("path = \"keywarden.db\"\n",
               "backend = \"postgresql\"\nconnection = \"host=db\"\npool_size = \"8\"\n"),
       {"key \"database.pool_size\"", "an integer"}},
      {"PasswordInConnectionString",
       Minimal("path = \"keywarden.db\"\n",
               "backend = \"postgresql\"\nconnection = \"host=db password=hunter2\"\n"),
       {"key \"database.connection\"", "holds a password", "database.password = \"file:"}},
      {"PasswordInConnectionUri",
       Minimal("path = \"keywarden.db\"\n",
               "backend = \"postgresql\"\nconnection = \"postgresql://kw:hunter2@db/ca\"\n"),
       {"key \"database.connection\"", "holds a password"}},
      {"PasswordGivenInline",
       Minimal("path = \"keywarden.db\"\n",
               "backend = \"postgresql\"\nconnection = \"host=db\"\npassword = \"hunter2\"\n"),
       {"key \"database.password\"", "\"file:PATH\" or \"env:NAME\""}},
      {"PasswordEnvWithoutName",
       Minimal("path = \"keywarden.db\"\n",
               "backend = \"postgresql\"\nconnection = \"host=db\"\npassword = \"env:\"\n"),
       {"key \"database.password\"", "names no variable"}},
      {"UnknownBackend",
       Minimal("[database]\n", "[database]\nbackend = \"mysql\"\n"),
       {"key \"database.backend\"", "\"mysql\" is not one of: sqlite, postgresql"}},
      {"OverlapNotShorterThanValidity",
       MinimalPlus("[exchange]\nvalidity = \"1d\"\noverlap = \"24h\"\n"),
       {"keywarden.toml:19: key \"exchange.overlap\"", "must be shorter than exchange.validity"}},
      {"ValidityNotLongerThanDefaultOverlap",
       MinimalPlus("[exchange]\nvalidity = \"12h\"\n"),
       {"keywarden.toml:18: key \"exchange.validity\"", "must be longer than exchange.overlap"}},
      {"UnknownKeyAlgorithm",
       MinimalPlus("[exchange]\nkey_algorithm = \"ec256\"\n"),
       {"key \"exchange.key_algorithm\"", "rsa2048, rsa3072, rsa4096"}},
      {"UnknownArchivalScheme",
       MinimalPlus("[flags]\narchival_scheme = \"aes128\"\n"),
       {"key \"flags.archival_scheme\"", "des3-rsa-pkcs1, aes256-rsa-oaep"}},
      {"KraCountZero",
       MinimalPlus("[kra]\ncount = 0\n"),
       {"key \"kra.count\"", "0 is out of range (at least 1)"}},
      {"KraCountAboveTheList",
       MinimalPlus("[kra]\ncertificates = [\"0123456789abcdef0123456789abcdef01234567\"]\n"
                   "count = 2\n"),
       {"key \"kra.count\"", "is 2 but only 1 KRA certificate(s) are listed"}},
      {"KraEmptyCrlFile",
       MinimalPlus("[kra]\ncrls = [\"\"]\n"),
       {"key \"kra.crls\"", "empty file name"}},
      {"KraCountBeyondInt",
       MinimalPlus("[kra]\ncount = 99999999999\n"),
       {"key \"kra.count\"", "99999999999 is out of range (at most 2147483647)"}},
      {"NegativeServerThreads",
       Minimal("[server]\n", "[server]\nthreads = -1\n"),
       {"key \"server.threads\"", "-1 is out of range (at least 0)"}},
      {"UnknownRoleName",
       MinimalPlus(
           "[[role]]\nprincipal = \"CN=a\"\nissuer = \"clients.pem\"\nroles = [\"admin\"]\n"),
       {"keywarden.toml:20: key \"role[1].roles\"", "unknown role \"admin\""}},
      {"EmptyPrincipal",
       MinimalPlus("[[role]]\nprincipal = \"\"\nissuer = \"clients.pem\"\nroles = [\"auditor\"]\n"),
       {"key \"role[1].principal\"", "is empty"}},
      {"DuplicatePrincipal",
       MinimalPlus(
           "[[role]]\nprincipal = \"CN=a\"\nissuer = \"clients.pem\"\nroles = [\"auditor\"]\n"
           "[[role]]\nprincipal = \"CN=a\"\nissuer = \"clients.pem\"\nroles = [\"signer\"]\n"),
       {"keywarden.toml:22: key \"role[2].principal\"", "already bound in role[1]"}},
      {"RoleWithoutIssuer",
       MinimalPlus("[[role]]\nprincipal = \"CN=a\"\nroles = [\"auditor\"]\n"),
       {"keywarden.toml:17: missing required key \"role[1].issuer\"",
        "the client CA (one of server.client_ca)"}},
      {"RoleIssuerNotAClientCa",
       MinimalPlus("[[role]]\nprincipal = \"CN=a\"\nissuer = \"ca.pem\"\nroles = [\"auditor\"]\n"),
       {"keywarden.toml:19: key \"role[1].issuer\"",
        "\"/etc/kw/ca.pem\" is not one of server.client_ca"}},
      {"RoleWithNeitherPrincipalNorPin",
       MinimalPlus("[[role]]\nroles = [\"auditor\"]\n"),
       {"keywarden.toml:17: [[role]] at role[1] needs principal and issuer, or "
        "certificate_sha256"}},
      {"RolePinNotASha256",
       MinimalPlus("[[role]]\ncertificate_sha256 = \"abcd\"\nroles = [\"auditor\"]\n"),
       {"key \"role[1].certificate_sha256\"", "64 hex digits"}},
      {"RolePinWithAnIssuer",
       MinimalPlus("[[role]]\ncertificate_sha256 = \"" + std::string(64, 'a') +
                   "\"\nissuer = \"clients.pem\"\nroles = [\"auditor\"]\n"),
       {"key \"role[1].issuer\"", "a pinned certificate (certificate_sha256) takes no issuer"}},
      {"DuplicatePin",
       MinimalPlus("[[role]]\ncertificate_sha256 = \"" + std::string(64, 'a') +
                   "\"\nroles = [\"auditor\"]\n[[role]]\ncertificate_sha256 = \"" +
                   std::string(64, 'A') + "\"\nroles = [\"signer\"]\n"),
       {"key \"role[2].certificate_sha256\"", "already bound in role[1]"}},
      {"CrlOptionalNotAClientCa",
       Minimal("client_ca = [\"clients.pem\"]\n",
               "client_ca = [\"clients.pem\"]\nclient_crl_optional = [\"other.pem\"]\n"),
       {"keywarden.toml:16: key \"server.client_crl_optional\"",
        "\"/etc/kw/other.pem\" is not one of server.client_ca"}},
      {"KraTemplateWithoutEnrollees",
       MinimalPlus(
           Template("subject = \"principal\"\nextended_key_usage = [\"1.3.6.1.4.1.311.21.6\"]")),
       {"keywarden.toml:17: template \"T\" (template[1]) issues Key Recovery Agent certificates",
        "it has no default enrollees; list who may enrol for it in \"enrollees\""}},
      {"ExchangeTemplateWithoutEnrollees",
       MinimalPlus(
           Template("subject = \"principal\"\nextended_key_usage = [\"1.3.6.1.4.1.311.21.5\"]")),
       {"template \"T\" (template[1]) issues CA exchange certificates"}},
      {"CaTemplateWithoutEnrollees",
       MinimalPlus(Template("subject = \"principal\"\nkey_usage = [\"keyCertSign\"]")),
       {"template \"T\" (template[1]) issues CA certificates"}},
      {"ClientAuthTemplateWithRequestSubjectWithoutEnrollees",
       MinimalPlus(Template("extended_key_usage = [\"clientAuth\"]")),
       {"template \"T\" (template[1]) takes the subject from the request on a certificate a TLS "
        "client can present"}},
      {"TemplateWithoutEkuAndRequestSubjectWithoutEnrollees",
       MinimalPlus(Template("")),
       {"template \"T\" (template[1]) takes the subject from the request"}},
      {"UnknownEnrolleeRole",
       MinimalPlus(Template("enrollees = [\"officer\"]")),
       {"keywarden.toml:19: key \"template[1].enrollees\"", "unknown role \"officer\"",
        "or a principal such as"}},
      {"RepeatedEnrollee",
       MinimalPlus(Template("enrollees = [\"CN=a\", \"CN=a\"]")),
       {"key \"template[1].enrollees\"", "\"CN=a\" is listed twice"}},
      {"MissingTemplateName",
       MinimalPlus("[[template]]\noid = \"1.2.3\"\n"),
       {"keywarden.toml:17: missing required key \"template[1].name\""}},
      {"EmptyTemplateName",
       MinimalPlus("[[template]]\nname = \"\"\n"),
       {"key \"template[1].name\"", "must not be empty"}},
      {"DuplicateTemplateNameIgnoringCase",
       MinimalPlus("[[template]]\nname = \"User\"\nsubject = \"principal\"\n"
                   "[[template]]\nname = \"USER\"\nsubject = \"principal\"\n"),
       {"keywarden.toml:21: key \"template[2].name\"", "template[1]"}},
      {"DuplicateTemplateOid",
       MinimalPlus("[[template]]\nname = \"A\"\noid = \"1.2.3\"\nenrollees = [\"enrollee\"]\n"
                   "[[template]]\nname = \"B\"\noid = \"1.2.3\"\nenrollees = [\"enrollee\"]\n"),
       {"key \"template[2].oid\"", "already the OID of template[1]"}},
      {"OidWithOneArc",
       MinimalPlus(Template("oid = \"1\"")),
       {"key \"template[1].oid\"", "dotted-decimal"}},
      {"OidWithLetters",
       MinimalPlus(Template("oid = \"1.3.6.x\"")),
       {"key \"template[1].oid\"", "dotted-decimal"}},
      {"OidWithEmptyArc",
       MinimalPlus(Template("oid = \"1..3\"")),
       {"key \"template[1].oid\"", "dotted-decimal"}},
      {"UnknownKeyUsage",
       MinimalPlus(Template("key_usage = [\"digitalsignature\"]")),
       {"key \"template[1].key_usage\"", "\"digitalsignature\" is not one of: digitalSignature"}},
      {"RepeatedKeyUsage",
       MinimalPlus(Template("key_usage = [\"keyEncipherment\", \"keyEncipherment\"]")),
       {"key \"template[1].key_usage\"", "listed twice"}},
      {"UnknownExtendedKeyUsage",
       MinimalPlus(Template("extended_key_usage = [\"anyPurpose\"]")),
       {"key \"template[1].extended_key_usage\"", "or a dotted-decimal OID"}},
      {"UnknownKeyType",
       MinimalPlus(Template("key_types = [\"dsa\"]")),
       {"key \"template[1].key_types\"", "\"dsa\" is not one of: rsa, ec"}},
      {"NoKeyTypes",
       MinimalPlus(Template("key_types = []")),
       {"key \"template[1].key_types\"", "at least one"}},
      {"EcOnlyTemplateWithTheRsaDefaultMinimum",
       MinimalPlus(Template("key_types = [\"ec\"]")),
       {"key \"template[1].min_key_bits\"", "2048 bits, but the template takes only EC keys",
        "e.g. 256"}},
      {"EcOnlyTemplateAboveP521",
       MinimalPlus(Template("key_types = [\"ec\"]\nmin_key_bits = 522")),
       {"key \"template[1].min_key_bits\"", "522 bits"}},
      {"MinKeyBitsTooSmall",
       MinimalPlus(Template("min_key_bits = 128")),
       {"key \"template[1].min_key_bits\"", "256..16384"}},
      {"MinKeyBitsTooLarge",
       MinimalPlus(Template("min_key_bits = 32768")),
       {"key \"template[1].min_key_bits\"", "256..16384"}},
      {"NegativeMajorVersion",
       MinimalPlus(Template("major_version = -1")),
       {"key \"template[1].major_version\"", "out of range"}},
      {"NegativeMinorVersion",
       MinimalPlus(Template("minor_version = -1")),
       {"key \"template[1].minor_version\"", "out of range"}},
      {"UnknownSubjectSource",
       MinimalPlus(Template("subject = \"csr\"")),
       {"key \"template[1].subject\"", "request, principal"}},
      {"UnknownArchivalPolicy",
       MinimalPlus(Template("archival = \"always\"")),
       {"key \"template[1].archival\"", "none, allowed, required"}},
      {"MalformedDuration",
       MinimalPlus(Template("validity = \"1y\"")),
       {"keywarden.toml:19: key \"template[1].validity\"", "duration \"1y\""}},
      {"UnknownSanSource",
       MinimalPlus(Template("extended_key_usage = [\"emailProtection\"]\nsan = \"ldap\"")),
       {"key \"template[1].san\"", "none, directory, request"}},
      {"UnknownSanName",
       MinimalPlus(Template(
           "extended_key_usage = [\"emailProtection\"]\nsan = \"request\"\nsan_names = [\"uri\"]")),
       {"key \"template[1].san_names\"", "upn, email, dns"}},
      {"SanNamesWithoutSan",
       MinimalPlus(Template("extended_key_usage = [\"emailProtection\"]\nsan_names = [\"upn\"]")),
       {"key \"template[1].san_names\"", "needs san"}},
      {"EmptySanNames",
       MinimalPlus(Template(
           "extended_key_usage = [\"emailProtection\"]\nsan = \"directory\"\nsan_names = []")),
       {"key \"template[1].san_names\"", "at least one"}},
      {"DnsFromTheDirectory",
       MinimalPlus(Template("extended_key_usage = [\"emailProtection\"]\nsan = "
                            "\"directory\"\nsan_names = [\"dns\"]")),
       {"key \"template[1].san_names\"", "no DNS name"}},
      {"SmimeCapabilitiesNotABoolean",
       MinimalPlus(
           Template("extended_key_usage = [\"emailProtection\"]\nsmime_capabilities = \"yes\"")),
       {"key \"template[1].smime_capabilities\"", "boolean"}},
      {"UnknownAccountKey",
       MinimalPlus("[[account]]\nprincipal = \"CN=a\"\nupn = \"a@b\"\nsam = \"a\"\n"),
       {"unknown key \"account[1].sam\"", "principal, upn, logon_name, email"}},
      {"AccountWithoutPrincipal",
       MinimalPlus("[[account]]\nupn = \"a@b\"\n"),
       {"missing required key \"account[1].principal\""}},
      {"AccountPrincipalNotASubject",
       MinimalPlus("[[account]]\nprincipal = \"alice\"\nupn = \"a@b\"\n"),
       {"key \"account[1].principal\"", "RFC 4514"}},
      {"AccountWithoutAnyName",
       MinimalPlus("[[account]]\nprincipal = \"CN=a\"\n"),
       {"account[1]", "at least one of upn, logon_name, email"}},
      {"AccountUpnWithoutAt",
       MinimalPlus("[[account]]\nprincipal = \"CN=a\"\nupn = \"alice\"\n"),
       {"key \"account[1].upn\"", "user@domain"}},
      {"AccountEmailWithTwoAts",
       MinimalPlus("[[account]]\nprincipal = \"CN=a\"\nemail = \"a@b@c\"\n"),
       {"key \"account[1].email\"", "user@domain"}},
      {"AccountUpnWithASpace",
       MinimalPlus("[[account]]\nprincipal = \"CN=a\"\nupn = \"a b@c\"\n"),
       {"key \"account[1].upn\"", "space"}},
      {"AccountLogonNameWithoutDomain",
       MinimalPlus("[[account]]\nprincipal = \"CN=a\"\nlogon_name = \"alice\"\n"),
       {"key \"account[1].logon_name\"", "DOMAIN\\user"}},
      {"AccountLogonNameWithTwoBackslashes",
       MinimalPlus("[[account]]\nprincipal = \"CN=a\"\nlogon_name = 'A\\B\\c'\n"),
       {"key \"account[1].logon_name\"", "DOMAIN\\user"}},
      {"AccountLogonNameUserWithAt",
       MinimalPlus("[[account]]\nprincipal = \"CN=a\"\nlogon_name = 'CORP\\a@b'\n"),
       {"key \"account[1].logon_name\"", "sAMAccountName"}},
      {"AccountEmptyUpn",
       MinimalPlus("[[account]]\nprincipal = \"CN=a\"\nupn = \"\"\nemail = \"a@b\"\n"),
       {"key \"account[1].upn\"", "must not be empty"}},
      {"AccountUpnTakenInOtherCase",
       MinimalPlus("[[account]]\nprincipal = \"CN=a\"\nupn = \"a@corp\"\n"
                   "[[account]]\nprincipal = \"CN=b\"\nupn = \"A@CORP\"\n"),
       {"key \"account[2].upn\"", "already the upn of account[1]", "case-insensitively"}},
      {"AccountPrincipalTwice",
       MinimalPlus("[[account]]\nprincipal = \"CN=a\"\nupn = \"a@corp\"\n"
                   "[[account]]\nprincipal = \"CN=a\"\nemail = \"a@mail\"\n"),
       {"key \"account[2].principal\"", "already the principal of account[1]"}},
      {"AccountAsSingleTable",
       MinimalPlus("[account]\nprincipal = \"CN=a\"\n"),
       {"key \"account\"", "array of tables"}},
  };
}

class ConfigValidationTest : public ::testing::TestWithParam<ValidationCase> {};

TEST_P(ConfigValidationTest, IsRejectedNamingTheKey) {
  std::string message = ErrorOf(GetParam().text);
  for (const std::string& part : GetParam().expected) EXPECT_THAT(message, HasSubstr(part));
}

INSTANTIATE_TEST_SUITE_P(Rules, ConfigValidationTest, ::testing::ValuesIn(ValidationCases()),
                         [](const ::testing::TestParamInfo<ValidationCase>& p) {
                           return p.param.name;
                         });

TEST(ConfigTest, PostgresqlWithConnectionNeedsNoPath) {
  absl::StatusOr<Config> c =
      Parse(Minimal("path = \"keywarden.db\"\n",
                    "backend = \"postgresql\"\nconnection = \"host=db dbname=keywarden\"\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->database.backend, "postgresql");
  EXPECT_EQ(c->database.connection, "host=db dbname=keywarden");
  EXPECT_EQ(c->database.path, "");
}

TEST(ConfigTest, PostgresqlPasswordSourceAndPoolSize) {
  absl::StatusOr<Config> c =
      Parse(Minimal("path = \"keywarden.db\"\n",
                    "backend = \"postgresql\"\nconnection = \"host=db dbname=keywarden "
                    "sslmode=verify-full\"\npassword = \"file:secrets/db.pass\"\n"
                    "pool_size = 32\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->database.password, "file:/etc/kw/secrets/db.pass");
  EXPECT_EQ(c->database.pool_size, 32);

  c = Parse(Minimal("path = \"keywarden.db\"\n",
                    "backend = \"postgresql\"\nconnection = \"host=db\"\n"
                    "password = \"env:KEYWARDEN_DB_PASSWORD\"\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->database.password, "env:KEYWARDEN_DB_PASSWORD");
  EXPECT_EQ(c->database.pool_size, 8);  // the default
}

TEST(ConfigTest, PasswordGivenInlineIsNotEchoed) {
  const std::string message = ErrorOf(Minimal("path = \"keywarden.db\"\n",
                                              "backend = \"postgresql\"\nconnection = \"host=db\"\n"
                                              "password = \"hunter2\"\n"));
  EXPECT_THAT(message, HasSubstr("database.password"));
  EXPECT_THAT(message, ::testing::Not(HasSubstr("hunter2")));
  const std::string in_connection =
      ErrorOf(Minimal("path = \"keywarden.db\"\n",
                      "backend = \"postgresql\"\nconnection = \"host=db password=hunter2\"\n"));
  EXPECT_THAT(in_connection, ::testing::Not(HasSubstr("hunter2")));
}

TEST(ConfigTest, DatabasePasswordIsReadFromFileOrEnvironment) {
  TempDir dir;
  Config::Database d;
  // None configured: empty, no error.
  absl::StatusOr<hsm::SecretString> none = service::ReadDatabasePassword(d);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());

  WriteFile(dir.File("db.pass"), std::string("s3cret \xc3\xa9\n"));
  d.password = "file:" + dir.File("db.pass");
  absl::StatusOr<hsm::SecretString> from_file = service::ReadDatabasePassword(d);
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(from_file->view(), "s3cret \xc3\xa9");  // trailing newline dropped

  ASSERT_EQ(setenv("KW_TEST_DB_PASSWORD", "from-env", 1), 0);
  d.password = "env:KW_TEST_DB_PASSWORD";
  absl::StatusOr<hsm::SecretString> from_env = service::ReadDatabasePassword(d);
  ASSERT_TRUE(from_env.ok()) << from_env.status();
  EXPECT_EQ(from_env->view(), "from-env");
  unsetenv("KW_TEST_DB_PASSWORD");
  from_env = service::ReadDatabasePassword(d);
  EXPECT_EQ(from_env.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(from_env.status().message()),
              HasSubstr("environment variable KW_TEST_DB_PASSWORD is not set"));

  d.password = "file:" + dir.File("missing.pass");
  absl::StatusOr<hsm::SecretString> missing = service::ReadDatabasePassword(d);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(dir.File("missing.pass")));

  WriteFile(dir.File("empty.pass"), std::string("\n"));
  d.password = "file:" + dir.File("empty.pass");
  absl::StatusOr<hsm::SecretString> empty = service::ReadDatabasePassword(d);
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("is empty"));

  WriteFile(dir.File("huge.pass"), std::string(5000, 'x'));
  d.password = "file:" + dir.File("huge.pass");
  absl::StatusOr<hsm::SecretString> huge = service::ReadDatabasePassword(d);
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(huge.status().message()), HasSubstr("longer than 4096 bytes"));
}

TEST(ConfigTest, ExtendedKeyUsageMayBeADottedOid) {
  absl::StatusOr<Config> c =
      Parse(MinimalPlus(Template("extended_key_usage = [\"serverAuth\", \"1.3.6.1.5.5.7.3.9\"]")));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->templates[0].extended_key_usage,
            (std::vector<std::string>{"serverAuth", "1.3.6.1.5.5.7.3.9"}));
}

// --- Durations ---------------------------------------------------------------

TEST(ParseDurationTest, AcceptsEachUnit) {
  EXPECT_EQ(ParseDuration("90s").value(), seconds(90));
  EXPECT_EQ(ParseDuration("15m").value(), minutes(15));
  EXPECT_EQ(ParseDuration("12h").value(), hours(12));
  EXPECT_EQ(ParseDuration("7d").value(), 7 * kDay);
}

TEST(ParseDurationTest, RejectsAnythingButOnePositiveIntegerAndOneUnit) {
  for (const char* bad : {"", "7", "d", "7D", "7w", "1.5h", "-1d", "+1d", " 7d", "7d ", "7 d",
                          "1h30m", "0x10s", "7dd"}) {
    absl::StatusOr<seconds> d = ParseDuration(bad);
    ASSERT_FALSE(d.ok()) << "\"" << bad << "\"";
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(d.status().message()), HasSubstr("duration \"")) << d.status();
  }
}

TEST(ParseDurationTest, RejectsZero) {
  absl::StatusOr<seconds> d = ParseDuration("0d");
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("positive"));
}

TEST(ParseDurationTest, RejectsOverflow) {
  for (const char* big : {"99999999999999999999999d", "9223372036854775807s", "36526d"}) {
    absl::StatusOr<seconds> d = ParseDuration(big);
    ASSERT_FALSE(d.ok()) << big;
    EXPECT_THAT(std::string(d.status().message()), HasSubstr("too long")) << d.status();
  }
}

TEST(ConfigTest, DurationsInTheFileUseParseDuration) {
  absl::StatusOr<Config> c = Parse(MinimalPlus(
      "[exchange]\nvalidity = \"14d\"\noverlap = \"36h\"\n[crl]\nvalidity = \"90m\"\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->exchange.validity, 14 * kDay);
  EXPECT_EQ(c->exchange.overlap, hours(36));
  EXPECT_EQ(c->crl.validity, minutes(90));
}

// --- Paths -------------------------------------------------------------------

TEST(ConfigTest, RelativePathsAreResolvedAgainstTheBaseDirectory) {
  std::string text =
      Minimal("[ca]\n", "[ca]\ncertificate = \"pki/ca.pem\"\nchain = \"../chain.pem\"\n") +
      "\n[kra]\ncertificates = [\"kra1.pem\", "
      "\"00112233445566778899AABBCCDDEEFF00112233\"]\n";
  absl::StatusOr<Config> c = Parse(text, "/etc/keywarden");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ca.certificate, "/etc/keywarden/pki/ca.pem");
  EXPECT_EQ(c->ca.chain, "/etc/chain.pem");
  EXPECT_EQ(c->database.path, "/etc/keywarden/keywarden.db");
  EXPECT_EQ(c->server.tls_certificate, "/etc/keywarden/tls.pem");
  EXPECT_EQ(c->server.tls_key, "/etc/keywarden/tls.key");
  EXPECT_EQ(c->server.client_ca, std::vector<std::string>{"/etc/keywarden/clients.pem"});
  // A thumbprint is not a path.
  EXPECT_EQ(c->kra.certificates,
            (std::vector<std::string>{"/etc/keywarden/kra1.pem",
                                      "00112233445566778899AABBCCDDEEFF00112233"}));
}

TEST(ConfigTest, AbsolutePathsAreKept) {
  absl::StatusOr<Config> c = Parse(Minimal("\"tls.pem\"", "\"/srv/tls/server.pem\""));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->server.tls_certificate, "/srv/tls/server.pem");
}

TEST(ConfigTest, PinSourceModuleAndUrisAreNotTreatedAsPaths) {
  absl::StatusOr<Config> c = Parse(Minimal("[hsm]\n", "[hsm]\nmodule = \"softhsm2\"\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hsm.module, "softhsm2");
  EXPECT_EQ(c->hsm.pin_source, "env:KEYWARDEN_CA_PIN");
  EXPECT_EQ(c->hsm.token, "pkcs11:token=keywarden-ca");
}

TEST(ConfigTest, RelativePinFileIsResolvedAgainstTheConfigDirectory) {
  absl::StatusOr<Config> rel = Parse(
      Minimal("pin_source = \"env:KEYWARDEN_CA_PIN\"", "pin_source = \"file:secrets/ca.pin\""),
      "/etc/keywarden");
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_EQ(rel->hsm.pin_source, "file:/etc/keywarden/secrets/ca.pin");
  absl::StatusOr<Config> abs =
      Parse(Minimal("pin_source = \"env:KEYWARDEN_CA_PIN\"", "pin_source = \"file:/run/ca.pin\""),
            "/etc/keywarden");
  ASSERT_TRUE(abs.ok()) << abs.status();
  EXPECT_EQ(abs->hsm.pin_source, "file:/run/ca.pin");
}

// --- Lookups -----------------------------------------------------------------

Config WithTemplates() {
  absl::StatusOr<Config> c = Parse(
      MinimalPlus("[[template]]\nname = \"User\"\noid = \"1.3.6.1.4.1.311.21.8.1.1\"\n"
                  "enrollees = [\"enrollee\"]\n"
                  "[[template]]\nname = \"WebServer\"\nextended_key_usage = [\"serverAuth\"]\n"));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : Config{};
}

TEST(FindTemplateTest, FindsByNameIgnoringCase) {
  Config c = WithTemplates();
  const TemplateConfig* t = c.FindTemplate("webSERVER");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->name, "WebServer");
}

TEST(FindTemplateTest, FindsByExactOid) {
  Config c = WithTemplates();
  const TemplateConfig* t = c.FindTemplate("1.3.6.1.4.1.311.21.8.1.1");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->name, "User");
  EXPECT_EQ(c.FindTemplate("1.3.6.1.4.1.311.21.8.1"), nullptr);
}

TEST(FindTemplateTest, UnknownNameIsNull) {
  Config c = WithTemplates();
  EXPECT_EQ(c.FindTemplate("Web"), nullptr);
  EXPECT_EQ(c.FindTemplate(""), nullptr);
}

TEST(RolesOfTest, IsTheUnionOfAllBindingsForThePrincipal) {
  Config c;
  c.roles = {{"CN=alice", "/a.pem", "", {Role::kSigner, Role::kAuditor}},
             {"CN=bob", "/a.pem", "", {Role::kCaAdministrator}},
             {"CN=alice", "/b.pem", "", {Role::kEnrollee, Role::kAuditor}}};
  EXPECT_EQ(c.RolesOf("CN=alice"),
            (std::vector<Role>{Role::kAuditor, Role::kEnrollee, Role::kSigner}));
  EXPECT_EQ(c.RolesOf("CN=bob"), std::vector<Role>{Role::kCaAdministrator});
}

TEST(RolesOfTest, MatchesThePrincipalExactly) {
  absl::StatusOr<Config> c =
      Parse(MinimalPlus("[[role]]\nprincipal = \"CN=alice,O=Example\"\nissuer = "
                        "\"clients.pem\"\nroles = [\"auditor\"]\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->RolesOf("CN=alice,O=Example"), std::vector<Role>{Role::kAuditor});
  EXPECT_TRUE(c->RolesOf("cn=alice,o=example").empty());
  EXPECT_TRUE(c->RolesOf("CN=alice").empty());
}

TEST(RoleTest, NamesRoundTripAndCimcRolesAreTheFour) {
  for (Role r : {Role::kCaAdministrator, Role::kCertificateManager, Role::kBackupOperator,
                 Role::kAuditor, Role::kEnrollee, Role::kSigner}) {
    EXPECT_EQ(service::ParseRole(service::RoleName(r)), r) << service::RoleName(r);
  }
  EXPECT_EQ(service::ParseRole("certificate-manager"), Role::kCertificateManager);
  EXPECT_EQ(service::ParseRole("Auditor"), std::nullopt);
  EXPECT_EQ(service::ParseRole(""), std::nullopt);
  EXPECT_TRUE(service::IsCimcRole(Role::kCaAdministrator));
  EXPECT_TRUE(service::IsCimcRole(Role::kCertificateManager));
  EXPECT_TRUE(service::IsCimcRole(Role::kBackupOperator));
  EXPECT_TRUE(service::IsCimcRole(Role::kAuditor));
  EXPECT_FALSE(service::IsCimcRole(Role::kEnrollee));
  EXPECT_FALSE(service::IsCimcRole(Role::kSigner));
}

// --- LoadConfig --------------------------------------------------------------

TEST(LoadConfigTest, MissingFileIsNotFoundNamingThePath) {
  TempDir dir;
  std::string path = dir.File("nope.toml");
  absl::StatusOr<Config> c = service::LoadConfig(path);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound) << c.status();
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(path));
}

TEST(LoadConfigTest, UnreadableFileIsPermissionDenied) {
  if (geteuid() == 0) GTEST_SKIP() << "root reads any file";
  TempDir dir;
  std::string path = dir.File("keywarden.toml");
  WriteFile(path, std::string(kMinimal));
  ASSERT_EQ(chmod(path.c_str(), 0), 0);
  absl::StatusOr<Config> c = service::LoadConfig(path);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kPermissionDenied) << c.status();
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(path));
}

TEST(LoadConfigTest, ResolvesAgainstTheFilesDirectoryAndNamesItInErrors) {
  TempDir dir;
  std::string path = dir.File("keywarden.toml");
  WriteFile(path, std::string(kMinimal));
  absl::StatusOr<Config> c = service::LoadConfig(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->source, path);
  EXPECT_EQ(c->database.path, dir.path() + "/keywarden.db");

  WriteFile(path, Minimal("[hsm]\n", "[hsm]\npin = \"1234\"\n"));
  c = service::LoadConfig(path);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), StartsWith(path + ":5: unknown key \"hsm.pin\""));
}

// --- Delegated signing ([signing], [[signing.keys]]) --------------------------

// Two signers, a template, and `keys` after them (starting on line 29).
std::string WithSigning(std::string_view keys) {
  return MinimalPlus(
             "[[role]]\nprincipal = \"CN=ocsp,O=Example\"\nissuer = \"clients.pem\"\n"
             "roles = [\"signer\"]\n"
             "[[role]]\nprincipal = \"CN=front,O=Example\"\nissuer = \"clients.pem\"\n"
             "roles = [\"enrollee\", \"signer\"]\n"
             "[[template]]\nname = \"WebServer\"\noid = \"1.2.3.4\"\nenrollees = "
             "[\"enrollee\"]\n") +
         std::string(keys);
}

// One [[signing.keys]] entry: header, alias and key on its first three lines, then `body`.
std::string SigningKey(std::string_view body, std::string_view alias = "ocsp") {
  return StrCat("[[signing.keys]]\nalias = \"", alias,
                "\"\nkey = \"pkcs11:token=keywarden-ca;object=ocsp\"\n", body, "\n");
}

constexpr std::string_view kValidKeyBody =
    "algorithms = [\"rsa-pkcs1-sha256\"]\nprincipals = [\"CN=ocsp,O=Example\"]";

TEST(ConfigExampleTest, SigningKeysHaveTheDocumentedValues) {
  absl::StatusOr<Config> c = service::LoadConfig(KEYWARDEN_EXAMPLE_CONFIG);
  ASSERT_TRUE(c.ok()) << c.status();
  std::string dir(KEYWARDEN_EXAMPLE_CONFIG);
  dir.resize(dir.rfind('/'));
  EXPECT_EQ(c->signing.audit_interval, minutes(5));
  ASSERT_EQ(c->signing.keys.size(), 2u);
  const service::SigningKeyConfig& ocsp = c->signing.keys[0];
  EXPECT_EQ(ocsp.alias, "ocsp");
  EXPECT_EQ(ocsp.key, "pkcs11:token=keywarden-ca;object=ocsp-signing;type=private");
  EXPECT_EQ(ocsp.pin_source, "");
  EXPECT_EQ(ocsp.certificate, "");
  EXPECT_EQ(ocsp.algorithms, (std::vector<std::string>{"rsa-pkcs1-sha256", "rsa-pss-sha256"}));
  EXPECT_EQ(ocsp.principals, std::vector<std::string>{"CN=Build Service,O=Example"});
  EXPECT_TRUE(ocsp.templates.empty());
  const service::SigningKeyConfig& front = c->signing.keys[1];
  EXPECT_EQ(front.alias, "issuing-front-end");
  EXPECT_EQ(front.key, "pkcs11:token=signing-hsm;object=issuing-ec;type=private");
  EXPECT_EQ(front.pin_source, "file:/run/credentials/keywardend.service/signing-hsm-pin");
  EXPECT_EQ(front.certificate, dir + "/signing/issuing-ec.pem");
  EXPECT_EQ(front.algorithms, (std::vector<std::string>{"ecdsa-sha256", "ecdsa-sha384"}));
  EXPECT_EQ(front.templates, std::vector<std::string>{"WebServer"});
}

TEST(ConfigSigningTest, WithoutASigningSectionThereAreNoKeysAndAMinuteInterval) {
  absl::StatusOr<Config> c = Parse(kMinimal);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->signing.keys.empty());
  EXPECT_EQ(c->signing.audit_interval, minutes(1));
}

TEST(ConfigSigningTest, KeysAreReadWithPathsResolvedAndTemplatesCanonical) {
  absl::StatusOr<Config> c =
      Parse(WithSigning("[signing]\naudit_interval = \"30s\"\n\n"
                        "[[signing.keys]]\nalias = \"ocsp-2024.a_b\"\n"
                        "key = \"pkcs11:token=other;object=ocsp;type=private\"\n"
                        "pin_source = \"file:pins/other.pin\"\ncertificate = \"certs/ocsp.pem\"\n"
                        "algorithms = [\"rsa-pss-sha512\", \"rsa-pkcs1-sha384\"]\n"
                        "principals = [\"CN=ocsp,O=Example\", \"CN=front,O=Example\"]\n"
                        "templates = [\"webserver\", \"1.2.3.4x\"]\n"),
            "/etc/kw");
  // "1.2.3.4x" is not a template: the error comes first; then the valid form.
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("key \"signing.keys[1].templates\": \"1.2.3.4x\" is not the name or OID"));
  c = Parse(WithSigning("[signing]\naudit_interval = \"30s\"\n\n"
                        "[[signing.keys]]\nalias = \"ocsp-2024.a_b\"\n"
                        "key = \"pkcs11:token=other;object=ocsp;type=private\"\n"
                        "pin_source = \"file:pins/other.pin\"\ncertificate = \"certs/ocsp.pem\"\n"
                        "algorithms = [\"rsa-pss-sha512\", \"rsa-pkcs1-sha384\"]\n"
                        "principals = [\"CN=ocsp,O=Example\", \"CN=front,O=Example\"]\n"
                        "templates = [\"1.2.3.4\"]\n\n" +
                        SigningKey(kValidKeyBody, "ec-2")),
            "/etc/kw");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->signing.audit_interval, seconds(30));
  ASSERT_EQ(c->signing.keys.size(), 2u);
  const service::SigningKeyConfig& k = c->signing.keys[0];
  EXPECT_EQ(k.alias, "ocsp-2024.a_b");
  EXPECT_EQ(k.pin_source, "file:/etc/kw/pins/other.pin");
  EXPECT_EQ(k.certificate, "/etc/kw/certs/ocsp.pem");
  EXPECT_EQ(k.algorithms, (std::vector<std::string>{"rsa-pss-sha512", "rsa-pkcs1-sha384"}));
  EXPECT_EQ(k.principals, (std::vector<std::string>{"CN=ocsp,O=Example", "CN=front,O=Example"}));
  EXPECT_EQ(k.templates, std::vector<std::string>{"WebServer"});  // found by OID, stored by name
  EXPECT_EQ(c->signing.keys[1].alias, "ec-2");
}

TEST(ConfigSigningTest, EveryAlgorithmNameIsAccepted) {
  for (const char* name :
       {"rsa-pkcs1-sha256", "rsa-pkcs1-sha384", "rsa-pkcs1-sha512", "rsa-pss-sha256",
        "rsa-pss-sha384", "rsa-pss-sha512", "ecdsa-sha256", "ecdsa-sha384", "ecdsa-sha512"}) {
    absl::StatusOr<Config> c = Parse(WithSigning(
        SigningKey(StrCat("algorithms = [\"", name, "\"]\nprincipals = [\"CN=ocsp,O=Example\"]"))));
    ASSERT_TRUE(c.ok()) << name << ": " << c.status();
    EXPECT_EQ(c->signing.keys[0].algorithms, std::vector<std::string>{name});
  }
}

std::vector<ValidationCase> SigningValidationCases() {
  const std::string key = "[[signing.keys]]\n";
  return {
      {"UnknownKeyInSigning",
       WithSigning("[signing]\nflush = \"1m\"\n"),
       {"keywarden.toml:30: unknown key \"signing.flush\" (expected one of: audit_interval, "
        "keys)"}},
      {"BadAuditInterval",
       WithSigning("[signing]\naudit_interval = \"0s\"\n"),
       {"key \"signing.audit_interval\"", "must be positive"}},
      {"KeysNotAnArrayOfTables",
       WithSigning("[signing]\nkeys = \"ocsp\"\n"),
       {"key \"signing.keys\"", "expected an array of tables ([[signing.keys]])"}},
      {"UnknownKeyInEntry",
       WithSigning(SigningKey(std::string(kValidKeyBody) + "\npin = \"1234\"")),
       {"keywarden.toml:34: unknown key \"signing.keys[1].pin\""}},
      {"MissingAlias",
       WithSigning(key + "key = \"pkcs11:token=t;object=k\"\n" + std::string(kValidKeyBody)),
       {"keywarden.toml:29: missing required key \"signing.keys[1].alias\""}},
      {"AliasWithSpace",
       WithSigning(SigningKey(kValidKeyBody, "my key")),
       {"key \"signing.keys[1].alias\"", "letters, digits"}},
      {"AliasTooLong",
       WithSigning(SigningKey(kValidKeyBody, std::string(65, 'a'))),
       {"key \"signing.keys[1].alias\"", "1 to 64"}},
      {"DuplicateAlias",
       WithSigning(SigningKey(kValidKeyBody) + SigningKey(kValidKeyBody)),
       {"keywarden.toml:35: key \"signing.keys[2].alias\"",
        "\"ocsp\" is already the alias of signing.keys[1]"}},
      {"MissingKeyUri",
       WithSigning(key + "alias = \"a\"\n" + std::string(kValidKeyBody)),
       {"missing required key \"signing.keys[1].key\""}},
      {"KeyUriNamesNoObject",
       WithSigning(key + "alias = \"a\"\nkey = \"pkcs11:token=t\"\n" + std::string(kValidKeyBody)),
       {"key \"signing.keys[1].key\"", "names no key"}},
      {"KeyNotAUri",
       WithSigning(key + "alias = \"a\"\nkey = \"ocsp-key\"\n" + std::string(kValidKeyBody)),
       {"key \"signing.keys[1].key\"", "pkcs11:"}},
      {"PinSourcePrompt",
       WithSigning(SigningKey(std::string(kValidKeyBody) + "\npin_source = \"prompt\"")),
       {"key \"signing.keys[1].pin_source\"", "cannot prompt"}},
      {"EmptyPinSource",
       WithSigning(SigningKey(std::string(kValidKeyBody) + "\npin_source = \"\"")),
       {"key \"signing.keys[1].pin_source\"", "must not be empty"}},
      {"EmptyCertificate",
       WithSigning(SigningKey(std::string(kValidKeyBody) + "\ncertificate = \"\"")),
       {"key \"signing.keys[1].certificate\"", "must not be empty"}},
      {"MissingAlgorithms",
       WithSigning(SigningKey("principals = [\"CN=ocsp,O=Example\"]")),
       {"missing required key \"signing.keys[1].algorithms\""}},
      {"NoAlgorithms",
       WithSigning(SigningKey("algorithms = []\nprincipals = [\"CN=ocsp,O=Example\"]")),
       {"key \"signing.keys[1].algorithms\"", "at least one"}},
      {"UnknownAlgorithm",
       WithSigning(
           SigningKey("algorithms = [\"rsa-sha256\"]\nprincipals = [\"CN=ocsp,O=Example\"]")),
       {"keywarden.toml:32: key \"signing.keys[1].algorithms\"",
        "\"rsa-sha256\" is not one of: rsa-pkcs1-sha256, rsa-pkcs1-sha384"}},
      {"RepeatedAlgorithm",
       WithSigning(SigningKey("algorithms = [\"ecdsa-sha256\", \"ecdsa-sha256\"]\n"
                              "principals = [\"CN=ocsp,O=Example\"]")),
       {"key \"signing.keys[1].algorithms\"", "listed twice"}},
      {"RsaAndEcdsaMixed",
       WithSigning(SigningKey("algorithms = [\"rsa-pss-sha256\", \"ecdsa-sha256\"]\n"
                              "principals = [\"CN=ocsp,O=Example\"]")),
       {"key \"signing.keys[1].algorithms\"", "mixes RSA and ECDSA"}},
      {"MissingPrincipals",
       WithSigning(SigningKey("algorithms = [\"ecdsa-sha256\"]")),
       {"missing required key \"signing.keys[1].principals\""}},
      {"NoPrincipals",
       WithSigning(SigningKey("algorithms = [\"ecdsa-sha256\"]\nprincipals = []")),
       {"key \"signing.keys[1].principals\"", "at least one principal"}},
      {"PrincipalWithoutSignerRole",
       WithSigning(SigningKey("algorithms = [\"ecdsa-sha256\"]\n"
                              "principals = [\"CN=ocsp,O=Example\", \"CN=mallory\"]")),
       {"keywarden.toml:33: key \"signing.keys[1].principals\"",
        "\"CN=mallory\" does not hold the signer role"}},
      {"RepeatedPrincipal",
       WithSigning(SigningKey("algorithms = [\"ecdsa-sha256\"]\n"
                              "principals = [\"CN=ocsp,O=Example\", \"CN=ocsp,O=Example\"]")),
       {"key \"signing.keys[1].principals\"", "listed twice"}},
      {"PrincipalNotAString",
       WithSigning(SigningKey("algorithms = [\"ecdsa-sha256\"]\nprincipals = [1]")),
       {"key \"signing.keys[1].principals[1]\"", "expected a string, got an integer"}},
      {"UnknownTemplate",
       WithSigning(SigningKey(std::string(kValidKeyBody) + "\ntemplates = [\"User\"]")),
       {"keywarden.toml:34: key \"signing.keys[1].templates\"",
        "\"User\" is not the name or OID of a [[template]]"}},
      {"PendingTemplate",
       MinimalPlus("[[role]]\nprincipal = \"CN=ocsp,O=Example\"\nissuer = \"clients.pem\"\n"
                   "roles = [\"signer\"]\n"
                   "[[template]]\nname = \"Held\"\npend = true\nenrollees = [\"enrollee\"]\n" +
                   SigningKey(std::string(kValidKeyBody) + "\ntemplates = [\"Held\"]")),
       {"key \"signing.keys[1].templates\"", "template \"Held\" waits for a Certificate Manager"}},
      {"ArchivalTemplate",
       MinimalPlus("[[role]]\nprincipal = \"CN=ocsp,O=Example\"\nissuer = \"clients.pem\"\n"
                   "roles = [\"signer\"]\n"
                   "[[template]]\nname = \"Kept\"\narchival = \"required\"\n"
                   "enrollees = [\"enrollee\"]\n" +
                   SigningKey(std::string(kValidKeyBody) + "\ntemplates = [\"Kept\"]")),
       {"key \"signing.keys[1].templates\"", "template \"Kept\" requires key archival"}},
      {"RepeatedTemplate",
       WithSigning(
           SigningKey(std::string(kValidKeyBody) + "\ntemplates = [\"WebServer\", \"1.2.3.4\"]")),
       {"key \"signing.keys[1].templates\"", "\"WebServer\" is listed twice"}},
  };
}

class ConfigSigningValidationTest : public ::testing::TestWithParam<ValidationCase> {};

TEST_P(ConfigSigningValidationTest, IsRejectedNamingTheKey) {
  std::string message = ErrorOf(GetParam().text);
  for (const std::string& part : GetParam().expected) EXPECT_THAT(message, HasSubstr(part));
}

INSTANTIATE_TEST_SUITE_P(Rules, ConfigSigningValidationTest,
                         ::testing::ValuesIn(SigningValidationCases()),
                         [](const ::testing::TestParamInfo<ValidationCase>& p) {
                           return p.param.name;
                         });

}  // namespace
}  // namespace keywarden::testing
