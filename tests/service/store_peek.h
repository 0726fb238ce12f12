// The database of a DaemonHarness's keywardend, read behind the daemon's
// back the way an auditor with the file (or the PostgreSQL database)
// would (tests link keywarden_store).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "service/storage/store.h"
#include "tests/service/daemon_harness.h"

namespace keywarden::testing {

inline std::unique_ptr<service::Store> OpenHarnessStore(const DaemonHarness& daemon) {
  service::DatabaseOptions options;
  if (daemon.postgres()) {
    options.backend = "postgresql";
    options.connection = daemon.pg_conninfo();
    options.pool_size = 2;
  } else {
    options.path = daemon.db_path();
  }
  auto store = service::OpenStore(options);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

// Every audit record of `event`, oldest first.
inline std::vector<service::AuditRecord> HarnessAuditEvents(const DaemonHarness& daemon,
                                                            const std::string& event) {
  std::vector<service::AuditRecord> out;
  auto store = OpenHarnessStore(daemon);
  if (!store) return out;
  auto records = store->ReadAudit(1, 100000);
  EXPECT_TRUE(records.ok());
  if (!records.ok()) return out;
  for (auto& r : *records) {
    if (r.event == event) out.push_back(r);
  }
  return out;
}

}  // namespace keywarden::testing
