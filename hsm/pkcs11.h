// The one place the PKCS#11 headers come in: p11-kit ships the standard
// definitions (CK_* types and constants) for every module.
#pragma once

#include <cstddef>

#include <p11-kit/pkcs11.h>

namespace keywarden::hsm {

// Template entries for C_GenerateKey(Pair), C_CreateObject, C_FindObjectsInit.
// The module only reads them; the const_cast is what the C API demands.
inline constexpr CK_BBOOL kTrue = CK_TRUE;
inline constexpr CK_BBOOL kFalse = CK_FALSE;

inline CK_ATTRIBUTE Attr(CK_ATTRIBUTE_TYPE type, const void* value, size_t len) {
  return CK_ATTRIBUTE{type, const_cast<void*>(value), static_cast<CK_ULONG>(len)};
}
template <typename T>
CK_ATTRIBUTE Attr(CK_ATTRIBUTE_TYPE type, const T& value) {
  return Attr(type, &value, sizeof(T));
}

}  // namespace keywarden::hsm
