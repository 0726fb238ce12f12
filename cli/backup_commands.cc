// keywarden backup: a consistent copy of the CA database streamed from the
// daemon (Backup Operator), checked against the daemon's SHA-256, written
// whole, and kept only if it opens as a keywarden database whose audit chain
// verifies. keywarden restore: puts such a copy back in place of the CA
// database, offline, never turning time back (service/ca/restore.h), like
// certutil -restoredb. keywarden schema: the database schema, like
// certutil -schema.
#include <fcntl.h>
#include <openssl/evp.h>
#include <pwd.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

#include "cli/client.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "hsm/ossl.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/files.h"
#include "service/ca/restore.h"
#include "service/config.h"
#include "service/daemon/state_dir.h"
#include "service/storage/store.h"

namespace keywarden::cli {
namespace {

absl::StatusOr<Reply> RunBackup(Client& client, const std::string& out_path) {
  if (auto st = pki::CheckWritable(out_path, pki::Overwrite::kRefuse); !st.ok()) return st;
  // A backup may take a while; allow much longer than one ordinary call.
  auto ctx = client.Context(std::chrono::seconds(3600));
  auto reader = client.backup().BackupDatabase(ctx.get(), v1::BackupDatabaseRequest());
  ossl::UniquePtr<EVP_MD_CTX> sha(EVP_MD_CTX_new());
  if (!sha || EVP_DigestInit_ex(sha.get(), EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("SHA-256 is not available");
  }
  std::string data;
  std::string expected;
  int64_t chunks = 0;
  v1::BackupChunk chunk;
  while (reader->Read(&chunk)) {
    ++chunks;
    if (!expected.empty()) {
      return absl::DataLossError("backup: the daemon sent data after the final checksum");
    }
    if (!chunk.data().empty()) {
      EVP_DigestUpdate(sha.get(), chunk.data().data(), chunk.data().size());
      data += chunk.data();
    }
    if (!chunk.sha256().empty()) expected = AsciiLower(chunk.sha256());
  }
  if (auto st = client.Check(reader->Finish()); !st.ok()) return st;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(sha.get(), digest, &len);
  const std::string actual = HexString({digest, len});
  if (expected.empty()) {
    return absl::DataLossError(StrCat("backup: the stream ended without the daemon's checksum; ",
                                      data.size(), " bytes received and discarded"));
  }
  if (expected != actual) {
    return absl::DataLossError(StrCat("backup: checksum mismatch: the daemon says sha256 ",
                                      expected, ", the ", data.size(), " bytes received hash to ",
                                      actual, "; nothing written"));
  }
  // The database holds archived keys (encrypted) and the audit log: owner only.
  if (auto st = WriteNewFile(out_path, data, 0600); !st.ok()) return st;
  // Only a copy that opens as a keywarden database and whose audit chain
  // verifies is a backup; anything else is removed again.
  auto records = service::VerifySqliteCopy(out_path);
  if (!records.ok()) {
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
      unlink(StrCat(out_path, suffix).c_str());
    }
    return absl::DataLossError(StrCat("backup: the copy received from the daemon is not usable (",
                                      records.status().message(), "); ", out_path,
                                      " was not kept"));
  }
  Reply reply;
  reply.json = {{"file", out_path},
                {"bytes", static_cast<int64_t>(data.size())},
                {"sha256", actual},
                {"chunks", chunks},
                {"audit_records", *records}};
  reply.text = StrCat("Backup written and verified\n",
                      KeyValues({{"File", out_path},
                                 {"Size", StrCat(data.size(), " bytes")},
                                 {"SHA-256", StrCat(actual, " (matches the daemon's)")},
                                 {"Audit chain", StrCat(*records, " records verified")}}));
  return reply;
}

// What a configuration names that a rebuilt CA host needs besides the
// archive (names only: the files are not copied, and private keys, PIN
// sources and passwords are never listed). An error when the configuration
// holds a secret itself (a URI's pin-value, a password in the database
// connection string): such a file must not go into an archive.
absl::StatusOr<nlohmann::json> NamedByConfiguration(const service::Config& c) {
  auto has_pin = [](const std::string& uri) {
    return AsciiLower(uri).find("pin-value") != std::string::npos;
  };
  std::vector<std::pair<std::string, std::string>> uris = {{"hsm.token", c.hsm.token},
                                                           {"hsm.signing_key", c.hsm.signing_key}};
  for (const auto& k : c.signing.keys)
    uris.push_back({StrCat("signing.keys[", k.alias, "].key"), k.key});
  for (const auto& [setting, uri] : uris) {
    if (has_pin(uri)) {
      return absl::FailedPreconditionError(
          StrCat("backup --with-config: ", setting, " in ", c.source,
                 " holds a PIN (pin-value); a PIN never goes into a backup: move it to a "
                 "pin_source file and try again"));
    }
  }
  if (AsciiLower(c.database.connection).find("password") != std::string::npos) {
    return absl::FailedPreconditionError(
        StrCat("backup --with-config: [database] connection in ", c.source,
               " holds a password; a password never goes into a backup: use a password file"));
  }
  nlohmann::json files = nlohmann::json::array();
  auto add = [&](const std::string& setting, const std::string& path) {
    if (!path.empty()) files.push_back({{"setting", setting}, {"path", path}});
  };
  add("ca.certificate", c.ca.certificate);
  add("ca.chain", c.ca.chain);
  add("server.tls_certificate", c.server.tls_certificate);
  for (const auto& f : c.server.client_ca) add("server.client_ca", f);
  for (const auto& f : c.server.client_crls) add("server.client_crls", f);
  for (const auto& f : c.kra.certificates) {
    // A SHA-1 thumbprint names a certificate in the database, not a file.
    if (f.find('/') != std::string::npos) add("kra.certificates", f);
  }
  for (const auto& f : c.kra.crls) add("kra.crls", f);
  for (const auto& f : c.kra.trust) add("kra.trust", f);
  for (const auto& k : c.signing.keys)
    add(StrCat("signing.keys[", k.alias, "].certificate"), k.certificate);
  nlohmann::json tokens = nlohmann::json::array();
  for (const auto& [setting, uri] : uris) {
    if (!uri.empty()) tokens.push_back({{"setting", setting}, {"uri", uri}});
  }
  return nlohmann::json{
      {"note",
       "names only: these files and token objects are not in this archive; private keys (the "
       "TLS key, the CA and KRA keys on their tokens), PIN sources and passwords never are"},
      {"files", files},
      {"token_uris", tokens},
      {"hsm_module", c.hsm.module}};
}

std::string UtcIso(int64_t t) {
  const time_t tt = static_cast<time_t>(t);
  struct tm tm {};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// keywarden backup OUT --with-config FILE: OUT is a new directory (0700)
// holding ca.db (the verified copy), keywarden.toml (FILE as it is) and
// manifest.json. On any error OUT is removed again.
absl::StatusOr<Reply> RunBackupArchive(Client& client, const std::string& out_dir,
                                       const std::string& config_path) {
  auto config = service::LoadConfig(config_path);
  if (!config.ok()) return config.status();
  auto named = NamedByConfiguration(*config);
  if (!named.ok()) return named.status();
  auto config_text = pki::ReadFileBytes(config_path, 1 << 20);
  if (!config_text.ok()) return config_text.status();
  if (mkdir(out_dir.c_str(), 0700) != 0) {
    const int err = errno;
    if (err == EEXIST) return absl::AlreadyExistsError(StrCat(out_dir, " already exists"));
    return absl::FailedPreconditionError(StrCat("creating ", out_dir, ": ", std::strerror(err)));
  }
  const std::string db = StrCat(out_dir, "/", service::kArchiveDatabase);
  const std::string toml = StrCat(out_dir, "/", service::kArchiveConfiguration);
  const std::string manifest = StrCat(out_dir, "/", service::kBackupManifest);
  auto cleanup = [&] {
    for (const std::string& f : {db, toml, manifest}) {
      for (const char* suffix : {"", "-wal", "-shm", "-journal"}) unlink(StrCat(f, suffix).c_str());
    }
    rmdir(out_dir.c_str());
  };
  auto copy = RunBackup(client, db);
  if (!copy.ok()) {
    cleanup();
    return copy.status();
  }
  const std::string text(config_text->begin(), config_text->end());
  if (auto st = WriteNewFile(toml, text, 0600); !st.ok()) {
    cleanup();
    return st;
  }
  auto schema = service::SqliteFileSchemaVersion(db);
  auto db_sha = service::FileSha256(db);
  auto toml_sha = service::FileSha256(toml);
  for (const absl::Status& st : {schema.status(), db_sha.status(), toml_sha.status()}) {
    if (!st.ok()) {
      cleanup();
      return st;
    }
  }
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  nlohmann::json m = {{"format", service::kBackupManifestFormat},
                      {"format_version", 1},
                      {"keywarden_version", KEYWARDEN_VERSION},
                      {"schema_version", *schema},
                      {"created_at", UtcIso(now)},
                      {"ca", config->ca.name},
                      {"files",
                       {{{"name", service::kArchiveDatabase},
                         {"role", "database"},
                         {"bytes", copy->json["bytes"]},
                         {"sha256", *db_sha},
                         {"audit_records", copy->json["audit_records"]}},
                        {{"name", service::kArchiveConfiguration},
                         {"role", "configuration"},
                         {"source", config_path},
                         {"bytes", static_cast<int64_t>(text.size())},
                         {"sha256", *toml_sha}}}},
                      {"named_by_configuration", *named}};
  if (auto st = WriteNewFile(manifest, m.dump(2) + "\n", 0600); !st.ok()) {
    cleanup();
    return st;
  }
  if (const int fd = open(out_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); fd >= 0) {
    fsync(fd);
    close(fd);
  }
  Reply reply;
  reply.json = {{"archive", out_dir}, {"manifest", m}};
  reply.text = StrCat("Backup archive written and verified\n",
                      KeyValues({{"Archive", StrCat(out_dir, " (mode 0700)")},
                                 {"Database", StrCat(db, " (", copy->json["bytes"].get<int64_t>(),
                                                     " bytes, sha256 ", *db_sha, ", ",
                                                     copy->json["audit_records"].get<int64_t>(),
                                                     " audit records verified)")},
                                 {"Configuration", StrCat(toml, " (copy of ", config_path, ")")},
                                 {"Manifest", StrCat(manifest, " (schema version ", *schema, ")")},
                                 {"Not included",
                                  "private keys, PIN sources, passwords; the files the "
                                  "configuration names are listed in the manifest by name"}}));
  return reply;
}

struct RestoreArgs {
  std::string backup;
  std::string config;
  std::string crl;
  bool discard_current = false;
};

// The directory part of a path ("." for a bare name).
std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// "keywarden restore (uid 0, root)": the local account that ran it.
std::string LocalOperator() {
  const uid_t uid = getuid();
  std::string name;
  if (const passwd* pw = getpwuid(uid); pw != nullptr && pw->pw_name != nullptr) {
    name = pw->pw_name;
  }
  return StrCat("keywarden restore (uid ", uid, name.empty() ? "" : StrCat(", ", name), ")");
}

absl::StatusOr<Reply> RunRestore(const RestoreArgs& args) {
  auto config = service::LoadConfig(args.config);
  if (!config.ok()) return config.status();
  service::RestoreOptions options;
  options.backend = config->database.backend;
  if (config->database.backend == "postgresql") {
    auto password = service::ReadDatabasePassword(config->database);
    if (!password.ok()) return password.status();
    options.postgres.backend = "postgresql";
    options.postgres.connection = config->database.connection;
    options.postgres.password.assign(password->view());
    // The copy of the replaced contents goes next to the backup (the
    // directory holding the backup file or archive), or next to the
    // configuration when that directory is not writable.
    std::string from = args.backup;
    while (from.size() > 1 && from.back() == '/') from.pop_back();
    options.keep_dir = DirectoryOf(from);
    if (access(options.keep_dir.c_str(), W_OK | X_OK) != 0) {
      options.keep_dir = DirectoryOf(args.config);
    }
  } else {
    // On a new host the state directory may not exist yet: made as
    // keywardend makes it (0700), so the lock file and the database fit.
    if (auto st = service::EnsureStateDirectory(config->database.path); !st.ok()) return st;
  }
  options.backup = args.backup;
  options.database = config->database.path;
  options.crl_path = args.crl;
  options.discard_current = args.discard_current;
  options.principal = LocalOperator();
  options.now = static_cast<int64_t>(std::time(nullptr));
  ossl::UniquePtr<X509> ca;
  if (!args.crl.empty()) {
    if (config->ca.certificate.empty()) {
      return absl::FailedPreconditionError(
          "restore: --crl needs [ca] certificate in the configuration to check the CRL against");
    }
    auto certs = pki::ReadPemCertificates(config->ca.certificate);
    if (!certs.ok()) return certs.status();
    if (certs->empty()) {
      return absl::FailedPreconditionError(
          StrCat("restore: ", config->ca.certificate, " holds no certificate"));
    }
    ca = std::move((*certs)[0]);
    options.ca_certificate = ca.get();
  }
  auto report = service::RestoreDatabase(options);
  if (!report.ok()) return report.status();
  // An archive's configuration is never installed; say whether it matches.
  std::string config_note;
  if (!report->archive_config.empty()) {
    auto theirs = service::FileSha256(report->archive_config);
    auto ours = service::FileSha256(args.config);
    config_note = theirs.ok() && ours.ok() && *theirs == *ours
                      ? StrCat(report->archive_config, " (identical to ", args.config, ")")
                      : StrCat(report->archive_config, " (DIFFERS from ", args.config,
                               "; not installed: compare them)");
  }

  nlohmann::json reapplied = nlohmann::json::array();
  std::string lines;
  for (const auto& r : report->reapplied) {
    reapplied.push_back({{"serial", r.serial},
                         {"reason", r.reason},
                         {"revoked_at", r.revoked_at},
                         {"source", r.source},
                         {"action", r.action}});
    lines += StrCat("  ", r.serial, "  reason ", r.reason, "  revoked ", FormatTime(r.revoked_at),
                    "  from the ", r.source, " (", r.action, ")\n");
  }
  Reply reply;
  reply.json = {{"archive", report->archive.empty() ? nlohmann::json(nullptr)
                                                    : nlohmann::json(report->archive)},
                {"archive_configuration",
                 config_note.empty() ? nlohmann::json(nullptr) : nlohmann::json(config_note)},
                {"backend", report->backend},
                {"database", report->database},
                {"backup", report->backup},
                {"backup_sha256", report->backup_sha256},
                {"backup_bytes", report->backup_bytes},
                {"backup_audit_records", report->backup_audit_records},
                {"backup_last_seq", report->backup_last_seq},
                {"backup_last_hash", report->backup_last_hash},
                {"replaced", report->replaced.empty() ? nlohmann::json(nullptr)
                                                      : nlohmann::json(report->replaced)},
                {"replaced_read", report->replaced_read},
                {"revocations_reapplied", reapplied},
                {"crl_file", args.crl.empty() ? nlohmann::json(nullptr) : nlohmann::json(args.crl)},
                {"crl_file_number", report->crl_file_number},
                {"crl_number_floor", report->crl_number_floor},
                {"audit_seq", report->audit_seq},
                {"audit_records", report->audit_records}};
  if (report->backend == "postgresql") {
    reply.json["replaced_audit_records"] = report->replaced_audit_records;
    reply.json["loaded"] = {{"requests", report->loaded.requests},
                            {"certificates", report->loaded.certificates},
                            {"settings", report->loaded.settings},
                            {"audit_records", report->loaded.audit_records},
                            {"audit_checkpoints", report->loaded.audit_checkpoints},
                            {"next_request_id", report->loaded.next_request_id},
                            {"leases_dropped", report->loaded.leases_dropped}};
  }
  std::string replaced = report->replaced.empty() ? "(there was no database)"
                                                  : StrCat(report->replaced, " (kept, mode 0600)");
  if (report->backend == "postgresql" && !report->replaced.empty()) {
    replaced = StrCat(report->replaced, " (the replaced contents, mode 0600, ",
                      report->replaced_audit_records, " audit records verified)");
  }
  std::string loaded;
  if (report->backend == "postgresql") {
    loaded = StrCat(
        report->loaded.requests, " requests, ", report->loaded.certificates, " certificates, ",
        report->loaded.settings, " settings, ", report->loaded.audit_records, " audit records, ",
        report->loaded.audit_checkpoints, " audit checkpoints in one transaction; next request id ",
        report->loaded.next_request_id);
  }
  if (!report->replaced.empty() && !report->replaced_read) {
    replaced += "; it could not be read: nothing carried over from it (--discard-current)";
  }
  std::vector<std::pair<std::string, std::string>> rows = {
      {"Database", report->database},
      {"Backup", StrCat(report->backup, " (", report->backup_bytes, " bytes)")},
      {"Backup SHA-256", report->backup_sha256},
      {"Backup audit head",
       StrCat("seq ", report->backup_last_seq, ", hash ", report->backup_last_hash)},
      {"Replaced database", replaced}};
  if (!loaded.empty()) rows.push_back({"Loaded", loaded});
  rows.push_back({"Revocations re-applied", std::to_string(report->reapplied.size())});
  rows.push_back(
      {"CRL number floor", StrCat(report->crl_number_floor,
                                  args.crl.empty() ? ""
                                                   : StrCat(" (CRL ", args.crl, " has number ",
                                                            report->crl_file_number, ")"),
                                  "; the next CRL is numbered above it")});
  rows.push_back({"Audit", StrCat("database.restored recorded as seq ", report->audit_seq, "; ",
                                  report->audit_records, " records verified")});
  reply.text = StrCat(
      "Database restored\n",
      config_note.empty() ? ""
                          : KeyValues({{"Archive", StrCat(report->archive, " (manifest checked)")},
                                       {"Its configuration", config_note}}),
      KeyValues(rows), lines.empty() ? "" : StrCat("Re-applied revocations:\n", lines));
  return reply;
}

// A throwaway directory for `schema` without --database, removed on exit.
class ScratchDir {
 public:
  ScratchDir() {
    const char* tmp = getenv("TMPDIR");
    std::string templ = StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/keywarden-XXXXXX");
    if (mkdtemp(templ.data()) != nullptr) path_ = templ;
  }
  ~ScratchDir() {
    if (path_.empty()) return;
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
      unlink(StrCat(path_, "/schema.db", suffix).c_str());
    }
    rmdir(path_.c_str());
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

absl::StatusOr<Reply> RunSchema(const std::string& database) {
  ScratchDir scratch;
  std::string path = database;
  if (path.empty()) {
    if (scratch.path().empty()) return absl::InternalError("schema: no temporary directory");
    path = StrCat(scratch.path(), "/schema.db");
  } else if (access(path.c_str(), F_OK) != 0) {
    return absl::NotFoundError(StrCat(path, ": no such database file"));
  }
  std::string schema;
  int version = 0;
  {
    auto store = service::OpenSqliteStore(path);
    if (!store.ok()) return store.status();
    schema = (*store)->admin().Schema();
    version = (*store)->admin().SchemaVersion();
  }  // closed before the scratch directory goes
  Reply reply;
  reply.json = {{"schema_version", version},
                {"database", database.empty() ? nlohmann::json(nullptr) : nlohmann::json(database)},
                {"sql", schema}};
  reply.text = schema;
  return reply;
}

}  // namespace

void RegisterBackupCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                            Action& action) {
  auto out_path = std::make_shared<std::string>();
  CLI::App* backup = app.add_subcommand(
      "backup", "Copy the CA database from the daemon while it runs (Backup Operator)");
  backup
      ->add_option("OUT", *out_path,
                   "Where to write the copy (SQLite; must not exist); with --with-config, "
                   "the archive directory to create")
      ->required();
  auto with_config = std::make_shared<std::string>();
  backup->add_option("--with-config", *with_config,
                     "Write an archive directory instead: the database copy, this configuration "
                     "file and manifest.json (SHA-256 of each, the TLS files and token URIs the "
                     "configuration names; never keys, PINs or passwords)");
  backup->footer(
      "The copy is checked against the SHA-256 the daemon sends, written atomically with\n"
      "mode 0600, then opened as a keywarden database whose audit chain must verify;\n"
      "on any error nothing is left at OUT and the exit code is non-zero.");
  backup->callback([&out, &conn, &action, out_path, with_config] {
    action = WithClient(out, conn, [out_path, with_config](Client& c) {
      return with_config->empty() ? RunBackup(c, *out_path)
                                  : RunBackupArchive(c, *out_path, *with_config);
    });
  });

  auto restore_args = std::make_shared<RestoreArgs>();
  CLI::App* restore = app.add_subcommand(
      "restore",
      "Put a backup back in place of the CA database, offline (Backup Operator, like "
      "certutil -restoredb)");
  restore
      ->add_option("BACKUP", restore_args->backup,
                   "The backup (written by keywarden backup): the database copy, or the "
                   "archive directory of backup --with-config")
      ->required();
  restore
      ->add_option("--config", restore_args->config,
                   "The daemon's configuration (keywarden.toml): names the database")
      ->required();
  restore->add_option("--crl", restore_args->crl,
                      "The last CRL the CA published (PEM or DER; must verify against the CA "
                      "certificate): its entries are re-applied and its number is the floor");
  restore->add_flag("--discard-current", restore_args->discard_current,
                    "Restore even if the current database cannot be read (its revocations are "
                    "then not carried over; the file is still kept)");
  restore->footer(
      "Run on the CA host with keywardend stopped (refused while it holds the database;\n"
      "on PostgreSQL, while any keywardend replica is connected to it).\n"
      "The backup is checked (integrity, schema version, audit chain) before anything\n"
      "changes. Revocations the current database holds and the backup lacks are re-applied\n"
      "(and every entry of --crl), the CRL number never goes back, the restore is recorded\n"
      "in the audit log (database.restored), and the current database is renamed\n"
      "DB.before-restore-UTCTIME (0600), never deleted. On PostgreSQL the current contents\n"
      "are first copied to postgresql-before-restore-UTCTIME.db (0600) next to BACKUP (or\n"
      "next to --config when that directory is not writable), then replaced in one\n"
      "transaction.");
  restore->callback([&out, &action, restore_args] {
    action = [&out, restore_args] {
      auto reply = RunRestore(*restore_args);
      if (!reply.ok()) return out.Fail(reply.status());
      out.Result(reply->json, reply->text);
      return reply->exit_code;
    };
  });

  auto database = std::make_shared<std::string>();
  CLI::App* schema = app.add_subcommand(
      "schema", "Print the CA database schema as SQL (like certutil -schema); needs no daemon");
  schema->add_option("--database", *database,
                     "Show the schema of this SQLite database file (default: the schema this "
                     "build creates, from a throwaway database)");
  schema->callback([&out, &action, database] {
    action = [&out, database] {
      auto reply = RunSchema(*database);
      if (!reply.ok()) return out.Fail(reply.status());
      out.Result(reply->json, reply->text);
      return reply->exit_code;
    };
  });
}

}  // namespace keywarden::cli
