// keywarden officer: a Certificate Manager's work, like certutil -view,
// -resubmit, -deny and -revoke.
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "hsm/strings.h"
#include "pki/files.h"

namespace keywarden::cli {
namespace {

struct ListOptions {
  bool pending = false;
  bool issued = false;
  bool denied = false;
  bool failed = false;
  int limit = 0;
};

struct FindOptions {
  std::string serial;
  std::string sha1;
  std::string cn;
  std::string upn;
  std::string email;
  std::string subject;
  int64_t request_id = 0;
  int limit = 0;
};

// Subjects can be long; tables show them whole (the last column is not padded).
std::string Or(const std::string& s, const char* dash = "-") {
  return s.empty() ? dash : s;
}

absl::StatusOr<Reply> RunList(Client& client, const ListOptions& o) {
  v1::ListRequestsRequest in;
  in.set_disposition(o.pending  ? v1::DISPOSITION_PENDING
                     : o.issued ? v1::DISPOSITION_ISSUED
                     : o.denied ? v1::DISPOSITION_DENIED
                     : o.failed ? v1::DISPOSITION_FAILED
                                : v1::DISPOSITION_UNSPECIFIED);
  in.set_limit(o.limit);
  v1::ListRequestsResponse resp;
  auto ctx = client.Context();
  if (auto st = client.Check(client.officer().ListRequests(ctx.get(), in, &resp)); !st.ok())
    return st;
  Reply reply;
  nlohmann::json requests = nlohmann::json::array();
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : resp.requests()) {
    requests.push_back(ToJson(r));
    rows.push_back({std::to_string(r.request_id()), DispositionName(r.disposition()),
                    FormatTime(r.submitted_at()), Or(r.template_name()), Or(r.serial()),
                    r.requester(), Or(r.subject())});
  }
  reply.json = {{"requests", requests}};
  reply.text =
      rows.empty()
          ? "no requests\n"
          : Table({"ID", "DISPOSITION", "SUBMITTED", "TEMPLATE", "SERIAL", "REQUESTER", "SUBJECT"},
                  rows);
  return reply;
}

absl::StatusOr<Reply> RunShow(Client& client, int64_t id) {
  v1::GetRequestRequest in;
  in.set_request_id(id);
  v1::RequestInfo r;
  auto ctx = client.Context();
  if (auto st = client.Check(client.officer().GetRequest(ctx.get(), in, &r)); !st.ok()) return st;
  return Reply{ToJson(r), StrCat("Request ", r.request_id(), "\n", Describe(r))};
}

absl::StatusOr<Reply> RunApprove(Client& client, int64_t id, const std::string& out_path) {
  if (!out_path.empty()) {
    if (auto st = pki::CheckWritable(out_path, pki::Overwrite::kRefuse); !st.ok()) return st;
  }
  v1::ApproveRequest in;
  in.set_request_id(id);
  v1::EnrollmentResult result;
  auto ctx = client.Context();
  if (auto st = client.Check(client.officer().Approve(ctx.get(), in, &result)); !st.ok()) return st;
  return EnrollmentReply(result, out_path);
}

absl::StatusOr<Reply> RunDeny(Client& client, int64_t id, const std::string& reason) {
  v1::DenyRequest in;
  in.set_request_id(id);
  in.set_reason(reason);
  v1::RequestInfo r;
  auto ctx = client.Context();
  if (auto st = client.Check(client.officer().Deny(ctx.get(), in, &r)); !st.ok()) return st;
  return Reply{ToJson(r), StrCat("Request ", r.request_id(), " denied\n", Describe(r))};
}

// certutil -revoke SERIAL Unrevoke: releases a certificateHold.
absl::StatusOr<Reply> RunReleaseHold(Client& client, const std::string& serial) {
  v1::ReleaseHoldRequest in;
  in.set_serial(serial);
  v1::CertificateInfo c;
  auto ctx = client.Context();
  if (auto st = client.Check(client.officer().ReleaseHold(ctx.get(), in, &c)); !st.ok()) return st;
  nlohmann::json j = ToJson(c);
  j.erase("pem");
  return Reply{j, StrCat("Certificate ", c.serial(),
                         " released from certificateHold (unrevoked); a new CRL without it has "
                         "been published\n",
                         Describe(c))};
}

bool IsUnrevoke(const std::string& reason_text) {
  return AsciiLower(reason_text) == "unrevoke" || reason_text == "-1";
}

absl::StatusOr<Reply> RunRevoke(Client& client, const std::string& serial,
                                const std::string& reason_text) {
  if (IsUnrevoke(reason_text)) return RunReleaseHold(client, serial);
  auto reason = ParseRevocationReason(reason_text);
  if (!reason.ok()) return reason.status();
  v1::RevokeRequest in;
  in.set_serial(serial);
  in.set_reason(*reason);
  v1::CertificateInfo c;
  auto ctx = client.Context();
  if (auto st = client.Check(client.officer().Revoke(ctx.get(), in, &c)); !st.ok()) return st;
  nlohmann::json j = ToJson(c);
  j.erase("pem");
  return Reply{j, StrCat("Certificate ", c.serial(), " revoked (",
                         RevocationReasonName(c.revocation_reason()),
                         "); a new CRL has been published\n", Describe(c))};
}

absl::StatusOr<Reply> RunFind(Client& client, const FindOptions& o) {
  v1::FindCertificatesRequest in;
  in.set_serial(o.serial);
  in.set_sha1(o.sha1);
  in.set_common_name(o.cn);
  in.set_upn(o.upn);
  in.set_email(o.email);
  in.set_subject_contains(o.subject);
  in.set_request_id(o.request_id);
  in.set_limit(o.limit);
  v1::FindCertificatesResponse resp;
  auto ctx = client.Context();
  if (auto st = client.Check(client.officer().FindCertificates(ctx.get(), in, &resp)); !st.ok())
    return st;
  Reply reply;
  nlohmann::json certs = nlohmann::json::array();
  std::vector<std::vector<std::string>> rows;
  for (const auto& c : resp.certificates()) {
    certs.push_back(ToJson(c));
    rows.push_back({c.serial(), c.request_id() != 0 ? std::to_string(c.request_id()) : "-",
                    FormatTime(c.not_after()),
                    c.revoked() ? RevocationReasonName(c.revocation_reason()) : "no",
                    Or(c.template_name()), c.sha1(), c.subject()});
  }
  reply.json = {{"certificates", certs}};
  reply.text =
      rows.empty()
          ? "no certificates match\n"
          : Table({"SERIAL", "REQUEST", "NOT AFTER", "REVOKED", "TEMPLATE", "SHA-1", "SUBJECT"},
                  rows);
  return reply;
}

}  // namespace

void RegisterOfficerCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                             Action& action) {
  CLI::App* officer =
      app.add_subcommand("officer", "Certificate Manager: review, approve, deny and revoke");
  officer->require_subcommand(1);

  auto l = std::make_shared<ListOptions>();
  CLI::App* list = officer->add_subcommand("list", "List requests, newest first");
  auto* pending = list->add_flag("--pending", l->pending, "Only requests waiting for approval");
  auto* issued = list->add_flag("--issued", l->issued, "Only issued requests");
  auto* denied = list->add_flag("--denied", l->denied, "Only denied requests");
  auto* failed = list->add_flag("--failed", l->failed, "Only failed requests");
  pending->excludes(issued, denied, failed);
  issued->excludes(pending, denied, failed);
  denied->excludes(pending, issued, failed);
  failed->excludes(pending, issued, denied);
  list->add_option("--limit", l->limit, "At most N requests (default 100)")
      ->check(CLI::Range(1, 10000));
  list->callback([&out, &conn, &action, l] {
    action = WithClient(
        out, conn, [l](Client& c) { return RunList(c, *l); }, Failover::kIdempotent);
  });

  auto show_id = std::make_shared<int64_t>(0);
  CLI::App* show = officer->add_subcommand("show", "Show one request in full");
  show->add_option("ID", *show_id, "Request id")->required()->check(CLI::PositiveNumber);
  show->callback([&out, &conn, &action, show_id] {
    action = WithClient(
        out, conn, [show_id](Client& c) { return RunShow(c, *show_id); }, Failover::kIdempotent);
  });

  auto approve_id = std::make_shared<int64_t>(0);
  auto approve_out = std::make_shared<std::string>();
  CLI::App* approve =
      officer->add_subcommand("approve", "Issue a pending request (like certutil -resubmit)");
  approve->add_option("ID", *approve_id, "Request id")->required()->check(CLI::PositiveNumber);
  approve->add_option("--out", *approve_out,
                      "Where to write the issued certificate (PEM; must not exist)");
  approve->footer(
      "Exit codes: 0 issued, 1 the CA failed or denied it on re-checking,\n"
      "3 the request is not pending, 4 no such request.");
  approve->callback([&out, &conn, &action, approve_id, approve_out] {
    action = WithClient(out, conn, [approve_id, approve_out](Client& c) {
      return RunApprove(c, *approve_id, *approve_out);
    });
  });

  auto deny_id = std::make_shared<int64_t>(0);
  auto deny_reason = std::make_shared<std::string>();
  CLI::App* deny = officer->add_subcommand("deny", "Deny a pending request");
  deny->add_option("ID", *deny_id, "Request id")->required()->check(CLI::PositiveNumber);
  deny->add_option("--reason", *deny_reason, "Why, recorded with the request and in the audit log");
  deny->callback([&out, &conn, &action, deny_id, deny_reason] {
    action = WithClient(out, conn, [deny_id, deny_reason](Client& c) {
      return RunDeny(c, *deny_id, *deny_reason);
    });
  });

  auto revoke_serial = std::make_shared<std::string>();
  auto revoke_reason = std::make_shared<std::string>("unspecified");
  CLI::App* revoke = officer->add_subcommand(
      "revoke", "Revoke an issued certificate and publish a new CRL at once");
  revoke->add_option("SERIAL", *revoke_serial, "Serial number in hex (spaces and colons allowed)")
      ->required();
  revoke->add_option("--reason", *revoke_reason,
                     "RFC 5280 CRLReason, number or name: 0 unspecified, 1 keyCompromise, "
                     "2 cACompromise, 3 affiliationChanged, 4 superseded, "
                     "5 cessationOfOperation, 6 certificateHold, 8 removeFromCRL, "
                     "9 privilegeWithdrawn, 10 aACompromise (default unspecified); or "
                     "unrevoke (-1) to release a certificateHold, as certutil -revoke SERIAL "
                     "Unrevoke");
  revoke->callback([&out, &conn, &action, revoke_serial, revoke_reason] {
    action = WithClient(out, conn, [revoke_serial, revoke_reason](Client& c) {
      return RunRevoke(c, *revoke_serial, *revoke_reason);
    });
  });

  auto unrevoke_serial = std::make_shared<std::string>();
  CLI::App* unrevoke = officer->add_subcommand(
      "unrevoke",
      "Release a certificateHold (certutil -revoke SERIAL Unrevoke; the same as revoke SERIAL "
      "--reason unrevoke) and publish a new CRL without it at once");
  unrevoke
      ->add_option("SERIAL", *unrevoke_serial, "Serial number in hex (spaces and colons allowed)")
      ->required();
  unrevoke->footer(
      "Only a certificate revoked with reason certificateHold (6) can be released; any other\n"
      "revocation is final (0x80094003 CERTSRV_E_BAD_REQUESTSTATUS).");
  unrevoke->callback([&out, &conn, &action, unrevoke_serial] {
    action = WithClient(
        out, conn, [unrevoke_serial](Client& c) { return RunReleaseHold(c, *unrevoke_serial); });
  });

  auto f = std::make_shared<FindOptions>();
  CLI::App* find = officer->add_subcommand(
      "find",
      "Find issued certificates; at least one criterion, several must all match (--subject "
      "CN= lists broadly)");
  find->add_option("--serial", f->serial, "Serial number (hex)");
  find->add_option("--sha1", f->sha1, "SHA-1 thumbprint (hex)");
  find->add_option("--cn", f->cn, "Exact common name");
  find->add_option("--upn", f->upn, "Exact user principal name (UPN in the subjectAltName)");
  find->add_option("--email", f->email, "Exact e-mail name (rfc822Name in the subjectAltName)");
  find->add_option("--subject", f->subject, "Case-insensitive part of the subject");
  find->add_option("--request-id", f->request_id, "The request it was issued for")
      ->check(CLI::PositiveNumber);
  find->add_option("--limit", f->limit, "At most N certificates (default 1000)")
      ->check(CLI::Range(1, 100000));
  find->callback([&out, &conn, &action, f] {
    action = WithClient(
        out, conn, [f](Client& c) { return RunFind(c, *f); }, Failover::kIdempotent);
  });
}

}  // namespace keywarden::cli
