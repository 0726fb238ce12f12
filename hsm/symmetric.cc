#include "hsm/symmetric.h"
#include "hsm/strings.h"

#include "hsm/keys.h"
#include "hsm/status.h"

namespace keywarden::hsm {

absl::StatusOr<SessionKey> SessionKey::Generate(std::shared_ptr<Token> token,
                                                SymmetricAlgorithm algorithm) {
  if (!token) return absl::InvalidArgumentError("session key: no token");
  auto session = token->Acquire();
  if (!session.ok()) return session.status();
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = algorithm == SymmetricAlgorithm::kDes3 ? CKK_DES3 : CKK_AES;
  CK_ULONG len = 32;
  std::vector<CK_ATTRIBUTE> t = {
      Attr(CKA_CLASS, cls),     Attr(CKA_KEY_TYPE, kt),     Attr(CKA_TOKEN, kFalse),
      Attr(CKA_PRIVATE, kTrue), Attr(CKA_SENSITIVE, kTrue), Attr(CKA_EXTRACTABLE, kTrue),
      Attr(CKA_ENCRYPT, kTrue), Attr(CKA_DECRYPT, kFalse),  Attr(CKA_WRAP, kFalse),
      Attr(CKA_UNWRAP, kFalse), Attr(CKA_SIGN, kFalse),     Attr(CKA_VERIFY, kFalse),
  };
  CK_MECHANISM mech{CKM_DES3_KEY_GEN, nullptr, 0};
  if (algorithm == SymmetricAlgorithm::kAes256) {
    mech.mechanism = CKM_AES_KEY_GEN;
    t.push_back(Attr(CKA_VALUE_LEN, len));
  }
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = session->Call("C_GenerateKey", session->fn()->C_GenerateKey, session->handle(), &mech,
                           t.data(), static_cast<CK_ULONG>(t.size()), &h);
  if (rv != CKR_OK) {
    return Pkcs11Error(
        "C_GenerateKey", rv,
        StrCat("generate ", algorithm == SymmetricAlgorithm::kDes3 ? "3DES" : "AES-256",
               " session key on token \"", token->label(), "\""));
  }
  return SessionKey(std::move(*session), h, algorithm);
}

namespace {

// A session secret key usable only to be wrapped (rewrap: never to encrypt
// or decrypt on this token).
std::vector<CK_ATTRIBUTE> WrapOnlyTemplate(CK_OBJECT_CLASS& cls, CK_KEY_TYPE& kt) {
  return {
      Attr(CKA_CLASS, cls),      Attr(CKA_KEY_TYPE, kt),     Attr(CKA_TOKEN, kFalse),
      Attr(CKA_PRIVATE, kTrue),  Attr(CKA_SENSITIVE, kTrue), Attr(CKA_EXTRACTABLE, kTrue),
      Attr(CKA_ENCRYPT, kFalse), Attr(CKA_DECRYPT, kFalse),  Attr(CKA_WRAP, kFalse),
      Attr(CKA_UNWRAP, kFalse),  Attr(CKA_SIGN, kFalse),     Attr(CKA_VERIFY, kFalse),
  };
}

const char* AlgorithmName(SymmetricAlgorithm algorithm) {
  return algorithm == SymmetricAlgorithm::kDes3 ? "3DES" : "AES-256";
}

}  // namespace

absl::StatusOr<SessionKey> SessionKey::Unwrap(std::shared_ptr<Token> token,
                                              KeyHandle& unwrapping_key, WrapMechanism mechanism,
                                              std::span<const uint8_t> wrapped,
                                              SymmetricAlgorithm algorithm) {
  if (!token) return absl::InvalidArgumentError("unwrap: no token");
  if (wrapped.empty()) return absl::InvalidArgumentError("unwrap: no wrapped key");
  auto session = token->Acquire();
  if (!session.ok()) return session.status();
  auto handle = unwrapping_key.Resolve(*session);
  if (!handle.ok()) return handle.status();
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = algorithm == SymmetricAlgorithm::kDes3 ? CKK_DES3 : CKK_AES;
  std::vector<CK_ATTRIBUTE> t = WrapOnlyTemplate(cls, kt);
  CK_RSA_PKCS_OAEP_PARAMS oaep{CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, nullptr, 0};
  CK_MECHANISM mech{CKM_RSA_PKCS, nullptr, 0};
  if (mechanism == WrapMechanism::kRsaOaepSha1) {
    mech = CK_MECHANISM{CKM_RSA_PKCS_OAEP, &oaep, sizeof oaep};
  }
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv =
      session->Call("C_UnwrapKey", session->fn()->C_UnwrapKey, session->handle(), &mech, *handle,
                    const_cast<CK_BYTE_PTR>(wrapped.data()), static_cast<CK_ULONG>(wrapped.size()),
                    t.data(), static_cast<CK_ULONG>(t.size()), &h);
  if (rv != CKR_OK) {
    absl::Status st = Pkcs11Error("C_UnwrapKey", rv,
                                  StrCat("unwrap the ", AlgorithmName(algorithm),
                                         " content key on token \"", token->label(), "\""));
    // The key or the token does not do it: the caller may fall back.
    if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED || rv == CKR_MECHANISM_INVALID ||
        rv == CKR_FUNCTION_NOT_SUPPORTED || rv == CKR_KEY_TYPE_INCONSISTENT) {
      return absl::FailedPreconditionError(st.message());
    }
    // Otherwise the wrapped key itself did not decrypt (bad padding, a
    // length that is no key of this kind): the archive, not the card.
    if (rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE ||
        rv == CKR_WRAPPED_KEY_INVALID || rv == CKR_WRAPPED_KEY_LEN_RANGE ||
        rv == CKR_TEMPLATE_INCONSISTENT || rv == CKR_ATTRIBUTE_VALUE_INVALID) {
      return absl::DataLossError(st.message());
    }
    return st;
  }
  return SessionKey(std::move(*session), h, algorithm);
}

absl::StatusOr<SessionKey> SessionKey::Import(std::shared_ptr<Token> token,
                                              std::span<const uint8_t> value,
                                              SymmetricAlgorithm algorithm) {
  if (!token) return absl::InvalidArgumentError("import key: no token");
  const size_t want = algorithm == SymmetricAlgorithm::kDes3 ? 24 : 32;
  if (value.size() != want) {
    return absl::DataLossError(StrCat("the decrypted content key is ", value.size(), " bytes; a ",
                                      AlgorithmName(algorithm), " key is ", want));
  }
  auto session = token->Acquire();
  if (!session.ok()) return session.status();
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = algorithm == SymmetricAlgorithm::kDes3 ? CKK_DES3 : CKK_AES;
  std::vector<CK_ATTRIBUTE> t = WrapOnlyTemplate(cls, kt);
  t.push_back(Attr(CKA_VALUE, const_cast<uint8_t*>(value.data()), value.size()));
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = session->Call("C_CreateObject", session->fn()->C_CreateObject, session->handle(),
                           t.data(), static_cast<CK_ULONG>(t.size()), &h);
  if (rv != CKR_OK) {
    return Pkcs11Error(
        "C_CreateObject", rv,
        StrCat("import the ", AlgorithmName(algorithm),
               " content key as a session object on token \"", token->label(), "\""));
  }
  return SessionKey(std::move(*session), h, algorithm);
}

SessionKey::SessionKey(SessionKey&& other) noexcept
    : session_(std::move(other.session_)), handle_(other.handle_), algorithm_(other.algorithm_) {
  other.handle_ = CK_INVALID_HANDLE;
}

SessionKey::~SessionKey() {
  if (handle_ == CK_INVALID_HANDLE) return;
  CK_RV rv =
      session_.Call("C_DestroyObject", session_.fn()->C_DestroyObject, session_.handle(), handle_);
  // A key we could not destroy must not outlive this lease in a pooled
  // session: closing the session destroys its session objects.
  if (rv != CKR_OK) session_.MarkBroken();
}

absl::StatusOr<Ciphertext> SessionKey::Encrypt(std::span<const uint8_t> plaintext) {
  Ciphertext out;
  out.iv.resize(block_size());
  CK_RV rv = session_.Call("C_GenerateRandom", session_.fn()->C_GenerateRandom, session_.handle(),
                           out.iv.data(), static_cast<CK_ULONG>(out.iv.size()));
  if (rv != CKR_OK) return Pkcs11Error("C_GenerateRandom", rv, "IV for session key");
  CK_MECHANISM mech{algorithm_ == SymmetricAlgorithm::kDes3 ? CKM_DES3_CBC_PAD : CKM_AES_CBC_PAD,
                    out.iv.data(), static_cast<CK_ULONG>(out.iv.size())};
  rv = session_.Call("C_EncryptInit", session_.fn()->C_EncryptInit, session_.handle(), &mech,
                     handle_);
  if (rv != CKR_OK) return Pkcs11Error("C_EncryptInit", rv, "encrypt with session key");
  out.data.resize(plaintext.size() + block_size());
  CK_ULONG len = static_cast<CK_ULONG>(out.data.size());
  rv = session_.Call("C_Encrypt", session_.fn()->C_Encrypt, session_.handle(),
                     const_cast<CK_BYTE_PTR>(plaintext.data()),
                     static_cast<CK_ULONG>(plaintext.size()), out.data.data(), &len);
  if (rv != CKR_OK) return Pkcs11Error("C_Encrypt", rv, "encrypt with session key");
  out.data.resize(len);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> SessionKey::WrapTo(EVP_PKEY* rsa_public,
                                                        WrapMechanism mechanism) {
  auto wrapping = CreateRsaWrappingKey(session_, rsa_public);
  if (!wrapping.ok()) return wrapping.status();
  CK_RSA_PKCS_OAEP_PARAMS oaep{CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, nullptr, 0};
  CK_MECHANISM mech{CKM_RSA_PKCS, nullptr, 0};
  if (mechanism == WrapMechanism::kRsaOaepSha1) {
    mech = CK_MECHANISM{CKM_RSA_PKCS_OAEP, &oaep, sizeof oaep};
  }
  std::vector<uint8_t> out(static_cast<size_t>(EVP_PKEY_get_size(rsa_public)));
  CK_ULONG len = static_cast<CK_ULONG>(out.size());
  CK_RV rv = session_.Call("C_WrapKey", session_.fn()->C_WrapKey, session_.handle(), &mech,
                           *wrapping, handle_, out.data(), &len);
  CK_RV drv = session_.Call("C_DestroyObject", session_.fn()->C_DestroyObject, session_.handle(),
                            *wrapping);
  if (rv != CKR_OK) return Pkcs11Error("C_WrapKey", rv, "wrap session key");
  if (drv != CKR_OK) session_.MarkBroken();
  out.resize(len);
  return out;
}

}  // namespace keywarden::hsm
