// Key archival administration (CA Administrator):
//   keywarden kra [list]       the configured KRAs and the state of each
//   keywarden kra reload       validate them again (files, CRLs, database)
//   keywarden importpfx FILE   archive the key of a PKCS#12 (certutil -importPFX;
//                              -f for another CA's certificate, as certutil -f)
#include <openssl/crypto.h>

#include "cli/client.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "hsm/pin.h"
#include "hsm/secret.h"
#include "hsm/strings.h"
#include "pki/files.h"

namespace keywarden::cli {
namespace {

Reply KraReply(const v1::KeyRecoveryAgents& kras, const std::string& title) {
  Reply reply;
  nlohmann::json list = nlohmann::json::array();
  std::string text = StrCat(title, "\n");
  size_t valid = 0;
  for (const auto& a : kras.agents()) {
    list.push_back({{"index", a.index()},
                    {"configured", a.configured()},
                    {"state", a.state()},
                    {"status_code", a.status_code()},
                    {"message", a.message()},
                    {"subject", a.subject()},
                    {"issuer", a.issuer()},
                    {"serial", a.serial()},
                    {"sha1", a.sha1()},
                    {"not_before", a.not_before()},
                    {"not_after", a.not_after()},
                    {"issued_by_this_ca", a.issued_by_this_ca()}});
    if (a.state() == "valid") ++valid;
    std::vector<std::pair<std::string, std::string>> rows = {{"Configured", a.configured()},
                                                             {"Status", a.state()}};
    if (!a.subject().empty()) {
      rows.push_back({"Subject", a.subject()});
      rows.push_back({"Issuer", a.issuer()});
      rows.push_back({"Serial", a.serial()});
      rows.push_back({"SHA-1", a.sha1()});
      rows.push_back(
          {"Valid", StrCat(FormatTime(a.not_before()), " to ", FormatTime(a.not_after()))});
    }
    if (!a.message().empty()) rows.push_back({"Reason", a.message()});
    text += StrCat("\nKRA ", a.index(), "\n", KeyValues(rows));
  }
  reply.json = {{"agents", list},
                {"per_archival", kras.per_archival()},
                {"archival_enabled", kras.archival_enabled()},
                {"archival_status", kras.archival_status()},
                {"archival_status_code", kras.archival_status_code()}};
  text += StrCat("\n", valid, " of ", kras.agents_size(), " valid; ", kras.per_archival(),
                 " used per archival: ",
                 kras.archival_enabled()
                     ? std::string("archival requests are accepted")
                     : StrCat("archival requests are refused: ", kras.archival_status()),
                 "\n");
  reply.text = text;
  return reply;
}

}  // namespace

void RegisterArchivalCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                              Action& action) {
  CLI::App* kra = app.add_subcommand(
      "kra", "Key Recovery Agents: list them with their status, or validate them again");
  auto list_action = [&out, &conn, &action] {
    action = WithClient(out, conn, [](Client& c) -> absl::StatusOr<Reply> {
      v1::KeyRecoveryAgents result;
      auto ctx = c.Context();
      if (auto st = c.Check(c.administration().ListKeyRecoveryAgents(
              ctx.get(), v1::ListKeyRecoveryAgentsRequest(), &result));
          !st.ok()) {
        return st;
      }
      return KraReply(result, "Key Recovery Agents");
    });
  };
  kra->callback(list_action);
  kra->add_subcommand("list",
                      "The configured KRAs and the state of each (CA Administrator, "
                      "Auditor)")
      ->callback(list_action);
  kra->add_subcommand("reload",
                      "Validate every configured KRA certificate again: re-read the certificate "
                      "and CRL files, ask the database, restart the round robin (CA "
                      "Administrator)")
      ->callback([&out, &conn, &action] {
        action = WithClient(out, conn, [](Client& c) -> absl::StatusOr<Reply> {
          v1::KeyRecoveryAgents result;
          auto ctx = c.Context();
          if (auto st = c.Check(c.administration().ReloadKeyRecoveryAgents(
                  ctx.get(), v1::ReloadKeyRecoveryAgentsRequest(), &result));
              !st.ok()) {
            return st;
          }
          return KraReply(result, "Key Recovery Agents (validated again)");
        });
      });

  struct ImportOptions {
    std::string file;
    std::string password;
    std::string password_source;
    bool foreign = false;
  };
  auto opts = std::make_shared<ImportOptions>();
  CLI::App* import = app.add_subcommand(
      "importpfx",
      "Archive the private key of a PKCS#12 (PFX) for a certificate this CA issued, like "
      "certutil -importPFX (CA Administrator)");
  import->add_option("file", opts->file, "PKCS#12 file (DER)")->required();
  import->add_option("-p,--password", opts->password,
                     "The PFX password (visible to other users in the process list: prefer "
                     "--password-source)");
  import->add_option("--password-source", opts->password_source,
                     "Where the PFX password comes from: file:PATH, env:NAME or prompt (default)");
  import->add_flag("-f,--foreign", opts->foreign,
                   "Also accept a certificate issued by another CA (needs KRAF_ENABLEFOREIGN on "
                   "the CA: [flags] enable_foreign = true)");
  import->callback([&out, &conn, &action, opts] {
    action = WithClient(out, conn, [opts](Client& c) -> absl::StatusOr<Reply> {
      auto pfx = pki::ReadFileBytes(opts->file);
  if (!pfx.ok()) return pfx.status();
  hsm::SecretString password(opts->password);
  if (opts->password.empty()) {
    auto source = hsm::PinSource::Parse(opts->password_source.empty() ? "prompt:PFX password: "
                                                                      : opts->password_source);
    if (!source.ok()) return source.status();
    auto read = source->Read();
    if (!read.ok()) return read.status();
    password = std::move(*read);
  }
  v1::ImportArchivedKeyRequest request;
  request.set_pfx(std::string(pfx->begin(), pfx->end()));
  request.set_password(std::string(password.view()));
  request.set_foreign(opts->foreign);
  v1::ImportArchivedKeyResponse result;
  auto ctx = c.Context();
  grpc::Status status = c.administration().ImportArchivedKey(ctx.get(), request, &result);
  // The request held the password: wipe it before anything else.
  OPENSSL_cleanse(request.mutable_password()->data(), request.password().size());
  if (auto st = c.Check(status); !st.ok()) return st;
  Reply reply;
  nlohmann::json kras = nlohmann::json::array();
  for (const auto& k : result.kra_sha1()) kras.push_back(k);
  reply.json = {{"request_id", result.request_id()},
                {"serial", result.serial()},
                {"kra_sha1", kras},
                {"foreign", result.foreign()}};
  reply.text =
      StrCat("Archived the key of ", opts->file, "\n",
             KeyValues({{"Request", std::to_string(result.request_id())},
                        {"Serial", result.serial()},
                        {"Foreign", result.foreign() ? "yes" : "no"},
                        {"KRAs", StrJoin(std::vector<std::string>(result.kra_sha1().begin(),
                                                                  result.kra_sha1().end()),
                                         ", ")}}));
  return reply;
});
}  // namespace keywarden::cli
);
}

}  // namespace keywarden::cli
