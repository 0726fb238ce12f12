// The low-level SHA256_* functions are deprecated in OpenSSL 3.0 in favour
// of EVP, but the EVP path is exactly the per-iteration cost avoided here
// (see fast_kdf.h); they remain part of the 3.x API.
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "pki/fast_kdf.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>
#include <string>

#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/provider.h>
#include <openssl/sha.h>

namespace keywarden::pki {
namespace {

constexpr size_t kBlock = 64;  // SHA-256 block
constexpr size_t kHash = 32;   // SHA-256 output

std::atomic<uint64_t> derivations{0};

// Wipes a SHA-256 state (it holds password-derived data) when it goes out of scope.
struct Sha256 {
  SHA256_CTX ctx;
  ~Sha256() { OPENSSL_cleanse(&ctx, sizeof ctx); }
};

}  // namespace

bool Pbkdf2HmacSha256(std::span<const uint8_t> password, std::span<const uint8_t> salt,
                      uint64_t iterations, std::span<uint8_t> out) {
  if (iterations == 0 || out.empty()) return false;
  // HMAC key: the password, hashed first when longer than a block.
  uint8_t key[kBlock] = {0};
  if (password.size() > kBlock) {
    SHA256(password.data(), password.size(), key);
  } else if (!password.empty()) {
    std::memcpy(key, password.data(), password.size());
  }
  uint8_t pad[kBlock];
  Sha256 inner, outer, work;
  for (size_t i = 0; i < kBlock; ++i) pad[i] = key[i] ^ 0x36;
  SHA256_Init(&inner.ctx);
  SHA256_Update(&inner.ctx, pad, kBlock);
  for (size_t i = 0; i < kBlock; ++i) pad[i] = key[i] ^ 0x5c;
  SHA256_Init(&outer.ctx);
  SHA256_Update(&outer.ctx, pad, kBlock);
  OPENSSL_cleanse(key, sizeof key);
  OPENSSL_cleanse(pad, sizeof pad);

  uint8_t u[kHash], t[kHash];
  for (uint32_t block = 1; !out.empty(); ++block) {
    const uint8_t index[4] = {static_cast<uint8_t>(block >> 24), static_cast<uint8_t>(block >> 16),
                              static_cast<uint8_t>(block >> 8), static_cast<uint8_t>(block)};
    // U1 = PRF(P, S || INT(i)); Un = PRF(P, Un-1); T = U1 ^ ... ^ Uc.
    work.ctx = inner.ctx;
    SHA256_Update(&work.ctx, salt.data(), salt.size());
    SHA256_Update(&work.ctx, index, sizeof index);
    SHA256_Final(u, &work.ctx);
    work.ctx = outer.ctx;
    SHA256_Update(&work.ctx, u, kHash);
    SHA256_Final(u, &work.ctx);
    std::memcpy(t, u, kHash);
    for (uint64_t n = 1; n < iterations; ++n) {
      work.ctx = inner.ctx;
      SHA256_Update(&work.ctx, u, kHash);
      SHA256_Final(u, &work.ctx);
      work.ctx = outer.ctx;
      SHA256_Update(&work.ctx, u, kHash);
      SHA256_Final(u, &work.ctx);
      for (size_t i = 0; i < kHash; ++i) t[i] ^= u[i];
    }
    const size_t take = std::min(out.size(), kHash);
    std::memcpy(out.data(), t, take);
    out = out.subspan(take);
  }
  OPENSSL_cleanse(u, sizeof u);
  OPENSSL_cleanse(t, sizeof t);
  return true;
}

bool Pkcs12KdfSha256(std::span<const uint8_t> password, std::span<const uint8_t> salt, int id,
                     uint64_t iterations, std::span<uint8_t> out) {
  if (iterations == 0 || out.empty() || id < 1 || id > 255) return false;
  // I = S || P, each repeated to a whole number of 64-byte blocks.
  auto repeat = [](std::span<const uint8_t> in) {
    std::string s;
    if (in.empty()) return s;
    s.resize((in.size() + kBlock - 1) / kBlock * kBlock);
    for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(in[i % in.size()]);
    return s;
  };
  std::string salt_part = repeat(salt);
  std::string pass_part = repeat(password);
  std::string i_bytes = salt_part + pass_part;
  OPENSSL_cleanse(pass_part.data(), pass_part.size());
  uint8_t d[kBlock];
  std::memset(d, id, sizeof d);
  uint8_t a[kHash], b[kBlock];
  Sha256 work;
  for (;;) {
    // A = H^r(D || I)
    SHA256_Init(&work.ctx);
    SHA256_Update(&work.ctx, d, kBlock);
    SHA256_Update(&work.ctx, i_bytes.data(), i_bytes.size());
    SHA256_Final(a, &work.ctx);
    for (uint64_t n = 1; n < iterations; ++n) {
      SHA256_Init(&work.ctx);
      SHA256_Update(&work.ctx, a, kHash);
      SHA256_Final(a, &work.ctx);
    }
    const size_t take = std::min(out.size(), kHash);
    std::memcpy(out.data(), a, take);
    out = out.subspan(take);
    if (out.empty()) break;
    // B = A repeated to 64 bytes; each 64-byte block Ij of I becomes
    // (Ij + B + 1) mod 2^512.
    for (size_t i = 0; i < kBlock; ++i) b[i] = a[i % kHash];
    for (size_t j = 0; j < i_bytes.size(); j += kBlock) {
      unsigned carry = 1;
      for (size_t k = kBlock; k-- > 0;) {
        carry += static_cast<uint8_t>(i_bytes[j + k]) + b[k];
        i_bytes[j + k] = static_cast<char>(carry & 0xff);
        carry >>= 8;
      }
    }
  }
  OPENSSL_cleanse(a, sizeof a);
  OPENSSL_cleanse(b, sizeof b);
  OPENSSL_cleanse(i_bytes.data(), i_bytes.size());
  return true;
}

namespace {

// ---- the provider ----------------------------------------------------------

enum class Kind { kPbkdf2, kPkcs12 };

struct KdfCtx {
  explicit KdfCtx(Kind k) : kind(k) {}
  Kind kind;
  unsigned char* pass = nullptr;  // OPENSSL_malloc'd, wiped on free
  size_t pass_len = 0;
  std::string salt;
  uint64_t iter = 2048;  // OpenSSL's defaults
  int id = 0;
  bool sha256 = true;
};

void ClearPass(KdfCtx* c) {
  OPENSSL_clear_free(c->pass, c->pass_len);
  c->pass = nullptr;
  c->pass_len = 0;
}

bool IsSha256(const char* name) {
  static const char* const kNames[] = {"SHA256", "SHA2-256", "SHA-256", "2.16.840.1.101.3.4.2.1"};
  for (const char* n : kNames) {
    if (OPENSSL_strcasecmp(name, n) == 0) return true;
  }
  return false;
}

int SetParams(void* vctx, const OSSL_PARAM params[]) {
  auto* c = static_cast<KdfCtx*>(vctx);
  if (params == nullptr) return 1;
  if (const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_PASSWORD)) {
    ClearPass(c);
    void* buf = nullptr;
    size_t len = 0;
    if (OSSL_PARAM_get_octet_string(p, &buf, 0, &len) != 1) return 0;
    c->pass = static_cast<unsigned char*>(buf);
    c->pass_len = len;
  }
  if (const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_SALT)) {
    const void* ptr = nullptr;
    size_t len = 0;
    if (OSSL_PARAM_get_octet_string_ptr(p, &ptr, &len) != 1) return 0;
    c->salt.assign(static_cast<const char*>(ptr), len);
  }
  if (const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_ITER)) {
    uint64_t iter = 0;
    if (OSSL_PARAM_get_uint64(p, &iter) != 1 || iter == 0) return 0;
    c->iter = iter;
  }
  if (const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_DIGEST)) {
    const char* name = nullptr;
    if (OSSL_PARAM_get_utf8_string_ptr(p, &name) != 1) return 0;
    c->sha256 = IsSha256(name);
    if (!c->sha256) return 0;  // only SHA-256 is offered; nothing else is asked for
  }
  if (const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_PKCS12_ID)) {
    if (OSSL_PARAM_get_int(p, &c->id) != 1) return 0;
  }
  // OSSL_KDF_PARAM_PKCS5 (SP 800-132 lower bounds, off for PKCS#12) and
  // OSSL_KDF_PARAM_PROPERTIES are accepted and have nothing to do here.
  return 1;
}

void* NewPbkdf2(void*) {
  return new (std::nothrow) KdfCtx(Kind::kPbkdf2);
}
void* NewPkcs12(void*) {
  return new (std::nothrow) KdfCtx(Kind::kPkcs12);
}

void FreeCtx(void* vctx) {
  auto* c = static_cast<KdfCtx*>(vctx);
  if (c == nullptr) return;
  ClearPass(c);
  OPENSSL_cleanse(c->salt.data(), c->salt.size());
  delete c;
}

void Reset(void* vctx) {
  auto* c = static_cast<KdfCtx*>(vctx);
  ClearPass(c);
  const Kind kind = c->kind;
  *c = KdfCtx(kind);
}

int Derive(void* vctx, unsigned char* key, size_t keylen, const OSSL_PARAM params[]) {
  auto* c = static_cast<KdfCtx*>(vctx);
  if (SetParams(c, params) != 1 || !c->sha256 || key == nullptr || keylen == 0) return 0;
  const std::span<const uint8_t> pass(c->pass, c->pass_len);
  const std::span<const uint8_t> salt(reinterpret_cast<const uint8_t*>(c->salt.data()),
                                      c->salt.size());
  bool ok = c->kind == Kind::kPbkdf2 ? Pbkdf2HmacSha256(pass, salt, c->iter, {key, keylen})
                                     : Pkcs12KdfSha256(pass, salt, c->id, c->iter, {key, keylen});
  if (ok) ++derivations;
  return ok ? 1 : 0;
}

const OSSL_PARAM* Settable(void*, void*) {
  static const OSSL_PARAM kSettable[] = {
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_PASSWORD, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SALT, nullptr, 0),
      OSSL_PARAM_uint64(OSSL_KDF_PARAM_ITER, nullptr),
      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, nullptr, 0),
      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_PROPERTIES, nullptr, 0),
      OSSL_PARAM_int(OSSL_KDF_PARAM_PKCS5, nullptr),
      OSSL_PARAM_int(OSSL_KDF_PARAM_PKCS12_ID, nullptr),
      OSSL_PARAM_END};
  return kSettable;
}

int GetParams(void*, OSSL_PARAM params[]) {
  if (OSSL_PARAM* p = OSSL_PARAM_locate(params, OSSL_KDF_PARAM_SIZE)) {
    return OSSL_PARAM_set_size_t(p, SIZE_MAX);
  }
  return -2;
}

const OSSL_PARAM* Gettable(void*, void*) {
  static const OSSL_PARAM kGettable[] = {OSSL_PARAM_size_t(OSSL_KDF_PARAM_SIZE, nullptr),
                                         OSSL_PARAM_END};
  return kGettable;
}

using Fn = void (*)();
#define KW_FN(f) reinterpret_cast<Fn>(f)
const OSSL_DISPATCH kPbkdf2Functions[] = {{OSSL_FUNC_KDF_NEWCTX, KW_FN(NewPbkdf2)},
                                          {OSSL_FUNC_KDF_FREECTX, KW_FN(FreeCtx)},
                                          {OSSL_FUNC_KDF_RESET, KW_FN(Reset)},
                                          {OSSL_FUNC_KDF_DERIVE, KW_FN(Derive)},
                                          {OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, KW_FN(Settable)},
                                          {OSSL_FUNC_KDF_SET_CTX_PARAMS, KW_FN(SetParams)},
                                          {OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, KW_FN(Gettable)},
                                          {OSSL_FUNC_KDF_GET_CTX_PARAMS, KW_FN(GetParams)},
                                          {0, nullptr}};
const OSSL_DISPATCH kPkcs12Functions[] = {{OSSL_FUNC_KDF_NEWCTX, KW_FN(NewPkcs12)},
                                          {OSSL_FUNC_KDF_FREECTX, KW_FN(FreeCtx)},
                                          {OSSL_FUNC_KDF_RESET, KW_FN(Reset)},
                                          {OSSL_FUNC_KDF_DERIVE, KW_FN(Derive)},
                                          {OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, KW_FN(Settable)},
                                          {OSSL_FUNC_KDF_SET_CTX_PARAMS, KW_FN(SetParams)},
                                          {OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, KW_FN(Gettable)},
                                          {OSSL_FUNC_KDF_GET_CTX_PARAMS, KW_FN(GetParams)},
                                          {0, nullptr}};

constexpr char kProperties[] = "provider=keywarden-kdf,keywarden.kdf=fast";
const OSSL_ALGORITHM kKdfs[] = {
    {"PBKDF2", kProperties, kPbkdf2Functions, "PBKDF2-HMAC-SHA256 over precomputed states"},
    {"PKCS12KDF", kProperties, kPkcs12Functions, "PKCS#12 KDF with SHA-256"},
    {nullptr, nullptr, nullptr, nullptr}};

const OSSL_ALGORITHM* Query(void*, int operation, int* no_cache) {
  *no_cache = 0;
  return operation == OSSL_OP_KDF ? kKdfs : nullptr;
}

const OSSL_DISPATCH kProviderFunctions[] = {{OSSL_FUNC_PROVIDER_QUERY_OPERATION, KW_FN(Query)},
                                            {0, nullptr}};
#undef KW_FN

int ProviderInit(const OSSL_CORE_HANDLE*, const OSSL_DISPATCH*, const OSSL_DISPATCH** out,
                 void** provctx) {
  *out = kProviderFunctions;
  *provctx = nullptr;
  return 1;
}

}  // namespace

OSSL_LIB_CTX* FastKdfContext() {
  static OSSL_LIB_CTX* const ctx = []() -> OSSL_LIB_CTX* {
    OSSL_LIB_CTX* c = OSSL_LIB_CTX_new();
    if (c == nullptr) return nullptr;
    if (OSSL_PROVIDER_add_builtin(c, "keywarden-kdf", ProviderInit) != 1 ||
        OSSL_PROVIDER_load(c, "default") == nullptr ||
        OSSL_PROVIDER_load(c, "keywarden-kdf") == nullptr) {
      OSSL_LIB_CTX_free(c);
      ERR_clear_error();
      return nullptr;
    }
    return c;
  }();
  return ctx;
}

uint64_t FastKdfDerivations() {
  return derivations.load();
}

}  // namespace keywarden::pki
