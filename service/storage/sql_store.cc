#include "service/storage/sql_store.h"

#include <openssl/evp.h>

#include <charconv>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/der.h"
#include "pki/pkcs10.h"

namespace keywarden::service {
namespace {

using sql::Bytes;
using sql::Row;
using sql::Session;
using sql::Value;

constexpr char kRequestColumns[] =
    "id, requester, template_name, format, raw, subject, disposition, disposition_message, "
    "status_code, submitted_at, resolved_at, resolved_by, serial, archived_key, archival_scheme, "
    "kra_sha1, encrypted_key_hash, spki_sha256, request_sha256";

constexpr char kCertificateColumns[] =
    "c.serial, c.request_id, c.der, c.subject, c.upn, c.template_name, c.sha1, c.sha256, "
    "c.not_before, c.not_after, c.revoked, c.revocation_reason, c.revoked_at, c.spki_sha256, "
    "c.email";

constexpr char kAuditColumns[] = "seq, time, principal, event, details, prev_hash, hash";

// -- values and rows

int64_t LimitParameter(size_t limit) {
  return limit > static_cast<size_t>(std::numeric_limits<int64_t>::max())
             ? std::numeric_limits<int64_t>::max()
             : static_cast<int64_t>(limit);
}

bool IsHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

std::vector<std::string> SplitCommas(const std::string& s) {
  std::vector<std::string> parts;
  if (s.empty()) return parts;
  size_t start = 0;
  while (true) {
    size_t comma = s.find(',', start);
    if (comma == std::string::npos) {
      parts.push_back(s.substr(start));
      return parts;
    }
    parts.push_back(s.substr(start, comma - start));
    start = comma + 1;
  }
}

std::optional<Disposition> DispositionFromInt(int64_t v) {
  switch (v) {
    case static_cast<int64_t>(Disposition::kPending):
      return Disposition::kPending;
    case static_cast<int64_t>(Disposition::kIssued):
      return Disposition::kIssued;
    case static_cast<int64_t>(Disposition::kDenied):
      return Disposition::kDenied;
    case static_cast<int64_t>(Disposition::kFailed):
      return Disposition::kFailed;
    default:
      return std::nullopt;
  }
}

// The four archived-key columns.
std::vector<Value> ArchivedKeyValues(const std::optional<ArchivedKey>& key) {
  if (!key) return {Value{}, Value{}, Value{}, Value{}};
  return {Bytes{key->envelope}, key->scheme, StrJoin(key->kra_sha1, ","),
          Bytes{key->encrypted_key_hash}};
}

absl::Status ValidateArchivedKey(const ArchivedKey& key, std::string_view whose) {
  if (key.envelope.empty()) {
    return absl::InvalidArgumentError(StrCat(whose, ": the archived key has no envelope"));
  }
  if (key.kra_sha1.empty()) {
    return absl::InvalidArgumentError(StrCat(whose, ": the archived key names no KRA"));
  }
  for (const std::string& thumbprint : key.kra_sha1) {
    if (thumbprint.empty() || !IsHex(thumbprint)) {
      return absl::InvalidArgumentError(
          StrCat(whose, ": KRA thumbprint \"", thumbprint, "\" is not a hex SHA-1"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateCertificate(const CertificateRecord& c) {
  if (c.serial.empty() || !IsHex(c.serial)) {
    return absl::InvalidArgumentError(
        StrCat("certificate serial \"", c.serial, "\" is not a hex serial number"));
  }
  if (c.sha1.empty()) {
    return absl::InvalidArgumentError(StrCat("certificate ", c.serial, " has no SHA-1 thumbprint"));
  }
  if (c.der.empty()) {
    return absl::InvalidArgumentError(StrCat("certificate ", c.serial, " has no DER encoding"));
  }
  return absl::OkStatus();
}

// Columns in kRequestColumns order.
absl::StatusOr<RequestRecord> ReadRequest(const Row& s) {
  RequestRecord r;
  r.id = s.Int(0);
  r.requester = s.Text(1);
  r.template_name = s.Text(2);
  r.format = s.Text(3);
  r.raw = s.Blob(4);
  r.subject = s.Text(5);
  std::optional<Disposition> d = DispositionFromInt(s.Int(6));
  if (!d) {
    return absl::DataLossError(
        StrCat("request ", r.id, " has unknown disposition ", s.Int(6), " in the database"));
  }
  r.disposition = *d;
  r.disposition_message = s.Text(7);
  r.status_code = static_cast<uint32_t>(s.Int(8));
  r.submitted_at = s.Int(9);
  r.resolved_at = s.Int(10);
  r.resolved_by = s.Text(11);
  r.serial = s.Text(12);
  if (!s.IsNull(13)) {
    ArchivedKey key;
    key.envelope = s.Blob(13);
    key.scheme = s.Text(14);
    key.kra_sha1 = SplitCommas(s.Text(15));
    key.encrypted_key_hash = s.Blob(16);
    r.archived_key = std::move(key);
  }
  r.spki_sha256 = s.Text(17);
  r.request_sha256 = s.Text(18);
  return r;
}

absl::StatusOr<std::vector<RequestRecord>> ReadRequests(const std::vector<Row>& rows) {
  std::vector<RequestRecord> out;
  out.reserve(rows.size());
  for (const Row& row : rows) {
    absl::StatusOr<RequestRecord> r = ReadRequest(row);
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
  }
  return out;
}

// Columns in kCertificateColumns order.
CertificateRecord ReadCertificate(const Row& s) {
  CertificateRecord c;
  c.serial = s.Text(0);
  c.request_id = s.Int(1);  // NULL reads as 0
  c.der = s.Blob(2);
  c.subject = s.Text(3);
  c.upn = s.Text(4);
  c.template_name = s.Text(5);
  c.sha1 = s.Text(6);
  c.sha256 = s.Text(7);
  c.not_before = s.Int(8);
  c.not_after = s.Int(9);
  c.revoked = s.Int(10) != 0;
  c.revocation_reason = static_cast<int>(s.Int(11));
  c.revoked_at = s.Int(12);
  c.spki_sha256 = s.Text(13);
  c.email = s.Text(14);
  return c;
}

std::vector<CertificateRecord> ReadCertificates(const std::vector<Row>& rows) {
  std::vector<CertificateRecord> out;
  out.reserve(rows.size());
  for (const Row& row : rows) out.push_back(ReadCertificate(row));
  return out;
}

// Columns in kAuditColumns order.
AuditRecord ReadAuditRecord(const Row& s) {
  AuditRecord a;
  a.seq = s.Int(0);
  a.time = s.Int(1);
  a.principal = s.Text(2);
  a.event = s.Text(3);
  a.details = s.Text(4);
  a.prev_hash = s.Blob(5);
  a.hash = s.Blob(6);
  return a;
}

// A lock key for Transaction::Lock: the first 8 bytes of SHA-256(name).
int64_t LockKey(std::string_view name) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(name.data(), name.size(), md, &n, EVP_sha256(), nullptr);
  uint64_t key = 0;
  for (int i = 0; i < 8; ++i) key = (key << 8) | md[i];
  return static_cast<int64_t>(key);
}

// Strict parse of a counter: one silently restarting from 0 would reuse
// CRL numbers or serials.
absl::StatusOr<int64_t> ParseCounter(const std::string& text, std::string_view what) {
  int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return absl::FailedPreconditionError(
        StrCat(what, ": the setting holds \"", text, "\", not an integer"));
  }
  return value;
}

// -- the unit of work

class SqlTransaction final : public Transaction {
 public:
  // `read_only`: inside a read transaction (no row locks).
  explicit SqlTransaction(Session& s, bool read_only = false) : s_(s), read_only_(read_only) {}

  absl::StatusOr<int64_t> InsertRequest(const RequestRecord& r) override {
    const std::string what = StrCat("inserting request from \"", r.requester, "\"");
    if (r.archived_key) {
      if (absl::Status s = ValidateArchivedKey(*r.archived_key, what); !s.ok()) return s;
    }
    std::vector<Value> params = {r.requester,
                                 r.template_name,
                                 r.format,
                                 Bytes{r.raw},
                                 r.subject,
                                 static_cast<int64_t>(r.disposition),
                                 r.disposition_message,
                                 static_cast<int64_t>(r.status_code),
                                 r.submitted_at,
                                 r.resolved_at,
                                 r.resolved_by,
                                 sql::TextOrNull(r.serial)};
    for (Value& v : ArchivedKeyValues(r.archived_key)) params.push_back(std::move(v));
    params.emplace_back(r.spki_sha256);
    params.emplace_back(r.request_sha256);
    auto rows = s_.Query(
        what,
        "INSERT INTO requests (requester, template_name, format, raw, subject, disposition, "
        "disposition_message, status_code, submitted_at, resolved_at, resolved_by, serial, "
        "archived_key, archival_scheme, kra_sha1, encrypted_key_hash, spki_sha256, "
        "request_sha256) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, "
        "?18) RETURNING id",
        params);
    if (!rows.ok()) return rows.status();
    if (rows->size() != 1) return absl::InternalError(StrCat(what, ": no id returned"));
    return rows->front().Int(0);
  }

  absl::StatusOr<RequestRecord> GetRequest(int64_t id) override {
    auto rows = s_.Query(
        StrCat("reading request ", id),
        StrCat("SELECT ", kRequestColumns, " FROM requests WHERE id = ?1", ForUpdate(s_)), {id});
    if (!rows.ok()) return rows.status();
    if (rows->empty()) return absl::NotFoundError(StrCat("request ", id, " not found"));
    return ReadRequest(rows->front());
  }

  absl::StatusOr<std::vector<RequestRecord>> FindRequestsByKey(const std::string& spki_sha256,
                                                               size_t limit) override {
    if (spki_sha256.empty()) return std::vector<RequestRecord>();  // never a match
    auto rows = s_.Query("searching requests by public key",
                         StrCat("SELECT ", kRequestColumns,
                                " FROM requests WHERE spki_sha256 = ?1 ORDER BY id LIMIT ?2"),
                         {spki_sha256, LimitParameter(limit)});
    if (!rows.ok()) return rows.status();
    return ReadRequests(*rows);
  }

  absl::Status ResolveRequest(int64_t id, Disposition disposition, const std::string& message,
                              uint32_t status_code, const std::string& resolved_by, UnixTime at,
                              bool discard_archived_key) override {
    const std::string what = StrCat("resolving request ", id);
    if (disposition != Disposition::kDenied && disposition != Disposition::kFailed) {
      return absl::InvalidArgumentError(
          StrCat(what, ": cannot resolve to ", DispositionName(disposition),
                 " (only denied or failed; issuing goes through RecordIssued)"));
    }
    if (absl::Status s = CheckPending(id, what); !s.ok()) return s;
    const char* sql =
        discard_archived_key
            ? "UPDATE requests SET disposition = ?1, disposition_message = ?2, status_code = ?3, "
              "resolved_at = ?4, resolved_by = ?5, archived_key = NULL, archival_scheme = NULL, "
              "kra_sha1 = NULL, encrypted_key_hash = NULL WHERE id = ?6"
            : "UPDATE requests SET disposition = ?1, disposition_message = ?2, status_code = ?3, "
              "resolved_at = ?4, resolved_by = ?5 WHERE id = ?6";
    return s_
        .Execute(what, sql,
                 {static_cast<int64_t>(disposition), message, static_cast<int64_t>(status_code), at,
                  resolved_by, id})
        .status();
  }

  absl::Status RecordIssued(int64_t request_id, const CertificateRecord& certificate,
                            const std::optional<ArchivedKey>& archived_key,
                            const std::string& resolved_by, UnixTime at) override {
    const std::string what =
        StrCat("recording certificate ", certificate.serial, " as issued for request ", request_id);
    if (certificate.request_id != 0 && certificate.request_id != request_id) {
      return absl::InvalidArgumentError(
          StrCat(what, ": the certificate record names request ", certificate.request_id));
    }
    if (absl::Status s = ValidateCertificate(certificate); !s.ok()) {
      return absl::Status(s.code(), StrCat(what, ": ", s.message()));
    }
    if (archived_key) {
      if (absl::Status s = ValidateArchivedKey(*archived_key, what); !s.ok()) return s;
    }
    if (absl::Status s = CheckPending(request_id, what); !s.ok()) return s;
    std::vector<Value> params = {static_cast<int64_t>(Disposition::kIssued), certificate.serial, at,
                                 resolved_by, request_id};
    if (archived_key) {
      for (Value& v : ArchivedKeyValues(archived_key)) params.push_back(std::move(v));
    }
    absl::StatusOr<int64_t> updated = s_.Execute(
        what,
        archived_key
            ? "UPDATE requests SET disposition = ?1, serial = ?2, resolved_at = ?3, "
              "resolved_by = ?4, status_code = 0, archived_key = ?6, archival_scheme = ?7, "
              "kra_sha1 = ?8, encrypted_key_hash = ?9 WHERE id = ?5"
            : "UPDATE requests SET disposition = ?1, serial = ?2, resolved_at = ?3, "
              "resolved_by = ?4, status_code = 0 WHERE id = ?5",
        params);
    if (!updated.ok()) return updated.status();
    // After the request update on purpose: a taken serial or thumbprint
    // fails here and the rollback undoes the update.
    return InsertCertificateRow(certificate, request_id, what);
  }

  absl::Status AttachArchivedKey(int64_t id, const ArchivedKey& key) override {
    const std::string what = StrCat("attaching the archived key to request ", id);
    if (absl::Status s = ValidateArchivedKey(key, what); !s.ok()) return s;
    std::vector<Value> params = ArchivedKeyValues(key);
    params.insert(params.end(), {id, static_cast<int64_t>(Disposition::kPending),
                                 static_cast<int64_t>(Disposition::kIssued)});
    absl::StatusOr<int64_t> changed =
        s_.Execute(what,
                   "UPDATE requests SET archived_key = ?1, archival_scheme = ?2, kra_sha1 = ?3, "
                   "encrypted_key_hash = ?4 WHERE id = ?5 AND archived_key IS NULL "
                   "AND disposition IN (?6, ?7)",
                   params);
    if (!changed.ok()) return changed.status();
    if (*changed != 1) {
      return absl::FailedPreconditionError(
          StrCat(what, ": no such pending or issued request without an archived key"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> ReplaceArchivedKey(int64_t id, const std::vector<uint8_t>& expected,
                                             const std::vector<uint8_t>& envelope,
                                             const std::vector<std::string>& kra_sha1,
                                             const std::string& scheme,
                                             const std::string& replaced_by, UnixTime at) override {
    const std::string what = StrCat("rewrapping the archived key of request ", id);
    ArchivedKey key;
    key.envelope = envelope;
    key.kra_sha1 = kra_sha1;
    if (absl::Status s = ValidateArchivedKey(key, what); !s.ok()) return s;
    absl::StatusOr<RequestRecord> current = GetRequest(id);  // locks the row (PostgreSQL)
    if (!current.ok()) return current.status();
    if (!current->archived_key) {
      return absl::FailedPreconditionError(StrCat(what, ": the request has no archived key"));
    }
    if (current->archived_key->envelope != expected) {
      return absl::FailedPreconditionError(
          StrCat(what,
                 ": its archive changed since it was read (rewrapped meanwhile?); "
                 "nothing was stored: fetch it again"));
    }
    auto versions = s_.Query(
        what, "SELECT coalesce(max(version), 0) FROM archive_history WHERE request_id = ?1", {id});
    if (!versions.ok()) return versions.status();
    const int64_t version = (versions->empty() ? 0 : versions->front().Int(0)) + 1;
    auto kept =
        s_.Execute(what,
                   "INSERT INTO archive_history (request_id, version, replaced_at, replaced_by, "
                   "archived_key, archival_scheme, kra_sha1) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                   {id, version, at, replaced_by, Bytes{current->archived_key->envelope},
                    current->archived_key->scheme, StrJoin(current->archived_key->kra_sha1, ",")});
    if (!kept.ok()) return kept.status();
    auto changed =
        s_.Execute(what,
                   "UPDATE requests SET archived_key = ?1, kra_sha1 = ?2, archival_scheme = ?3 "
                   "WHERE id = ?4",
                   {Bytes{envelope}, StrJoin(kra_sha1, ","),
                    scheme.empty() ? current->archived_key->scheme : scheme, id});
    if (!changed.ok()) return changed.status();
    if (*changed != 1) return absl::InternalError(StrCat(what, ": the row was not updated"));
    return version;
  }

  absl::StatusOr<std::vector<ArchiveHistoryRecord>> ArchiveHistory(int64_t id) {
    auto rows = s_.Query(StrCat("reading the archive history of request ", id),
                         "SELECT request_id, version, replaced_at, replaced_by, archived_key, "
                         "archival_scheme, kra_sha1 FROM archive_history WHERE request_id = ?1 "
                         "ORDER BY version",
                         {id});
    if (!rows.ok()) return rows.status();
    std::vector<ArchiveHistoryRecord> out;
    for (const Row& r : *rows) {
      ArchiveHistoryRecord h;
      h.request_id = r.Int(0);
      h.version = r.Int(1);
      h.replaced_at = r.Int(2);
      h.replaced_by = r.Text(3);
      h.envelope = r.Blob(4);
      h.scheme = r.Text(5);
      h.kra_sha1 = SplitCommas(r.Text(6));
      out.push_back(std::move(h));
    }
    return out;
  }

  absl::Status SetPendingMessage(int64_t id, const std::string& message) override {
    const std::string what = StrCat("updating pending request ", id);
    if (absl::Status s = CheckPending(id, what); !s.ok()) return s;
    return s_
        .Execute(what, "UPDATE requests SET disposition_message = ?1 WHERE id = ?2", {message, id})
        .status();
  }

  absl::Status InsertCertificate(const CertificateRecord& certificate) override {
    const std::string what = StrCat("inserting certificate ", certificate.serial);
    if (absl::Status s = ValidateCertificate(certificate); !s.ok()) {
      return absl::Status(s.code(), StrCat(what, ": ", s.message()));
    }
    return InsertCertificateRow(certificate, certificate.request_id, what);
  }

  absl::StatusOr<CertificateRecord> GetCertificate(const std::string& serial) override {
    auto rows =
        s_.Query(StrCat("reading certificate ", serial),
                 StrCat("SELECT ", kCertificateColumns, " FROM certificates c WHERE c.serial = ?1"),
                 {serial});
    if (!rows.ok()) return rows.status();
    if (rows->empty()) {
      return absl::NotFoundError(StrCat("certificate with serial ", serial, " not found"));
    }
    return ReadCertificate(rows->front());
  }

  absl::StatusOr<std::vector<CertificateRecord>> FindCertificates(
      const CertificateQuery& query) override {
    // Only constant fragments go into the SQL text; every value is a
    // parameter.
    std::string sql = StrCat("SELECT ", kCertificateColumns, " FROM certificates c");
    if (query.only_with_archived_key) {
      sql += " JOIN requests r ON r.id = c.request_id AND r.archived_key IS NOT NULL";
    }
    std::vector<Value> params;
    std::vector<std::string> conditions;
    // `before` ?N `after`, with N the value's parameter index.
    auto add = [&](const char* before, Value value, const char* after = "") {
      params.push_back(std::move(value));
      conditions.push_back(StrCat(before, params.size(), after));
    };
    if (!query.serial.empty()) add("c.serial = ?", query.serial);
    if (!query.sha1.empty()) add("c.sha1 = ?", query.sha1);
    // A substring test rather than LIKE: a '%' or '_' in the search text is
    // literal. Case folding is ASCII-only on SQLite (no Unicode tables).
    if (!query.subject_contains.empty()) {
      if (s_.dialect() == sql::Dialect::kPostgresql) {
        add("strpos(lower(c.subject), lower(?", query.subject_contains, ")) > 0");
      } else {
        add("instr(lower(c.subject), lower(?", query.subject_contains, ")) > 0");
      }
    }
    if (!query.subject.empty()) add("c.subject = ?", query.subject);
    if (!query.common_name.empty()) add("c.cn = ?", query.common_name);
    if (!query.upn.empty()) add("c.upn = ?", query.upn);
    if (!query.email.empty()) add("c.email = ?", query.email);
    if (query.request_id != 0) add("c.request_id = ?", query.request_id);
    if (!query.spki_sha256.empty()) add("c.spki_sha256 = ?", query.spki_sha256);
    if (!conditions.empty()) sql += StrCat(" WHERE ", StrJoin(conditions, " AND "));
    params.emplace_back(LimitParameter(query.limit));
    sql += StrCat(" ORDER BY c.rowid LIMIT ?", params.size());
    auto rows = s_.Query("searching certificates", sql, params);
    if (!rows.ok()) return rows.status();
    return ReadCertificates(*rows);
  }

  absl::StatusOr<std::vector<KeyHolder>> FindKeyHolders(const std::string& spki_sha256,
                                                        int64_t exclude_request,
                                                        const std::string& exclude_serial,
                                                        size_t limit) override {
    if (spki_sha256.empty()) return std::vector<KeyHolder>();  // never a match
    // Nearly every key is new: one probe of the key index says so, where the
    // grouping below builds temporary tables even when no row matches. It
    // finds a row exactly when the grouping does (the LEFT JOIN keeps every
    // certificate that matches).
    auto any =
        s_.Query("searching the holders of a public key",
                 "SELECT 1 FROM certificates WHERE spki_sha256 = ?1 AND serial <> ?2 LIMIT 1",
                 {spki_sha256, exclude_serial});
    if (!any.ok()) return any.status();
    if (any->empty()) return std::vector<KeyHolder>();
    // `kind`: 0 this CA's own certificate, 1 the request under processing,
    // 2 any other request. The outer join names each group by its earliest
    // certificate (the same SQL on both backends: no bare columns).
    auto rows = s_.Query(
        "searching the holders of a public key",
        "SELECT c.serial, g.request_id, g.subject, g.template_name, g.requester, g.archived "
        "FROM (SELECT min(h.pos) AS first_pos, min(h.request_id) AS request_id, h.subject, "
        "h.template_name, h.requester, h.archived FROM (SELECT c.rowid AS pos, "
        "coalesce(c.request_id, 0) AS request_id, c.subject, c.template_name, "
        "coalesce(r.requester, '') AS requester, "
        "CASE WHEN r.archived_key IS NULL THEN 0 ELSE 1 END AS archived, "
        "CASE WHEN c.request_id IS NULL THEN 0 WHEN c.request_id = ?2 THEN 1 ELSE 2 END AS kind "
        "FROM certificates c LEFT JOIN requests r ON r.id = c.request_id "
        "WHERE c.spki_sha256 = ?1 AND c.serial <> ?3) h "
        "GROUP BY h.kind, h.subject, h.template_name, h.requester, h.archived) g "
        "JOIN certificates c ON c.rowid = g.first_pos ORDER BY g.first_pos LIMIT ?4",
        {spki_sha256, exclude_request, exclude_serial, LimitParameter(limit)});
    if (!rows.ok()) return rows.status();
    std::vector<KeyHolder> out;
    out.reserve(rows->size());
    for (const auto& row : *rows) {
      out.push_back(
          {row.Text(0), row.Int(1), row.Text(2), row.Text(3), row.Text(4), row.Int(5) != 0});
    }
    return out;
  }

  absl::StatusOr<std::vector<PendingArchive>> FindPendingArchives(const std::string& spki_sha256,
                                                                  int64_t exclude_request,
                                                                  size_t limit) override {
    if (spki_sha256.empty()) return std::vector<PendingArchive>();  // never a match
    auto rows = s_.Query("searching pending requests holding a key archived",
                         "SELECT id, requester FROM requests WHERE spki_sha256 = ?1 AND "
                         "disposition = ?2 AND archived_key IS NOT NULL AND id <> ?3 "
                         "ORDER BY id LIMIT ?4",
                         {spki_sha256, static_cast<int64_t>(Disposition::kPending), exclude_request,
                          LimitParameter(limit)});
    if (!rows.ok()) return rows.status();
    std::vector<PendingArchive> out;
    out.reserve(rows->size());
    for (const auto& row : *rows) out.push_back({row.Int(0), row.Text(1)});
    return out;
  }

  absl::Status Revoke(const std::string& serial, int reason, UnixTime at) override {
    const std::string what = StrCat("revoking certificate ", serial);
    // RFC 5280 CRLReason: 0..10, 7 unassigned.
    if (reason < 0 || reason > 10 || reason == 7) {
      return absl::InvalidArgumentError(
          StrCat(what, ": ", reason, " is not an RFC 5280 CRLReason (0-6, 8-10)"));
    }
    auto rows =
        s_.Query(what, StrCat("SELECT revoked FROM certificates WHERE serial = ?1", ForUpdate(s_)),
                 {serial});
    if (!rows.ok()) return rows.status();
    if (rows->empty())
      return absl::NotFoundError(StrCat(what, ": no certificate with that serial"));
    if (rows->front().Int(0) != 0) {
      return absl::FailedPreconditionError(StrCat(what, ": already revoked"));
    }
    return s_
        .Execute(what,
                 "UPDATE certificates SET revoked = 1, revocation_reason = ?1, revoked_at = ?2 "
                 "WHERE serial = ?3",
                 {static_cast<int64_t>(reason), at, serial})
        .status();
  }

  absl::StatusOr<CertificateRecord> ReleaseHold(const std::string& serial) override {
    const std::string what = StrCat("releasing the hold on certificate ", serial);
    auto rows = s_.Query(what,
                         StrCat("SELECT ", kCertificateColumns,
                                " FROM certificates c WHERE c.serial = ?1", ForUpdate(s_)),
                         {serial});
    if (!rows.ok()) return rows.status();
    if (rows->empty())
      return absl::NotFoundError(StrCat(what, ": no certificate with that serial"));
    CertificateRecord before = ReadCertificate(rows->front());
    if (!before.revoked) return absl::FailedPreconditionError(StrCat(what, ": it is not revoked"));
    if (before.revocation_reason != 6) {
      return absl::FailedPreconditionError(
          StrCat(what, ": it is revoked with CRLReason ", before.revocation_reason,
                 ", not certificateHold (6); only a hold can be released"));
    }
    auto updated = s_.Execute(what,
                              "UPDATE certificates SET revoked = 0, revocation_reason = 0, "
                              "revoked_at = 0 WHERE serial = ?1 AND revoked = 1 AND "
                              "revocation_reason = 6",
                              {serial});
    if (!updated.ok()) return updated.status();
    return before;
  }

  absl::Status PutSetting(const std::string& name, const std::string& value) override {
    if (name.empty()) return absl::InvalidArgumentError("setting a value: the name is empty");
    return s_
        .Execute(StrCat("writing setting \"", name, "\""),
                 "INSERT INTO settings (name, value) VALUES (?1, ?2) "
                 "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                 {name, value})
        .status();
  }

  absl::StatusOr<std::string> GetSetting(const std::string& name) override {
    auto rows =
        s_.Query(StrCat("reading setting \"", name, "\""),
                 StrCat("SELECT value FROM settings WHERE name = ?1", ForUpdate(s_)), {name});
    if (!rows.ok()) return rows.status();
    if (rows->empty()) return absl::NotFoundError(StrCat("setting \"", name, "\" is not set"));
    return rows->front().Text(0);
  }

  absl::StatusOr<int64_t> NextCounter(const std::string& name) override {
    const std::string what = StrCat("incrementing counter \"", name, "\"");
    if (name.empty()) return absl::InvalidArgumentError(StrCat(what, ": the name is empty"));
    // Serialized across replicas: the first increment of a counter has no
    // row to lock yet.
    if (absl::Status st = s_.LockForTransaction(sql::kCounterLock); !st.ok()) return st;
    int64_t value = 0;
    absl::StatusOr<std::string> current = GetSetting(name);
    if (current.ok()) {
      absl::StatusOr<int64_t> parsed = ParseCounter(*current, what);
      if (!parsed.ok()) return parsed.status();
      value = *parsed;
    } else if (!absl::IsNotFound(current.status())) {
      return current.status();
    }
    if (value == std::numeric_limits<int64_t>::max()) {
      return absl::OutOfRangeError(StrCat(what, ": the counter is at its maximum"));
    }
    ++value;
    if (absl::Status st = PutSetting(name, std::to_string(value)); !st.ok()) return st;
    return value;
  }

  absl::StatusOr<AuditRecord> AppendAudit(const AuditEntry& entry, UnixTime at) override {
    const std::string what = StrCat("appending audit event \"", entry.event, "\"");
    // One chain for every replica: the next seq and prev_hash are read and
    // the record written while no one else can append.
    if (absl::Status st = s_.LockForTransaction(sql::kAuditChainLock); !st.ok()) return st;
    AuditRecord record;
    record.time = at;
    record.principal = entry.principal;
    record.event = entry.event;
    record.details = entry.details_json;
    auto last = s_.Query(what, "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1");
    if (!last.ok()) return last.status();
    if (!last->empty()) {
      record.seq = last->front().Int(0) + 1;
      record.prev_hash = last->front().Blob(1);
    } else {
      record.seq = 1;
      record.prev_hash.assign(32, 0);
    }
    // A sequence number is never reused: after records were removed (and
    // the daemon told to start anyway) numbering continues after the
    // highest seq a checkpoint vouched for, leaving the gap visible.
    auto signed_seq = s_.Query(what, "SELECT coalesce(max(seq), 0) FROM audit_checkpoints");
    if (!signed_seq.ok()) return signed_seq.status();
    if (!signed_seq->empty() && signed_seq->front().Int(0) >= record.seq) {
      record.seq = signed_seq->front().Int(0) + 1;
    }
    record.hash = AuditHash(record);
    if (record.hash.size() != 32) {
      return absl::InternalError(StrCat(what, ": computing the SHA-256 chain hash failed"));
    }
    absl::StatusOr<int64_t> inserted =
        s_.Execute(what,
                   "INSERT INTO audit (seq, time, principal, event, details, prev_hash, hash) "
                   "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                   {record.seq, record.time, record.principal, record.event, record.details,
                    Bytes{record.prev_hash}, Bytes{record.hash}});
    if (!inserted.ok()) return inserted.status();
    return record;
  }

  absl::Status Lock(std::string_view name) override { return s_.LockForTransaction(LockKey(name)); }

  Session& session() { return s_; }

 private:
  // " FOR UPDATE" where the backend has row locks (PostgreSQL) and this is
  // a write transaction; SQLite's write transaction holds the whole
  // database already.
  const char* ForUpdate(const Session&) const {
    return !read_only_ && s_.dialect() == sql::Dialect::kPostgresql ? " FOR UPDATE" : "";
  }

  // Fails unless request `id` exists and is pending; locks its row.
  absl::Status CheckPending(int64_t id, std::string_view what) {
    auto rows = s_.Query(
        what, StrCat("SELECT disposition FROM requests WHERE id = ?1", ForUpdate(s_)), {id});
    if (!rows.ok()) return rows.status();
    if (rows->empty()) return absl::NotFoundError(StrCat(what, ": request ", id, " not found"));
    std::optional<Disposition> d = DispositionFromInt(rows->front().Int(0));
    if (d != Disposition::kPending) {
      return absl::FailedPreconditionError(StrCat(
          what, ": request ", id, " is ", d ? DispositionName(*d) : "unknown", ", not pending"));
    }
    return absl::OkStatus();
  }

  absl::Status InsertCertificateRow(const CertificateRecord& c, int64_t request_id,
                                    std::string_view what) {
    return s_
        .Execute(what,
                 "INSERT INTO certificates (serial, request_id, der, subject, cn, upn, "
                 "template_name, sha1, sha256, not_before, not_after, revoked, revocation_reason, "
                 "revoked_at, spki_sha256, email) "
                 "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                 {c.serial,
                  // NULL, not 0, for "no request", so the foreign key holds.
                  request_id != 0 ? Value{request_id} : Value{}, Bytes{c.der}, c.subject,
                  pki::CommonNameOfRfc4514(c.subject), c.upn, c.template_name, c.sha1, c.sha256,
                  c.not_before, c.not_after, int64_t{c.revoked ? 1 : 0},
                  static_cast<int64_t>(c.revocation_reason), c.revoked_at,
                  // Computed here from the DER, whatever the caller filled
                  // in: the key index is never wrong for a stored
                  // certificate. (A DER that does not decode, which only the
                  // store's own tests insert, is stored unindexed.)
                  SpkiSha256OfCertificate(c.der), c.email})
        .status();
  }

  Session& s_;
  const bool read_only_;
};

// Runs one of the unit of work's reads in a read transaction of `db` (one
// snapshot, no row locks) and returns what it read.
template <typename T>
absl::StatusOr<T> ReadOne(sql::Database& db, std::string_view what,
                          const std::function<absl::StatusOr<T>(SqlTransaction&)>& read) {
  absl::StatusOr<T> out = absl::UnknownError(StrCat(what, ": not read"));
  absl::Status st = db.Transact(what, sql::Access::kRead, [&](Session& s) {
    SqlTransaction t(s, /*read_only=*/true);
    out = read(t);
    return out.status();
  });
  if (!st.ok()) return st;
  return out;
}

}  // namespace

std::string SpkiSha256OfCertificate(const std::vector<uint8_t>& der) {
  // pki::CertificateSpki walks the certificate's outer structure: d2i_X509
  // would decode the public key too, which OpenSSL 3.0's decoders make cost
  // about as much as the rest of storing an issuance.
  const std::span<const uint8_t> spki = pki::CertificateSpki(der);
  return spki.empty() ? std::string() : pki::Sha256Hex(spki);
}

absl::Status CopyAllRows(sql::Session& from, sql::Session& to) {
  struct Table {
    const char* name;
    const char* columns;
    const char* order;
    size_t count;
  };
  static constexpr Table kTables[] = {
      {"requests",
       "id, requester, template_name, format, raw, subject, disposition, disposition_message, "
       "status_code, submitted_at, resolved_at, resolved_by, serial, archived_key, "
       "archival_scheme, kra_sha1, encrypted_key_hash, spki_sha256, request_sha256",
       "id", 19},
      {"certificates",
       "serial, request_id, der, subject, cn, upn, template_name, sha1, sha256, not_before, "
       "not_after, revoked, revocation_reason, revoked_at, spki_sha256, email",
       "rowid", 16},
      {"settings", "name, value", "name", 2},
      {"audit", "seq, time, principal, event, details, prev_hash, hash", "seq", 7},
      {"audit_checkpoints", "number, seq, der", "number", 3},
      {"archive_history",
       "request_id, version, replaced_at, replaced_by, archived_key, archival_scheme, kra_sha1",
       "request_id, version", 7},
  };
  for (const Table& t : kTables) {
    const std::string what = StrCat("copying table ", t.name);
    auto rows =
        from.Query(what, StrCat("SELECT ", t.columns, " FROM ", t.name, " ORDER BY ", t.order));
    if (!rows.ok()) return rows.status();
    std::string placeholders;
    for (size_t i = 1; i <= t.count; ++i) placeholders += StrCat(i == 1 ? "?" : ", ?", i);
    const std::string insert =
        StrCat("INSERT INTO ", t.name, " (", t.columns, ") VALUES (", placeholders, ")");
    for (const Row& row : *rows) {
      std::vector<Value> values;
      values.reserve(t.count);
      for (size_t i = 0; i < t.count; ++i) values.push_back(row.value(i));
      if (auto st = to.Execute(what, insert, values); !st.ok()) return st.status();
    }
  }
  return absl::OkStatus();
}

absl::Status SqlStore::Read(std::string_view what,
                            const std::function<absl::Status(Transaction&)>& fn) {
  return db_->Transact(what, sql::Access::kRead, [&](Session& s) {
    SqlTransaction txn(s, /*read_only=*/true);
    return fn(txn);
  });
}

absl::Status SqlStore::Transact(std::string_view what,
                                const std::function<absl::Status(Transaction&)>& fn) {
  return db_->Transact(what, sql::Access::kWrite, [&](Session& s) {
    SqlTransaction txn(s);
    return fn(txn);
  });
}

absl::Status SqlStore::Read(std::string_view what,
                            const std::function<absl::Status(Session&)>& fn) {
  return db_->Transact(what, sql::Access::kRead, fn);
}

absl::StatusOr<int64_t> SqlStore::InsertRequest(const RequestRecord& r, const AuditFor& audit) {
  int64_t id = 0;
  absl::Status st = Transact("inserting a request", [&](Transaction& t) -> absl::Status {
    absl::StatusOr<int64_t> inserted = t.InsertRequest(r);
    if (!inserted.ok()) return inserted.status();
    id = *inserted;
    if (audit) {
      for (const AuditEntry& entry : audit(id)) {
        if (auto appended = t.AppendAudit(entry, r.submitted_at); !appended.ok()) {
          return appended.status();
        }
      }
    }
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return id;
}

absl::StatusOr<RequestRecord> SqlStore::GetRequest(int64_t id) {
  return ReadOne<RequestRecord>(*db_, StrCat("reading request ", id),
                                [&](SqlTransaction& t) { return t.GetRequest(id); });
}

absl::StatusOr<std::vector<RequestRecord>> SqlStore::ListRequests(
    std::optional<Disposition> disposition, size_t limit) {
  absl::StatusOr<std::vector<RequestRecord>> out;
  absl::Status st = Read("listing requests", [&](Session& s) -> absl::Status {
    auto rows =
        disposition
            ? s.Query("listing requests",
                      StrCat("SELECT ", kRequestColumns,
                             " FROM requests WHERE disposition = ?2 ORDER BY id DESC LIMIT ?1"),
                      {LimitParameter(limit), static_cast<int64_t>(*disposition)})
            : s.Query(
                  "listing requests",
                  StrCat("SELECT ", kRequestColumns, " FROM requests ORDER BY id DESC LIMIT ?1"),
                  {LimitParameter(limit)});
    if (!rows.ok()) return rows.status();
    out = ReadRequests(*rows);
    return out.status();
  });
  if (!st.ok()) return st;
  return out;
}

absl::StatusOr<std::vector<RequestRecord>> SqlStore::FindRequestsByKey(
    const std::string& spki_sha256, size_t limit) {
  return ReadOne<std::vector<RequestRecord>>(
      *db_, "searching requests by public key",
      [&](SqlTransaction& t) { return t.FindRequestsByKey(spki_sha256, limit); });
}

absl::Status SqlStore::ResolveRequest(int64_t id, Disposition disposition,
                                      const std::string& message, uint32_t status_code,
                                      const std::string& resolved_by, UnixTime at,
                                      bool discard_archived_key,
                                      const std::vector<AuditEntry>& audit) {
  return Transact(StrCat("resolving request ", id), [&](Transaction& t) -> absl::Status {
    if (absl::Status s = t.ResolveRequest(id, disposition, message, status_code, resolved_by, at,
                                          discard_archived_key);
        !s.ok()) {
      return s;
    }
    for (const AuditEntry& entry : audit) {
      if (auto appended = t.AppendAudit(entry, at); !appended.ok()) return appended.status();
    }
    return absl::OkStatus();
  });
}

absl::Status SqlStore::RecordIssued(int64_t request_id, const CertificateRecord& certificate,
                                    const std::optional<ArchivedKey>& archived_key,
                                    const std::string& resolved_by, UnixTime at,
                                    const std::vector<AuditEntry>& audit) {
  return Transact(StrCat("issuing for request ", request_id), [&](Transaction& t) -> absl::Status {
    if (absl::Status s = t.RecordIssued(request_id, certificate, archived_key, resolved_by, at);
        !s.ok()) {
      return s;
    }
    for (const AuditEntry& entry : audit) {
      if (auto appended = t.AppendAudit(entry, at); !appended.ok()) return appended.status();
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<int64_t> SqlStore::ReplaceArchivedKey(
    int64_t request_id, const std::vector<uint8_t>& expected, const std::vector<uint8_t>& envelope,
    const std::vector<std::string>& kra_sha1, const std::string& scheme,
    const std::string& replaced_by, UnixTime at, const std::vector<AuditEntry>& audit) {
  int64_t version = 0;
  absl::Status st = Transact(StrCat("rewrapping the archived key of request ", request_id),
                             [&](Transaction& t) -> absl::Status {
                               auto v = t.ReplaceArchivedKey(request_id, expected, envelope,
                                                             kra_sha1, scheme, replaced_by, at);
                               if (!v.ok()) return v.status();
                               version = *v;
                               for (const AuditEntry& entry : audit) {
                                 if (auto appended = t.AppendAudit(entry, at); !appended.ok()) {
                                   return appended.status();
                                 }
                               }
                               return absl::OkStatus();
                             });
  if (!st.ok()) return st;
  return version;
}

absl::StatusOr<std::vector<ArchiveHistoryRecord>> SqlStore::ArchiveHistory(int64_t request_id) {
  return ReadOne<std::vector<ArchiveHistoryRecord>>(
      *db_, StrCat("reading the archive history of request ", request_id),
      [&](SqlTransaction& t) { return t.ArchiveHistory(request_id); });
}

absl::Status SqlStore::AttachArchivedKey(int64_t id, const ArchivedKey& key) {
  return Transact(StrCat("attaching the archived key to request ", id),
                  [&](Transaction& t) { return t.AttachArchivedKey(id, key); });
}

absl::Status SqlStore::SetPendingMessage(int64_t id, const std::string& message, UnixTime at,
                                         const std::vector<AuditEntry>& audit) {
  return Transact(StrCat("updating pending request ", id), [&](Transaction& t) -> absl::Status {
    if (absl::Status s = t.SetPendingMessage(id, message); !s.ok()) return s;
    for (const AuditEntry& entry : audit) {
      if (auto appended = t.AppendAudit(entry, at); !appended.ok()) return appended.status();
    }
    return absl::OkStatus();
  });
}

absl::Status SqlStore::InsertCertificate(const CertificateRecord& certificate) {
  return Transact(StrCat("inserting certificate ", certificate.serial),
                  [&](Transaction& t) { return t.InsertCertificate(certificate); });
}

absl::StatusOr<CertificateRecord> SqlStore::GetCertificate(const std::string& serial) {
  return ReadOne<CertificateRecord>(*db_, StrCat("reading certificate ", serial),
                                    [&](SqlTransaction& t) { return t.GetCertificate(serial); });
}

absl::StatusOr<std::vector<CertificateRecord>> SqlStore::FindCertificates(
    const CertificateQuery& query) {
  return ReadOne<std::vector<CertificateRecord>>(
      *db_, "searching certificates", [&](SqlTransaction& t) { return t.FindCertificates(query); });
}

absl::Status SqlStore::Revoke(const std::string& serial, int reason, UnixTime at) {
  return Transact(StrCat("revoking certificate ", serial),
                  [&](Transaction& t) { return t.Revoke(serial, reason, at); });
}

absl::StatusOr<std::vector<CertificateRecord>> SqlStore::RevokedCertificates(UnixTime now) {
  std::vector<CertificateRecord> out;
  absl::Status st = Read("listing revoked certificates", [&](Session& s) -> absl::Status {
    auto rows = s.Query("listing revoked certificates",
                        StrCat("SELECT ", kCertificateColumns,
                               " FROM certificates c WHERE c.revoked = 1 AND "
                               "c.not_after >= ?1 ORDER BY c.revoked_at, c.serial"),
                        {now});
    if (!rows.ok()) return rows.status();
    out = ReadCertificates(*rows);
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return out;
}

absl::Status SqlStore::PutSetting(const std::string& name, const std::string& value) {
  return Transact(StrCat("writing setting \"", name, "\""),
                  [&](Transaction& t) { return t.PutSetting(name, value); });
}

absl::StatusOr<std::string> SqlStore::GetSetting(const std::string& name) {
  absl::StatusOr<std::string> out = absl::UnknownError("not read");
  absl::Status st = Read(StrCat("reading setting \"", name, "\""), [&](Session& s) -> absl::Status {
    auto rows = s.Query(StrCat("reading setting \"", name, "\""),
                        "SELECT value FROM settings WHERE name = ?1", {name});
    if (!rows.ok()) return rows.status();
    if (rows->empty()) {
      out = absl::NotFoundError(StrCat("setting \"", name, "\" is not set"));
    } else {
      out = rows->front().Text(0);
    }
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return out;
}

absl::StatusOr<int64_t> SqlStore::NextCounter(const std::string& name) {
  int64_t value = 0;
  absl::Status st =
      Transact(StrCat("incrementing counter \"", name, "\""), [&](Transaction& t) -> absl::Status {
        absl::StatusOr<int64_t> next = t.NextCounter(name);
        if (!next.ok()) return next.status();
        value = *next;
        return absl::OkStatus();
      });
  if (!st.ok()) return st;
  return value;
}

// A lease is the setting "lease.<name>" = "<expiry> <holder>".
absl::StatusOr<bool> SqlStore::AcquireLease(const std::string& name, const std::string& holder,
                                            UnixTime now, int64_t ttl_seconds) {
  const std::string what = StrCat("taking lease \"", name, "\" for \"", holder, "\"");
  if (name.empty() || holder.empty() || ttl_seconds <= 0) {
    return absl::InvalidArgumentError(StrCat(what, ": needs a name, a holder and a positive ttl"));
  }
  bool got = false;
  absl::Status st = db_->Transact(what, sql::Access::kWrite, [&](Session& s) -> absl::Status {
    got = false;
    if (absl::Status lock = s.LockForTransaction(sql::kLeaseLock); !lock.ok()) return lock;
    SqlTransaction t(s);
    absl::StatusOr<std::string> value = t.GetSetting(StrCat("lease.", name));
    if (value.ok()) {
      const size_t space = value->find(' ');
      if (space == std::string::npos) {
        return absl::DataLossError(StrCat(what, ": the lease holds \"", *value, "\""));
      }
      absl::StatusOr<int64_t> expiry = ParseCounter(value->substr(0, space), what);
      if (!expiry.ok()) {
        return absl::DataLossError(StrCat(what, ": the lease holds \"", *value, "\""));
      }
      if (value->substr(space + 1) != holder && *expiry > now) return absl::OkStatus();
    } else if (!absl::IsNotFound(value.status())) {
      return value.status();
    }
    if (absl::Status put =
            t.PutSetting(StrCat("lease.", name), StrCat(now + ttl_seconds, " ", holder));
        !put.ok()) {
      return put;
    }
    got = true;
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return got;
}

absl::Status SqlStore::ReleaseLease(const std::string& name, const std::string& holder) {
  const std::string what = StrCat("releasing lease \"", name, "\" of \"", holder, "\"");
  return db_->Transact(what, sql::Access::kWrite, [&](Session& s) -> absl::Status {
    if (absl::Status lock = s.LockForTransaction(sql::kLeaseLock); !lock.ok()) return lock;
    SqlTransaction t(s);
    absl::StatusOr<std::string> value = t.GetSetting(StrCat("lease.", name));
    if (!value.ok()) return absl::IsNotFound(value.status()) ? absl::OkStatus() : value.status();
    const size_t space = value->find(' ');
    if (space == std::string::npos || value->substr(space + 1) != holder) return absl::OkStatus();
    return s
        .Execute(what, "DELETE FROM settings WHERE name = ?1 AND value = ?2",
                 {StrCat("lease.", name), *value})
        .status();
  });
}

absl::StatusOr<AuditRecord> SqlStore::AppendAudit(const std::string& principal,
                                                  const std::string& event,
                                                  const std::string& details_json, UnixTime at) {
  AuditRecord out;
  absl::Status st = Transact(
      StrCat("appending audit event \"", event, "\""), [&](Transaction& t) -> absl::Status {
        auto record = t.AppendAudit(AuditEntry{principal, event, details_json}, at);
        if (!record.ok()) return record.status();
        out = *std::move(record);
        return absl::OkStatus();
      });
  if (!st.ok()) return st;
  return out;
}

absl::StatusOr<std::vector<AuditRecord>> SqlStore::ReadAudit(int64_t from_seq, size_t limit) {
  std::vector<AuditRecord> out;
  const std::string what = StrCat("reading audit records from seq ", from_seq);
  absl::Status st = Read(what, [&](Session& s) -> absl::Status {
    auto rows = s.Query(
        what, StrCat("SELECT ", kAuditColumns, " FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT ?2"),
        {from_seq, LimitParameter(limit)});
    if (!rows.ok()) return rows.status();
    for (const Row& row : *rows) out.push_back(ReadAuditRecord(row));
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return out;
}

absl::StatusOr<AuditRecord> SqlStore::LastAudit() {
  absl::StatusOr<AuditRecord> out = absl::NotFoundError("the audit log is empty");
  absl::Status st = Read("reading the newest audit record", [&](Session& s) -> absl::Status {
    auto rows = s.Query("reading the newest audit record",
                        StrCat("SELECT ", kAuditColumns, " FROM audit ORDER BY seq DESC LIMIT 1"));
    if (!rows.ok()) return rows.status();
    if (!rows->empty()) out = ReadAuditRecord(rows->front());
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return out;
}

absl::Status SqlStore::AppendAuditCheckpoint(const StoredCheckpoint& c) {
  const std::string what = StrCat("storing audit checkpoint ", c.number, " (seq ", c.seq, ")");
  if (c.number < 1 || c.seq < 1 || c.der.empty()) {
    return absl::InvalidArgumentError(StrCat(what, ": no number, seq or signed checkpoint"));
  }
  absl::Status st = db_->Transact(what, sql::Access::kWrite, [&](Session& s) {
    return s
        .Execute(what, "INSERT INTO audit_checkpoints (number, seq, der) VALUES (?1, ?2, ?3)",
                 {c.number, c.seq, Bytes{c.der}})
        .status();
  });
  if (absl::IsAborted(st) || absl::IsFailedPrecondition(st) || absl::IsAlreadyExists(st)) {
    return absl::AlreadyExistsError(StrCat(what, ": ", st.message()));
  }
  return st;
}

absl::StatusOr<std::vector<StoredCheckpoint>> SqlStore::ReadAuditCheckpoints() {
  std::vector<StoredCheckpoint> out;
  absl::Status st = Read("reading audit checkpoints", [&](Session& s) -> absl::Status {
    auto rows = s.Query("reading audit checkpoints",
                        "SELECT number, seq, der FROM audit_checkpoints ORDER BY number");
    if (!rows.ok()) return rows.status();
    for (const Row& row : *rows)
      out.push_back(StoredCheckpoint{row.Int(0), row.Int(1), row.Blob(2)});
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return out;
}

absl::StatusOr<StoredCheckpoint> SqlStore::LastAuditCheckpoint() {
  absl::StatusOr<StoredCheckpoint> out = absl::NotFoundError("no audit checkpoint is stored");
  absl::Status st = Read("reading the newest audit checkpoint", [&](Session& s) -> absl::Status {
    auto rows =
        s.Query("reading the newest audit checkpoint",
                "SELECT number, seq, der FROM audit_checkpoints ORDER BY number DESC LIMIT 1");
    if (!rows.ok()) return rows.status();
    if (!rows->empty()) {
      out = StoredCheckpoint{rows->front().Int(0), rows->front().Int(1), rows->front().Blob(2)};
    }
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return out;
}

}  // namespace keywarden::service
