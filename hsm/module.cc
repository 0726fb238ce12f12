#include "hsm/module.h"
#include "hsm/strings.h"

#include <climits>
#include <cstdlib>
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

Module::Module(std::string path, void* handle, CK_FUNCTION_LIST* fn)
    : path_(std::move(path)), handle_(handle), fn_(fn) {}

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
