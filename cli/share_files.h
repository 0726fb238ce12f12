// Share contributions for many threshold archives at once (issue 17:
// `recoverkey --batch --contribute-to`, `kra rewrap --contribute-to`, and
// the coordinator's `--shares-dir`; docs/THRESHOLD.md, "Batches").
//
// A contribution for a batch is written as
//   DIR/NAME.ARCHIVE-SHA256.kwshare
// where NAME is the blob's file stem (recoverkey) or the certificate serial
// (kra rewrap), and ARCHIVE-SHA256 is the lower-case hex SHA-256 of the
// archive (the EnvelopedData ContentInfo) the share belongs to: the digest
// the contribution also carries inside, sealed. The coordinator picks each
// archive's contributions by that digest; a file whose sealed digest is not
// the one its name claims is refused as "a share of another archive".
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace keywarden::cli {

// Larger files are not contributions (one RSA block and a small header).
inline constexpr size_t kMaxContributionBytes = 64 * 1024;
inline constexpr char kShareSuffix[] = ".kwshare";

// The lower-case hex SHA-256 of an archive (threshold::ArchiveDigest).
std::string ArchiveDigestHex(std::span<const uint8_t> archive_der);

// "NAME.DIGEST.kwshare" (NAME with '/' and leading dots made harmless).
std::string ContributionFileName(const std::string& name, std::span<const uint8_t> archive_der);

// The contributions found in the --shares-dir directories: every regular
// file NAME.DIGEST.kwshare (64 hex digits), by digest. Each file is read
// (size-checked); files of other names are listed in `ignored`.
struct ShareDirectories {
  // digest hex -> (file, bytes)
  std::map<std::string, std::vector<std::pair<std::string, std::vector<uint8_t>>>> by_archive;
  std::vector<std::string> ignored;
  // The contributions of `archive_der`, and marks them used.
  std::vector<std::pair<std::string, std::vector<uint8_t>>> For(
      std::span<const uint8_t> archive_der);
  // Files never asked for by For: contributions for archives not in this
  // run (reported, never an error).
  std::vector<std::string> Unused() const;

  std::map<std::string, bool> used;  // file -> given to For
};
absl::StatusOr<ShareDirectories> ReadShareDirectories(const std::vector<std::string>& dirs);

}  // namespace keywarden::cli
