#include "cli/format.h"

#include <openssl/bn.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdio>
#include <ctime>

#include "hsm/ossl.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/files.h"

namespace keywarden::cli {
namespace {

int64_t ToUnix(const ASN1_TIME* t) {
  struct tm tm = {};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return static_cast<int64_t>(timegm(&tm));
}

std::string SerialHex(const ASN1_INTEGER* serial) {
  ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(serial, nullptr));
  if (!bn) return {};
  char* hex = BN_bn2hex(bn.get());
  if (hex == nullptr) return {};
  std::string out = AsciiLower(hex);
  OPENSSL_free(hex);
  if (out.size() % 2 != 0) out.insert(out.begin(), '0');
  return out;
}

std::string Hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

constexpr const char* kReasonNames[] = {
    "unspecified",   "keyCompromise",        "cACompromise",    "affiliationChanged",
    "superseded",    "cessationOfOperation", "certificateHold", "",
    "removeFromCRL", "privilegeWithdrawn",   "aACompromise",
};

}  // namespace

std::string DerToPem(const std::string& der, const char* label) {
  ossl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (!bio) return {};
  PEM_write_bio(bio.get(), label, "", reinterpret_cast<const unsigned char*>(der.data()),
                static_cast<long>(der.size()));
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return len > 0 ? std::string(data, static_cast<size_t>(len)) : std::string();
}

absl::StatusOr<CertificateSummary> SummarizeCertificate(const std::string& der) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert) return absl::DataLossError("the daemon sent a certificate that does not parse");
  CertificateSummary s;
  s.subject = pki::FormatName(X509_get_subject_name(cert.get()));
  s.issuer = pki::FormatName(X509_get_issuer_name(cert.get()));
  s.serial = SerialHex(X509_get0_serialNumber(cert.get()));
  s.sha1 = pki::Sha1Thumbprint(cert.get());
  s.sha256 = pki::Sha256Thumbprint(cert.get());
  s.not_before = ToUnix(X509_get0_notBefore(cert.get()));
  s.not_after = ToUnix(X509_get0_notAfter(cert.get()));
  return s;
}

nlohmann::json ToJson(const CertificateSummary& s) {
  return {{"subject", s.subject},    {"issuer", s.issuer}, {"serial", s.serial},
          {"sha1", s.sha1},          {"sha256", s.sha256}, {"not_before", s.not_before},
          {"not_after", s.not_after}};
}

std::string FormatTime(int64_t unix_seconds) {
  if (unix_seconds == 0) return "-";
  const time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm = {};
  if (gmtime_r(&t, &tm) == nullptr) return std::to_string(unix_seconds);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

std::string FormatIsoTime(int64_t unix_seconds) {
  if (unix_seconds == 0) return "";
  const time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm = {};
  if (gmtime_r(&t, &tm) == nullptr) return std::to_string(unix_seconds);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string DispositionName(v1::Disposition d) {
  switch (d) {
    case v1::DISPOSITION_PENDING:
      return "pending";
    case v1::DISPOSITION_ISSUED:
      return "issued";
    case v1::DISPOSITION_DENIED:
      return "denied";
    case v1::DISPOSITION_FAILED:
      return "failed";
    default:
      return "unspecified";
  }
}

std::string Table(const std::vector<std::string>& header,
                  const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < width.size(); ++i)
      width[i] = std::max(width[i], row[i].size());
  };
  measure(header);
  for (const auto& r : rows) measure(r);
  auto line = [&](const std::vector<std::string>& row) {
    std::string out;
    for (size_t i = 0; i < row.size() && i < width.size(); ++i) {
      out += row[i];
      if (i + 1 < row.size()) out += std::string(width[i] - row[i].size() + 2, ' ');
    }
    return out + "\n";
  };
  std::string out = line(header);
  for (const auto& r : rows) out += line(r);
  return out;
}

std::string KeyValues(const std::vector<std::pair<std::string, std::string>>& rows) {
  size_t width = 0;
  for (const auto& [k, v] : rows) width = std::max(width, k.size());
  std::string out;
  for (const auto& [k, v] : rows) {
    out += StrCat("  ", k, ":", std::string(width - k.size() + 2, ' '), v, "\n");
  }
  return out;
}

absl::Status WriteNewFile(const std::string& path, const std::string& text, unsigned mode) {
  return pki::WriteFileAtomically(path, text, pki::Overwrite::kRefuse, mode);
}

absl::StatusOr<nlohmann::json> ReportEnrollment(const v1::EnrollmentResult& result,
                                                const std::string& out_path, std::string& text) {
  const std::string disposition = DispositionName(result.disposition());
  nlohmann::json j = {
      {"request_id", result.request_id()},
      {"disposition", disposition},
      {"message", result.message()},
      {"status_code", result.status_code() != 0 ? nlohmann::json(Hex32(result.status_code()))
                                                : nlohmann::json(nullptr)}};
  std::vector<std::pair<std::string, std::string>> rows = {
      {"Request ID", std::to_string(result.request_id())},
      {"Disposition",
       result.message().empty() ? disposition : StrCat(disposition, " (", result.message(), ")")},
  };
  if (result.status_code() != 0) rows.push_back({"Status", Hex32(result.status_code())});
  std::string pem_text;
  if (result.disposition() == v1::DISPOSITION_ISSUED && !result.certificate().empty()) {
    auto summary = SummarizeCertificate(result.certificate());
    if (!summary.ok()) return summary.status();
    const std::string pem = DerToPem(result.certificate(), "CERTIFICATE");
    nlohmann::json cert = ToJson(*summary);
    cert["pem"] = pem;
    nlohmann::json chain = nlohmann::json::array();
    for (const auto& c : result.chain()) chain.push_back(DerToPem(c, "CERTIFICATE"));
    cert["chain_pem"] = chain;
    if (!out_path.empty()) {
      if (auto st = WriteNewFile(out_path, pem); !st.ok()) {
        return absl::Status(st.code(), StrCat("request ", result.request_id(),
                                              " was issued but the certificate was not saved: ",
                                              st.message(), "; get it again with `keywarden ",
                                              "retrieve ", result.request_id(), " --out FILE`"));
      }
      cert["file"] = out_path;
    }
    j["certificate"] = cert;
    rows.push_back({"Serial", summary->serial});
    rows.push_back({"SHA-1", summary->sha1});
    rows.push_back({"Subject", summary->subject});
    rows.push_back(
        {"Valid", StrCat(FormatTime(summary->not_before), " to ", FormatTime(summary->not_after))});
    if (!out_path.empty()) {
      rows.push_back({"Certificate", StrCat(out_path, " (PEM)")});
    } else {
      pem_text = pem;
    }
  } else if (result.disposition() == v1::DISPOSITION_PENDING) {
    rows.push_back({"Next", StrCat("a Certificate Manager approves it; then `keywarden retrieve ",
                                   result.request_id(), "`")});
  }
  text = KeyValues(rows) + pem_text;
  return j;
}

int EnrollmentExitCode(const v1::EnrollmentResult& result) {
  return result.disposition() == v1::DISPOSITION_ISSUED ||
                 result.disposition() == v1::DISPOSITION_PENDING
             ? 0
             : 1;
}

nlohmann::json ToJson(const v1::RequestInfo& r) {
  return {{"request_id", r.request_id()},
          {"requester", r.requester()},
          {"template", r.template_name()},
          {"format", r.format()},
          {"subject", r.subject()},
          {"disposition", DispositionName(r.disposition())},
          {"message", r.message()},
          {"status_code",
           r.status_code() != 0 ? nlohmann::json(Hex32(r.status_code())) : nlohmann::json(nullptr)},
          {"submitted_at", r.submitted_at()},
          {"resolved_at", r.resolved_at()},
          {"resolved_by", r.resolved_by()},
          {"serial", r.serial()},
          {"has_archived_key", r.has_archived_key()},
          {"public_key_sha256", r.public_key_sha256()},
          {"request_sha256", r.request_sha256()}};
}

std::string Describe(const v1::RequestInfo& r) {
  std::vector<std::pair<std::string, std::string>> rows = {
      {"Request ID", std::to_string(r.request_id())},
      {"Requester", r.requester()},
      {"Template", r.template_name().empty() ? "-" : r.template_name()},
      {"Format", r.format()},
      {"Subject", r.subject().empty() ? "-" : r.subject()},
      {"Disposition", r.message().empty()
                          ? DispositionName(r.disposition())
                          : StrCat(DispositionName(r.disposition()), " (", r.message(), ")")},
  };
  if (r.status_code() != 0) rows.push_back({"Status", Hex32(r.status_code())});
  rows.push_back({"Submitted", FormatTime(r.submitted_at())});
  if (r.resolved_at() != 0) {
    rows.push_back({"Resolved", StrCat(FormatTime(r.resolved_at()), " by ", r.resolved_by())});
  }
  if (!r.serial().empty()) rows.push_back({"Serial", r.serial()});
  rows.push_back({"Archived key", r.has_archived_key() ? "yes" : "no"});
  if (!r.public_key_sha256().empty()) rows.push_back({"Public key SHA-256", r.public_key_sha256()});
  if (!r.request_sha256().empty()) rows.push_back({"Request SHA-256", r.request_sha256()});
  return KeyValues(rows);
}

nlohmann::json ToJson(const v1::CertificateInfo& c) {
  nlohmann::json j = {{"serial", c.serial()},
                      {"request_id", c.request_id()},
                      {"subject", c.subject()},
                      {"upn", c.upn()},
                      {"email", c.email()},
                      {"template", c.template_name()},
                      {"sha1", c.sha1()},
                      {"sha256", c.sha256()},
                      {"not_before", c.not_before()},
                      {"not_after", c.not_after()},
                      {"revoked", c.revoked()}};
  if (c.revoked()) {
    j["revocation_reason"] = c.revocation_reason();
    j["revocation_reason_name"] = RevocationReasonName(c.revocation_reason());
    j["revoked_at"] = c.revoked_at();
  }
  if (!c.certificate().empty()) j["pem"] = DerToPem(c.certificate(), "CERTIFICATE");
  return j;
}

std::string Describe(const v1::CertificateInfo& c) {
  std::vector<std::pair<std::string, std::string>> rows = {
      {"Serial", c.serial()},
      {"Subject", c.subject()},
  };
  if (!c.upn().empty()) rows.push_back({"UPN", c.upn()});
  if (!c.email().empty()) rows.push_back({"E-mail", c.email()});
  rows.push_back({"Template", c.template_name().empty() ? "-" : c.template_name()});
  rows.push_back({"Request ID", c.request_id() != 0 ? std::to_string(c.request_id()) : "-"});
  rows.push_back({"SHA-1", c.sha1()});
  rows.push_back({"SHA-256", c.sha256()});
  rows.push_back({"Valid", StrCat(FormatTime(c.not_before()), " to ", FormatTime(c.not_after()))});
  rows.push_back({"Revoked", c.revoked()
                                 ? StrCat("yes, ", RevocationReasonName(c.revocation_reason()),
                                          ", at ", FormatTime(c.revoked_at()))
                                 : "no"});
  return KeyValues(rows);
}

absl::StatusOr<int> ParseRevocationReason(const std::string& text) {
  if (!text.empty() && text.size() <= 2 &&
      std::all_of(text.begin(), text.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
    const int n = text.size() == 1 ? text[0] - '0' : (text[0] - '0') * 10 + (text[1] - '0');
    if (n <= 10 && n != 7) return n;
  }
  const std::string lower = AsciiLower(text);
  for (int i = 0; i <= 10; ++i) {
    if (i != 7 && lower == AsciiLower(kReasonNames[i])) return i;
  }
  std::vector<std::string> names;
  for (int i = 0; i <= 10; ++i) {
    if (i != 7) names.push_back(StrCat(i, "=", kReasonNames[i]));
  }
  return absl::InvalidArgumentError(
      StrCat("--reason ", text,
             ": not an RFC 5280 CRLReason; use a number or name: ", StrJoin(names, " ")));
}

std::string RevocationReasonName(int reason) {
  if (reason < 0 || reason > 10 || reason == 7) return StrCat("reason ", reason);
  return kReasonNames[reason];
}

}  // namespace keywarden::cli
