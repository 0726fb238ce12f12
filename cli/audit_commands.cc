// keywarden audit: the hash-chained audit log, for Auditors. `verify` checks
// the chain on the daemon, or offline in a database file (a backup).
#include <sys/stat.h>

#include "cli/client.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "hsm/strings.h"
#include "service/storage/store.h"

namespace keywarden::cli {
namespace {

struct ReadOptions {
  int64_t from = 1;
  int limit = 0;
};

std::string HexOf(const std::string& bytes) {
  return HexString({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
}

// The details are a JSON object; shown as one, or as text if they are not.
nlohmann::json Details(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? nlohmann::json(text) : j;
}

absl::StatusOr<Reply> RunRead(Client& client, const ReadOptions& o) {
  v1::ReadAuditRequest in;
  in.set_from_seq(o.from);
  in.set_limit(o.limit);
  v1::ReadAuditResponse resp;
  auto ctx = client.Context();
  if (auto st = client.Check(client.audit().ReadAudit(ctx.get(), in, &resp)); !st.ok()) return st;
  Reply reply;
  nlohmann::json records = nlohmann::json::array();
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : resp.records()) {
    records.push_back({{"seq", r.seq()},
                       {"time", r.time()},
                       {"principal", r.principal()},
                       {"event", r.event()},
                       {"details", Details(r.details())},
                       {"prev_hash", HexOf(r.prev_hash())},
                       {"hash", HexOf(r.hash())}});
    rows.push_back(
        {std::to_string(r.seq()), FormatTime(r.time()), r.principal(), r.event(), r.details()});
  }
  reply.json = {{"records", records}};
  reply.text = rows.empty() ? "no audit records\n"
                            : Table({"SEQ", "TIME", "PRINCIPAL", "EVENT", "DETAILS"}, rows);
  return reply;
}

Reply VerifyReply(bool ok, int64_t records, const std::string& problem, const std::string& where) {
  Reply reply;
  reply.json = {{"ok", ok}, {"records", records}, {"source", where}};
  if (ok) {
    reply.text = StrCat("audit chain ok: ", records, " record", records == 1 ? "" : "s",
                        " verified (", where, ")\n");
  } else {
    reply.json["problem"] = problem;
    reply.text = StrCat("audit chain BROKEN (", where, "): ", problem, "\n");
    reply.exit_code = kExitFailed;
  }
  return reply;
}

absl::StatusOr<Reply> RunVerifyRemote(Client& client) {
  v1::VerifyAuditResponse resp;
  auto ctx = client.Context();
  if (auto st =
          client.Check(client.audit().VerifyAudit(ctx.get(), v1::VerifyAuditRequest(), &resp));
      !st.ok())
    return st;
  return VerifyReply(resp.ok(), resp.records(), resp.problem(), StrCat("daemon ", client.target()));
}

absl::StatusOr<Reply> RunVerifyOffline(const std::string& path) {
  // OpenSqliteStore creates missing files; a missing backup is an error.
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(StrCat(path, ": no such database file"));
  }
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(StrCat(path, ": not a file"));
  auto store = service::OpenSqliteStore(path);
  if (!store.ok()) return store.status();
  std::vector<service::AuditRecord> all;
  for (int64_t from = 1;;) {
    auto page = (*store)->ReadAudit(from, 5000);
    if (!page.ok()) return page.status();
    if (page->empty()) break;
    from = page->back().seq + 1;
    all.insert(all.end(), std::make_move_iterator(page->begin()),
               std::make_move_iterator(page->end()));
  }
  absl::Status chain = service::VerifyAuditChain(all);
  return VerifyReply(chain.ok(), static_cast<int64_t>(all.size()), std::string(chain.message()),
                     StrCat("database ", path));
}

}  // namespace

void RegisterAuditCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                           Action& action) {
  CLI::App* audit = app.add_subcommand("audit", "The hash-chained audit log (Auditor)");
  audit->require_subcommand(1);

  auto r = std::make_shared<ReadOptions>();
  CLI::App* read = audit->add_subcommand("read", "Show audit records in order");
  read->add_option("--from", r->from, "First sequence number (default 1)")
      ->check(CLI::PositiveNumber);
  read->add_option("--limit", r->limit, "At most N records (default 1000)")
      ->check(CLI::Range(1, 10000));
  read->callback([&out, &conn, &action, r] {
    action = WithClient(out, conn, [r](Client& c) { return RunRead(c, *r); });
  });

  auto database = std::make_shared<std::string>();
  CLI::App* verify = audit->add_subcommand(
      "verify", "Check the whole hash chain: on the daemon, or offline in a database file");
  verify->add_option("--database", *database,
                     "Check this SQLite database file (e.g. a backup) instead; needs no daemon");
  verify->footer(
      "Exit codes: 0 the chain is intact, 1 it is broken (the problem names the first bad\n"
      "record: edited, deleted or reordered), 3 not an Auditor, 4 no such database file.");
  verify->callback([&out, &conn, &action, database] {
    if (!database->empty()) {
      action = [&out, database] {
        auto reply = RunVerifyOffline(*database);
        if (!reply.ok()) return out.Fail(reply.status());
        out.Result(reply->json, reply->text);
        return reply->exit_code;
      };
      return;
    }
    action = WithClient(out, conn, RunVerifyRemote);
  });
}

}  // namespace keywarden::cli
