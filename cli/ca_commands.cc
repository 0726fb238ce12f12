// keywarden ca: the CA's certificates and CRL (anyone authenticated) and
// its administration (CA Administrators), like certutil -ca.cert,
// -ca.xchg, -getcrl, -CRL and the CA's status.
#include <openssl/x509.h>

#include "cli/client.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "hsm/ossl.h"
#include "hsm/strings.h"
#include "pki/files.h"

namespace keywarden::cli {
namespace {

// A certificate with its chain: PEM to --out, or printed when `print_pem`
// and there is no --out; otherwise a summary for a person.
absl::StatusOr<Reply> ReportChain(const v1::CertificateChain& chain, const std::string& out_path,
                                  const std::string& title, bool print_pem) {
  auto summary = SummarizeCertificate(chain.certificate());
  if (!summary.ok()) return summary.status();
  std::string pem = DerToPem(chain.certificate(), "CERTIFICATE");
  nlohmann::json chain_pem = nlohmann::json::array();
  std::string all = pem;
  for (const auto& c : chain.chain()) {
    const std::string p = DerToPem(c, "CERTIFICATE");
    chain_pem.push_back(p);
    all += p;
  }
  Reply reply;
  reply.json = ToJson(*summary);
  reply.json["pem"] = pem;
  reply.json["chain_pem"] = chain_pem;
  if (out_path.empty() && print_pem) {
    reply.text = all;  // just PEM, so `keywarden ca cert > ca.pem` works
    return reply;
  }
  std::vector<std::pair<std::string, std::string>> rows = {
      {"Subject", summary->subject},
      {"Issuer", summary->issuer},
      {"Serial", summary->serial},
      {"SHA-1", summary->sha1},
      {"SHA-256", summary->sha256},
      {"Valid", StrCat(FormatTime(summary->not_before), " to ", FormatTime(summary->not_after))}};
  if (!out_path.empty()) {
    if (auto st = WriteNewFile(out_path, all); !st.ok()) return st;
    reply.json["file"] = out_path;
    rows.push_back(
        {"Written", StrCat(out_path, " (PEM, certificate and ", chain.chain_size(),
                           " chain certificate", chain.chain_size() == 1 ? "" : "s", ")")});
  }
  reply.text = StrCat(title, "\n", KeyValues(rows));
  return reply;
}

absl::StatusOr<Reply> ReportCrl(const v1::Crl& crl, const std::string& out_path,
                                const std::string& title, bool print_pem) {
  const auto* p = reinterpret_cast<const unsigned char*>(crl.crl().data());
  ossl::UniquePtr<X509_CRL> parsed(d2i_X509_CRL(nullptr, &p, static_cast<long>(crl.crl().size())));
  if (!parsed) return absl::DataLossError("the daemon sent a CRL that does not parse");
  const STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(parsed.get());
  const int entries = revoked != nullptr ? sk_X509_REVOKED_num(revoked) : 0;
  const std::string pem = DerToPem(crl.crl(), "X509 CRL");
  Reply reply;
  reply.json = {{"crl_number", crl.crl_number()},
                {"this_update", crl.this_update()},
                {"next_update", crl.next_update()},
                {"revoked_entries", entries},
                {"pem", pem}};
  if (out_path.empty() && print_pem) {
    reply.text = pem;
    return reply;
  }
  std::vector<std::pair<std::string, std::string>> rows = {
      {"CRL number", std::to_string(crl.crl_number())},
      {"This update", FormatTime(crl.this_update())},
      {"Next update", FormatTime(crl.next_update())},
      {"Revoked", std::to_string(entries)}};
  if (!out_path.empty()) {
    if (auto st = WriteNewFile(out_path, pem); !st.ok()) return st;
    reply.json["file"] = out_path;
    rows.push_back({"Written", StrCat(out_path, " (PEM)")});
  }
  reply.text = StrCat(title, "\n", KeyValues(rows));
  return reply;
}

absl::Status CheckOut(const std::string& out_path) {
  if (out_path.empty()) return absl::OkStatus();
  return pki::CheckWritable(out_path, pki::Overwrite::kRefuse);
}

absl::StatusOr<Reply> RunStatus(Client& client) {
  v1::CaStatus s;
  auto ctx = client.Context();
  if (auto st = client.Check(
          client.administration().GetCaStatus(ctx.get(), v1::GetCaStatusRequest(), &s));
      !st.ok())
    return st;
  nlohmann::json exchange = nlohmann::json::array();
  std::vector<std::vector<std::string>> xrows;
  for (const auto& x : s.exchange()) {
    exchange.push_back({{"serial", x.serial()},
                        {"not_before", x.not_before()},
                        {"not_after", x.not_after()},
                        {"current", x.current()},
                        {"key_label", x.key_label()}});
    xrows.push_back({x.serial(), FormatTime(x.not_before()), FormatTime(x.not_after()),
                     x.current() ? "yes" : "", x.key_label()});
  }
  nlohmann::json templates = nlohmann::json::array();
  std::vector<std::vector<std::string>> trows;
  for (const auto& t : s.templates()) {
    templates.push_back({{"name", t.name()},
                         {"oid", t.oid()},
                         {"pend", t.pend()},
                         {"archival", t.archival()},
                         {"validity_seconds", t.validity_seconds()}});
    const int64_t days = t.validity_seconds() / 86400;
    trows.push_back({t.name(), t.oid().empty() ? "-" : t.oid(), t.pend() ? "pend" : "issue",
                     t.archival(),
                     days * 86400 == t.validity_seconds() ? StrCat(days, "d")
                                                          : StrCat(t.validity_seconds(), "s")});
  }
  Reply reply;
  reply.json = {{"name", s.name()},
                {"subject", s.subject()},
                {"sha1", s.sha1()},
                {"not_after", s.not_after()},
                {"token", s.token()},
                {"role_separation", s.role_separation()},
                {"schema_version", s.schema_version()},
                {"exchange", exchange},
                {"templates", templates}};
  reply.text = StrCat(
      "CA \"", s.name(), "\"\n",
      KeyValues({{"Subject", s.subject()},
                 {"SHA-1", s.sha1()},
                 {"Valid until", FormatTime(s.not_after())},
                 {"Token", s.token()},
                 {"Role separation", s.role_separation() ? "enforced" : "off"},
                 {"Schema version", std::to_string(s.schema_version())}}),
      "\nExchange certificates:\n",
      xrows.empty() ? "  (none)\n"
                    : Table({"SERIAL", "NOT BEFORE", "NOT AFTER", "CURRENT", "KEY LABEL"}, xrows),
      "\nTemplates:\n",
      trows.empty() ? "  (none)\n"
                    : Table({"NAME", "OID", "ACTION", "ARCHIVAL", "VALIDITY"}, trows));
  return reply;
}

}  // namespace

void RegisterCaCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                        Action& action) {
  CLI::App* ca = app.add_subcommand("ca", "The CA's certificates, CRL and status");
  ca->require_subcommand(1);
  const char* out_help = "Write the PEM here (must not exist); without it the PEM is printed";

  auto cert_out = std::make_shared<std::string>();
  CLI::App* cert = ca->add_subcommand("cert", "The CA certificate and its chain (PEM)");
  cert->add_option("--out", *cert_out, out_help);
  cert->callback([&out, &conn, &action, cert_out] {
    action = WithClient(
        out, conn,
        [cert_out](Client& c) -> absl::StatusOr<Reply> {
          if (auto st = CheckOut(*cert_out); !st.ok()) return st;
          v1::CertificateChain chain;
          auto ctx = c.Context();
          if (auto st = c.Check(c.enrollment().GetCaCertificate(
                  ctx.get(), v1::GetCaCertificateRequest(), &chain));
              !st.ok())
            return st;
          return ReportChain(chain, *cert_out, "CA certificate", true);
        },
        Failover::kIdempotent);
  });

  auto xchg_out = std::make_shared<std::string>();
  CLI::App* xchg = ca->add_subcommand(
      "xchg", "The current CA exchange certificate (encrypt archived keys to it) and the CA chain");
  xchg->add_option("--out", *xchg_out, out_help);
  xchg->callback([&out, &conn, &action, xchg_out] {
    action = WithClient(
        out, conn,
        [xchg_out](Client& c) -> absl::StatusOr<Reply> {
          if (auto st = CheckOut(*xchg_out); !st.ok()) return st;
          v1::CertificateChain chain;
          auto ctx = c.Context();
          if (auto st = c.Check(c.enrollment().GetExchangeCertificate(
                  ctx.get(), v1::GetExchangeCertificateRequest(), &chain));
              !st.ok())
            return st;
          return ReportChain(chain, *xchg_out, "CA exchange certificate", true);
        },
        Failover::kIdempotent);
  });

  auto crl_out = std::make_shared<std::string>();
  CLI::App* crl = ca->add_subcommand("crl", "The current CRL (PEM)");
  crl->add_option("--out", *crl_out, out_help);
  crl->callback([&out, &conn, &action, crl_out] {
    action = WithClient(
        out, conn,
        [crl_out](Client& c) -> absl::StatusOr<Reply> {
          if (auto st = CheckOut(*crl_out); !st.ok()) return st;
          v1::Crl result;
          auto ctx = c.Context();
          if (auto st = c.Check(c.enrollment().GetCrl(ctx.get(), v1::GetCrlRequest(), &result));
              !st.ok())
            return st;
          return ReportCrl(result, *crl_out, "Current CRL", true);
        },
        Failover::kIdempotent);
  });

  CLI::App* status =
      ca->add_subcommand("status",
                         "The CA's name, certificate, token, exchange certificates and templates "
                         "(CA Administrator)");
  status->callback(
      [&out, &conn, &action] { action = WithClient(out, conn, RunStatus, Failover::kIdempotent); });

  auto renew_out = std::make_shared<std::string>();
  CLI::App* renew = ca->add_subcommand(
      "renew-xchg",
      "Make a new exchange key and certificate now; the old one stays usable for decryption "
      "until it expires (CA Administrator)");
  renew->add_option("--out", *renew_out, "Also write the new certificate and chain here (PEM)");
  renew->callback([&out, &conn, &action, renew_out] {
    action = WithClient(out, conn, [renew_out](Client& c) -> absl::StatusOr<Reply> {
      if (auto st = CheckOut(*renew_out); !st.ok()) return st;
      v1::CertificateChain chain;
      auto ctx = c.Context();
      if (auto st = c.Check(c.administration().RenewExchangeCertificate(
              ctx.get(), v1::RenewExchangeCertificateRequest(), &chain));
          !st.ok())
        return st;
      return ReportChain(chain, *renew_out, "New CA exchange certificate", false);
    });
  });

  auto publish_out = std::make_shared<std::string>();
  CLI::App* publish =
      ca->add_subcommand("publish-crl", "Sign and publish a new CRL now (CA Administrator)");
  publish->add_option("--out", *publish_out, "Also write the new CRL here (PEM)");
  publish->callback([&out, &conn, &action, publish_out] {
    action = WithClient(out, conn, [publish_out](Client& c) -> absl::StatusOr<Reply> {
      if (auto st = CheckOut(*publish_out); !st.ok()) return st;
      v1::Crl result;
      auto ctx = c.Context();
      if (auto st =
              c.Check(c.administration().PublishCrl(ctx.get(), v1::PublishCrlRequest(), &result));
          !st.ok())
        return st;
      return ReportCrl(result, *publish_out, "Published CRL", false);
    });
  });
}

}  // namespace keywarden::cli
