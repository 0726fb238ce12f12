// Key archival administration (CA Administrator):
//   keywarden kra [list]       the configured KRAs and the state of each
//   keywarden kra reload       validate them again (files, CRLs, database)
//   keywarden kra rewrap       KRA rollover (cli/rewrap_commands.cc)
//   (importpfx, certutil -importKMS, is in import_commands.cc)
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <cctype>

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

// A password for the recovery script: letters and digits only, so it needs
// no quoting in a shell (the seed's batch file generates them the same way).
std::string GeneratePassword() {
  static constexpr char kAlphabet[] = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
  std::string out;
  unsigned char bytes[64];
  while (out.size() < 20) {
    if (RAND_bytes(bytes, sizeof bytes) != 1) break;
    for (unsigned char b : bytes) {
      if (b < 4 * (sizeof kAlphabet - 1) && out.size() < 20)
        out += kAlphabet[b % (sizeof kAlphabet - 1)];
    }
  }
  OPENSSL_cleanse(bytes, sizeof bytes);
  return out;
}

// "alice-611e23c2....rec": the CN (or "key") made safe for a file name.
std::string BlobFileName(const v1::ArchivedKeyCandidate& c, const char* extension) {
  std::string cn;
  const std::string& subject = c.certificate().subject();
  if (size_t pos = subject.find("CN="); pos != std::string::npos) {
    for (size_t i = pos + 3; i < subject.size() && subject[i] != ','; ++i) {
      const char ch = subject[i];
      cn += std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' ? ch : '_';
    }
  }
  if (cn.empty()) cn = "key";
  return StrCat(cn, "-", c.certificate().serial(), extension);
}

std::string CandidateText(const v1::ArchivedKeyCandidate& c) {
  const auto& cert = c.certificate();
  std::vector<std::pair<std::string, std::string>> rows = {
      {"Serial Number", cert.serial()},
      {"Subject", cert.subject()},
  };
  if (!cert.upn().empty()) rows.push_back({"UPN", cert.upn()});
  if (!cert.email().empty()) rows.push_back({"E-mail", cert.email()});
  rows.push_back({"NotBefore", FormatTime(cert.not_before())});
  rows.push_back({"NotAfter", FormatTime(cert.not_after())});
  rows.push_back({"Template", cert.template_name()});
  rows.push_back({"Cert Hash(sha1)", cert.sha1()});
  rows.push_back({"Request", std::to_string(c.request_id())});
  rows.push_back({"Archive", c.scheme()});
  std::vector<std::string> kras(c.kra_sha1().begin(), c.kra_sha1().end());
  rows.push_back({"KRA hashes", StrJoin(kras, ", ")});
  std::string text = KeyValues(rows);
  // With --history: the envelopes KRA rollovers replaced, oldest first.
  for (const auto& h : c.history()) {
    std::vector<std::string> old_kras(h.kra_sha1().begin(), h.kra_sha1().end());
    text += StrCat(
        "  Replaced envelope ", h.version(), " (getkey --from-history ", h.version(), ")\n",
        KeyValues({{"    Replaced", StrCat(FormatTime(h.replaced_at()), " by ", h.replaced_by())},
                   {"    Archive", h.scheme()},
                   {"    KRA hashes", StrJoin(old_kras, ", ")},
                   {"    SHA-256", h.envelope_sha256()}}));
  }
  return text;
}

nlohmann::json HistoryJson(const v1::ArchivedKeyCandidate& k) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& h : k.history()) {
    list.push_back(
        {{"version", h.version()},
         {"replaced_at", FormatIsoTime(h.replaced_at())},
         {"replaced_by", h.replaced_by()},
         {"scheme", h.scheme()},
         {"kra_sha1", std::vector<std::string>(h.kra_sha1().begin(), h.kra_sha1().end())},
         {"envelope_sha256", h.envelope_sha256()}});
  }
  return list;
}

// One candidate for --json: what an operator needs to choose, dates in
// ISO 8601 UTC.
nlohmann::json CandidateJson(const v1::ArchivedKeyCandidate& k) {
  const auto& cert = k.certificate();
  return {{"serial", cert.serial()},
          {"subject", cert.subject()},
          {"upn", cert.upn()},
          {"email", cert.email()},
          {"request_id", k.request_id()},
          {"requester", k.requester()},
          {"template", cert.template_name()},
          {"not_before", FormatIsoTime(cert.not_before())},
          {"not_after", FormatIsoTime(cert.not_after())},
          {"sha1", cert.sha1()},
          {"scheme", k.scheme()},
          {"kra_sha1", std::vector<std::string>(k.kra_sha1().begin(), k.kra_sha1().end())},
          {"history", HistoryJson(k)}};
}

// A complete recovery script, like the seed's `certutil -v -getkey` batch
// file: getkey per serial, recoverkey per blob with a generated password,
// mergepfx into one file, clean-up, and the final password printed.
std::string RecoveryScript(const std::string& search,
                           const std::vector<v1::ArchivedKeyCandidate>& candidates) {
  std::string script = StrCat(
      "#!/bin/sh\n# Key recovery for \"", search, "\" (made by keywarden getkey -v).\n",
      "# Run it as a Certificate Manager who holds a KRA card (or hand the .rec files to one).\n",
      "# Needs: the connection variables (KEYWARDEN_SERVER, KEYWARDEN_CLIENT_CERT,\n",
      "# KEYWARDEN_CLIENT_KEY, KEYWARDEN_SERVER_CA) and KEYWARDEN_KRA_CARD, the PKCS#11 URI\n",
      "# of the KRA card (e.g. pkcs11:token=kra-card-1).\n#\n");
  for (const auto& c : candidates) {
    std::string text = CandidateText(c);
    size_t pos = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      script += StrCat("#   ", text.substr(pos, nl - pos), "\n");
      if (nl == std::string::npos) break;
      pos = nl + 1;
    }
    script += "#\n";
  }
  script +=
      "set -eu\n: \"${KEYWARDEN_KRA_CARD:?set KEYWARDEN_KRA_CARD to the KRA card's PKCS#11 "
      "URI}\"\nkeywarden ca cert --out recovery-ca.pem\n";
  std::vector<std::string> passwords, pfx_files;
  for (const auto& c : candidates) {
    const std::string rec = BlobFileName(c, ".rec");
    script += StrCat("keywarden getkey ", c.certificate().serial(), " \"", rec, "\"\n");
  }
  for (const auto& c : candidates) {
    const std::string rec = BlobFileName(c, ".rec"), pfx = BlobFileName(c, ".p12");
    passwords.push_back(GeneratePassword());
    pfx_files.push_back(pfx);
    script +=
        StrCat("keywarden recoverkey --card \"$KEYWARDEN_KRA_CARD\" --ca-cert recovery-ca.pem -p ",
               passwords.back(), " \"", rec, "\" \"", pfx, "\"\n");
  }
  std::string final_name = BlobFileName(candidates.front(), "");
  final_name = final_name.substr(0, final_name.rfind('-')) + ".p12";
  std::string final_password = passwords.front();
  if (candidates.size() > 1) {
    final_password = GeneratePassword();
    script += StrCat("keywarden mergepfx -p \"", StrJoin(passwords, ","), ",", final_password,
                     "\" \"", StrJoin(pfx_files, ","), "\" \"", final_name, "\"\n");
  } else {
    script += StrCat("mv \"", pfx_files.front(), "\" \"", final_name, "\"\n");
  }
  for (const auto& c : candidates) {
    script += StrCat("rm -f \"", BlobFileName(c, ".rec"), "\"\n");
    if (candidates.size() > 1) script += StrCat("rm -f \"", BlobFileName(c, ".p12"), "\"\n");
  }
  script +=
      StrCat("rm -f recovery-ca.pem\necho \"", final_name, " PASSWORD: ", final_password, "\"\n");
  return script;
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
  // CLI11 runs this callback after the subcommand's: list only when no
  // subcommand was given, else `kra reload` would be overwritten by a list.
  kra->require_subcommand(0, 1);
  kra->callback([kra, list_action] {
    if (kra->get_subcommands().empty()) list_action();
  });
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

  RegisterKraRewrap(kra, out, conn, action);

  struct GetKeyOptions {
    std::string search;
    std::string out;
    bool verbose = false;
    bool history = false;
    int64_t from_history = 0;
  };
  auto gk = std::make_shared<GetKeyOptions>();
  CLI::App* getkey = app.add_subcommand(
      "getkey",
      "Find archived keys and retrieve a recovery blob, like certutil -getkey (Certificate "
      "Manager). The blob is encrypted to KRAs: recover it with `keywarden recoverkey`");
  getkey
      ->add_option("search", gk->search,
                   "Serial number (spaces allowed), SHA-1 hash, request id, CN, subject, UPN or "
                   "e-mail, or DOMAIN\\user; each matched exactly (user@domain and DOMAIN\\user "
                   "through the [[account]] directory)")
      ->required();
  getkey->add_option("out", gk->out,
                     "Recovery blob file to write (must not exist); without it the matching "
                     "keys and the KRAs that can decrypt each are listed");
  getkey->add_flag("-v,--verbose", gk->verbose,
                   "Print a complete recovery script (getkey, recoverkey, mergepfx, clean-up)");
  getkey->add_flag("--history", gk->history,
                   "Also list the envelopes KRA rollovers (keywarden kra rewrap) replaced, with "
                   "their KRAs, oldest first");
  getkey
      ->add_option("--from-history", gk->from_history,
                   "Write the recovery blob of this replaced envelope (a version --history "
                   "lists) instead of the current one, for the KRAs it was encrypted to")
      ->check(CLI::PositiveNumber);
  getkey->callback([&out, &conn, &action, gk] {
    action = WithClient(out, conn, [&out, gk](Client& c) -> absl::StatusOr<Reply> {
      if (gk->from_history != 0 && gk->out.empty()) {
        return absl::InvalidArgumentError(
            "--from-history writes a recovery blob: give the blob file to write (OUT)");
      }
      if (gk->from_history != 0 && gk->verbose) {
        return absl::InvalidArgumentError(
            "--from-history and -v cannot be combined: the recovery script is for the current "
            "envelopes");
      }
      if (!gk->out.empty()) {
        if (auto st = pki::CheckWritable(gk->out, pki::Overwrite::kRefuse); !st.ok()) return st;
      }
      v1::GetArchivedKeyRequest request;
      request.set_search(gk->search);
      request.set_blob(!gk->out.empty());
      request.set_history(gk->history || gk->from_history != 0);
      request.set_history_version(gk->from_history);
      v1::GetArchivedKeyResponse result;
      auto ctx = c.Context();
      if (auto st = c.Check(c.officer().GetArchivedKey(ctx.get(), request, &result)); !st.ok()) {
        // Ambiguous, with --json: the candidates as objects rather than the
        // error's text lines (listed again: a listing releases no blob).
        if (out.json && PayloadOf(st, kHResultPayload) == "0x8002802c") {
          v1::GetArchivedKeyRequest again;
          again.set_search(gk->search);
          v1::GetArchivedKeyResponse listed;
          auto list_ctx = c.Context();
          if (c.Check(c.officer().GetArchivedKey(list_ctx.get(), again, &listed)).ok() &&
              listed.candidates_size() > 1) {
            nlohmann::json list = nlohmann::json::array();
            for (const auto& k : listed.candidates()) list.push_back(CandidateJson(k));
            const std::string message(st.message());
            Reply reply;
            reply.json = {{"search", gk->search},
                          {"error", message.substr(0, message.find('\n'))},
                          {"code", absl::StatusCodeToString(st.code())},
                          {"hresult", "0x8002802c"},
                          {"symbol", PayloadOf(st, kSymbolPayload).value_or("")},
                          {"candidates", list}};
            reply.exit_code = Output::ExitCodeFor(st);
            return reply;
          }
        }
        return st;
      }
      Reply reply;
      std::vector<v1::ArchivedKeyCandidate> candidates(result.candidates().begin(),
                                                       result.candidates().end());
      nlohmann::json list = nlohmann::json::array();
      std::string text;
      for (const auto& k : candidates) {
        list.push_back(CandidateJson(k));
        text += StrCat(CandidateText(k), "\n");
      }
      reply.json = {{"search", gk->search}, {"candidates", list}};
      if (candidates.empty()) {
        std::vector<std::string> searched(result.searched().begin(), result.searched().end());
        reply.json["searched"] = searched;
        reply.text = StrCat("No archived key matches \"", gk->search, "\"\n");
        for (const auto& line : searched) reply.text += StrCat("  ", line, "\n");
        reply.exit_code = kExitNotFound;
        return reply;
      }
      if (!gk->out.empty()) {
        const std::string& blob = result.recovery_blob();
        if (auto st = pki::WriteFileAtomically(
                gk->out,
                std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(blob.data()),
                                         blob.size()),
                pki::Overwrite::kRefuse, 0644);
            !st.ok()) {
          return st;
        }
        reply.json["file"] = gk->out;
        if (gk->from_history != 0) reply.json["history_version"] = gk->from_history;
        text += StrCat("Recovery blob written to ", gk->out, " (", blob.size(), " bytes, ",
                       gk->from_history != 0 ? StrCat("replaced envelope ", gk->from_history,
                                                      ", encrypted to the KRAs listed under it")
                                             : std::string("encrypted to the KRAs listed"),
                       ")\n");
      }
      if (gk->verbose) {
        const std::string script = RecoveryScript(gk->search, candidates);
        reply.json["script"] = script;
        reply.text = gk->out.empty() ? script : text + script;
      } else {
        reply.text = text;
      }
      return reply;
    });
  });
}

}  // namespace keywarden::cli
