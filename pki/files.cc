#include "pki/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "hsm/strings.h"

namespace keywarden::pki {
namespace {

absl::Status Errno(const std::string& what) {
  int e = errno;
  std::string msg = StrCat(what, ": ", std::strerror(e));
  if (e == ENOENT) return absl::NotFoundError(msg);
  if (e == EEXIST) return absl::AlreadyExistsError(msg);
  if (e == EACCES || e == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

std::string DirOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

absl::Status CheckWritable(const std::string& path, Overwrite overwrite) {
  if (path.empty()) return absl::InvalidArgumentError("output file: no path given");
  struct stat st;
  if (overwrite == Overwrite::kRefuse && stat(path.c_str(), &st) == 0) {
    return absl::AlreadyExistsError(StrCat(path, ": already exists; refusing to overwrite it"));
  }
  std::string dir = DirOf(path);
  if (access(dir.c_str(), W_OK) != 0) return Errno(StrCat("output directory ", dir));
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, std::span<const uint8_t> data,
                                 Overwrite overwrite, unsigned mode) {
  if (auto st = CheckWritable(path, overwrite); !st.ok()) return st;
  std::string tmp = StrCat(DirOf(path), "/.", path.substr(path.rfind('/') + 1), ".tmp-XXXXXX");
  int fd = mkstemp(tmp.data());
  if (fd < 0) return Errno(StrCat("create temporary file for ", path));
  auto fail = [&](const std::string& what) {
    absl::Status st = Errno(what);
    close(fd);
    unlink(tmp.c_str());
    return st;
  };
  if (fchmod(fd, mode) != 0) return fail(StrCat("chmod ", tmp));
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(StrCat("write ", path));
    }
    off += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) return fail(StrCat("fsync ", path));
  if (close(fd) != 0) {
    unlink(tmp.c_str());
    return Errno(StrCat("close ", path));
  }
  if (overwrite == Overwrite::kRefuse) {
    // link() fails with EEXIST if someone created `path` meanwhile.
    if (link(tmp.c_str(), path.c_str()) != 0) {
      absl::Status st =
          errno == EEXIST
              ? absl::AlreadyExistsError(StrCat(path, ": already exists; refusing to overwrite it"))
              : Errno(StrCat("create ", path));
      unlink(tmp.c_str());
      return st;
    }
    unlink(tmp.c_str());
  } else if (rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status st = Errno(StrCat("replace ", path));
    unlink(tmp.c_str());
    return st;
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& data,
                                 Overwrite overwrite, unsigned mode) {
  return WriteFileAtomically(
      path, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
      overwrite, mode);
}

absl::StatusOr<std::vector<uint8_t>> ReadFileBytes(const std::string& path, size_t max_size) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno(StrCat("read ", path));
  std::vector<uint8_t> out;
  uint8_t buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status st = Errno(StrCat("read ", path));
      close(fd);
      return st;
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max_size) {
      close(fd);
      return absl::InvalidArgumentError(StrCat(path, ": larger than ", max_size, " bytes"));
    }
    out.insert(out.end(), buf, buf + n);
  }
  close(fd);
  return out;
}

}  // namespace keywarden::pki
