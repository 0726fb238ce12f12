// Where the hsm layer's own operational lines go (a token going down or
// coming back). The hsm layer knows nothing of the daemon's logger
// (service/observe/log.h): the daemon sets a sink that writes them as
// structured lines (text or JSON) like its own; without one (the CLI, the
// tests) a line goes to stderr as "keywarden: <message> key=value ...".
// Nothing secret is ever passed: token labels, reasons and CKR names only.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keywarden::hsm {

enum class LogLevel { kInfo, kWarning, kError };
using LogFields = std::vector<std::pair<std::string, std::string>>;
using LogSink =
    std::function<void(LogLevel level, std::string_view message, const LogFields& fields)>;

// Replaces the sink (null: back to stderr). Safe to call while lines are
// written on other threads.
void SetLogSink(LogSink sink);
// Writes one line through the sink.
void Log(LogLevel level, std::string_view message, const LogFields& fields = {});

}  // namespace keywarden::hsm
