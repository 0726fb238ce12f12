#include "service/archival/kra_registry.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/der.h"
#include "pki/files.h"
#include "service/ca/issuer.h"
#include "service/errors.h"

namespace keywarden::service {
namespace {

using nlohmann::json;

std::shared_ptr<X509> Shared(X509* cert) {
  return std::shared_ptr<X509>(cert, X509_free);
}

constexpr char kKraCertificateSetting[] = "kra.certificate.";

bool IsThumbprint(const std::string& s) {
  return s.size() == 40 && s.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos;
}

bool HasKraUsage(X509* cert) {
  ossl::UniquePtr<EXTENDED_KEY_USAGE> eku(static_cast<EXTENDED_KEY_USAGE*>(
      X509_get_ext_d2i(cert, NID_ext_key_usage, nullptr, nullptr)));
  if (!eku) return false;
  ossl::UniquePtr<ASN1_OBJECT> kra(OBJ_txt2obj(kOidKeyRecoveryAgent, 1));
  for (int i = 0; i < sk_ASN1_OBJECT_num(eku.get()); ++i) {
    if (OBJ_cmp(sk_ASN1_OBJECT_value(eku.get(), i), kra.get()) == 0) return true;
  }
  return false;
}

// CRLs from files, PEM or DER; unreadable files are skipped (their KRAs end
// up "revocation offline", which names the problem).
std::vector<std::shared_ptr<X509_CRL>> ReadCrls(const std::vector<std::string>& paths,
                                                std::vector<std::string>* problems) {
  std::vector<std::shared_ptr<X509_CRL>> out;
  for (const std::string& path : paths) {
    auto crls = pki::ReadCrlFile(path);
    if (!crls.ok()) {
      problems->push_back(std::string(crls.status().message()));
      continue;
    }
    for (auto& crl : *crls) out.push_back(std::shared_ptr<X509_CRL>(crl.release(), X509_CRL_free));
  }
  return out;
}

}  // namespace

const char* KraStateName(KraState state) {
  switch (state) {
    case KraState::kValid:
      return "valid";
    case KraState::kNotFound:
      return "not-found";
    case KraState::kNotKra:
      return "not-a-kra-certificate";
    case KraState::kNotYetValid:
      return "not-yet-valid";
    case KraState::kExpired:
      return "expired";
    case KraState::kUntrusted:
      return "untrusted";
    case KraState::kRevoked:
      return "revoked";
    case KraState::kRevocationOffline:
      return "revocation-offline";
  }
  return "unknown";
}

KraRegistry::KraRegistry(const Config::Kra& config, Store& store, X509* ca_certificate,
                         std::vector<X509*> ca_chain, Clock clock, AuditFn audit)
    : config_(config),
      store_(store),
      ca_certificate_(ca_certificate),
      ca_chain_(std::move(ca_chain)),
      clock_(std::move(clock)),
      audit_(std::move(audit)) {}

std::shared_ptr<KraRegistry::Snapshot> KraRegistry::Validate() const {
  auto snap = std::make_shared<Snapshot>();
  const int64_t now = clock_();
  std::vector<std::string> problems;
  const auto crls = ReadCrls(config_.crls, &problems);

  // Trusted issuers: this CA, its chain, and the configured foreign issuers.
  ossl::UniquePtr<X509_STORE> trust(X509_STORE_new());
  ossl::UniquePtr<STACK_OF(X509)> untrusted(sk_X509_new_null());
  std::vector<std::shared_ptr<X509>> foreign;
  X509_STORE_add_cert(trust.get(), ca_certificate_);
  for (X509* c : ca_chain_) X509_STORE_add_cert(trust.get(), c);
  for (const std::string& path : config_.trust) {
    auto certs = pki::ReadPemCertificates(path);
    if (!certs.ok()) {
      problems.push_back(StrCat(path, ": ", certs.status().message()));
      continue;
    }
    for (auto& c : *certs) {
      X509_STORE_add_cert(trust.get(), c.get());
      foreign.push_back(Shared(c.release()));
    }
  }
  ERR_clear_error();

  std::vector<size_t> valid;
  for (size_t i = 0; i < config_.certificates.size(); ++i) {
    KraStatus st;
    st.index = i;
    st.configured = config_.certificates[i];
    auto fail = [&](KraState state, const HResult& hr, const std::string& why) {
      st.state = state;
      st.hresult = hr.code;
      st.message = why;
    };

    // Load: a thumbprint names a certificate this CA issued; else a PEM file.
    std::shared_ptr<X509> cert;
    if (IsThumbprint(st.configured)) {
      CertificateQuery q;
      q.sha1 = AsciiLower(st.configured);
      auto found = store_.FindCertificates(q);
      if (found.ok() && found->size() == 1) {
        const unsigned char* p = found->front().der.data();
        cert = Shared(d2i_X509(nullptr, &p, static_cast<long>(found->front().der.size())));
      }
      if (!cert) {
        fail(KraState::kNotFound, hresult::kNotFound,
             StrCat("Certificate Services ignored key recovery certificate ", i,
                    " because it could not be loaded: no certificate with SHA-1 ", q.sha1,
                    " in this CA's database. Cannot find object or property. 0x80092004"));
      }
    } else {
      auto certs = pki::ReadPemCertificates(st.configured);
      if (certs.ok()) {
        cert = Shared(certs->front().release());
      } else {
        fail(KraState::kNotFound, hresult::kNotFound,
             StrCat("Certificate Services ignored key recovery certificate ", i,
                    " because it could not be loaded: ", certs.status().message(),
                    ". Cannot find object or property. 0x80092004"));
      }
    }
    ERR_clear_error();
    snap->loaded.push_back(cert);
    if (cert) {
      st.subject = pki::FormatName(X509_get_subject_name(cert.get()));
      st.issuer = pki::FormatName(X509_get_issuer_name(cert.get()));
      st.serial = SerialHex(cert.get());
      st.sha1 = pki::Sha1Thumbprint(cert.get());
      st.not_before = ToUnix(X509_get0_notBefore(cert.get()));
      st.not_after = ToUnix(X509_get0_notAfter(cert.get()));
      st.issued_by_this_ca = X509_check_issued(ca_certificate_, cert.get()) == X509_V_OK &&
                             X509_verify(cert.get(), X509_get0_pubkey(ca_certificate_)) == 1;
      ERR_clear_error();
      const std::string who =
          StrCat("Certificate Services will not use key recovery certificate ", i,
                 " because it could not be verified for use as a Key "
                 "Recovery Agent. ",
                 st.subject, " ");
      EVP_PKEY* pub = X509_get0_pubkey(cert.get());
      const uint32_t ku = X509_get_key_usage(cert.get());
      st.state = KraState::kValid;
      if (!HasKraUsage(cert.get())) {
        fail(KraState::kNotKra, hresult::kWrongUsage,
             StrCat(who, "It is not a Key Recovery Agent certificate (extended key usage ",
                    kOidKeyRecoveryAgent, " is missing)."));
      } else if (pub == nullptr || !EVP_PKEY_is_a(pub, "RSA")) {
        fail(KraState::kNotKra, hresult::kWrongUsage,
             StrCat(who, "Its key is not RSA; archived keys are wrapped with RSA."));
      } else if (ku != UINT32_MAX && (ku & KU_KEY_ENCIPHERMENT) == 0) {
        fail(KraState::kNotKra, hresult::kWrongUsage,
             StrCat(who, "Its key usage does not allow keyEncipherment."));
      } else if (st.not_before > now) {
        fail(KraState::kNotYetValid, hresult::kCertExpired,
             StrCat(who, "It is not valid before ", st.not_before, " (Unix time)."));
      } else if (st.not_after <= now) {
        fail(KraState::kExpired, hresult::kCertExpired,
             StrCat(who, "It expired at ", st.not_after, " (Unix time)."));
      }
      // Chain to a trusted issuer, at the current time (revocation below).
      X509* issuer_cert = nullptr;
      ossl::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
      if (st.state == KraState::kValid) {
        X509_STORE_CTX_init(ctx.get(), trust.get(), cert.get(), untrusted.get());
        X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
        X509_VERIFY_PARAM_set_time(param, static_cast<time_t>(now));
        // The CA itself may be a subordinate: trust it without its root.
        X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_PARTIAL_CHAIN);
        if (X509_verify_cert(ctx.get()) != 1) {
          const int err = X509_STORE_CTX_get_error(ctx.get());
          fail(KraState::kUntrusted, hresult::kChaining,
               StrCat(who, "Its chain does not verify: ", X509_verify_cert_error_string(err), "."));
        } else {
          STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
          issuer_cert = sk_X509_num(chain) > 1 ? sk_X509_value(chain, 1) : cert.get();
        }
        ERR_clear_error();
      }
      // Revocation.
      if (st.state == KraState::kValid && st.issued_by_this_ca) {
        auto record = store_.GetCertificate(st.serial);
        if (!record.ok()) {
          fail(KraState::kNotFound, hresult::kNotFound,
               StrCat(who, "It is signed by this CA but not in its database."));
        } else if (record->revoked) {
          fail(KraState::kRevoked, hresult::kRevoked,
               StrCat(who, "The certificate is revoked (reason ", record->revocation_reason,
                      "). 0x80092010"));
        }
      } else if (st.state == KraState::kValid) {
        bool current = false, revoked = false;
        for (const auto& crl : crls) {
          if (X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), X509_get_issuer_name(cert.get())) !=
                  0 ||
              X509_CRL_verify(crl.get(), X509_get0_pubkey(issuer_cert)) != 1) {
            continue;
          }
          const int64_t this_update = ToUnix(X509_CRL_get0_lastUpdate(crl.get()));
          const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl.get());
          if (this_update > now || next == nullptr || ToUnix(next) <= now) continue;
          current = true;
          X509_REVOKED* entry = nullptr;
          if (X509_CRL_get0_by_cert(crl.get(), &entry, cert.get()) == 1) revoked = true;
        }
        ERR_clear_error();
        if (revoked) {
          fail(KraState::kRevoked, hresult::kRevoked,
               StrCat(who, "The certificate is revoked (on its issuer's CRL). 0x80092010"));
        } else if (!current) {
          fail(KraState::kRevocationOffline, hresult::kRevocationOffline,
               StrCat(who,
                      "The revocation function was unable to check revocation because the "
                      "revocation server was offline (no current CRL from ",
                      st.issuer, " in [kra] crls). 0x80092013"));
        }
      }
      if (st.state == KraState::kValid) {
        snap->certificates.push_back(cert);
        valid.push_back(i);
        snap->first_expiry =
            snap->first_expiry == 0 ? st.not_after : std::min(snap->first_expiry, st.not_after);
      } else {
        snap->certificates.push_back(nullptr);
      }
    } else {
      snap->certificates.push_back(nullptr);
    }
    snap->status.push_back(std::move(st));
  }
  for (const std::string& p : problems) {
    if (audit_) audit_("kra.config_problem", json{{"problem", p}}.dump());
  }
  // seed: "when the CA service starts, a random start point in the KRA list is chosen".
  std::random_device rd;
  const size_t start =
      valid.empty() ? 0 : std::uniform_int_distribution<size_t>(0, valid.size() - 1)(rd);
  snap->selector = std::make_unique<KraSelector>(config_.certificates.size(), std::move(valid),
                                                 static_cast<size_t>(config_.count), start);
  return snap;
}

void KraRegistry::Load(const std::string& who) {
  auto snap = Validate();
  // Remember every KRA certificate that loaded, for recovery (FindCertificate).
  for (size_t i = 0; i < snap->status.size(); ++i) {
    const KraStatus& st = snap->status[i];
    if (st.sha1.empty() || !snap->loaded[i]) continue;
    const std::string name = StrCat(kKraCertificateSetting, st.sha1);
    if (store_.GetSetting(name).ok()) continue;
    const auto der = pki::CertificateDer(snap->loaded[i].get());
    if (auto put = store_.PutSetting(name, pki::Base64Encode(der)); !put.ok() && audit_) {
      audit_(
          "kra.config_problem",
          json{{"problem", StrCat("cannot record KRA certificate ", st.sha1, ": ", put.message())}}
              .dump());
    }
  }
  json list = json::array();
  size_t valid = 0;
  for (const KraStatus& st : snap->status) {
    if (st.state == KraState::kValid) {
      ++valid;
    } else if (audit_) {
      audit_("kra.unusable", json{{"index", st.index},
                                  {"configured", st.configured},
                                  {"state", KraStateName(st.state)},
                                  {"hresult", HResultHex(st.hresult)},
                                  {"subject", st.subject},
                                  {"sha1", st.sha1},
                                  {"message", st.message}}
                                 .dump());
    }
    list.push_back(json{{"index", st.index}, {"sha1", st.sha1}, {"state", KraStateName(st.state)}});
  }
  const absl::Status usable = snap->selector->Usable();
  if (audit_) {
    audit_("kra.loaded", json{{"by", who},
                              {"configured", config_.certificates.size()},
                              {"valid", valid},
                              {"per_archival", config_.count},
                              {"kras", list}}
                             .dump());
    if (!usable.ok() && !config_.certificates.empty()) {
      // seed events 82/98: "Requests to archive private keys will not be accepted."
      audit_("kra.archival_disabled",
             json{{"reason", std::string(usable.message())},
                  {"message",
                   "Certificate Services could not load enough valid key recovery certificates. "
                   "Requests to archive private keys will not be accepted."}}
                 .dump());
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  snapshot_ = std::move(snap);
}

std::shared_ptr<KraRegistry::Snapshot> KraRegistry::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return snapshot_;
}

bool KraRegistry::IsConfiguredKraOfThisCa(const std::string& serial) const {
  auto snap = Current();
  if (!snap || serial.empty()) return false;
  return std::any_of(snap->status.begin(), snap->status.end(), [&](const KraStatus& st) {
    return st.issued_by_this_ca && NormalizeSerial(st.serial) == serial;
  });
}

std::vector<KraStatus> KraRegistry::Status() const {
  auto snap = Current();
  return snap ? snap->status : std::vector<KraStatus>{};
}

std::vector<KraStatus> KraRegistry::Check() const {
  return Validate()->status;
}

size_t KraRegistry::per_archival() const {
  return static_cast<size_t>(config_.count);
}

absl::Status KraRegistry::Usable() const {
  auto snap = Current();
  if (!snap) return Error(hresult::kKeyArchivalNotConfigured);
  return snap->selector->Usable();
}

absl::StatusOr<std::shared_ptr<X509>> KraRegistry::FindCertificate(const std::string& sha1) const {
  const std::string wanted = AsciiLower(sha1);
  if (auto snap = Current()) {
    for (size_t i = 0; i < snap->status.size(); ++i) {
      if (snap->status[i].sha1 == wanted && snap->loaded[i]) return snap->loaded[i];
    }
  }
  auto saved = store_.GetSetting(StrCat(kKraCertificateSetting, wanted));
  if (saved.ok()) {
    const std::vector<uint8_t> der = pki::Base64Decode(*saved);
    const unsigned char* p = der.data();
    if (X509* cert = d2i_X509(nullptr, &p, static_cast<long>(der.size()))) return Shared(cert);
    ERR_clear_error();
  }
  return Error(hresult::kNotFound,
               StrCat("KRA certificate with SHA-1 ", wanted, " is not known to this CA"));
}

absl::StatusOr<KraSelection> KraRegistry::Select() {
  auto snap = Current();
  if (snap && snap->first_expiry != 0 && snap->first_expiry <= clock_()) {
    Load("system (a KRA certificate expired)");
    snap = Current();
  }
  if (!snap) return Error(hresult::kKeyArchivalNotConfigured);
  auto picked = snap->selector->Next();
  if (!picked.ok()) return picked.status();
  KraSelection out;
  for (size_t index : *picked) {
    out.certificates.push_back(snap->certificates[index]);
    out.sha1.push_back(snap->status[index].sha1);
  }
  return out;
}

KraSelection KraRegistry::Valid() {
  auto snap = Current();
  if (snap && snap->first_expiry != 0 && snap->first_expiry <= clock_()) {
    Load("system (a KRA certificate expired)");
    snap = Current();
  }
  KraSelection out;
  if (!snap) return out;
  for (size_t i = 0; i < snap->certificates.size(); ++i) {
    if (!snap->certificates[i] || snap->status[i].state != KraState::kValid) continue;
    out.certificates.push_back(snap->certificates[i]);
    out.sha1.push_back(snap->status[i].sha1);
  }
  return out;
}

}  // namespace keywarden::service
