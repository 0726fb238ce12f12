// KRA rollover on the CA side (issue 17 item 3; keywarden kra rewrap): a
// KRA re-encrypted an archive's content key to the CA's current KRAs on its
// card; the CA stores the new envelope only when nothing but the recipients
// changed and every new recipient is a KRA of this CA that is valid now.
// The CA cannot check that the new recipients hold the right content key
// (it never has it): the old envelope stays in the archive history, so a
// bad rewrap loses nothing (docs/DECISIONS.md, "rewrap").
#include <openssl/evp.h>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/rewrap.h"
#include "service/ca/authority.h"
#include "service/errors.h"

namespace keywarden::service {
namespace {

using nlohmann::json;

std::vector<uint8_t> Sha256(std::span<const uint8_t> data) {
  std::vector<uint8_t> out(32);
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1) {
    return {};
  }
  return out;
}

}  // namespace

absl::StatusOr<CertificateAuthority::RewrapResult> CertificateAuthority::RewrapArchivedKey(
    const std::string& who, int64_t request_id, const std::vector<uint8_t>& previous_sha256,
    const std::vector<uint8_t>& envelope) {
  // Every refusal of the client's input is audited with its reason.
  auto refuse = [&](absl::Status st) {
    Audit(who, "archival.rewrap_refused",
          json{{"request_id", request_id}, {"reason", std::string(st.message())}}.dump());
    return st;
  };
  if (request_id <= 0) {
    return refuse(Error(hresult::kInvalidArg, StrCat("RewrapArchivedKeyRequest.request_id is ",
                                                     request_id, "; request ids start at 1")));
  }
  if (previous_sha256.size() != 32) {
    return refuse(Error(hresult::kInvalidArg,
                        "RewrapArchivedKeyRequest.previous_sha256 must be the 32-byte SHA-256 of "
                        "the archive the rewrap was made from"));
  }
  auto request = store_.GetRequest(request_id);
  if (!request.ok()) {
    if (absl::IsNotFound(request.status())) {
      return refuse(Error(hresult::kNotFound, StrCat("request ", request_id, " not found")));
    }
    return request.status();  // the database's fault, not the client's
  }
  if (!request->archived_key) {
    return refuse(
        Error(hresult::kNotFound, StrCat("request ", request_id, " has no archived key")));
  }
  const ArchivedKey& stored = *request->archived_key;
  if (Sha256(stored.envelope) != previous_sha256) {
    return refuse(absl::FailedPreconditionError(
        StrCat("the archive of request ", request_id,
               " is not the one the rewrap was made from (rewrapped meanwhile?): fetch it "
               "again with getkey; nothing was stored")));
  }
  auto old = pki::ParseArchiveEnvelope(stored.envelope);
  if (!old.ok()) {
    return absl::DataLossError(StrCat("the stored archive of request ", request_id,
                                      " does not parse: ", old.status().message()));
  }
  if (old->threshold) {
    return refuse(absl::FailedPreconditionError(
        StrCat("request ", request_id,
               " holds a threshold archive: rewrap of threshold archives is not supported "
               "yet; nothing was stored")));
  }
  auto fresh = pki::ParseArchiveEnvelope(envelope);
  if (!fresh.ok()) {
    return refuse(
        Error(hresult::kInvalidArg, StrCat("RewrapArchivedKeyRequest.enveloped_data: ",
                                           fresh.status().message(), "; nothing was stored")));
  }
  if (fresh->threshold) {
    return refuse(Error(hresult::kInvalidArg,
                        "RewrapArchivedKeyRequest.enveloped_data has threshold shares: rewrap "
                        "to a threshold archive is not supported; nothing was stored"));
  }
  if (fresh->encrypted_content_info != old->encrypted_content_info) {
    return refuse(Error(hresult::kBadData,
                        StrCat("RewrapArchivedKeyRequest.enveloped_data: its "
                               "encryptedContentInfo is not byte for byte the one stored for "
                               "request ",
                               request_id,
                               " (a rewrap may change the recipients only); nothing "
                               "was stored")));
  }
  const pki::KeyTransport transport = stored.scheme == "aes256-rsa-oaep"
                                          ? pki::KeyTransport::kRsaOaepSha1
                                          : pki::KeyTransport::kRsaPkcs1;
  const KraSelection valid = kras_->Valid();
  std::vector<std::string> sha1;
  for (size_t i = 0; i < fresh->recipients.size(); ++i) {
    const pki::ArchiveRecipient& r = fresh->recipients[i];
    std::optional<size_t> match;
    for (size_t k = 0; k < valid.certificates.size(); ++k) {
      if (r.Names(valid.certificates[k].get())) match = k;
    }
    if (!match) {
      return refuse(Error(
          hresult::kInvalidArg,
          StrCat("RewrapArchivedKeyRequest.enveloped_data: recipient ", i + 1, " (", r.Describe(),
                 ") is not a currently valid KRA of this CA (keywarden kra list); "
                 "nothing was stored")));
    }
    if (r.transport != transport) {
      return refuse(Error(hresult::kInvalidArg,
                          StrCat("RewrapArchivedKeyRequest.enveloped_data: recipient ", i + 1,
                                 " does not use the key transport of the archive's scheme (",
                                 stored.scheme, "); nothing was stored")));
    }
    for (const std::string& have : sha1) {
      if (have == valid.sha1[*match]) {
        return refuse(
            Error(hresult::kInvalidArg, StrCat("RewrapArchivedKeyRequest.enveloped_data: KRA ",
                                               have, " is a recipient twice; nothing was stored")));
      }
    }
    sha1.push_back(valid.sha1[*match]);
  }
  const size_t needed = kras_->per_archival();
  if (sha1.size() < needed) {
    return refuse(
        Error(hresult::kInvalidArg, StrCat("RewrapArchivedKeyRequest.enveloped_data has ",
                                           sha1.size(), " recipient(s); this CA archives to ",
                                           needed, " KRAs ([kra] count); nothing was stored")));
  }
  RewrapResult result;
  result.request_id = request_id;
  result.previous_kra_sha1 = stored.kra_sha1;
  result.kra_sha1 = sha1;
  const std::vector<uint8_t> new_sha256 = Sha256(envelope);
  std::vector<AuditEntry> audit = {{who, "archival.key_rewrapped",
                                    json{{"request_id", request_id},
                                         {"serial", request->serial},
                                         {"previous_kra_sha1", stored.kra_sha1},
                                         {"kra_sha1", sha1},
                                         {"previous_sha256", HexString(previous_sha256)},
                                         {"sha256", HexString(new_sha256)}}
                                        .dump()}};
  auto version =
      store_.ReplaceArchivedKey(request_id, stored.envelope, envelope, sha1, who, clock_(), audit);
  if (!version.ok()) {
    if (absl::IsFailedPrecondition(version.status())) return refuse(version.status());
    return version.status();  // a CA-side fault: not the client's
  }
  result.history_version = *version;
  return result;
}

}  // namespace keywarden::service
