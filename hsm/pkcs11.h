// The one place the PKCS#11 headers come in: p11-kit ships the standard
// definitions (CK_* types and constants) for every module.
#pragma once

#include <p11-kit/pkcs11.h>
