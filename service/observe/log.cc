#include "service/observe/log.h"

#include <grpc/support/log.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>

#include <cstdio>
#include <cstdlib>

#include <memory>
#include <mutex>
#include <string>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace keywarden::service::log {
namespace {

std::mutex g_mu;
Format g_format = Format::kText;
bool g_journal = false;  // lines go to the journal natively

std::shared_ptr<spdlog::logger> Logger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = std::make_shared<spdlog::logger>("keywardend",
                                              std::make_shared<spdlog::sinks::stderr_sink_mt>());
    l->set_level(spdlog::level::info);
    l->flush_on(spdlog::level::trace);  // every line: a crash loses none
    l->set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %l %v", spdlog::pattern_time_type::utc);
    return l;
  }();
  return logger;
}

// A value written bare in text lines: a plain token. Anything else
// (spaces, quotes, '=', control characters, non-ASCII) is JSON-quoted.
bool Bare(const std::string& s) {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-' || c == '/' || c == ':' || c == '@' ||
                    c == '+';
    if (!ok) return false;
  }
  return true;
}

// The message with control characters escaped: one event, one line.
std::string OneLine(std::string_view message) {
  std::string out;
  out.reserve(message.size());
  for (unsigned char c : message) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

spdlog::level::level_enum ToSpd(Level level) {
  switch (level) {
    case Level::kDebug:
      return spdlog::level::debug;
    case Level::kInfo:
      return spdlog::level::info;
    case Level::kWarning:
      return spdlog::level::warn;
    case Level::kError:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

void GrpcLog(gpr_log_func_args* args) {
  const Level level = args->severity == GPR_LOG_SEVERITY_ERROR  ? Level::kError
                      : args->severity == GPR_LOG_SEVERITY_INFO ? Level::kInfo
                                                                : Level::kDebug;
  std::string source = args->file != nullptr ? args->file : "";
  source += ':';  // not ":" + std::to_string(...): GCC 12 -O3 warns (-Wrestrict)
  source += std::to_string(args->line);
  std::string text = "grpc: ";
  if (args->message != nullptr) text += args->message;
  Write(level, text, nlohmann::json{{"source", source}});
}

int Priority(Level level) {
  switch (level) {
    case Level::kDebug:
      return 7;
    case Level::kInfo:
      return 6;
    case Level::kWarning:
      return 4;
    case Level::kError:
      return 3;
  }
  return 6;
}

// A journal field name from a field's: KEYWARDEN_ + upper case, [A-Z0-9_].
std::string JournalName(const std::string& key) {
  std::string out = "KEYWARDEN_";
  for (unsigned char c : key) {
    if (c >= 'a' && c <= 'z') {
      out += static_cast<char>(c - 'a' + 'A');
    } else if ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_') {
      out += static_cast<char>(c);
    } else {
      out += '_';
    }
  }
  return out.substr(0, 64);  // journald's limit on a field name
}

// One entry to the journal; false when it was not taken.
bool SendToJournal(const std::vector<std::string>& entry) {
  std::vector<iovec> iov;
  iov.reserve(entry.size());
  for (const std::string& f : entry) {
    iov.push_back(iovec{const_cast<char*>(f.data()), f.size()});
  }
  return sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) >= 0;
}

}  // namespace

bool StderrIsJournal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  unsigned long long dev = 0, ino = 0;
  char extra = 0;
  if (std::sscanf(stream, "%llu:%llu%c", &dev, &ino, &extra) != 2) return false;
  struct stat st {};
  if (fstat(2, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == dev &&
         static_cast<unsigned long long>(st.st_ino) == ino;
}

std::vector<std::string> JournalFields(Level level, std::string_view message,
                                       const nlohmann::json& fields,
                                       const std::string& json_message) {
  std::vector<std::string> out;
  std::string text = TextBody(message, fields);
  constexpr std::string_view kPrefix = "keywardend: ";
  if (text.rfind(kPrefix, 0) == 0) text.erase(0, kPrefix.size());
  out.push_back("MESSAGE=" + (json_message.empty() ? text : json_message));
  out.push_back("PRIORITY=" + std::to_string(Priority(level)));
  out.push_back("SYSLOG_IDENTIFIER=keywardend");
  if (fields.is_object()) {
    for (const auto& [key, value] : fields.items()) {
      out.push_back(JournalName(key) + "=" +
                    (value.is_string() ? value.get_ref<const std::string&>() : Dump(value)));
    }
  }
  return out;
}

std::string TextBody(std::string_view message, const nlohmann::json& fields) {
  std::string out = "keywardend: " + OneLine(message);
  if (fields.is_object()) {
    for (const auto& [key, value] : fields.items()) {
      out += " " + key + "=";
      if (value.is_string()) {
        const std::string& s = value.get_ref<const std::string&>();
        out += Bare(s) ? s : Dump(value);
      } else {
        out += Dump(value);
      }
    }
  }
  return out;
}

void Init(Format format) {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    g_format = format;
    g_journal = format == Format::kJournal || StderrIsJournal();
    // JSON: the whole line is one object; spdlog supplies time and level.
    Logger()->set_pattern(format == Format::kJson
                              ? R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l",%v})"
                              : "%Y-%m-%dT%H:%M:%S.%fZ %l %v",
                          spdlog::pattern_time_type::utc);
  }
  gpr_set_log_function(GrpcLog);
}

void Write(Level level, std::string_view message, const nlohmann::json& fields) {
  Format format;
  bool journal;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    format = g_format;
    journal = g_journal;
  }
  if (journal) {
    std::string json_message;
    if (format == Format::kJson) {
      nlohmann::json line = nlohmann::json::object();
      line["msg"] = std::string(message);
      if (fields.is_object()) {
        for (const auto& [key, value] : fields.items()) {
          if (key != "msg" && key != "time" && key != "level") line[key] = value;
        }
      }
      json_message = Dump(line);
    }
    if (SendToJournal(JournalFields(level, message, fields, json_message))) return;
    // Not taken (no journald): the line goes to stderr as below.
  }
  std::string body;
  if (format == Format::kJson) {
    nlohmann::json line = nlohmann::json::object();
    line["msg"] = std::string(message);
    if (fields.is_object()) {
      for (const auto& [key, value] : fields.items()) {
        if (key != "msg" && key != "time" && key != "level") line[key] = value;
      }
    }
    body = Dump(line);
    body = body.substr(1, body.size() - 2);  // the pattern adds the braces
  } else {
    body = TextBody(message, fields);
  }
  Logger()->log(ToSpd(level), "{}", body);
}

}  // namespace keywarden::service::log
