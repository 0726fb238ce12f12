#include "service/server/limits.h"

#include <google/protobuf/descriptor.h>

#include <map>

#include "hsm/strings.h"
#include "service/errors.h"

namespace keywarden::service {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

constexpr size_t KiB = 1024;
constexpr size_t MiB = 1024 * 1024;

const std::map<std::string_view, const FieldLimit*>& ByName() {
  static const auto* by_name = [] {
    auto* m = new std::map<std::string_view, const FieldLimit*>;
    for (const FieldLimit& l : RequestFieldLimits()) (*m)[l.field] = &l;
    return m;
  }();
  return *by_name;
}

// "SubmitRequest.template_name" (without the package).
std::string ShortName(const FieldDescriptor* f) {
  return StrCat(f->containing_type()->name(), ".", f->name());
}

absl::Status CheckValue(const FieldDescriptor* f, const std::string& value, int index) {
  const auto& table = ByName();
  const auto it = table.find(f->full_name());
  const size_t max = it == table.end() ? kDefaultFieldLimit : it->second->max_bytes;
  const std::string name = index < 0 ? ShortName(f) : StrCat(ShortName(f), "[", index, "]");
  if (value.size() > max) {
    return Error(hresult::kInvalidArg,
                 StrCat(name, " is ", value.size(), " bytes; the limit is ", max, " bytes"));
  }
  if (it != table.end() && it->second->no_nul && value.find('\0') != std::string::npos) {
    return Error(hresult::kInvalidArg,
                 StrCat(name, " holds a NUL byte; a password is taken whole, never cut at a NUL"));
  }
  return absl::OkStatus();
}

absl::Status Walk(const Message& m, int depth) {
  if (depth > 8) return Error(hresult::kInvalidArg, "the request nests too deeply");
  const Reflection* r = m.GetReflection();
  const auto* d = m.GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    const bool text =
        f->type() == FieldDescriptor::TYPE_STRING || f->type() == FieldDescriptor::TYPE_BYTES;
    const bool nested = f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE;
    if (!text && !nested) continue;
    if (f->is_repeated()) {
      const int n = r->FieldSize(m, f);
      for (int j = 0; j < n; ++j) {
        absl::Status st = text ? CheckValue(f, r->GetRepeatedString(m, f, j), j)
                               : Walk(r->GetRepeatedMessage(m, f, j), depth + 1);
        if (!st.ok()) return st;
      }
    } else if (text) {
      std::string scratch;
      if (auto st = CheckValue(f, r->GetStringReference(m, f, &scratch), -1); !st.ok()) return st;
    } else if (r->HasField(m, f)) {
      if (auto st = Walk(r->GetMessage(m, f), depth + 1); !st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace

const std::vector<FieldLimit>& RequestFieldLimits() {
  static const std::vector<FieldLimit> limits = {
      // Enrollment
      {"keywarden.v1.SubmitRequest.request", 256 * KiB},
      {"keywarden.v1.SubmitRequest.template_name", 256},
      // Officer
      {"keywarden.v1.GetArchivedKeyRequest.search", 1 * KiB},
      {"keywarden.v1.DenyRequest.reason", 1 * KiB},
      {"keywarden.v1.RevokeRequest.serial", 128},
      {"keywarden.v1.ReleaseHoldRequest.serial", 128},
      {"keywarden.v1.FindCertificatesRequest.serial", 128},
      {"keywarden.v1.FindCertificatesRequest.sha1", 128},
      {"keywarden.v1.FindCertificatesRequest.common_name", 1 * KiB},
      {"keywarden.v1.FindCertificatesRequest.upn", 1 * KiB},
      {"keywarden.v1.FindCertificatesRequest.subject_contains", 1 * KiB},
      {"keywarden.v1.FindCertificatesRequest.email", 1 * KiB},
      // KRA rollover: a rewrapped archive (the stored one plus new recipients).
      {"keywarden.v1.RewrapArchivedKeyRequest.previous_sha256", 32},
      {"keywarden.v1.RewrapArchivedKeyRequest.enveloped_data", 64 * KiB},
      // Administration
      {"keywarden.v1.ImportArchivedKeyRequest.pfx", 1 * MiB},
      {"keywarden.v1.ImportArchivedKeyRequest.password", 1 * KiB, /*no_nul=*/true},
      // Signing
      {"keywarden.v1.SignDigestRequest.alias", 256},
      {"keywarden.v1.SignDigestRequest.digest", 64},
      {"keywarden.v1.SignDigestsRequest.alias", 256},
      {"keywarden.v1.SignDigestsRequest.digests", 64},  // each; at most kMaxSignDigests of them
      {"keywarden.v1.SignDataRequest.alias", 256},
      {"keywarden.v1.SignDataRequest.data", 1 * MiB},
      {"keywarden.v1.GetSigningKeyRequest.alias", 256},
      {"keywarden.v1.IssueCertificateRequest.alias", 256},
      {"keywarden.v1.IssueCertificateRequest.template_name", 256},
      {"keywarden.v1.IssueCertificateRequest.csr", 256 * KiB},
      {"keywarden.v1.IssueCertificateRequest.subject", 1 * KiB},
      // An exported audit checkpoint (CMS SignedData with the CA certificate).
      {"keywarden.v1.VerifyAuditRequest.checkpoint", 64 * KiB},
  };
  return limits;
}

absl::Status CheckRequestLimits(const google::protobuf::Message& request) {
  return Walk(request, 0);
}

}  // namespace keywarden::service
