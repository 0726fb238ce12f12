// keywarden backup: a consistent copy of the CA database streamed from the
// daemon (Backup Operator), checked against the daemon's SHA-256, written
// whole, and kept only if it opens as a keywarden database whose audit chain
// verifies. keywarden restore: puts such a copy back in place of the CA
// database, offline, never turning time back (service/ca/restore.h), like
// certutil -restoredb. keywarden schema: the database schema, like
// certutil -schema.
#include <openssl/evp.h>
#include <pwd.h>
#include <stdlib.h>
#include <unistd.h>

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

struct RestoreArgs {
  std::string backup;
  std::string config;
  std::string crl;
  bool discard_current = false;
};

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
  if (config->database.backend != "sqlite") {
    return absl::UnimplementedError(StrCat("restore: database backend \"", config->database.backend,
                                           "\" is not supported by this build (use sqlite)"));
  }
  service::RestoreOptions options;
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
  reply.json = {{"database", report->database},
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
  std::string replaced = report->replaced.empty() ? "(there was no database)"
                                                  : StrCat(report->replaced, " (kept, mode 0600)");
  if (!report->replaced.empty() && !report->replaced_read) {
    replaced += "; it could not be read: nothing carried over from it (--discard-current)";
  }
  reply.text = StrCat(
      "Database restored\n",
      KeyValues(
          {{"Database", report->database},
           {"Backup", StrCat(report->backup, " (", report->backup_bytes, " bytes)")},
           {"Backup SHA-256", report->backup_sha256},
           {"Backup audit head",
            StrCat("seq ", report->backup_last_seq, ", hash ", report->backup_last_hash)},
           {"Replaced database", replaced},
           {"Revocations re-applied", std::to_string(report->reapplied.size())},
           {"CRL number floor", StrCat(report->crl_number_floor,
                                       args.crl.empty() ? ""
                                                        : StrCat(" (CRL ", args.crl, " has number ",
                                                                 report->crl_file_number, ")"),
                                       "; the next CRL is numbered above it")},
           {"Audit", StrCat("database.restored recorded as seq ", report->audit_seq, "; ",
                            report->audit_records, " records verified")}}),
      lines.empty() ? "" : StrCat("Re-applied revocations:\n", lines));
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
    schema = (*store)->Schema();
    version = (*store)->SchemaVersion();
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
  backup->add_option("OUT", *out_path, "Where to write the copy (SQLite; must not exist)")
      ->required();
  backup->footer(
      "The copy is checked against the SHA-256 the daemon sends, written atomically with\n"
      "mode 0600, then opened as a keywarden database whose audit chain must verify;\n"
      "on any error nothing is left at OUT and the exit code is non-zero.");
  backup->callback([&out, &conn, &action, out_path] {
    action = WithClient(out, conn, [out_path](Client& c) { return RunBackup(c, *out_path); });
  });

  auto restore_args = std::make_shared<RestoreArgs>();
  CLI::App* restore = app.add_subcommand(
      "restore",
      "Put a backup back in place of the CA database, offline (Backup Operator, like "
      "certutil -restoredb)");
  restore->add_option("BACKUP", restore_args->backup, "The backup (written by keywarden backup)")
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
      "Run on the CA host with keywardend stopped (refused while it holds the database).\n"
      "The backup is checked (integrity, schema version, audit chain) before anything\n"
      "changes. Revocations the current database holds and the backup lacks are re-applied\n"
      "(and every entry of --crl), the CRL number never goes back, the restore is recorded\n"
      "in the audit log (database.restored), and the current database is renamed\n"
      "DB.before-restore-UTCTIME (0600), never deleted.");
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
