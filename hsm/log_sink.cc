#include "hsm/log_sink.h"

#include <cstdio>
#include <memory>
#include <mutex>

namespace keywarden::hsm {
namespace {

std::mutex& SinkMutex() {
  static auto* mu = new std::mutex();  // never destroyed: lines may come until exit
  return *mu;
}

std::shared_ptr<const LogSink>& Sink() {
  static auto* sink = new std::shared_ptr<const LogSink>();
  return *sink;
}

}  // namespace

void SetLogSink(LogSink sink) {
  auto next = sink ? std::make_shared<const LogSink>(std::move(sink)) : nullptr;
  std::lock_guard<std::mutex> lock(SinkMutex());
  Sink() = std::move(next);
}

void Log(LogLevel level, std::string_view message, const LogFields& fields) {
  std::shared_ptr<const LogSink> sink;
  {
    std::lock_guard<std::mutex> lock(SinkMutex());
    sink = Sink();
  }
  if (sink != nullptr) {
    (*sink)(level, message, fields);
    return;
  }
  std::string line = "keywarden: ";
  line.append(message);
  for (const auto& [key, value] : fields) {
    line += " " + key + "=\"";
    for (char c : value) {
      if (c == '"' || c == '\\') line += '\\';
      line += c == '\n' ? ' ' : c;
    }
    line += '"';
  }
  std::fprintf(stderr, "%s\n", line.c_str());
}

}  // namespace keywarden::hsm
