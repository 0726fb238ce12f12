// How verbs report: text for a person, or one JSON object with --json.
// Exit codes scripts can rely on are defined here.
#pragma once

#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"

namespace keywarden::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitFailed = 1,    // the operation was attempted and failed
  kExitUsage = 2,     // bad command line
  kExitRefused = 3,   // refused: already exists / permission / precondition
  kExitNotFound = 4,  // a named token, key or file does not exist
};

struct Output {
  bool json = false;

  // Prints `result` (JSON mode) or `text` (text mode) on stdout.
  void Result(const nlohmann::json& result, const std::string& text) const {
    if (json) {
      std::cout << result.dump(2) << std::endl;
    } else {
      std::cout << text;
    }
  }

  // Reports a failure on stderr (or as {"error": ...} on stdout with --json)
  // and returns the matching exit code.
  int Fail(const absl::Status& status) const {
    int code = ExitCodeFor(status);
    if (json) {
      std::cout << nlohmann::json{{"error", std::string(status.message())},
                                  {"code", absl::StatusCodeToString(status.code())},
                                  {"exit_code", code}}
                       .dump(2)
                << std::endl;
    } else {
      std::cerr << "keywarden: " << status.message() << std::endl;
    }
    return code;
  }

  static int ExitCodeFor(const absl::Status& status) {
    switch (status.code()) {
      case absl::StatusCode::kOk:
        return kExitOk;
      case absl::StatusCode::kInvalidArgument:
        return kExitUsage;
      case absl::StatusCode::kAlreadyExists:
      case absl::StatusCode::kPermissionDenied:
      case absl::StatusCode::kFailedPrecondition:
        return kExitRefused;
      case absl::StatusCode::kNotFound:
        return kExitNotFound;
      default:
        return kExitFailed;
    }
  }
};

}  // namespace keywarden::cli
