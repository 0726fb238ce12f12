#include <openssl/crypto.h>

#include "hsm/strings.h"
#include "service/storage/postgres_store.h"
#include "service/storage/store.h"

namespace keywarden::service {

DatabaseOptions::~DatabaseOptions() {
  if (!password.empty()) OPENSSL_cleanse(password.data(), password.size());
}

absl::StatusOr<std::unique_ptr<Store>> OpenStore(const DatabaseOptions& options) {
  if (options.backend == "sqlite") return OpenSqliteStore(options.path);
  if (options.backend == "postgresql") return OpenPostgresStore(options);
  return absl::InvalidArgumentError(StrCat("opening the CA database: unknown backend \"",
                                           options.backend, "\" (sqlite or postgresql)"));
}

}  // namespace keywarden::service
