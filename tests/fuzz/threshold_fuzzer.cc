// libFuzzer target: the threshold-archive and share-contribution parsers
// (pki/threshold.h). An archive comes from the database and a contribution
// from another KRA's file: both are untrusted. Never a crash; whatever
// parses keeps the invariants the recovery code relies on.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <span>

#include "pki/threshold.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden::pki::threshold;
  const std::span<const uint8_t> input(data, size);
  const bool looks = IsThresholdEnvelope(input);
  auto archive = ParseThresholdEnvelope(input);
  if (archive.ok()) {
    if (!looks) abort();
    if (archive->k < 2 || archive->k > archive->n) abort();
    if (archive->shares.size() != static_cast<size_t>(archive->n)) abort();
    std::set<int> indexes;
    for (const ShareEntry& s : archive->shares) {
      if (s.index == 0 || !indexes.insert(s.index).second) abort();
      if (s.encrypted_share.empty()) abort();
      if (archive->ByIndex(s.index) != &s) abort();
      (void)s.Describe();
    }
    const size_t block =
        archive->content.cipher == keywarden::pki::ContentCipher::kDes3Cbc ? 8 : 16;
    if (archive->content.iv.size() != block || archive->content.ciphertext.size() % block != 0) {
      abort();
    }
  }
  auto contribution = ParseContributionContent(input);
  if (contribution.ok()) {
    if (contribution->index == 0 || contribution->share.empty()) abort();
  }
  return 0;
}
