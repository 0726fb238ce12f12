#include "service/server/readiness.h"

#include <cstdio>
#include <ctime>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "service/errors.h"
#include "service/observe/log.h"

namespace keywarden::service {
namespace {

std::string Rv(CK_RV rv) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "CKR 0x%08lx", static_cast<unsigned long>(rv));
  return buf;
}

Readiness::Check CheckToken(hsm::Token& token) {
  Readiness::Check c{"token", false, ""};
  if (!token.available()) {
    c.detail =
        "token \"" + token.label() + "\" is unavailable (a token fault; recovery is retried)";
    return c;
  }
  auto session = token.Acquire();
  if (!session.ok()) {
    c.detail = std::string(session.status().message());
    return c;
  }
  CK_SESSION_INFO info{};
  if (CK_RV rv =
          session->Call("C_GetSessionInfo", token.fn()->C_GetSessionInfo, session->handle(), &info);
      rv != CKR_OK) {
    c.detail = "C_GetSessionInfo failed (" + Rv(rv) + ")";
    return c;
  }
  if (info.state != CKS_RO_USER_FUNCTIONS && info.state != CKS_RW_USER_FUNCTIONS) {
    c.detail = "not logged in to token \"" + token.label() + "\"";
    return c;
  }
  // Touches the token's object store (SoftHSM2 reads its files here).
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof cls}};
  CK_RV rv = session->Call("C_FindObjectsInit", token.fn()->C_FindObjectsInit, session->handle(),
                           tmpl, CK_ULONG{1});
  if (rv == CKR_OK) {
    CK_OBJECT_HANDLE found[1];
    CK_ULONG count = 0;
    rv = session->Call("C_FindObjects", token.fn()->C_FindObjects, session->handle(), found,
                       CK_ULONG{1}, &count);
    const CK_RV final_rv =
        session->Call("C_FindObjectsFinal", token.fn()->C_FindObjectsFinal, session->handle());
    if (rv == CKR_OK) rv = final_rv;
    if (rv == CKR_OK && count == 0) {
      // The CA's key is gone from the token (SoftHSM2: its files were
      // taken away): a token fault, so the token watch recovers it once
      // the token is back (a re-initialisation reads it again).
      c.detail = "no private key is found on token \"" + token.label() + "\"";
      session->MarkBroken();
      token.ReportFault(absl::UnavailableError(c.detail), session->generation());
      return c;
    }
  }
  if (rv != CKR_OK) {
    session->MarkBroken();
    c.detail = "listing the token's keys failed (" + Rv(rv) + ")";
    token.ReportFault(absl::UnavailableError(c.detail), session->generation());
    return c;
  }
  c.ok = true;
  return c;
}

Readiness::Check CheckDatabase(Store& store) {
  Readiness::Check c{"database", false, ""};
  auto last = store.LastAudit();
  if (last.ok() || absl::IsNotFound(last.status())) {
    c.ok = true;
  } else {
    c.detail = "database unavailable: " + std::string(last.status().message());
  }
  return c;
}

Readiness::Check CheckKras(CertificateAuthority& ca) {
  Readiness::Check c{"kras", false, ""};
  bool needed = false;
  for (const auto& t : ca.config().templates)
    needed = needed || t.archival != ArchivalPolicy::kNone;
  if (!needed) {
    c.ok = true;
    c.detail = "not needed (no template allows archival)";
    return c;
  }
  absl::Status st = ca.KraUsable();
  c.ok = st.ok();
  if (!st.ok()) c.detail = std::string(st.message());
  return c;
}

// The archival self-test (seed: event 86): when it failed, archival is
// refused with 0x80090019 until a run passes (after a token recovery).
Readiness::Check CheckArchival(CertificateAuthority& ca) {
  Readiness::Check c{"archival", false, ""};
  if (!ca.ArchivalConfigured()) {
    c.ok = true;
    c.detail = "not needed (no template allows archival)";
    return c;
  }
  absl::Status st = ca.ArchivalSelfTestRefusal();
  c.ok = st.ok();
  if (!st.ok()) c.detail = std::string(st.message());
  return c;
}

}  // namespace

const std::vector<std::pair<std::string, bool>>& Readiness::Services() {
  static const auto* services = new std::vector<std::pair<std::string, bool>>{
      {"", true},
      {"keywarden.v1.Enrollment", true},
      {"keywarden.v1.Officer", false},
      {"keywarden.v1.Administration", false},
      {"keywarden.v1.Audit", false},
      {"keywarden.v1.Backup", false},
      {"keywarden.v1.Signing", false},
  };
  return *services;
}

Readiness::Readiness(std::shared_ptr<hsm::Token> token, Store& store, CertificateAuthority& ca,
                     grpc::HealthCheckServiceInterface* health, std::chrono::milliseconds period)
    : token_(std::move(token)), store_(store), ca_(ca), health_(health), period_(period) {
  Apply(Evaluate());
  thread_ = std::thread([this] { Run(); });
}

Readiness::~Readiness() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

Readiness::State Readiness::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_;
}

Readiness::State Readiness::Evaluate() {
  State s;
  s.checks.push_back(CheckToken(*token_));
  s.checks.push_back(CheckDatabase(store_));
  s.checks.push_back(CheckKras(ca_));
  s.checks.push_back(CheckArchival(ca_));
  s.ready = true;
  for (const auto& c : s.checks) s.ready = s.ready && c.ok;
  return s;
}

void Readiness::Apply(const State& state) {
  bool changed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    changed = !applied_ || state.ready != state_.ready;
    for (size_t i = 0; !changed && i < state.checks.size(); ++i) {
      changed = state.checks[i].ok != state_.checks[i].ok;
    }
    state_ = state;
    applied_ = true;
  }
  if (!changed) return;
  const bool base = state.checks[0].ok && state.checks[1].ok;
  if (health_ != nullptr) {
    for (const auto& [name, needs_kras] : Services()) {
      health_->SetServingStatus(
          name, base && (!needs_kras || (state.checks[2].ok && state.checks[3].ok)));
    }
  }
  nlohmann::json fields = nlohmann::json::object();
  for (const auto& c : state.checks) fields[c.name] = c.ok ? "ok" : c.detail;
  if (state.ready) {
    log::Info("ready", fields);
  } else {
    log::Warn("not ready", fields);
  }
}

metrics::Collector DaemonGauges(CertificateAuthority& ca, const Readiness& readiness) {
  return [&ca, &readiness] {
    std::vector<metrics::Sample> out;
    const Readiness::State state = readiness.Current();
    out.push_back({"keywarden_ready",
                   "1 when token, database and KRAs are usable (see /readyz).",
                   {},
                   state.ready ? 1.0 : 0.0});
    for (const auto& c : state.checks) {
      out.push_back({"keywarden_readiness_check",
                     "1 when the readiness check passes.",
                     {{"check", c.name}},
                     c.ok ? 1.0 : 0.0});
    }
    const auto kras = ca.KraStatuses();
    size_t valid = 0;
    for (const auto& k : kras) valid += k.state == KraState::kValid ? 1 : 0;
    out.push_back({"keywarden_kras_valid",
                   "KRA certificates usable for archival.",
                   {},
                   static_cast<double>(valid)});
    out.push_back({"keywarden_kras_configured",
                   "KRA certificates configured ([kra] certificates).",
                   {},
                   static_cast<double>(kras.size())});
    out.push_back({"keywarden_kras_per_archival",
                   "KRAs each archived key is encrypted to.",
                   {},
                   static_cast<double>(ca.KrasPerArchival())});
    const hsm::Token& token = *readiness.token();
    const auto pool = token.pool_stats();
    out.push_back({"keywarden_hsm_sessions_max",
                   "The CA token's session pool limit.",
                   {},
                   static_cast<double>(pool.max_sessions)});
    out.push_back({"keywarden_hsm_sessions_open",
                   "Sessions open on the CA token.",
                   {},
                   static_cast<double>(pool.open)});
    out.push_back({"keywarden_hsm_sessions_in_use",
                   "Sessions leased by a caller.",
                   {},
                   static_cast<double>(pool.in_use)});
    out.push_back({"keywarden_hsm_session_waits_total",
                   "Session acquisitions that had to wait for a free session.",
                   {},
                   static_cast<double>(pool.waits),
                   true});
    out.push_back({"keywarden_hsm_session_wait_timeouts_total",
                   "Session acquisitions that gave up waiting.",
                   {},
                   static_cast<double>(pool.wait_timeouts),
                   true});
    out.push_back({"keywarden_pkcs11_calls_total",
                   "PKCS#11 calls to the CA token's module.",
                   {},
                   static_cast<double>(token.module().calls()),
                   true});
    out.push_back({"keywarden_pkcs11_call_errors_total",
                   "PKCS#11 calls that did not return CKR_OK.",
                   {},
                   static_cast<double>(token.module().call_errors()),
                   true});
    // Per PKCS#11 function: calls, return values other than CKR_OK, latency.
    const auto& bounds = hsm::Module::LatencyBuckets();
    for (const auto& f : token.module().function_stats()) {
      out.push_back({"keywarden_pkcs11_function_calls_total",
                     "PKCS#11 calls to the CA token's module, by function.",
                     {{"function", f.function}},
                     static_cast<double>(f.calls),
                     true});
      constexpr char kFamily[] = "keywarden_pkcs11_call_duration_seconds";
      constexpr char kHelp[] = "PKCS#11 call latency on the CA token's module, by function.";
      for (size_t i = 0; i < bounds.size(); ++i) {
        char le[32];
        std::snprintf(le, sizeof le, "%g", bounds[i]);
        out.push_back({StrCat(kFamily, "_bucket"),
                       kHelp,
                       {{"function", f.function}, {"le", le}},
                       static_cast<double>(f.buckets[i]),
                       false,
                       kFamily});
      }
      out.push_back({StrCat(kFamily, "_bucket"),
                     kHelp,
                     {{"function", f.function}, {"le", "+Inf"}},
                     static_cast<double>(f.calls),
                     false,
                     kFamily});
      out.push_back(
          {StrCat(kFamily, "_sum"), kHelp, {{"function", f.function}}, f.seconds, false, kFamily});
      out.push_back({StrCat(kFamily, "_count"),
                     kHelp,
                     {{"function", f.function}},
                     static_cast<double>(f.calls),
                     false,
                     kFamily});
    }
    for (const auto& e : token.module().error_counts()) {
      out.push_back({"keywarden_pkcs11_function_errors_total",
                     "PKCS#11 calls that did not return CKR_OK, by function and return value.",
                     {{"function", e.function}, {"rv", e.rv}},
                     static_cast<double>(e.count),
                     true});
    }
    const auto now = static_cast<double>(std::time(nullptr));
    if (auto x = ca.CurrentExchange(); x.ok()) {
      out.push_back({"keywarden_exchange_certificate_expiry_seconds",
                     "Seconds until the current CA exchange certificate expires.",
                     {},
                     static_cast<double>(x->not_after) - now});
    }
    if (auto crl = ca.CurrentCrl(); crl.ok()) {
      out.push_back({"keywarden_crl_expiry_seconds",
                     "Seconds until the current CRL's nextUpdate.",
                     {},
                     static_cast<double>(crl->next_update) - now});
    }
    return out;
  };
}

void Readiness::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, period_, [&] { return stopping_; })) {
    lock.unlock();
    Apply(Evaluate());
    lock.lock();
  }
}

}  // namespace keywarden::service
