// A PKCS#11 module for tests that pulls the token at an exact step: it
// forwards every call to a real module (KEYWARDEN_FAULT_TARGET, SoftHSM2 by
// default) and fails the calls its plan names, without reaching the real
// module. The plan is a file (KEYWARDEN_FAULT_PLAN), read again whenever its
// contents change; each line is
//
//   <function> <n> <return value> [<times>]
//
// e.g. "C_SignInit 2 0x30": the 2nd C_SignInit counted from when this plan
// was written returns CKR_DEVICE_ERROR (0x30); <times> (default 1) failures
// from there on, 0 for every call. Lines starting with # are comments. Every
// failure it injects is appended to the plan's path + ".fired" (one line:
// "<function> <call number> <return value>"), so a test can tell which call
// took the fault.
//
// Test-only: it links nothing of keywarden's, so what it injects is what a
// token would do, seen through keywarden's own PKCS#11 code.
#include <dlfcn.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <p11-kit/pkcs11.h>

namespace {

struct Rule {
  std::string function;
  unsigned long n = 0;
  CK_RV rv = CKR_OK;
  unsigned long times = 1;  // 0: every call from the n-th on
};

constexpr size_t kMaxWrapped = 24;

struct State {
  std::mutex mu;
  CK_FUNCTION_LIST* real = nullptr;
  CK_FUNCTION_LIST list{};
  std::array<void*, kMaxWrapped> real_fn{};
  std::array<const char*, kMaxWrapped> names{};
  std::array<unsigned long, kMaxWrapped> calls{};
  std::string plan_text;
  std::vector<Rule> rules;
};

State& S() {
  static State* s = new State();  // never destroyed: calls may come at exit
  return *s;
}

std::string ReadPlan() {
  const char* path = std::getenv("KEYWARDEN_FAULT_PLAN");
  if (path == nullptr || *path == '\0') return std::string();
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<Rule> ParsePlan(const std::string& text) {
  std::vector<Rule> rules;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream words(line);
    Rule r;
    std::string rv;
    if (!(words >> r.function >> r.n >> rv)) {
      std::fprintf(stderr, "fault module: plan line \"%s\" is not <function> <n> <rv>\n",
                   line.c_str());
      continue;
    }
    r.rv = std::strtoul(rv.c_str(), nullptr, 0);
    words >> r.times;
    rules.push_back(r);
  }
  return rules;
}

// The return value to inject for this call of wrapped function `index`, if any.
std::optional<CK_RV> Injected(size_t index) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  std::string text = ReadPlan();
  if (text != s.plan_text) {
    s.plan_text = std::move(text);
    s.rules = ParsePlan(s.plan_text);
    s.calls.fill(0);
  }
  const unsigned long call = ++s.calls[index];
  for (const Rule& r : s.rules) {
    if (r.function != s.names[index] || call < r.n) continue;
    if (r.times != 0 && call >= r.n + r.times) continue;
    if (const char* path = std::getenv("KEYWARDEN_FAULT_PLAN")) {
      std::ofstream fired(std::string(path) + ".fired", std::ios::app);
      fired << r.function << " " << call << " 0x" << std::hex << r.rv << "\n";
    }
    return r.rv;
  }
  return std::nullopt;
}

template <size_t I, typename F>
struct Wrapper;

template <size_t I, typename... A>
struct Wrapper<I, CK_RV (*)(A...)> {
  static CK_RV Call(A... args) {
    if (auto rv = Injected(I)) return *rv;
    return reinterpret_cast<CK_RV (*)(A...)>(S().real_fn[I])(args...);
  }
};

template <size_t I, typename F>
void Wrap(F* slot, F real, const char* name) {
  State& s = S();
  s.real_fn[I] = reinterpret_cast<void*>(real);
  s.names[I] = name;
  *slot = &Wrapper<I, F>::Call;
}

#define KW_WRAP(I, name) Wrap<I>(&s.list.name, s.real->name, #name)

CK_RV Load() {
  State& s = S();
  if (s.real != nullptr) return CKR_OK;
  const char* target = std::getenv("KEYWARDEN_FAULT_TARGET");
  const std::string path =
      target != nullptr && *target != '\0' ? target : KEYWARDEN_FAULT_DEFAULT_TARGET;
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(stderr, "fault module: cannot load %s: %s\n", path.c_str(), dlerror());
    return CKR_GENERAL_ERROR;
  }
  auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(lib, "C_GetFunctionList"));
  if (get == nullptr) return CKR_GENERAL_ERROR;
  CK_RV rv = get(&s.real);
  if (rv != CKR_OK) return rv;
  s.list = *s.real;
  KW_WRAP(0, C_Initialize);
  KW_WRAP(1, C_OpenSession);
  KW_WRAP(2, C_Login);
  KW_WRAP(3, C_FindObjectsInit);
  KW_WRAP(4, C_FindObjects);
  KW_WRAP(5, C_SignInit);
  KW_WRAP(6, C_Sign);
  KW_WRAP(7, C_DecryptInit);
  KW_WRAP(8, C_Decrypt);
  KW_WRAP(9, C_EncryptInit);
  KW_WRAP(10, C_Encrypt);
  KW_WRAP(11, C_GenerateKey);
  KW_WRAP(12, C_GenerateKeyPair);
  KW_WRAP(13, C_WrapKey);
  KW_WRAP(14, C_UnwrapKey);
  KW_WRAP(15, C_GenerateRandom);
  KW_WRAP(16, C_GetAttributeValue);
  KW_WRAP(17, C_DestroyObject);
  KW_WRAP(18, C_CreateObject);
  KW_WRAP(19, C_GetTokenInfo);
  return CKR_OK;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) CK_RV C_GetFunctionList(
    CK_FUNCTION_LIST_PTR_PTR list) {
  if (list == nullptr) return CKR_ARGUMENTS_BAD;
  State& s = S();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (CK_RV rv = Load(); rv != CKR_OK) return rv;
  }
  *list = &s.list;
  return CKR_OK;
}
