#include "service/daemon/check_config.h"

#include <sys/stat.h>

#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "hsm/keys.h"
#include "hsm/open.h"
#include "hsm/provider/provider.h"
#include "hsm/selftest.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "service/archival/kra_registry.h"
#include "service/ca/issuer.h"
#include "service/config.h"
#include "service/daemon/state_dir.h"
#include "service/server/server.h"
#include "service/signing/delegated_signer.h"
#include "service/storage/audit_checkpoints.h"
#include "service/storage/store.h"
#include "service/trust/client_trust.h"

namespace keywarden::service {
namespace {

int64_t Now() {
  return static_cast<int64_t>(std::time(nullptr));
}

class Report {
 public:
  explicit Report(FILE* out) : out_(out) {}
  void Ok(const std::string& what, const std::string& detail) {
    std::fprintf(out_, "ok    %s: %s\n", what.c_str(), detail.c_str());
  }
  void Fail(const std::string& what, const std::string& why) {
    std::fprintf(out_, "FAIL  %s: %s\n", what.c_str(), why.c_str());
    ++failures_;
  }
  void Skip(const std::string& what, const std::string& why) {
    std::fprintf(out_, "skip  %s: %s\n", what.c_str(), why.c_str());
  }
  int failures() const { return failures_; }

 private:
  FILE* out_;
  int failures_ = 0;
};

std::string Msg(const absl::Status& st) {
  return std::string(st.message());
}

std::string NotAfter(X509* cert) {
  ossl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  ASN1_TIME_print(bio.get(), X509_get0_notAfter(cert));
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len > 0 ? len : 0));
}

// The CA certificate: readable, within its validity period.
ossl::UniquePtr<X509> CheckCaCertificate(const Config& config, Report& report) {
  const std::string what = "CA certificate " + config.ca.certificate;
  if (config.ca.certificate.empty()) {
    report.Fail("CA certificate", "[ca] certificate is not set");
    return nullptr;
  }
  auto certs = pki::ReadPemCertificates(config.ca.certificate);
  if (!certs.ok()) {
    report.Fail(what, Msg(certs.status()));
    return nullptr;
  }
  ossl::UniquePtr<X509> cert = std::move(certs->front());
  const int64_t now = Now();
  time_t t = static_cast<time_t>(now);
  if (X509_cmp_time(X509_get0_notBefore(cert.get()), &t) > 0 ||
      X509_cmp_time(X509_get0_notAfter(cert.get()), &t) <= 0) {
    report.Fail(what, "not within its validity period (notAfter " + NotAfter(cert.get()) + ")");
    return nullptr;
  }
  report.Ok(what, StrCat(pki::FormatName(X509_get_subject_name(cert.get())), ", valid until ",
                         NotAfter(cert.get())));
  if (!config.ca.chain.empty()) {
    auto chain = pki::ReadPemCertificates(config.ca.chain);
    if (!chain.ok()) {
      report.Fail("CA chain " + config.ca.chain, Msg(chain.status()));
    } else {
      report.Ok("CA chain " + config.ca.chain, StrCat(chain->size(), " certificate(s)"));
    }
  }
  return cert;
}

// Logs in to the CA token and checks the signing key against the CA
// certificate (the check Issuer::Create makes at start).
std::shared_ptr<hsm::Token> CheckToken(const Config& config, X509* ca_cert,
                                       std::shared_ptr<hsm::CryptoContext> crypto, Report& report) {
  const std::string what = "CA token " + config.hsm.token;
  auto uri = hsm::Pkcs11Uri::Parse(config.hsm.token);
  if (!uri.ok()) {
    report.Fail(what, Msg(uri.status()));
    return nullptr;
  }
  auto pin = hsm::PinSource::Parse(config.hsm.pin_source);
  if (!pin.ok()) {
    report.Fail(what, "pin_source: " + Msg(pin.status()));
    return nullptr;
  }
  hsm::OpenOptions open;
  open.default_module = config.hsm.module;
  open.pin = *pin;
  open.token.max_sessions = static_cast<size_t>(config.hsm.max_sessions);
  auto token = hsm::OpenToken(*uri, open);
  if (!token.ok()) {
    report.Fail(what, Msg(token.status()));
    return nullptr;
  }
  report.Ok(what, StrCat("logged in (label \"", (*token)->label(), "\")"));

  const std::string key_what = "CA signing key " + config.hsm.signing_key;
  auto key_uri = hsm::Pkcs11Uri::Parse(config.hsm.signing_key);
  if (!key_uri.ok()) {
    report.Fail(key_what, Msg(key_uri.status()));
    return *token;
  }
  auto key = hsm::FindPrivateKey(*token, *key_uri);
  if (!key.ok()) {
    report.Fail(key_what, Msg(key.status()));
    return *token;
  }
  auto pkey = crypto->Load(*key);
  if (!pkey.ok()) {
    report.Fail(key_what, Msg(pkey.status()));
    return *token;
  }
  if (ca_cert == nullptr) {
    report.Skip(key_what, "found; not compared: the CA certificate did not load");
    return *token;
  }
  auto issuer =
      Issuer::Create(crypto->libctx(), hsm::kTokenKeyProperties, pki::SoftwareCopy(ca_cert),
                     std::move(*pkey), pki::SignatureOptions{});
  if (!issuer.ok()) {
    report.Fail(key_what, Msg(issuer.status()));
  } else {
    report.Ok(key_what, "found on the token, matches the CA certificate");
  }
  return *token;
}

void CheckServer(const Config& config, X509* ca_cert, Report& report) {
  auto tls = ServerTls::Load(config);
  if (!tls.ok()) {
    report.Fail("TLS server certificate, key and client CAs", Msg(tls.status()));
  } else {
    std::string described;
    for (const auto& line : (*tls)->Describe()) described += (described.empty() ? "" : "; ") + line;
    report.Ok("TLS server certificate, key and client CAs", described);
  }
  if (ca_cert == nullptr) {
    report.Skip("client CRLs", "not checked: the CA certificate did not load");
    return;
  }
  auto trust = ClientTrust::Load(config, ca_cert, Now);
  if (!trust.ok()) {
    report.Fail("client CAs and CRLs", Msg(trust.status()));
  } else {
    report.Ok("client CAs and CRLs", StrCat(config.server.client_ca.size(), " client CA file(s), ",
                                            config.server.client_crls.size(), " CRL file(s)"));
  }
}

// The database, read-only as far as SQLite allows: verified as a copy
// first (no creation, no migration), then opened to verify the audit log
// against its signed checkpoints. Returns the store (in memory when the
// database does not exist yet) for the KRA check.
// The audit log of a store that is open: its append-only triggers, the
// chain and the signed checkpoints.
void CheckStoredAudit(Store& store, X509* ca_cert, const std::string& what, Report& report) {
  if (auto triggers = store.admin().CheckAuditTriggers(); !triggers.ok()) {
    report.Fail(what, Msg(triggers));
    return;
  }
  if (ca_cert == nullptr) {
    auto all = ReadAllAudit(store);
    absl::Status chain = all.ok() ? VerifyAuditChain(*all) : all.status();
    if (!chain.ok()) {
      report.Fail(what, Msg(chain));
    } else {
      report.Ok(what, StrCat("intact, this build's schema, ", all->size(),
                             " audit record(s); checkpoints not checked (no CA certificate)"));
    }
    return;
  }
  auto verdict = VerifyStoredAudit(store, ca_cert);
  if (!verdict.ok()) {
    report.Fail(what, Msg(verdict.status()));
  } else if (!verdict->ok) {
    report.Fail(what, DescribeVerdict(*verdict) +
                          " (keywardend refuses to start unless --accept-broken-audit)");
  } else {
    report.Ok(what, "intact, this build's schema; " + DescribeVerdict(*verdict));
  }
}

// PostgreSQL: connected with the configured password source and TLS
// settings, the schema checked but never created (an empty database is
// reported as one keywardend will set up).
std::unique_ptr<Store> CheckPostgresDatabase(const Config& config, X509* ca_cert, Report& report) {
  const std::string what = "database (PostgreSQL)";
  Config::Database database = config.database;
  DatabaseOptions options;
  options.backend = "postgresql";
  options.connection = database.connection;
  options.pool_size = 1;
  options.create_schema = false;
  auto password = ReadDatabasePassword(database);
  if (!password.ok()) {
    report.Fail(what, Msg(password.status()));
    return nullptr;
  }
  options.password.assign(password->view());
  auto store = OpenStore(options);
  if (!store.ok() && absl::IsNotFound(store.status())) {
    report.Ok(what, std::string(store.status().message()));
    auto memory = OpenSqliteStore(":memory:");
    if (!memory.ok()) return nullptr;
    return std::move(*memory);
  }
  if (!store.ok()) {
    report.Fail(what, Msg(store.status()));
    return nullptr;
  }
  CheckStoredAudit(**store, ca_cert, what, report);
  return std::move(*store);
}

std::unique_ptr<Store> CheckDatabase(const Config& config, X509* ca_cert, Report& report) {
  if (config.database.backend == "postgresql")
    return CheckPostgresDatabase(config, ca_cert, report);
  const std::string& path = config.database.path;
  const std::string what = "database " + path;
  struct stat info {};
  if (stat(path.c_str(), &info) != 0 && errno == ENOENT) {
    auto dir = DescribeStateDirectory(path);
    if (!dir.ok()) {
      report.Fail(what, Msg(dir.status()));
    } else {
      report.Ok(what, "does not exist yet; keywardend creates it at first start (" + *dir + ")");
    }
    auto memory = OpenSqliteStore(":memory:");
    if (!memory.ok()) return nullptr;
    return std::move(*memory);
  }
  auto records = VerifySqliteCopy(path);
  if (!records.ok()) {
    report.Fail(what, Msg(records.status()));
    return nullptr;
  }
  auto store = OpenSqliteStore(path);
  if (!store.ok()) {
    report.Fail(what, Msg(store.status()));
    return nullptr;
  }
  if (ca_cert == nullptr) {
    report.Ok(what, StrCat("intact, this build's schema, ", *records,
                           " audit record(s); checkpoints not checked (no CA certificate)"));
    return std::move(*store);
  }
  CheckStoredAudit(**store, ca_cert, what, report);
  return std::move(*store);
}

void CheckKras(const Config& config, Store* store, X509* ca_cert, Report& report) {
  if (config.kra.certificates.empty()) {
    report.Ok("key recovery agents", "none configured (key archival is refused)");
    return;
  }
  if (store == nullptr || ca_cert == nullptr) {
    report.Skip("key recovery agents", "not checked: the database or CA certificate did not load");
    return;
  }
  std::vector<X509*> chain;
  std::vector<ossl::UniquePtr<X509>> chain_certs;
  if (!config.ca.chain.empty()) {
    if (auto c = pki::ReadPemCertificates(config.ca.chain); c.ok()) chain_certs = std::move(*c);
  }
  for (const auto& c : chain_certs) chain.push_back(c.get());
  std::vector<std::string> problems;
  KraRegistry registry(config.kra, *store, ca_cert, chain, Now,
                       [&problems](const std::string& event, const std::string& details) {
                         problems.push_back(event + " " + details);
                       });
  size_t valid = 0;
  for (const KraStatus& st : registry.Check()) {
    const std::string what = StrCat("KRA ", st.index + 1, " ", st.configured);
    if (st.state == KraState::kValid) {
      ++valid;
      report.Ok(what, StrCat("valid (", st.subject, ", sha1 ", st.sha1, ")"));
    } else {
      report.Fail(what, StrCat(KraStateName(st.state), ": ", st.message));
    }
  }
  for (const auto& p : problems) report.Fail("KRA configuration", p);
  if (valid < static_cast<size_t>(config.kra.count)) {
    report.Fail("key recovery agents", StrCat(valid, " valid, [kra] count is ", config.kra.count,
                                              ": key archival would be refused"));
  }
}

void CheckSigning(const Config& config, std::shared_ptr<hsm::CryptoContext> crypto,
                  std::shared_ptr<hsm::Token> ca_token, Report& report) {
  if (config.signing.keys.empty()) return;
  if (ca_token == nullptr) {
    report.Skip("delegated signing keys", "not checked: the CA token did not open");
    return;
  }
  // No audit sink: opening audits nothing, and nothing is signed here.
  auto signer = signing::DelegatedSigner::Open(config, crypto, {ca_token}, nullptr, Now);
  if (!signer.ok()) {
    report.Fail("delegated signing keys", Msg(signer.status()));
  } else {
    report.Ok("delegated signing keys",
              StrCat(config.signing.keys.size(), " key(s) found, certificates and PINs read"));
  }
}

// The archival self-test the daemon runs at start (seed: event 86): live,
// on session objects only (nothing is written to the token).
void CheckArchivalSelfTest(const Config& config, std::shared_ptr<hsm::Token> token,
                           Report& report) {
  const std::string what = "archival self-test";
  if (token == nullptr) {
    report.Skip(what, "not run: the CA token did not open");
    return;
  }
  hsm::SelfTestOptions options;
  options.archival_only = true;
  options.archival_scheme = config.flags.archival_scheme;
  if (auto a = hsm::ParseKeyAlgorithm(config.exchange.key_algorithm); a.ok()) {
    options.exchange_bits = static_cast<CK_ULONG>(hsm::KeyAlgorithmBits(*a));
  }
  const auto checks = hsm::RunSelfTest(token, options);
  if (hsm::SelfTestPassed(checks)) {
    report.Ok(what, StrCat(checks.size(), " checks passed on token \"", token->label(), "\" (",
                           config.flags.archival_scheme, ")"));
    return;
  }
  bool needed = !config.kra.certificates.empty();
  for (const auto& t : config.templates) needed = needed || t.archival != ArchivalPolicy::kNone;
  const std::string why = StrCat(
      "Certificate Services could not use the provider specified in the registry for "
      "encryption keys. The keyset is not defined. 0x80090019 (-2146893799): token \"",
      token->label(), "\" failed ", hsm::SelfTestFailures(checks), " (",
      config.flags.archival_scheme, "); keywardend would refuse key archival");
  if (needed) {
    report.Fail(what, why);
  } else {
    report.Skip(what, why + " (not needed: no KRA and no template archives)");
  }
}

}  // namespace

int CheckConfig(const std::string& config_path, FILE* out) {
  Report report(out);
  std::fprintf(out, "keywardend: checking %s\n", config_path.c_str());
  auto config = LoadConfig(config_path);
  if (!config.ok()) {
    report.Fail("configuration", Msg(config.status()));
  } else {
    report.Ok("configuration",
              StrCat("parsed (", config->templates.size(), " template(s), ", config->roles.size(),
                     " role binding(s), ", config->kra.certificates.size(), " KRA(s), ",
                     config->signing.keys.size(), " signing key(s))"));
    ossl::UniquePtr<X509> ca_cert = CheckCaCertificate(*config, report);
    auto crypto = hsm::CryptoContext::Create();
    std::shared_ptr<hsm::Token> token;
    if (!crypto.ok()) {
      report.Fail("PKCS#11 provider", Msg(crypto.status()));
    } else {
      token = CheckToken(*config, ca_cert.get(), *crypto, report);
    }
    CheckServer(*config, ca_cert.get(), report);
    std::unique_ptr<Store> store = CheckDatabase(*config, ca_cert.get(), report);
    CheckKras(*config, store.get(), ca_cert.get(), report);
    if (crypto.ok()) CheckSigning(*config, *crypto, token, report);
    CheckArchivalSelfTest(*config, token, report);
  }
  if (report.failures() == 0) {
    std::fprintf(out, "keywardend: %s is usable (nothing was written)\n", config_path.c_str());
    return 0;
  }
  std::fprintf(out, "keywardend: %s has %d problem(s), see the FAIL lines above\n",
               config_path.c_str(), report.failures());
  return 1;
}

}  // namespace keywarden::service
