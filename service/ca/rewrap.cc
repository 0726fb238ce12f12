// KRA rollover on the CA side (issue 17 item 3; keywarden kra rewrap): a
// KRA re-encrypted an archive's content key to the CA's current KRAs on its
// card; the CA stores the new envelope only when nothing but the recipients
// changed, every new recipient is a KRA of this CA that is valid now, and
// the envelope is in the CA's current form ([kra] threshold: k = 1
// key-transport recipients, k >= 2 a threshold split with that k).
// The CA cannot check that the new recipients hold the right content key
// (it never has it): the old envelope stays in the archive history, so a
// bad rewrap loses nothing (docs/DECISIONS.md, "rewrap").
#include <openssl/evp.h>

#include <functional>
#include <optional>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/rewrap.h"
#include "pki/threshold.h"
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
  auto fresh = pki::ParseArchiveEnvelope(envelope);
  if (!fresh.ok()) {
    return refuse(
        Error(hresult::kInvalidArg, StrCat("RewrapArchivedKeyRequest.enveloped_data: ",
                                           fresh.status().message(), "; nothing was stored")));
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
  // The form this CA archives in now ([kra] threshold): a rewrap must be in
  // it (docs/THRESHOLD.md, "Rewrap").
  const int k = config_.kra.threshold;
  const std::string base_scheme = stored.scheme.starts_with("aes256-rsa-oaep")
                                      ? std::string("aes256-rsa-oaep")
                                      : std::string("des3-rsa-pkcs1");
  const pki::KeyTransport transport = base_scheme == "aes256-rsa-oaep"
                                          ? pki::KeyTransport::kRsaOaepSha1
                                          : pki::KeyTransport::kRsaPkcs1;
  // Each new recipient as (what it is called in messages, the KRA it names
  // by issuer and serial, its key transport).
  struct NewRecipient {
    std::string name;
    std::function<bool(X509*)> names;
    pki::KeyTransport transport;
  };
  std::vector<NewRecipient> recipients;
  std::optional<pki::threshold::ThresholdEnvelope> shares;
  if (k >= 2) {
    if (!fresh->threshold) {
      return refuse(Error(
          hresult::kInvalidArg,
          StrCat("RewrapArchivedKeyRequest.enveloped_data has key-transport recipients, but this "
                 "CA makes threshold archives ([kra] threshold = ",
                 k,
                 "): a rewrap must split the content key afresh into threshold shares; nothing "
                 "was stored")));
    }
    auto parsed = pki::threshold::ParseThresholdEnvelope(envelope);
    if (!parsed.ok()) {
      return refuse(
          Error(hresult::kInvalidArg, StrCat("RewrapArchivedKeyRequest.enveloped_data: ",
                                             parsed.status().message(), "; nothing was stored")));
    }
    if (parsed->k != k) {
      return refuse(Error(
          hresult::kInvalidArg,
          StrCat("RewrapArchivedKeyRequest.enveloped_data has threshold ", parsed->k, " (of ",
                 parsed->n, " shares); this CA's [kra] threshold is ", k, "; nothing was stored")));
    }
    // Share indexes 1..n, each once (the parser checked distinct, k <= n and
    // one share per recipient).
    for (const auto& e : parsed->shares) {
      if (e.index < 1 || e.index > parsed->n) {
        return refuse(
            Error(hresult::kInvalidArg,
                  StrCat("RewrapArchivedKeyRequest.enveloped_data: ", e.Describe(),
                         " has an index outside 1..", parsed->n, "; nothing was stored")));
      }
    }
    shares = std::move(*parsed);
    for (const auto& e : shares->shares) {
      recipients.push_back({e.Describe(), [&e](X509* cert) { return e.Names(cert); }, e.transport});
    }
  } else {
    if (fresh->threshold) {
      return refuse(Error(hresult::kInvalidArg,
                          "RewrapArchivedKeyRequest.enveloped_data has threshold shares, but this "
                          "CA makes archives any one KRA recovers ([kra] threshold = 1): a "
                          "rewrap must wrap the content key to each KRA; nothing was stored"));
    }
    for (size_t i = 0; i < fresh->recipients.size(); ++i) {
      const pki::ArchiveRecipient& r = fresh->recipients[i];
      recipients.push_back({StrCat("recipient ", i + 1, " (", r.Describe(), ")"),
                            [&r](X509* cert) { return r.Names(cert); }, r.transport});
    }
  }
  const KraSelection valid = kras_->Valid();
  std::vector<std::string> sha1;
  for (const NewRecipient& r : recipients) {
    std::optional<size_t> match;
    for (size_t i = 0; i < valid.certificates.size(); ++i) {
      if (r.names(valid.certificates[i].get())) match = i;
    }
    if (!match) {
      return refuse(Error(hresult::kInvalidArg,
                          StrCat("RewrapArchivedKeyRequest.enveloped_data: ", r.name,
                                 " is not a currently valid KRA of this CA (keywarden kra "
                                 "list); nothing was stored")));
    }
    if (r.transport != transport) {
      return refuse(Error(hresult::kInvalidArg,
                          StrCat("RewrapArchivedKeyRequest.enveloped_data: ", r.name,
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
    return refuse(Error(hresult::kInvalidArg,
                        StrCat("RewrapArchivedKeyRequest.enveloped_data has ", sha1.size(),
                               shares ? " share(s)" : " recipient(s)", "; this CA archives to ",
                               needed, " KRAs ([kra] count); nothing was stored")));
  }
  const std::string scheme =
      shares ? StrCat(base_scheme, "-threshold-", k, "of", shares->n) : base_scheme;
  RewrapResult result;
  result.request_id = request_id;
  result.previous_kra_sha1 = stored.kra_sha1;
  result.kra_sha1 = sha1;
  result.scheme = scheme;
  const std::vector<uint8_t> new_sha256 = Sha256(envelope);
  std::vector<AuditEntry> audit = {{who, "archival.key_rewrapped",
                                    json{{"request_id", request_id},
                                         {"serial", request->serial},
                                         {"previous_kra_sha1", stored.kra_sha1},
                                         {"kra_sha1", sha1},
                                         {"previous_scheme", stored.scheme},
                                         {"scheme", scheme},
                                         {"previous_sha256", HexString(previous_sha256)},
                                         {"sha256", HexString(new_sha256)}}
                                        .dump()}};
  auto version = store_.ReplaceArchivedKey(request_id, stored.envelope, envelope, sha1, scheme, who,
                                           clock_(), audit);
  if (!version.ok()) {
    if (absl::IsFailedPrecondition(version.status())) return refuse(version.status());
    return version.status();  // a CA-side fault: not the client's
  }
  result.history_version = *version;
  return result;
}

}  // namespace keywarden::service
