// Each verb group registers itself on the top-level app.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "absl/status/statusor.h"
#include "cli/output.h"
#include "hsm/token.h"

namespace keywarden::cli {

// The verb chosen on the command line runs this and its value is the exit code.
using Action = std::function<int()>;

void RegisterTokenCommands(CLI::App& app, const Output& out, Action& action);
void RegisterCeremonyCommands(CLI::App& app, const Output& out, Action& action);
// recoverkey, mergepfx, verifykeys: the KRA's offline verbs (no daemon).
void RegisterRecoveryCommands(CLI::App& app, const Output& out, Action& action);

// Verbs that talk to keywardend (cli/client.h) with the connection options
// of the top-level app.
struct ConnectionOptions;
void RegisterEnrollCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                            Action& action);
void RegisterCaCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                        Action& action);
void RegisterOfficerCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                             Action& action);
void RegisterAuditCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                           Action& action);
// kra (list/reload) and getkey: key archival and recovery on the daemon.
void RegisterArchivalCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                              Action& action);
// kra rewrap: KRA rollover (cli/rewrap_commands.cc), a subcommand of `kra`.
void RegisterKraRewrap(CLI::App* kra, const Output& out, const ConnectionOptions& conn,
                       Action& action);
// importpfx: archive the keys of PKCS#12 files (certutil -importKMS), in bulk.
void RegisterImportCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                            Action& action);
// request: enrollment with key archival (remote, or offline with --out).
void RegisterRequestCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                             Action& action);
// backup (remote) and schema (local).
void RegisterBackupCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                            Action& action);

// The PKCS#11 module used when a URI names none: --module, else
// $KEYWARDEN_PKCS11_MODULE.
std::string DefaultModule(const std::string& flag);

// The token a URI names (module from --module/the URI/$KEYWARDEN_PKCS11_MODULE),
// logged in with the PIN from `pin_source` (file:/env:/prompt).
absl::StatusOr<std::shared_ptr<hsm::Token>> OpenTokenWithPin(const std::string& module,
                                                             const std::string& token_uri,
                                                             const std::string& pin_source);

}  // namespace keywarden::cli
