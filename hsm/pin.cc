#include <openssl/crypto.h>

#include "hsm/pin.h"
#include "hsm/strings.h"

#include <fcntl.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace keywarden::hsm {

namespace {

void StripNewline(std::string& s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
}

absl::StatusOr<SecretString> ReadFromTerminal(const std::string& prompt) {
  int fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        "PIN prompt: no terminal to ask on (give the PIN with a file or an environment variable)");
  }
  std::string text = prompt.empty() ? "PIN: " : prompt;
  (void)!write(fd, text.data(), text.size());
  termios old{};
  bool restore = tcgetattr(fd, &old) == 0;
  if (restore) {
    termios quiet = old;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    tcsetattr(fd, TCSAFLUSH, &quiet);
  }
  std::string pin;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n' && c != '\r') pin.push_back(c);
  if (restore) tcsetattr(fd, TCSAFLUSH, &old);
  (void)!write(fd, "\n", 1);
  close(fd);
  SecretString out(pin);
  OPENSSL_cleanse(pin.data(), pin.capacity());
  return out;
}

}  // namespace

absl::StatusOr<PinSource> PinSource::Parse(std::string_view spec) {
  if (spec.starts_with("env:")) {
    if (spec.size() == 4)
      return absl::InvalidArgumentError("PIN source \"env:\": no variable name");
    return Env(std::string(spec.substr(4)));
  }
  if (spec == "prompt") return Prompt("");
  if (spec.starts_with("prompt:")) return Prompt(std::string(spec.substr(7)));
  if (spec.starts_with("file://")) return File(std::string(spec.substr(7)));
  if (spec.starts_with("file:")) return File(std::string(spec.substr(5)));
  if (spec.starts_with("/") || spec.starts_with("./")) return File(std::string(spec));
  return absl::InvalidArgumentError(
      StrCat("PIN source \"", spec, "\": expected file:PATH, env:NAME or prompt"));
}

PinSource PinSource::Value(SecretString pin) {
  PinSource s(Kind::kValue, "");
  s.value_ = std::move(pin);
  return s;
}

absl::StatusOr<SecretString> PinSource::Read() const {
  SecretString pin;
  switch (kind_) {
    case Kind::kValue:
      pin = value_;
      break;
    case Kind::kEnv: {
      const char* v = std::getenv(where_.c_str());
      if (v == nullptr) {
        return absl::NotFoundError(StrCat("PIN: environment variable ", where_, " is not set"));
      }
      pin = SecretString(v);
      break;
    }
    case Kind::kFile: {
      int fd = open(where_.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        return absl::NotFoundError(StrCat("PIN file ", where_, ": ", std::strerror(errno)));
      }
      std::string buf(256, '\0');
      ssize_t n = read(fd, buf.data(), buf.size());
      close(fd);
      if (n < 0) return absl::InternalError(StrCat("PIN file ", where_, ": read failed"));
      buf.resize(static_cast<size_t>(n));
      StripNewline(buf);
      pin = SecretString(buf);
      OPENSSL_cleanse(buf.data(), buf.capacity());
      break;
    }
    case Kind::kPrompt: {
      auto read = ReadFromTerminal(where_);
      if (!read.ok()) return read.status();
      pin = std::move(*read);
      break;
    }
  }
  if (pin.empty()) return absl::InvalidArgumentError(StrCat("PIN from ", Describe(), " is empty"));
  return pin;
}

std::string PinSource::Describe() const {
  switch (kind_) {
    case Kind::kFile:
      return StrCat("file ", where_);
    case Kind::kEnv:
      return StrCat("environment variable ", where_);
    case Kind::kPrompt:
      return "prompt";
    case Kind::kValue:
      return "value";
  }
  return "unknown";
}

}  // namespace keywarden::hsm
