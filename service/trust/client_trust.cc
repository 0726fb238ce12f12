#include "service/trust/client_trust.h"

#include <openssl/err.h>
#include <openssl/x509_vfy.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <mutex>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "service/ca/issuer.h"
#include "service/errors.h"
#include "service/observe/log.h"

namespace keywarden::service {

struct ClientTrust::ClientCa {
  std::string path;
  std::vector<ossl::UniquePtr<X509>> certs;
  ossl::UniquePtr<X509_STORE> store;
  bool revocation_optional = false;
};

struct ClientTrust::LoadedCrl {
  std::string path;
  std::string issuer;  // RFC 4514
  int64_t this_update = 0;
  int64_t next_update = 0;  // 0: none given (never current)
  std::map<std::string, Revocation> revoked;
};

namespace {

std::atomic<uint64_t> next_generation{1};

std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string Utc(int64_t t) {
  const time_t tt = static_cast<time_t>(t);
  struct tm tm {};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

absl::Status WithCode(absl::StatusCode code, const absl::Status& status) {
  absl::Status out(code, status.message());
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

std::pair<int64_t, int64_t> Stamp(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return {-1, -1};
  return {static_cast<int64_t>(st.st_size),
          static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

}  // namespace

std::string CrlReasonName(int reason) {
  static const char* const kNames[] = {
      "unspecified",   "keyCompromise",        "cACompromise",    "affiliationChanged",
      "superseded",    "cessationOfOperation", "certificateHold", "(7)",
      "removeFromCRL", "privilegeWithdrawn",   "aACompromise"};
  if (reason >= 0 && reason <= 10 && reason != 7) return kNames[reason];
  return StrCat("reason ", reason);
}

ClientTrust::ClientTrust(const Config& config, Clock clock)
    : config_(config), clock_(std::move(clock)) {}

ClientTrust::~ClientTrust() = default;

absl::StatusOr<std::shared_ptr<const ClientTrust::Anchors>> ClientTrust::ReadAnchors() const {
  auto anchors = std::make_shared<Anchors>();
  anchors->generation = next_generation++;
  for (const std::string& path : config_.server.client_ca) {
    auto certs = pki::ReadPemCertificates(path);
    if (!certs.ok()) {
      return absl::FailedPreconditionError(StrCat("client CA: ", certs.status().message()));
    }
    auto ca = std::make_unique<ClientCa>();
    ca->path = path;
    ca->certs = std::move(*certs);
    ca->store.reset(X509_STORE_new());
    // The file's certificates are the anchors, root or not: a role names
    // the file its holders' certificates must chain to.
    X509_STORE_set_flags(ca->store.get(), X509_V_FLAG_PARTIAL_CHAIN);
    for (const auto& c : ca->certs) X509_STORE_add_cert(ca->store.get(), c.get());
    ca->revocation_optional = std::find(config_.server.client_crl_optional.begin(),
                                        config_.server.client_crl_optional.end(),
                                        path) != config_.server.client_crl_optional.end();
    anchors->cas.push_back(std::move(ca));
  }
  return std::shared_ptr<const Anchors>(std::move(anchors));
}

std::shared_ptr<const ClientTrust::Anchors> ClientTrust::CurrentAnchors() {
  std::shared_lock lock(mu_);
  return anchors_;
}

absl::StatusOr<std::unique_ptr<ClientTrust>> ClientTrust::Load(const Config& config,
                                                               X509* ca_certificate, Clock clock) {
  std::unique_ptr<ClientTrust> trust(new ClientTrust(config, std::move(clock)));
  trust->this_ca_.reset(X509_dup(ca_certificate));
  auto anchors = trust->ReadAnchors();
  if (!anchors.ok()) return anchors.status();
  trust->anchors_ = std::move(*anchors);
  trust->ReloadCrls();
  return trust;
}

std::vector<std::string> ClientTrust::Reload() {
  std::vector<std::string> report;
  auto anchors = ReadAnchors();
  if (!anchors.ok()) {
    report.push_back(StrCat("client CAs: not reloaded, the previous ones stay in use: ",
                            anchors.status().message()));
  } else {
    size_t certs = 0;
    for (const auto& ca : (*anchors)->cas) certs += ca->certs.size();
    {
      // A new generation: every cached identity is verified again, so a
      // client of a CA that was removed is refused on its next call.
      std::unique_lock lock(mu_);
      anchors_ = std::move(*anchors);
    }
    report.push_back(StrCat("client CAs for roles and revocation: ", certs, " certificate(s) from ",
                            config_.server.client_ca.size(), " file(s)"));
  }
  for (std::string& line : ReloadCrls()) report.push_back(std::move(line));
  return report;
}

std::vector<std::string> ClientTrust::ReloadCrls() {
  std::vector<std::string> report;
  const std::shared_ptr<const Anchors> anchors = CurrentAnchors();
  std::map<std::string, std::vector<std::shared_ptr<const LoadedCrl>>> loaded;
  std::map<std::string, std::pair<int64_t, int64_t>> stamps;
  for (const std::string& path : config_.server.client_crls) {
    stamps[path] = Stamp(path);
    auto crls = pki::ReadCrlFile(path);
    if (!crls.ok()) {
      report.push_back(StrCat("client CRL ", path, ": not loaded: ", crls.status().message()));
      continue;
    }
    for (auto& crl : *crls) {
      // The issuer must be a certificate of a client_ca file, and sign it.
      X509* issuer = nullptr;
      for (const auto& ca : anchors->cas) {
        for (const auto& c : ca->certs) {
          if (X509_NAME_cmp(X509_get_subject_name(c.get()), X509_CRL_get_issuer(crl.get())) == 0 &&
              X509_CRL_verify(crl.get(), X509_get0_pubkey(c.get())) == 1) {
            issuer = c.get();
          }
        }
      }
      ERR_clear_error();
      const std::string issuer_name = pki::FormatName(X509_CRL_get_issuer(crl.get()));
      if (issuer == nullptr) {
        report.push_back(StrCat("client CRL ", path, ": not loaded: its issuer ", issuer_name,
                                " is not a client CA certificate, or its signature does not "
                                "verify"));
        continue;
      }
      auto info = std::make_shared<LoadedCrl>();
      info->path = path;
      info->issuer = issuer_name;
      info->this_update = ToUnix(X509_CRL_get0_lastUpdate(crl.get()));
      if (const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl.get())) {
        info->next_update = ToUnix(next);
      }
      STACK_OF(X509_REVOKED)* entries = X509_CRL_get_REVOKED(crl.get());
      for (int i = 0; i < sk_X509_REVOKED_num(entries); ++i) {
        const X509_REVOKED* r = sk_X509_REVOKED_value(entries, i);
        Revocation rev;
        rev.revoked_at = ToUnix(X509_REVOKED_get0_revocationDate(r));
        int crit = 0;
        ossl::UniquePtr<ASN1_ENUMERATED> reason(static_cast<ASN1_ENUMERATED*>(
            X509_REVOKED_get_ext_d2i(r, NID_crl_reason, &crit, nullptr)));
        if (reason) rev.reason = static_cast<int>(ASN1_ENUMERATED_get(reason.get()));
        info->revoked[SerialHex(X509_REVOKED_get0_serialNumber(r))] = rev;
      }
      report.push_back(StrCat("client CRL ", path, ": ", issuer_name, ", ", info->revoked.size(),
                              " revoked, next update ",
                              info->next_update ? Utc(info->next_update) : "(none)"));
      loaded[pki::Sha256Thumbprint(issuer)].push_back(std::move(info));
    }
  }
  std::unique_lock lock(mu_);
  crls_ = std::move(loaded);
  crl_stamps_ = std::move(stamps);
  return report;
}

void ClientTrust::ReloadIfChanged() {
  if (config_.server.client_crls.empty()) return;
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now().time_since_epoch())
                             .count();
  int64_t last = last_stat_.load();
  if (now_ms - last < 1000 || !last_stat_.compare_exchange_strong(last, now_ms)) return;
  bool changed = false;
  {
    std::shared_lock lock(mu_);
    for (const std::string& path : config_.server.client_crls) {
      auto it = crl_stamps_.find(path);
      if (it == crl_stamps_.end() || it->second != Stamp(path)) changed = true;
    }
  }
  if (changed) {
    for (const std::string& line : ReloadCrls()) log::Info(line);
  }
}

absl::StatusOr<std::shared_ptr<const PeerIdentity>> ClientTrust::Identify(
    std::string_view leaf_pem, std::string_view chain_pem) {
  // Verifying a chain costs more than a small RPC: the last identities
  // verified are kept for all threads (gRPC's synchronous server starts and
  // ends threads under load, so a per-thread memory kept missing).
  // Revocation is checked on every call, not here.
  const std::shared_ptr<const Anchors> anchors = CurrentAnchors();
  {
    std::lock_guard<std::mutex> lock(seen_mu_);
    for (const SeenIdentity& s : seen_) {
      if (s.peer && s.generation == anchors->generation && s.pem == leaf_pem) return s.peer;
    }
  }

  auto leaf_certs = pki::ParsePemCertificates(AsBytes(leaf_pem));
  if (leaf_certs.empty()) return absl::UnauthenticatedError("no verified client certificate");
  X509* leaf = leaf_certs.front().get();
  auto sent = pki::ParsePemCertificates(AsBytes(chain_pem));
  ossl::UniquePtr<STACK_OF(X509)> untrusted(sk_X509_new_null());
  for (const auto& c : sent) sk_X509_push(untrusted.get(), c.get());

  auto peer = std::make_shared<PeerIdentity>();
  peer->principal = pki::FormatName(X509_get_subject_name(leaf));
  peer->sha256 = pki::Sha256Thumbprint(leaf);
  peer->serial = SerialHex(leaf);
  peer->not_after = ToUnix(X509_get0_notAfter(leaf));
  std::vector<std::string> chained_to;  // client_ca files it chains to
  bool all_optional = true;
  for (const auto& ca : anchors->cas) {
    ossl::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
    if (!ctx || X509_STORE_CTX_init(ctx.get(), ca->store.get(), leaf, untrusted.get()) != 1) {
      ERR_clear_error();
      continue;
    }
    X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
    if (X509_verify_cert(ctx.get()) != 1) {
      ERR_clear_error();
      continue;
    }
    chained_to.push_back(ca->path);
    all_optional = all_optional && ca->revocation_optional;
    if (chained_to.size() > 1) continue;
    peer->client_ca = ca->path;
    STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
    for (int i = 0; i + 1 < sk_X509_num(chain); ++i) {
      X509* cert = sk_X509_value(chain, i);
      X509* issuer = sk_X509_value(chain, i + 1);
      ChainLink link;
      link.serial = SerialHex(cert);
      link.subject = pki::FormatName(X509_get_subject_name(cert));
      link.issuer = pki::FormatName(X509_get_subject_name(issuer));
      link.issued_by_this_ca = X509_cmp(issuer, this_ca_.get()) == 0;
      link.issuer_sha256 = pki::Sha256Thumbprint(issuer);
      peer->links.push_back(std::move(link));
    }
  }
  if (chained_to.empty()) {
    return absl::UnauthenticatedError(
        StrCat("client certificate ", peer->principal, " does not chain to a client CA"));
  }
  peer->revocation_optional = all_optional;

  // Roles: bindings of this subject *through a CA it chains to*, and pins.
  std::vector<bool> held(6, false);
  for (const RoleBinding& b : config_.roles) {
    bool match = false;
    if (!b.certificate_sha256.empty()) {
      match = b.certificate_sha256 == peer->sha256 &&
              (b.principal.empty() || b.principal == peer->principal);
    } else {
      match = b.principal == peer->principal &&
              std::find(chained_to.begin(), chained_to.end(), b.issuer) != chained_to.end();
    }
    if (!match) continue;
    for (Role r : b.roles) held[static_cast<size_t>(r)] = true;
  }
  for (Role r : {Role::kCaAdministrator, Role::kCertificateManager, Role::kBackupOperator,
                 Role::kAuditor, Role::kEnrollee, Role::kSigner}) {
    if (held[static_cast<size_t>(r)]) peer->roles.push_back(r);
  }

  std::shared_ptr<const PeerIdentity> identity = std::move(peer);
  std::lock_guard<std::mutex> lock(seen_mu_);
  SeenIdentity& slot = seen_[seen_next_++ % seen_.size()];
  slot.generation = anchors->generation;
  slot.pem.assign(leaf_pem.data(), leaf_pem.size());
  slot.peer = identity;
  return identity;
}

absl::Status ClientTrust::CheckRevocation(const PeerIdentity& peer) {
  ReloadIfChanged();
  const int64_t now = clock_();
  if (now >= peer.not_after) {
    return WithCode(
        absl::StatusCode::kUnauthenticated,
        Error(hresult::kCertExpired, StrCat("client certificate ", peer.serial, " (",
                                            peer.principal, ") expired on ", Utc(peer.not_after))));
  }
  auto revoked = [&](const ChainLink& link, const Revocation& r) {
    return Error(hresult::kCertRevoked,
                 StrCat(link.serial == peer.serial ? "client certificate " : "certificate ",
                        link.serial, " (", link.subject, ") was revoked by ", link.issuer, " on ",
                        Utc(r.revoked_at), ", reason ", CrlReasonName(r.reason)));
  };
  std::shared_lock lock(mu_);
  for (const ChainLink& link : peer.links) {
    if (link.issued_by_this_ca) {
      if (auto it = own_.find(link.serial); it != own_.end()) return revoked(link, it->second);
      continue;
    }
    const LoadedCrl* current = nullptr;
    if (auto it = crls_.find(link.issuer_sha256); it != crls_.end()) {
      for (const auto& crl : it->second) {
        if (crl->this_update > now + 300 || crl->next_update <= now) continue;
        if (current == nullptr || crl->this_update > current->this_update) current = crl.get();
      }
    }
    if (current == nullptr) {
      if (peer.revocation_optional) continue;
      return WithCode(
          absl::StatusCode::kUnavailable,
          Error(hresult::kRevocationOffline,
                StrCat("no current CRL of ", link.issuer, " is loaded, so certificate ",
                       link.serial, " (", link.subject,
                       ") cannot be checked for revocation (the CA operator must update [server] "
                       "client_crls)")));
    }
    if (auto it = current->revoked.find(link.serial); it != current->revoked.end()) {
      return revoked(link, it->second);
    }
  }
  return absl::OkStatus();
}

void ClientTrust::AddOwnRevocations(const std::map<std::string, Revocation>& revoked) {
  std::unique_lock lock(mu_);
  const uint64_t mark = ++own_mark_;
  for (const auto& [serial, r] : revoked) {
    own_.insert({serial, r});
    own_added_[serial] = mark;
  }
}

uint64_t ClientTrust::OwnRevocationsMark() {
  std::shared_lock lock(mu_);
  return own_mark_;
}

void ClientTrust::ReplaceOwnRevocations(const std::map<std::string, Revocation>& all,
                                        uint64_t mark) {
  std::unique_lock lock(mu_);
  std::map<std::string, Revocation> own = all;
  std::map<std::string, uint64_t> added;
  for (const auto& entry : all) added[entry.first] = mark;
  // Added after the database was read: kept, whatever the read said.
  for (const auto& [serial, when] : own_added_) {
    if (when <= mark) continue;
    if (auto it = own_.find(serial); it != own_.end()) own.insert_or_assign(serial, it->second);
    added[serial] = when;
  }
  own_ = std::move(own);
  own_added_ = std::move(added);
}

void ClientTrust::ReleaseOwnRevocation(const std::string& serial, uint64_t mark) {
  std::unique_lock lock(mu_);
  auto it = own_added_.find(serial);
  if (it != own_added_.end() && it->second > mark) return;  // revoked again since
  own_.erase(serial);
  if (it != own_added_.end()) own_added_.erase(it);
}

}  // namespace keywarden::service
