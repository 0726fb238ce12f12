// keywarden audit: the hash-chained audit log, for Auditors. `verify` checks
// the chain and the signed checkpoints on the daemon, or offline in a
// database file (a backup); `checkpoint` exports the newest checkpoint.
#include <sys/stat.h>

#include "cli/client.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "hsm/strings.h"
#include "pki/audit_checkpoint.h"
#include "pki/certificate.h"
#include "pki/der.h"
#include "pki/files.h"
#include "pki/pkcs10.h"
#include "service/storage/audit_checkpoints.h"
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

struct VerifyOptions {
  std::string database;
  std::string checkpoint;  // a checkpoint exported earlier (DER or PEM)
  std::string ca_cert;     // PEM: the CA certificate checkpoints must be signed by
};

Reply VerifyReply(const service::AuditVerdict& v, const std::string& where) {
  Reply reply;
  reply.json = {{"ok", v.ok},
                {"records", v.records},
                {"head_seq", v.head_seq},
                {"checkpoints", v.checkpoints},
                {"signed_seq", v.signed_seq},
                {"unconfirmed", v.unconfirmed},
                {"source", where}};
  if (!v.ok) {
    reply.json["problem"] = v.problem;
    reply.exit_code = kExitFailed;
  }
  reply.text = StrCat(service::DescribeVerdict(v), " (", where, ")\n");
  return reply;
}

absl::StatusOr<std::vector<uint8_t>> ReadCheckpointFile(const std::string& path) {
  auto bytes = pki::ReadFileBytes(path, 1 << 20);
  if (!bytes.ok()) return bytes.status();
  if (bytes->empty()) return absl::InvalidArgumentError(StrCat(path, ": empty checkpoint file"));
  return pki::PemToDer(*bytes);
}

absl::StatusOr<ossl::UniquePtr<X509>> ReadCaCert(const std::string& path) {
  auto certs = pki::ReadPemCertificates(path);
  if (!certs.ok()) return certs.status();
  return std::move(certs->front());
}

absl::StatusOr<Reply> RunVerifyRemote(Client& client, const VerifyOptions& o) {
  v1::VerifyAuditRequest in;
  if (!o.checkpoint.empty()) {
    auto held = ReadCheckpointFile(o.checkpoint);
    if (!held.ok()) return held.status();
    // The daemon checks it with its own CA certificate; with --ca-cert the
    // auditor checks it against the certificate they trust as well.
    if (!o.ca_cert.empty()) {
      auto ca = ReadCaCert(o.ca_cert);
      if (!ca.ok()) return ca.status();
      auto body = pki::ParseAuditCheckpoint(*held, ca->get());
      if (!body.ok()) {
        return absl::InvalidArgumentError(StrCat(o.checkpoint, ": not a checkpoint signed by ",
                                                 o.ca_cert, ": ", body.status().message()));
      }
    }
    in.set_checkpoint(std::string(held->begin(), held->end()));
  }
  v1::VerifyAuditResponse resp;
  auto ctx = client.Context();
  if (auto st = client.Check(client.audit().VerifyAudit(ctx.get(), in, &resp)); !st.ok()) return st;
  service::AuditVerdict v;
  v.ok = resp.ok();
  v.records = resp.records();
  v.problem = resp.problem();
  v.checkpoints = resp.checkpoints();
  v.signed_seq = resp.signed_seq();
  v.unconfirmed = resp.unconfirmed();
  v.head_seq = resp.head_seq();
  v.signed_number = resp.checkpoints();
  return VerifyReply(v, StrCat("daemon ", client.target()));
}

absl::StatusOr<Reply> RunVerifyOffline(const VerifyOptions& o) {
  const std::string& path = o.database;
  // OpenSqliteStore creates missing files; a missing backup is an error.
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(StrCat(path, ": no such database file"));
  }
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(StrCat(path, ": not a file"));
  std::optional<std::vector<uint8_t>> held;
  if (!o.checkpoint.empty()) {
    auto bytes = ReadCheckpointFile(o.checkpoint);
    if (!bytes.ok()) return bytes.status();
    held = std::move(*bytes);
  }
  auto store = service::OpenSqliteStore(path);
  if (!store.ok()) return store.status();
  auto checkpoints = (*store)->ReadAuditCheckpoints();
  if (!checkpoints.ok()) return checkpoints.status();
  if (o.ca_cert.empty() && (!checkpoints->empty() || held)) {
    return absl::InvalidArgumentError(
        StrCat(path, " holds ", checkpoints->size(),
               " signed checkpoints: give --ca-cert PEM (the CA certificate they must be "
               "signed by) to check them"));
  }
  ossl::UniquePtr<X509> ca;
  if (!o.ca_cert.empty()) {
    auto read = ReadCaCert(o.ca_cert);
    if (!read.ok()) return read.status();
    ca = std::move(*read);
  }
  auto verdict = service::VerifyStoredAudit(**store, ca.get(), held);
  if (!verdict.ok()) return verdict.status();
  return VerifyReply(*verdict, StrCat("database ", path));
}

absl::StatusOr<Reply> RunCheckpoint(Client& client, const std::string& out_path) {
  v1::GetAuditCheckpointResponse resp;
  auto ctx = client.Context();
  if (auto st = client.Check(
          client.audit().GetAuditCheckpoint(ctx.get(), v1::GetAuditCheckpointRequest(), &resp));
      !st.ok())
    return st;
  const std::vector<uint8_t> der(resp.checkpoint().begin(), resp.checkpoint().end());
  Reply reply;
  reply.json = {{"number", resp.number()}, {"seq", resp.seq()}};
  if (out_path.empty()) {
    std::string pem = "-----BEGIN CMS-----\n";
    const std::string b64 = pki::Base64Encode(der);
    for (size_t i = 0; i < b64.size(); i += 64) pem += b64.substr(i, 64) + "\n";
    pem += "-----END CMS-----\n";
    reply.json["checkpoint_pem"] = pem;
    reply.text = pem;
    return reply;
  }
  if (auto st = pki::WriteFileAtomically(out_path, der, pki::Overwrite::kReplace); !st.ok()) {
    return st;
  }
  reply.json["out"] = out_path;
  reply.text =
      StrCat("audit checkpoint ", resp.number(), " (seq ", resp.seq(), ") written to ", out_path,
             "\ncheck it: openssl cms -verify -binary -inform DER -purpose any -in ", out_path,
             " -CAfile CA.pem\n");
  return reply;
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
    action = WithClient(
        out, conn, [r](Client& c) { return RunRead(c, *r); }, Failover::kIdempotent);
  });

  auto v = std::make_shared<VerifyOptions>();
  CLI::App* verify = audit->add_subcommand(
      "verify",
      "Check the hash chain and every signed checkpoint: on the daemon, or offline in a database "
      "file");
  verify->add_option("--database", v->database,
                     "Check this SQLite database file (e.g. a backup) instead; needs no daemon");
  verify->add_option("--checkpoint", v->checkpoint,
                     "A checkpoint exported earlier (audit checkpoint --out): detects truncation "
                     "and rewriting since");
  verify->add_option("--ca-cert", v->ca_cert,
                     "The CA certificate (PEM) checkpoints must be signed by (needed offline)");
  verify->footer(
      "Exit codes: 0 the log is intact, 1 it is broken (the problem names the first bad\n"
      "record or checkpoint: edited, deleted, reordered, truncated, rewritten), 3 not an\n"
      "Auditor, 4 no such database file. Records after the newest checkpoint are reported\n"
      "as unconfirmed: chained, but no signature vouches for them yet.");
  verify->callback([&out, &conn, &action, v] {
    if (!v->database.empty()) {
      action = [&out, v] {
        auto reply = RunVerifyOffline(*v);
        if (!reply.ok()) return out.Fail(reply.status());
        out.Result(reply->json, reply->text);
        return reply->exit_code;
      };
      return;
    }
    action = WithClient(
        out, conn, [v](Client& c) { return RunVerifyRemote(c, *v); }, Failover::kIdempotent);
  });

  auto checkpoint_out = std::make_shared<std::string>();
  CLI::App* checkpoint = audit->add_subcommand(
      "checkpoint",
      "Export the newest signed checkpoint (the daemon signs its head first if it moved)");
  checkpoint->add_option("--out", *checkpoint_out,
                         "Write it (DER) to FILE; default: PEM on stdout");
  checkpoint->callback([&out, &conn, &action, checkpoint_out] {
    action = WithClient(out, conn,
                        [checkpoint_out](Client& c) { return RunCheckpoint(c, *checkpoint_out); });
  });
}

}  // namespace keywarden::cli
