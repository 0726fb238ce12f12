// How verbs report: text for a person, or one JSON object with --json.
// Exit codes scripts can rely on are defined here.
#pragma once

#include <iostream>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/cord.h"

namespace keywarden::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitFailed = 1,    // the operation was attempted and failed
  kExitUsage = 2,     // bad command line
  kExitRefused = 3,   // refused: already exists / permission / precondition
  kExitNotFound = 4,  // a named token, key or file does not exist
};

// The HRESULT the daemon attached to an error (cli/client.cc), carried in
// the absl::Status as payloads so that failures can show it as JSON fields.
inline constexpr char kHResultPayload[] = "type.keywarden.cli/hresult";  // "0x80094800"
inline constexpr char kSymbolPayload[] = "type.keywarden.cli/symbol";    // "CERTSRV_E_..."

inline std::optional<std::string> PayloadOf(const absl::Status& status, const char* url) {
  auto p = status.GetPayload(url);
  if (!p.has_value()) return std::nullopt;
  return std::string(*p);
}

// JSON text; strings that are not UTF-8 are shown with U+FFFD instead of throwing.
inline std::string JsonText(const nlohmann::json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

struct Output {
  bool json = false;

  // Prints `result` (JSON mode) or `text` (text mode) on stdout.
  void Result(const nlohmann::json& result, const std::string& text) const {
    if (json) {
      std::cout << JsonText(result) << std::endl;
    } else {
      std::cout << text;
    }
  }

  // Reports a failure on stderr (or as {"error": ...} on stdout with --json)
  // and returns the matching exit code.
  int Fail(const absl::Status& status) const {
    int code = ExitCodeFor(status);
    if (json) {
      auto field = [&](const char* url) {
        auto v = PayloadOf(status, url);
        return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
      };
      std::cout << JsonText({{"error", std::string(status.message())},
                             {"code", absl::StatusCodeToString(status.code())},
                             {"exit_code", code},
                             {"hresult", field(kHResultPayload)},
                             {"symbol", field(kSymbolPayload)}})
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
