// Each verb group registers itself on the top-level app.
#pragma once

#include <CLI/CLI.hpp>

#include "cli/output.h"

namespace keywarden::cli {

// The verb chosen on the command line runs this and its value is the exit code.
using Action = std::function<int()>;

void RegisterTokenCommands(CLI::App& app, const Output& out, Action& action);
void RegisterCeremonyCommands(CLI::App& app, const Output& out, Action& action);

// The PKCS#11 module used when a URI names none: --module, else
// $KEYWARDEN_PKCS11_MODULE.
std::string DefaultModule(const std::string& flag);

}  // namespace keywarden::cli
