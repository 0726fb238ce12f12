// Presentation helpers shared by the verbs that talk to the daemon: PEM,
// certificate summaries, times, tables, and the printing of enrollment
// results (submit, retrieve, officer approve).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "keywarden/v1/keywarden.pb.h"

namespace keywarden::cli {

// DER bytes as PEM with `label` ("CERTIFICATE", "X509 CRL").
std::string DerToPem(const std::string& der, const char* label);

// What a person wants to see of a certificate.
struct CertificateSummary {
  std::string subject;
  std::string issuer;
  std::string serial;  // lower-case hex
  std::string sha1;
  std::string sha256;
  int64_t not_before = 0;
  int64_t not_after = 0;
};
absl::StatusOr<CertificateSummary> SummarizeCertificate(const std::string& der);
nlohmann::json ToJson(const CertificateSummary& s);

// "2024-05-01 12:00:00Z"; "-" for 0.
std::string FormatTime(int64_t unix_seconds);
// ISO 8601 UTC, "2026-12-03T12:36:30Z" (for JSON); "" for 0.
std::string FormatIsoTime(int64_t unix_seconds);

// "pending", "issued", "denied", "failed", "unspecified".
std::string DispositionName(v1::Disposition d);

// Columns padded to the widest cell, two spaces apart; the last column is
// not padded. `rows` excludes the header.
std::string Table(const std::vector<std::string>& header,
                  const std::vector<std::vector<std::string>>& rows);

// "  key:   value\n" lines with the values aligned.
std::string KeyValues(const std::vector<std::pair<std::string, std::string>>& rows);

// Writes `text` to `path` atomically, refusing to overwrite (0644 unless `mode`).
absl::Status WriteNewFile(const std::string& path, const std::string& text, unsigned mode = 0644);

// The printing of an EnrollmentResult: request id, disposition, message; for
// an issued certificate, its serial, SHA-1 and the PEM written to `out_path`
// (or shown when there is none). `text` receives the person's version.
absl::StatusOr<nlohmann::json> ReportEnrollment(const v1::EnrollmentResult& result,
                                                const std::string& out_path, std::string& text);

// Exit code for a result: 0 issued or pending, 1 denied or failed.
int EnrollmentExitCode(const v1::EnrollmentResult& result);

// A RequestInfo for a person and as JSON.
nlohmann::json ToJson(const v1::RequestInfo& r);
std::string Describe(const v1::RequestInfo& r);

// A CertificateInfo (without the DER, which JSON carries as PEM).
nlohmann::json ToJson(const v1::CertificateInfo& c);
std::string Describe(const v1::CertificateInfo& c);

// RFC 5280 CRLReason by number ("0".."10" except 7) or name (case-insensitive).
absl::StatusOr<int> ParseRevocationReason(const std::string& text);
std::string RevocationReasonName(int reason);

}  // namespace keywarden::cli
