// The PostgreSQL backend of the CA store (several keywardend replicas on one
// database).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "service/storage/store.h"

namespace keywarden::service {

// Connects (a bounded pool), creates the schema in an empty database or
// checks its version, under an advisory lock so replicas starting together
// do not race. Refuses a database holding tables of something else.
absl::StatusOr<std::unique_ptr<Store>> OpenPostgresStore(const DatabaseOptions& options);

}  // namespace keywarden::service
