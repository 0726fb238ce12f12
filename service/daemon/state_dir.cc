#include "service/daemon/state_dir.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "hsm/strings.h"

namespace keywarden::service {
namespace {

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string Mode(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

absl::Status Errno(int err, const std::string& what) {
  return absl::FailedPreconditionError(StrCat(what, ": ", std::strerror(err)));
}

}  // namespace

absl::Status EnsureStateDirectory(const std::string& database_path) {
  const std::string dir = DirectoryOf(database_path);
  struct stat info {};
  if (stat(dir.c_str(), &info) == 0) {
    if (!S_ISDIR(info.st_mode)) {
      return absl::FailedPreconditionError(
          StrCat("state directory ", dir, " (of [database] path) is not a directory"));
    }
    return absl::OkStatus();
  }
  if (errno != ENOENT) return Errno(errno, StrCat("state directory ", dir));
  // Parents first (each one that is missing), like mkdir -p.
  for (size_t at = dir.find('/', 1); at != std::string::npos; at = dir.find('/', at + 1)) {
    const std::string parent = dir.substr(0, at);
    if (mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) {
      return Errno(errno, StrCat("cannot create ", parent, " (parent of the state directory)"));
    }
  }
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Errno(errno, StrCat("cannot create the state directory ", dir));
  }
  // mkdir's mode is masked by the umask; 0700 is what is wanted, no more,
  // no less (it holds the database of archived keys).
  if (chmod(dir.c_str(), 0700) != 0) {
    return Errno(errno, StrCat("cannot make the state directory ", dir, " mode 0700"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> DescribeStateDirectory(const std::string& database_path) {
  const std::string dir = DirectoryOf(database_path);
  struct stat info {};
  if (stat(dir.c_str(), &info) == 0) {
    if (!S_ISDIR(info.st_mode)) {
      return absl::FailedPreconditionError(
          StrCat("state directory ", dir, " (of [database] path) is not a directory"));
    }
    return StrCat("state directory ", dir, " exists, mode ", Mode(info.st_mode));
  }
  if (errno != ENOENT) return Errno(errno, StrCat("state directory ", dir));
  return StrCat("state directory ", dir, " will be created with mode 0700");
}

}  // namespace keywarden::service
