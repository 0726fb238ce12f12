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

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace keywarden::service::log {

// kJournal: systemd's journal (sd_journal_sendv) with fields of its own.
enum class Format { kText, kJson, kJournal };
enum class Level { kDebug, kInfo, kWarning, kError };

// Sets the format and routes gRPC's log through this log. Lines written
// before Init use the text format. Lines go to the journal (natively, with
// the fields of JournalFields) when `format` is kJournal, or when stderr is
// the journal's stream (JOURNAL_STREAM, see StderrIsJournal): MESSAGE is
// then the text line's body, or for kJson the JSON object. A line the
// journal does not take goes to stderr instead.
void Init(Format format);
// True when JOURNAL_STREAM ("DEVICE:INODE", set by systemd for a service
// whose stderr is the journal) names the file stderr is (fstat of fd 2).
bool StderrIsJournal();

// The journal entry of one event, "NAME=value" each: MESSAGE (the text
// line's body without "keywardend: ", or `json_message` when not empty),
// PRIORITY (syslog: 3 error, 4 warning, 6 info, 7 debug),
// SYSLOG_IDENTIFIER=keywardend, and one KEYWARDEN_<NAME> per field (the
// field's name upper-cased, anything but A-Z, 0-9 and _ made _; strings as
// they are, other values as JSON): e.g. KEYWARDEN_METHOD,
// KEYWARDEN_PRINCIPAL, KEYWARDEN_STATUS, KEYWARDEN_HRESULT,
// KEYWARDEN_LATENCY_MS, KEYWARDEN_REQUEST_ID for an RPC. A value may hold
// any byte (sd_journal_sendv takes it as it is).
std::vector<std::string> JournalFields(Level level, std::string_view message,
                                       const nlohmann::json& fields,
                                       const std::string& json_message = {});

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
