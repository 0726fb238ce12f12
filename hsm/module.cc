#include "hsm/module.h"
#include "hsm/strings.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>

#include <openssl/err.h>
#include <p11-kit/p11-kit.h>
#include <sys/stat.h>

#include "hsm/status.h"

namespace keywarden::hsm {

namespace {

std::mutex g_modules_mu;
std::map<std::string, std::weak_ptr<Module>>& LoadedModules() {
  static auto* modules = new std::map<std::string, std::weak_ptr<Module>>();
  return *modules;
}

// Resolves a p11-kit module name ("softhsm2") to its library path.
absl::StatusOr<std::string> PathForModuleName(std::string_view name) {
  CK_FUNCTION_LIST** modules = p11_kit_modules_load(nullptr, P11_KIT_MODULE_UNMANAGED);
  if (modules == nullptr) {
    return absl::NotFoundError(
        StrCat("PKCS#11 module \"", name, "\": p11-kit has no registered modules"));
  }
  std::string path;
  std::string wanted(name);
  CK_FUNCTION_LIST* m = p11_kit_module_for_name(modules, wanted.c_str());
  if (m != nullptr) {
    char* file = p11_kit_module_get_filename(m);
    if (file != nullptr) {
      path = file;
      free(file);
    }
  }
  p11_kit_modules_release(modules);
  if (path.empty()) {
    return absl::NotFoundError(StrCat("PKCS#11 module \"", name,
                                      "\" is neither a file nor a module registered "
                                      "with p11-kit (see `p11-kit list-modules`)"));
  }
  return path;
}

bool TraceFromEnvironment() {
  const char* v = std::getenv("KEYWARDEN_PKCS11_TRACE");
  return v != nullptr && *v != '\0' && std::string_view(v) != "0";
}

}  // namespace

std::string TrimPadded(const unsigned char* field, size_t size) {
  std::string s(reinterpret_cast<const char*>(field), size);
  size_t end = s.find_last_not_of(" \0", std::string::npos, 2);
  return end == std::string::npos ? std::string() : s.substr(0, end + 1);
}

absl::StatusOr<std::shared_ptr<Module>> Module::Load(std::string_view spec) {
  if (spec.empty()) return absl::InvalidArgumentError("PKCS#11 module: no path or name given");
  std::string path;
  if (spec.find('/') != std::string_view::npos) {
    path = std::string(spec);
    struct stat st;
    if (stat(path.c_str(), &st) != 0) {
      return absl::NotFoundError(StrCat("PKCS#11 module ", path, ": no such file"));
    }
  } else {
    auto resolved = PathForModuleName(spec);
    if (!resolved.ok()) return resolved.status();
    path = *resolved;
  }

  // One library reached by several paths (symlinks, p11-kit's path) is one
  // module: key the cache on the canonical path.
  if (char* real = realpath(path.c_str(), nullptr)) {
    path = real;
    free(real);
  }
  std::lock_guard<std::mutex> lock(g_modules_mu);
  auto& loaded = LoadedModules();
  if (auto it = loaded.find(path); it != loaded.end()) {
    if (auto existing = it->second.lock()) return existing;
  }

  CK_FUNCTION_LIST* fn = p11_kit_module_load(path.c_str(), P11_KIT_MODULE_UNMANAGED);
  if (fn == nullptr) {
    const char* why = p11_kit_message();
    return absl::FailedPreconditionError(
        StrCat("PKCS#11 module ", path, ": cannot load: ", why ? why : "unknown"));
  }
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  CK_RV rv = fn->C_Initialize(&args);
  // SoftHSM2 probes optional OpenSSL engines (GOST) while it initialises and
  // leaves the failures on this thread's error queue; they are not ours.
  ERR_clear_error();
  if (rv != CKR_OK) {
    p11_kit_module_release(fn);
    return Pkcs11Error("C_Initialize", rv, StrCat("PKCS#11 module ", path));
  }
  std::shared_ptr<Module> module(new Module(path, fn, fn));
  module->trace_ = TraceFromEnvironment();
  if (module->trace_) module->TraceLine("C_Initialize", rv, std::chrono::nanoseconds(0));
  loaded[path] = module;
  return module;
}

namespace {

// Every PKCS#11 2.40 function name, sorted (binary search); a name not here
// is counted as "other" (the last slot).
constexpr const char* kFunctionNames[] = {
    "C_CancelFunction",
    "C_CloseAllSessions",
    "C_CloseSession",
    "C_CopyObject",
    "C_CreateObject",
    "C_Decrypt",
    "C_DecryptDigestUpdate",
    "C_DecryptFinal",
    "C_DecryptInit",
    "C_DecryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_DeriveKey",
    "C_DestroyObject",
    "C_Digest",
    "C_DigestEncryptUpdate",
    "C_DigestFinal",
    "C_DigestInit",
    "C_DigestKey",
    "C_DigestUpdate",
    "C_Encrypt",
    "C_EncryptFinal",
    "C_EncryptInit",
    "C_EncryptUpdate",
    "C_Finalize",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_FindObjectsInit",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_GenerateRandom",
    "C_GetAttributeValue",
    "C_GetFunctionList",
    "C_GetFunctionStatus",
    "C_GetInfo",
    "C_GetMechanismInfo",
    "C_GetMechanismList",
    "C_GetObjectSize",
    "C_GetOperationState",
    "C_GetSessionInfo",
    "C_GetSlotInfo",
    "C_GetSlotList",
    "C_GetTokenInfo",
    "C_InitPIN",
    "C_InitToken",
    "C_Initialize",
    "C_Login",
    "C_Logout",
    "C_OpenSession",
    "C_SeedRandom",
    "C_SetAttributeValue",
    "C_SetOperationState",
    "C_SetPIN",
    "C_Sign",
    "C_SignEncryptUpdate",
    "C_SignFinal",
    "C_SignInit",
    "C_SignRecover",
    "C_SignRecoverInit",
    "C_SignUpdate",
    "C_UnwrapKey",
    "C_Verify",
    "C_VerifyFinal",
    "C_VerifyInit",
    "C_VerifyRecover",
    "C_VerifyRecoverInit",
    "C_VerifyUpdate",
    "C_WaitForSlotEvent",
    "C_WrapKey",
};
constexpr size_t kFunctionCount = sizeof kFunctionNames / sizeof kFunctionNames[0];

// Latency bucket bounds (seconds): a SoftHSM2 call takes microseconds, a
// network HSM's milliseconds, an RSA key generation seconds.
constexpr double kLatencyBounds[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                     0.005,   0.01,   0.025,   0.05,   0.1,   0.25,
                                     0.5,     1,      2.5,     5,      10};
constexpr size_t kBucketCount = sizeof kLatencyBounds / sizeof kLatencyBounds[0];

size_t FunctionIndex(const char* name) {
  const std::string_view n(name != nullptr ? name : "");
  size_t lo = 0, hi = kFunctionCount;
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    const int c = n.compare(kFunctionNames[mid]);
    if (c == 0) return mid;
    if (c < 0) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return kFunctionCount;  // "other"
}

}  // namespace

// One slot per function name (and "other"): counts, errors, latency
// buckets (not cumulative; the last one is +Inf) and the latency sum in
// nanoseconds, all relaxed atomics.
struct Module::PerFunction {
  std::atomic<uint64_t> calls{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> nanoseconds{0};
  std::array<std::atomic<uint64_t>, kBucketCount + 1> buckets{};
};

void Module::Counted(const char* name, CK_RV rv, std::chrono::nanoseconds took) const {
  const size_t i = FunctionIndex(name);
  PerFunction& f = per_function_[i];
  f.calls.fetch_add(1, std::memory_order_relaxed);
  const uint64_t ns = static_cast<uint64_t>(std::max<int64_t>(took.count(), 0));
  f.nanoseconds.fetch_add(ns, std::memory_order_relaxed);
  const double seconds = static_cast<double>(ns) / 1e9;
  size_t b = 0;
  while (b < kBucketCount && seconds > kLatencyBounds[b]) ++b;
  f.buckets[b].fetch_add(1, std::memory_order_relaxed);
  if (rv != CKR_OK) {
    call_errors_.fetch_add(1, std::memory_order_relaxed);
    f.errors.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(errors_mu_);
    ++errors_[{i, rv}];
  }
}

const std::vector<double>& Module::LatencyBuckets() {
  static const auto* bounds =
      new std::vector<double>(std::begin(kLatencyBounds), std::end(kLatencyBounds));
  return *bounds;
}

std::vector<Module::FunctionStats> Module::function_stats() const {
  std::vector<FunctionStats> out;
  for (size_t i = 0; i <= kFunctionCount; ++i) {
    const PerFunction& f = per_function_[i];
    if (f.calls.load(std::memory_order_relaxed) == 0) continue;
    FunctionStats s;
    s.function = i < kFunctionCount ? kFunctionNames[i] : "other";
    s.errors = f.errors.load(std::memory_order_relaxed);
    s.seconds = static_cast<double>(f.nanoseconds.load(std::memory_order_relaxed)) / 1e9;
    // The count is the buckets' total (read once each), so the +Inf bucket
    // is never below a finite one while calls go on.
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= kBucketCount; ++b) {
      cumulative += f.buckets[b].load(std::memory_order_relaxed);
      if (b < kBucketCount) s.buckets.push_back(cumulative);
    }
    s.calls = cumulative;
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<Module::ErrorCount> Module::error_counts() const {
  std::vector<ErrorCount> out;
  std::lock_guard<std::mutex> lock(errors_mu_);
  for (const auto& [key, count] : errors_) {
    out.push_back({key.first < kFunctionCount ? kFunctionNames[key.first] : "other",
                   RvName(key.second), count});
  }
  return out;
}

Module::Module(std::string path, void* handle, CK_FUNCTION_LIST* fn)
    : per_function_(new PerFunction[kFunctionCount + 1]),
      path_(std::move(path)),
      handle_(handle),
      fn_(fn) {}

Module::~Module() {
  CK_RV rv = fn_->C_Finalize(nullptr);
  if (trace_) TraceLine("C_Finalize", rv, std::chrono::nanoseconds(0));
  p11_kit_module_release(static_cast<CK_FUNCTION_LIST*>(handle_));
  std::lock_guard<std::mutex> lock(g_modules_mu);
  auto& loaded = LoadedModules();
  if (auto it = loaded.find(path_); it != loaded.end() && it->second.expired()) loaded.erase(it);
}

absl::Status Module::Reinitialize() {
  std::unique_lock<std::shared_mutex> calls(calls_mu_);
  CK_RV rv = fn_->C_Finalize(nullptr);
  if (trace_) TraceLine("C_Finalize", rv, std::chrono::nanoseconds(0));
  // A module that was not initialised any more is what is being repaired.
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_NOT_INITIALIZED) {
    generation_.fetch_add(1);
    return Pkcs11Error("C_Finalize", rv, StrCat("PKCS#11 module ", path_));
  }
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  rv = fn_->C_Initialize(&args);
  ERR_clear_error();  // SoftHSM2's GOST engine probe, as in Load
  if (trace_) TraceLine("C_Initialize", rv, std::chrono::nanoseconds(0));
  generation_.fetch_add(1);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    return Pkcs11Error("C_Initialize", rv, StrCat("PKCS#11 module ", path_));
  }
  return absl::OkStatus();
}

void Module::SetTrace(bool on, FILE* out) {
  trace_ = on;
  trace_out_ = out;
}

void Module::TraceLine(const char* name, CK_RV rv, std::chrono::nanoseconds took) const {
  std::fprintf(trace_out_, "pkcs11: %s = %s (%lld us)\n", name, RvName(rv).c_str(),
               static_cast<long long>(took.count() / 1000));
}

absl::StatusOr<std::vector<SlotToken>> Module::Tokens() const {
  CK_ULONG count = 0;
  CK_RV rv = Call("C_GetSlotList", fn_->C_GetSlotList, CK_TRUE, nullptr, &count);
  if (rv != CKR_OK) return Pkcs11Error("C_GetSlotList", rv, path_);
  std::vector<CK_SLOT_ID> slots(count);
  rv = Call("C_GetSlotList", fn_->C_GetSlotList, CK_TRUE, slots.data(), &count);
  if (rv != CKR_OK) return Pkcs11Error("C_GetSlotList", rv, path_);
  slots.resize(count);
  std::vector<SlotToken> out;
  for (CK_SLOT_ID slot : slots) {
    SlotToken t{};
    t.slot = slot;
    rv = Call("C_GetTokenInfo", fn_->C_GetTokenInfo, slot, &t.info);
    if (rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_TOKEN_NOT_RECOGNIZED) continue;
    if (rv != CKR_OK) return Pkcs11Error("C_GetTokenInfo", rv, path_);
    t.label = TrimPadded(t.info.label, sizeof t.info.label);
    t.serial = TrimPadded(t.info.serialNumber, sizeof t.info.serialNumber);
    t.manufacturer = TrimPadded(t.info.manufacturerID, sizeof t.info.manufacturerID);
    t.model = TrimPadded(t.info.model, sizeof t.info.model);
    t.initialized = (t.info.flags & CKF_TOKEN_INITIALIZED) != 0;
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace keywarden::hsm
