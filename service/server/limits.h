// Bounded input: the length limit of every string and bytes field the API
// accepts, checked in one place (a reflection walk over the request) before
// a handler stores or audits anything. The table is docs/API.md's "Limits".
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/message.h>

#include "absl/status/status.h"

namespace keywarden::service {

struct FieldLimit {
  const char* field;  // full protobuf name, e.g. "keywarden.v1.SubmitRequest.template_name"
  size_t max_bytes;
  bool no_nul = false;  // a password: a NUL byte is refused, never cut at
};

// Every limited field. A string or bytes field of a request that is not in
// this table gets kDefaultFieldLimit (tests check that none is missing).
const std::vector<FieldLimit>& RequestFieldLimits();
inline constexpr size_t kDefaultFieldLimit = 256;

// Signing/SignDigests: the most digests one call may carry (each is limited
// by the table). More are refused as E_INVALIDARG and audited
// (signing.refused) before anything is signed.
inline constexpr size_t kMaxSignDigests = 256;

// The largest legitimate request message: the largest field (1 MiB: a PFX,
// SignData's data) and room for the others. Larger messages are refused by
// gRPC itself (RESOURCE_EXHAUSTED, "Received message larger than max").
inline constexpr size_t kMaxRequestMessageBytes = (1 << 20) + 16 * 1024;

// OK, or INVALID_ARGUMENT (E_INVALIDARG) naming the first field over its
// limit ("SubmitRequest.template_name is 15728640 bytes; the limit is 256
// bytes") or the password holding a NUL. Never echoes the value.
absl::Status CheckRequestLimits(const google::protobuf::Message& request);

}  // namespace keywarden::service
