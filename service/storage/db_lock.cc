#include "service/storage/db_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace keywarden::service {
namespace {

class FlockDatabaseLock : public DatabaseLock {
 public:
  FlockDatabaseLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~FlockDatabaseLock() override {
    // Closing the descriptor releases the flock. The file stays: removing it
    // would race with a process that opened it and is about to lock it.
    if (fd_ >= 0) close(fd_);
  }
  const std::string& path() const override { return path_; }

 private:
  std::string path_;
  int fd_;
};

// "keywardend is running (pid 123)" from the lock file's "123 keywardend\n".
std::string DescribeHolder(int fd) {
  char buf[128] = {0};
  const ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  std::string pid, name;
  ssize_t i = 0;
  for (; i < n && buf[i] >= '0' && buf[i] <= '9'; ++i) pid += buf[i];
  if (i < n && buf[i] == ' ') ++i;
  for (; i < n && buf[i] != '\n' && name.size() < 64; ++i) {
    if ((buf[i] >= 'a' && buf[i] <= 'z') || buf[i] == ' ') name += buf[i];
  }
  if (name.empty()) name = "keywardend";
  return absl::StrCat(name, " is running (pid ", pid.empty() ? "unknown" : pid, ")");
}

}  // namespace

std::string DatabaseLockPath(const std::string& database_path) {
  return absl::StrCat(database_path, ".lock");
}

absl::StatusOr<std::unique_ptr<DatabaseLock>> LockDatabase(const std::string& database_path,
                                                           const std::string& holder) {
  const std::string path = DatabaseLockPath(database_path);
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    const int err = errno;
    return absl::FailedPreconditionError(absl::StrCat(
        holder, ": cannot open the database lock file ", path, ": ", std::strerror(err)));
  }
  // An existing lock file keeps its owner; it must still be owner-only.
  fchmod(fd, 0600);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string message;
    if (err == EWOULDBLOCK) {
      message = absl::StrCat(holder, ": ", DescribeHolder(fd), " and holds the database ",
                             database_path, " (lock file ", path, "); stop it first");
    } else {
      message = absl::StrCat(holder, ": cannot lock ", path, ": ", std::strerror(err));
    }
    close(fd);
    return absl::FailedPreconditionError(message);
  }
  const std::string pid = absl::StrCat(getpid(), " ", holder, "\n");
  if (ftruncate(fd, 0) != 0 ||
      pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    const int err = errno;
    close(fd);
    return absl::InternalError(
        absl::StrCat(holder, ": cannot write the pid into ", path, ": ", std::strerror(err)));
  }
  return std::unique_ptr<DatabaseLock>(new FlockDatabaseLock(path, fd));
}

}  // namespace keywarden::service
