// keywarden: the operator's command-line tool.
#include <cstdlib>

#include <CLI/CLI.hpp>

#include "cli/client.h"
#include "cli/commands.h"
#include "cli/output.h"

namespace keywarden::cli {

std::string DefaultModule(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("KEYWARDEN_PKCS11_MODULE");
  return env != nullptr ? env : "";
}

}  // namespace keywarden::cli

int main(int argc, char** argv) {
  using namespace keywarden::cli;
  CLI::App app{
      "keywarden: hardware-backed CA key service, key archival and recovery.\n"
      "Exit codes: 0 ok, 1 failed, 2 usage, 3 refused, 4 not found."};
  app.require_subcommand(1);
  // Top-level options (--json, the connection) may also follow the verb.
  app.fallthrough();
  app.footer(
      "Verbs that talk to keywardend use mutual TLS: --server, --client-cert, --client-key,\n"
      "--server-ca (or $KEYWARDEN_SERVER, $KEYWARDEN_CLIENT_CERT, $KEYWARDEN_CLIENT_KEY,\n"
      "$KEYWARDEN_SERVER_CA), given before or after the verb. --json prints one JSON object\n"
      "on stdout, errors included. Run `keywarden VERB --help` for each verb.");
  Output out;
  app.add_flag("--json", out.json, "Print results as JSON");
  ConnectionOptions conn;
  AddConnectionOptions(app, conn);
  Action action;
  RegisterTokenCommands(app, out, action);
  RegisterCeremonyCommands(app, out, action);
  RegisterEnrollCommands(app, out, conn, action);
  RegisterRequestCommands(app, out, conn, action);
  RegisterOfficerCommands(app, out, conn, action);
  RegisterCaCommands(app, out, conn, action);
  RegisterAuditCommands(app, out, conn, action);
  RegisterBackupCommands(app, out, conn, action);
  RegisterArchivalCommands(app, out, conn, action);
  RegisterImportCommands(app, out, conn, action);
  RegisterRecoveryCommands(app, out, action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }
  return action ? action() : kExitUsage;
}
