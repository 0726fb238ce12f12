// A loaded and initialized PKCS#11 module. One Module per library path per
// process: loading the same path twice returns the same object, because a
// module can be C_Initialize'd only once.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/pkcs11.h"

namespace keywarden::hsm {

struct SlotToken {
  CK_SLOT_ID slot;
  CK_TOKEN_INFO info;
  std::string label;   // trimmed of the blank padding
  std::string serial;  // trimmed
  std::string manufacturer;
  std::string model;
  bool initialized = false;  // CKF_TOKEN_INITIALIZED: a free slot has a token that is not
};

class Module {
 public:
  // `spec` is a path to the module library ("/usr/lib/softhsm/libsofthsm2.so")
  // or the name of a module registered with p11-kit ("softhsm2"). The module
  // is initialized with CKF_OS_LOCKING_OK. Trace output is enabled when the
  // environment variable KEYWARDEN_PKCS11_TRACE is set to a non-empty value
  // other than "0", or later by SetTrace().
  static absl::StatusOr<std::shared_ptr<Module>> Load(std::string_view spec);

  ~Module();
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const std::string& path() const { return path_; }
  CK_FUNCTION_LIST* functions() const { return fn_; }

  // Tokens in slots that have one, in slot order (initialised or not).
  absl::StatusOr<std::vector<SlotToken>> Tokens() const;

  // Prints every PKCS#11 call made through Call() with its return value and
  // duration to `out` (stderr by default). Arguments are never printed, so a
  // PIN or key bytes cannot reach the trace.
  void SetTrace(bool on, FILE* out = stderr);
  bool trace() const { return trace_; }

  // Calls one PKCS#11 function, tracing it when enabled. Calls run
  // concurrently, never during Reinitialize().
  //   CK_RV rv = module.Call("C_Sign", fn->C_Sign, session, ...);
  // Each call is counted per function with its latency (relaxed atomics:
  // no lock on the hot path); a return value other than CKR_OK is counted
  // per function and CKR name (a small lock, on the error path only).
  template <typename F, typename... Args>
  CK_RV Call(const char* name, F f, Args... args) const {
    std::shared_lock<std::shared_mutex> calls(calls_mu_);
    calls_.fetch_add(1, std::memory_order_relaxed);
    const auto start = std::chrono::steady_clock::now();
    const CK_RV rv = f(args...);
    const auto took = std::chrono::steady_clock::now() - start;
    Counted(name, rv, took);
    if (trace_) TraceLine(name, rv, took);
    return rv;
  }

  // PKCS#11 calls made through Call, and how many did not return CKR_OK
  // (for metrics).
  uint64_t calls() const { return calls_.load(std::memory_order_relaxed); }
  uint64_t call_errors() const { return call_errors_.load(std::memory_order_relaxed); }

  // Per-function statistics (for metrics): the upper bounds of the latency
  // buckets in seconds (the last bucket, +Inf, is implied).
  static const std::vector<double>& LatencyBuckets();
  struct FunctionStats {
    std::string function;  // "C_Sign"; "other" for a name not in PKCS#11 3.0
    uint64_t calls = 0;
    uint64_t errors = 0;
    std::vector<uint64_t> buckets;  // per LatencyBuckets() bound, cumulative
    double seconds = 0;             // the sum of the latencies
  };
  // The functions called at least once, in name order.
  std::vector<FunctionStats> function_stats() const;
  struct ErrorCount {
    std::string function;
    std::string rv;  // RvName: "CKR_MECHANISM_INVALID"
    uint64_t count = 0;
  };
  // Return values other than CKR_OK, per function and value, in name order.
  std::vector<ErrorCount> error_counts() const;

  // C_Finalize + C_Initialize: after a token fault, the only way SoftHSM2
  // (and many HSM libraries) forget a token's broken state. Every session,
  // login and object handle of every token of this module is gone
  // afterwards: generation() changes, and tokens re-find their slot, log in
  // again and re-resolve key handles when they see it. Waits for calls in
  // progress; no call starts while it runs.
  absl::Status Reinitialize();
  // Changes at every Reinitialize (handles from an older generation are void).
  uint64_t generation() const { return generation_.load(); }

 private:
  void Counted(const char* name, CK_RV rv, std::chrono::nanoseconds took) const;
  mutable std::atomic<uint64_t> calls_{0};
  mutable std::atomic<uint64_t> call_errors_{0};
  struct PerFunction;                            // module.cc: one slot per PKCS#11 function name
  std::unique_ptr<PerFunction[]> per_function_;  // [function] ("other" last)
  mutable std::mutex errors_mu_;
  mutable std::map<std::pair<size_t, CK_RV>, uint64_t> errors_;  // (function, rv) -> count

  Module(std::string path, void* handle, CK_FUNCTION_LIST* fn);
  void TraceLine(const char* name, CK_RV rv, std::chrono::nanoseconds took) const;

  std::string path_;
  void* handle_;  // p11-kit module handle
  CK_FUNCTION_LIST* fn_;
  bool trace_ = false;
  FILE* trace_out_ = stderr;
  mutable std::shared_mutex calls_mu_;
  std::atomic<uint64_t> generation_{1};
};

// Removes the trailing blanks PKCS#11 pads fixed-size fields with.
std::string TrimPadded(const unsigned char* field, size_t size);

}  // namespace keywarden::hsm
