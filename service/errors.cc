#include "service/errors.h"

#include <cstdio>

#include "absl/strings/cord.h"
#include "hsm/strings.h"
#include "pki/pkcs10.h"

namespace keywarden::service {
namespace {

constexpr char kPayloadUrl[] = "type.keywarden/hresult";
constexpr char kCandidatesUrl[] = "type.keywarden/candidates";

const HResult* const kAll[] = {
    &hresult::kKeyArchivalNotConfigured,
    &hresult::kNoValidKra,
    &hresult::kBadRequestKeyArchival,
    &hresult::kArchivedKeyRequired,
    &hresult::kArchivedKeyUnexpected,
    &hresult::kKeysetNotDefined,
    &hresult::kNoDecryptCert,
    &hresult::kBadData,
    &hresult::kBadKey,
    &hresult::kBadKeyType,
    &hresult::kBadAlgorithm,
    &hresult::kRevocationOffline,
    &hresult::kRevoked,
    &hresult::kCertExpired,
    &hresult::kWrongUsage,
    &hresult::kChaining,
    &hresult::kUnsupportedCertType,
    &hresult::kNoCertType,
    &hresult::kKeyLength,
    &hresult::kBadRequestSubject,
    &hresult::kBadRequestStatus,
    &hresult::kRoleConflict,
    &hresult::kCertRevoked,
    &hresult::kTemplateDenied,
    &hresult::kSubjectUpnRequired,
    &hresult::kSubjectEmailRequired,
    &hresult::kAccessDenied,
    &hresult::kBadSignature,
    &hresult::kBadHash,
    &hresult::kHashValue,
    &hresult::kSignerNotFound,
    &hresult::kKeyExists,
    &hresult::kAsn1BadTag,
    &hresult::kInvalidArg,
    &hresult::kAmbiguousName,
    &hresult::kNotFound,
    &hresult::kBadKeyset,
    &hresult::kBadLen,
    &hresult::kInvalidPassword,
};

}  // namespace

std::string HResultHex(uint32_t code) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", code);
  return text;
}

absl::Status Error(const HResult& hr, const std::string& detail) {
  const std::string code = HResultHex(hr.code);
  std::string message =
      detail.empty() ? StrCat(hr.text, " ", code) : StrCat(hr.text, " ", code, ": ", detail);
  absl::Status status(hr.status, message);
  status.SetPayload(kPayloadUrl, absl::Cord(code));
  return status;
}

absl::Status RequestCheckError(const absl::Status& parse_failure) {
  const HResult* hr = &hresult::kAsn1BadTag;
  switch (pki::RequestCheckOf(parse_failure)) {
    case pki::RequestCheck::kKeyHash:
      hr = &hresult::kBadHash;
      break;
    case pki::RequestCheck::kMessageDigest:
      hr = &hresult::kHashValue;
      break;
    case pki::RequestCheck::kSignature:
      hr = &hresult::kBadSignature;
      break;
    case pki::RequestCheck::kSigner:
      hr = &hresult::kSignerNotFound;
      break;
    case pki::RequestCheck::kAlgorithm:
      hr = &hresult::kBadAlgorithm;
      break;
    case pki::RequestCheck::kStructure:
      break;
  }
  return Error(*hr, std::string(parse_failure.message()));
}

std::optional<uint32_t> HResultOf(const absl::Status& status) {
  auto payload = status.GetPayload(kPayloadUrl);
  if (!payload) return std::nullopt;
  std::string text(*payload);
  unsigned value = 0;
  if (std::sscanf(text.c_str(), "0x%x", &value) != 1) return std::nullopt;
  return value;
}

absl::Status WithCandidates(absl::Status status, const std::vector<std::string>& candidates) {
  std::string joined;
  for (const auto& c : candidates) joined += c + "\n";
  status.SetPayload(kCandidatesUrl, absl::Cord(joined));
  return status;
}

std::vector<std::string> CandidatesOf(const absl::Status& status) {
  std::vector<std::string> out;
  auto payload = status.GetPayload(kCandidatesUrl);
  if (!payload) return out;
  const std::string text(*payload);
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    out.push_back(text.substr(pos, nl - pos));
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }
  return out;
}

const HResult* FindHResult(uint32_t code) {
  for (const HResult* hr : kAll) {
    if (hr->code == code) return hr;
  }
  return nullptr;
}

}  // namespace keywarden::service
