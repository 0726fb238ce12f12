#include "cli/share_files.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>

#include "hsm/strings.h"
#include "pki/files.h"
#include "pki/threshold.h"

namespace keywarden::cli {

std::string ArchiveDigestHex(std::span<const uint8_t> archive_der) {
  const auto digest = pki::threshold::ArchiveDigest(archive_der);
  return AsciiLower(HexString(digest));
}

std::string ContributionFileName(const std::string& name, std::span<const uint8_t> archive_der) {
  std::string safe = name.substr(name.find_last_of('/') + 1);
  for (char& c : safe) {
    if (c == ' ' || c == ':' || c == '\\') c = '_';
  }
  while (!safe.empty() && safe.front() == '.') safe.erase(safe.begin());
  if (safe.empty()) safe = "archive";
  return StrCat(safe, ".", ArchiveDigestHex(archive_der), kShareSuffix);
}

namespace {

// The DIGEST of "NAME.DIGEST.kwshare", or "" if the name is not of that form.
std::string DigestOfName(const std::string& file) {
  const std::string suffix = kShareSuffix;
  if (file.size() < suffix.size() + 65 || !file.ends_with(suffix)) return "";
  const std::string rest = file.substr(0, file.size() - suffix.size());
  const std::string hex = rest.substr(rest.size() - 64);
  if (rest[rest.size() - 65] != '.') return "";
  for (char c : hex) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return "";
  }
  return hex;
}

}  // namespace

absl::StatusOr<ShareDirectories> ReadShareDirectories(const std::vector<std::string>& dirs) {
  ShareDirectories out;
  for (const std::string& dir : dirs) {
    struct stat st {};
    if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return absl::NotFoundError(StrCat("--shares-dir ", dir, ": not a directory"));
    }
    DIR* d = opendir(dir.c_str());
    if (d == nullptr) {
      return absl::PermissionDeniedError(StrCat("--shares-dir ", dir, ": cannot read it"));
    }
    std::vector<std::string> names;
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    closedir(d);
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      const std::string full = StrCat(dir, "/", name);
      struct stat fst {};
      const std::string digest = DigestOfName(name);
      if (digest.empty() || stat(full.c_str(), &fst) != 0 || !S_ISREG(fst.st_mode)) {
        out.ignored.push_back(full);
        continue;
      }
      if (static_cast<size_t>(fst.st_size) > kMaxContributionBytes) {
        return absl::InvalidArgumentError(
            StrCat(full, ": ", fst.st_size, " bytes is too large for a share contribution"));
      }
      auto bytes = pki::ReadFileBytes(full);
      if (!bytes.ok()) return bytes.status();
      if (bytes->size() > kMaxContributionBytes) {
        return absl::InvalidArgumentError(StrCat(full, ": too large for a share contribution"));
      }
      out.by_archive[digest].emplace_back(full, std::move(*bytes));
      out.used[full] = false;
    }
  }
  return out;
}

std::vector<std::pair<std::string, std::vector<uint8_t>>> ShareDirectories::For(
    std::span<const uint8_t> archive_der) {
  auto it = by_archive.find(ArchiveDigestHex(archive_der));
  if (it == by_archive.end()) return {};
  for (const auto& [file, bytes] : it->second) used[file] = true;
  return it->second;
}

std::vector<std::string> ShareDirectories::Unused() const {
  std::vector<std::string> out;
  for (const auto& [file, given] : used) {
    if (!given) out.push_back(file);
  }
  return out;
}

}  // namespace keywarden::cli
