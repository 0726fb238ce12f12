// The audit chain: the canonical encoding every backend hashes, and the
// verifier that tells an auditor which record was tampered with and how.
#include <openssl/err.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "hsm/strings.h"
#include "service/storage/store.h"

namespace keywarden::service {
namespace {

constexpr size_t kAuditHashSize = 32;  // SHA-256

void AppendBigEndian64(std::vector<uint8_t>& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}

// Every field carries its length so that no two different records encode to
// the same bytes (("ab", "c") and ("a", "bc") must hash differently).
void AppendField(std::vector<uint8_t>& out, const uint8_t* data, size_t size) {
  AppendBigEndian64(out, size);
  out.insert(out.end(), data, data + size);
}

void AppendField(std::vector<uint8_t>& out, const std::string& s) {
  AppendField(out, reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

void AppendIntegerField(std::vector<uint8_t>& out, int64_t v) {
  std::vector<uint8_t> be;
  AppendBigEndian64(be, static_cast<uint64_t>(v));
  AppendField(out, be.data(), be.size());
}

// The hash `record` would have if it had been written as `seq`: the verifier
// uses it to recognise a record that was moved rather than edited.
std::vector<uint8_t> AuditHashAs(const AuditRecord& record, int64_t seq) {
  std::vector<uint8_t> encoded;
  encoded.reserve(6 * 8 + 16 + record.principal.size() + record.event.size() +
                  record.details.size() + record.prev_hash.size());
  AppendIntegerField(encoded, seq);
  AppendIntegerField(encoded, record.time);
  AppendField(encoded, record.principal);
  AppendField(encoded, record.event);
  AppendField(encoded, record.details);
  AppendField(encoded, record.prev_hash.data(), record.prev_hash.size());

  std::vector<uint8_t> digest(EVP_MAX_MD_SIZE);
  unsigned int digest_len = 0;
  if (EVP_Digest(encoded.data(), encoded.size(), digest.data(), &digest_len, EVP_sha256(),
                 nullptr) != 1) {
    // Only possible when OpenSSL cannot allocate or has no SHA-256 at all.
    // An empty hash never equals a stored one, so the verifier reports the
    // record instead of accepting it, and AppendAudit refuses to store it.
    ERR_clear_error();
    return {};
  }
  digest.resize(digest_len);
  return digest;
}

// The seq under which `record`'s contents were originally hashed, if it is
// not its current one: a record whose hash fits another position was moved
// there (rows swapped or renumbered), which an auditor must be told apart
// from an edit. Checks every seq up to `max_seq`; this only runs once, for the
// first bad record.
std::optional<int64_t> OriginalSeq(const AuditRecord& record, int64_t max_seq) {
  if (record.hash.size() != kAuditHashSize) return std::nullopt;
  for (int64_t seq = 1; seq <= max_seq; ++seq) {
    if (seq != record.seq && AuditHashAs(record, seq) == record.hash) return seq;
  }
  return std::nullopt;
}

absl::Status ChainBroken(int64_t seq, const std::string& what) {
  return absl::DataLossError(StrCat("audit chain broken at seq ", seq, ": ", what));
}

}  // namespace

const char* DispositionName(Disposition d) {
  switch (d) {
    case Disposition::kPending:
      return "pending";
    case Disposition::kIssued:
      return "issued";
    case Disposition::kDenied:
      return "denied";
    case Disposition::kFailed:
      return "failed";
  }
  return "unknown";
}

absl::StatusOr<std::vector<AuditRecord>> ReadAllAudit(Store& store) {
  std::vector<AuditRecord> all;
  for (int64_t from = 1;;) {
    auto page = store.ReadAudit(from, 5000);
    if (!page.ok()) return page.status();
    if (page->empty()) break;
    from = page->back().seq + 1;
    all.insert(all.end(), std::make_move_iterator(page->begin()),
               std::make_move_iterator(page->end()));
  }
  return all;
}

std::vector<uint8_t> AuditHash(const AuditRecord& record) {
  return AuditHashAs(record, record.seq);
}

absl::Status VerifyAuditChain(const std::vector<AuditRecord>& records) {
  std::vector<uint8_t> previous_hash(kAuditHashSize, 0);
  int64_t expected_seq = 1;
  for (const AuditRecord& record : records) {
    if (record.seq > expected_seq) {
      // Present further on: the records are out of order, not deleted.
      for (const AuditRecord& later : records) {
        if (later.seq == expected_seq) {
          return ChainBroken(expected_seq, StrCat("records reordered: seq ", record.seq,
                                                  " comes where seq ", expected_seq, " belongs"));
        }
      }
      const int64_t missing = record.seq - expected_seq;
      return ChainBroken(
          expected_seq,
          StrCat(missing == 1
                     ? "record missing (deleted?)"
                     : StrCat(missing, " records missing (deleted?) up to seq ", record.seq - 1),
                 "; the next record present is seq ", record.seq));
    }
    if (record.seq < expected_seq) {
      return ChainBroken(expected_seq, StrCat("records reordered or duplicated: found seq ",
                                              record.seq, " after seq ", expected_seq - 1));
    }
    if (AuditHash(record) != record.hash) {
      int64_t max_seq = 0;
      for (const AuditRecord& r : records) max_seq = std::max(max_seq, r.seq);
      if (std::optional<int64_t> original = OriginalSeq(record, max_seq)) {
        return ChainBroken(
            record.seq,
            StrCat("records reordered: this record's contents were written as seq ", *original));
      }
      return ChainBroken(record.seq, "record edited: its hash does not match its contents");
    }
    if (record.prev_hash != previous_hash) {
      return ChainBroken(
          record.seq,
          record.seq == 1
              ? std::string("prev_hash of the first record is not 32 zero bytes (records before "
                            "it removed or the chain rewritten)")
              : StrCat("prev_hash does not match the hash of seq ", record.seq - 1,
                       " (records reordered, or seq ", record.seq - 1,
                       " rewritten with a recomputed hash)"));
    }
    previous_hash = record.hash;
    ++expected_seq;
  }
  return absl::OkStatus();
}

}  // namespace keywarden::service
