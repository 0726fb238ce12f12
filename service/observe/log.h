// keywardend's operational log (not the audit log, which is in the CA
// database): one line per event on stderr through spdlog, plain text by
// default or one JSON object per line ([log] format = "json"). Every line
// has a time (UTC), a level and a message; structured fields follow (text:
// key=value, values quoted and escaped when they hold anything but a plain
// token, so a client-chosen string cannot forge a line). gRPC's own log
// lines are routed here too (message "grpc: ...", field source).
//
// Nothing secret is ever passed in: no PIN, password, key or request body;
// callers log identifiers (method, principal, request id, status) only.
#pragma once

#include <string_view>

#include <nlohmann/json.hpp>

namespace keywarden::service::log {

enum class Format { kText, kJson };
enum class Level { kDebug, kInfo, kWarning, kError };

// Sets the format and routes gRPC's log through this log. Lines written
// before Init use the text format.
void Init(Format format);

// `fields`: a JSON object (or null); its members are written in key order.
void Write(Level level, std::string_view message, const nlohmann::json& fields = nlohmann::json());
inline void Info(std::string_view message, const nlohmann::json& fields = nlohmann::json()) {
  Write(Level::kInfo, message, fields);
}
inline void Warn(std::string_view message, const nlohmann::json& fields = nlohmann::json()) {
  Write(Level::kWarning, message, fields);
}
inline void Error(std::string_view message, const nlohmann::json& fields = nlohmann::json()) {
  Write(Level::kError, message, fields);
}

// The text rendering of one event without time and level (for tests).
std::string TextBody(std::string_view message, const nlohmann::json& fields);

}  // namespace keywarden::service::log
