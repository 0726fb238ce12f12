#include "pki/key_file.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <optional>

#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/pkcs12.h"
#include "pki/private_key_blob.h"

namespace keywarden::pki {
namespace {

// What OpenSSL's PEM reader asks for a password: the source is asked once,
// only if the PEM is encrypted (never OpenSSL's own terminal prompt).
struct PemPassword {
  const PasswordSource* source;
  std::string_view name;
  std::optional<absl::Status> failed;
  bool asked = false;
};

int PemPasswordCallback(char* buf, int size, int, void* u) {
  auto* p = static_cast<PemPassword*>(u);
  p->asked = true;
  if (p->source == nullptr || !*p->source) {
    p->failed = absl::InvalidArgumentError(StrCat(p->name, " is protected: give its password"));
    return -1;
  }
  auto pw = (*p->source)();
  if (!pw.ok()) {
    p->failed = pw.status();
    return -1;
  }
  const std::string_view v = pw->view();
  if (v.size() > static_cast<size_t>(size)) {
    p->failed = absl::InvalidArgumentError(
        StrCat(p->name, ": the password is longer than OpenSSL accepts"));
    return -1;
  }
  std::memcpy(buf, v.data(), v.size());
  return static_cast<int>(v.size());
}

std::vector<KeyFileKey> One(ossl::UniquePtr<EVP_PKEY> key) {
  std::vector<KeyFileKey> v;
  v.push_back({std::move(key), nullptr, ""});
  return v;
}

absl::Status Named(std::string_view name, const absl::Status& st) {
  return absl::Status(st.code(), StrCat(name, ": ", st.message()));
}

}  // namespace

absl::StatusOr<std::vector<KeyFileKey>> ParsePrivateKeyFile(std::span<const uint8_t> bytes,
                                                            std::string_view name,
                                                            const PasswordSource& password) {
  if (bytes.empty()) return absl::InvalidArgumentError(StrCat(name, ": the file is empty"));
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(StrCat(name, ": too large for a key file"));
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  if (text.find("-----BEGIN") != std::string_view::npos) {
    PemPassword pw{&password, name, std::nullopt, false};
    ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
    ossl::UniquePtr<EVP_PKEY> key(
        PEM_read_bio_PrivateKey(bio.get(), nullptr, PemPasswordCallback, &pw));
    if (!key) {
      ERR_clear_error();
      if (pw.failed) return *pw.failed;
      return absl::InvalidArgumentError(
          StrCat(name, ": not a PEM private key", pw.asked ? " (or wrong password)" : ""));
    }
    return One(std::move(key));
  }
  if (bytes[0] == 0x07) {  // CAPI PRIVATEKEYBLOB (bType PRIVATEKEYBLOB)
    auto key = ParsePrivateKeyPlaintext(bytes, nullptr, nullptr);
    if (!key.ok()) return Named(name, key.status());
    return One(std::move(*key));
  }
  const unsigned char* p = bytes.data();
  ossl::UniquePtr<EVP_PKEY> key(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(bytes.size())));
  if (key && p == bytes.data() + bytes.size()) return One(std::move(key));
  ERR_clear_error();
  // A PFX: every key, each with the certificate of its public key.
  p = bytes.data();
  if (PKCS12* p12 = d2i_PKCS12(nullptr, &p, static_cast<long>(bytes.size()))) {
    PKCS12_free(p12);
    if (!password)
      return absl::InvalidArgumentError(StrCat(name, " is protected: give its password"));
    auto pass = password();
    if (!pass.ok()) return pass.status();
    auto c = ReadPkcs12(bytes, *pass);
    if (!c.ok()) return Named(name, c.status());
    if (c->keys.empty()) return absl::NotFoundError(StrCat(name, ": the PFX holds no key"));
    std::vector<KeyFileKey> keys;
    for (size_t i = 0; i < c->keys.size(); ++i) {
      auto& k = c->keys[i];
      std::string label = StrCat("key ", i + 1, " of ", c->keys.size());
      if (!k.friendly_name.empty()) label += StrCat(" (\"", k.friendly_name, "\")");
      keys.push_back({std::move(k.key), std::move(k.certificate), std::move(label)});
    }
    return keys;
  }
  ERR_clear_error();
  return absl::InvalidArgumentError(
      StrCat(name, ": not a private key (PEM, DER PKCS#8 or RSA, PRIVATEKEYBLOB or PFX)"));
}

absl::StatusOr<PublicKeyFile> ParsePublicKeyFile(std::span<const uint8_t> bytes,
                                                 std::string_view name) {
  if (bytes.empty()) return absl::InvalidArgumentError(StrCat(name, ": the file is empty"));
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(StrCat(name, ": too large for a certificate"));
  }
  PublicKeyFile out;
  const int size = static_cast<int>(bytes.size());
  ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(bytes.data(), size));
  // No password callback can be asked for: a certificate is never encrypted.
  PemPassword none{nullptr, name, std::nullopt, false};
  out.certificate.reset(PEM_read_bio_X509(bio.get(), nullptr, PemPasswordCallback, &none));
  if (!out.certificate) {
    ERR_clear_error();
    const unsigned char* p = bytes.data();
    out.certificate.reset(d2i_X509(nullptr, &p, static_cast<long>(bytes.size())));
  }
  if (out.certificate) {
    EVP_PKEY* key = X509_get_pubkey(out.certificate.get());
    if (key == nullptr) {
      ERR_clear_error();
      return absl::InvalidArgumentError(
          StrCat(name, ": the certificate's public key cannot be read"));
    }
    out.key.reset(key);
    return out;
  }
  ERR_clear_error();
  bio.reset(BIO_new_mem_buf(bytes.data(), size));
  out.key.reset(PEM_read_bio_PUBKEY(bio.get(), nullptr, PemPasswordCallback, &none));
  if (!out.key) {
    ERR_clear_error();
    const unsigned char* p = bytes.data();
    out.key.reset(d2i_PUBKEY(nullptr, &p, static_cast<long>(bytes.size())));
  }
  if (!out.key) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        StrCat(name, ": not a certificate or public key (PEM or DER)"));
  }
  return out;
}

}  // namespace keywarden::pki
