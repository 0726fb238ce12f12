// pki::UsableCores counts the CPUs this process may run on (its affinity
// mask), as the kernel reports them in /proc, and pools sized by it follow a
// narrowed mask.
#include "pki/cores.h"

#include <sched.h>

#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "pki/pipeline.h"

namespace keywarden::pki {
namespace {

// The CPUs in "Cpus_allowed_list:" of /proc/thread-self/status ("0-3,8").
size_t CpusAllowedByProc() {
  std::ifstream f("/proc/thread-self/status");
  std::string line;
  while (std::getline(f, line)) {
    const std::string key = "Cpus_allowed_list:";
    if (line.rfind(key, 0) != 0) continue;
    std::stringstream ranges(line.substr(key.size()));
    std::string range;
    size_t count = 0;
    while (std::getline(ranges, range, ',')) {
      const size_t dash = range.find('-');
      const unsigned long first = std::stoul(range.substr(0, dash));
      const unsigned long last =
          dash == std::string::npos ? first : std::stoul(range.substr(dash + 1));
      count += last - first + 1;
    }
    return count;
  }
  return 0;
}

TEST(CoresTest, CountsTheCpusTheKernelLetsThisThreadRunOn) {
  const size_t expected = CpusAllowedByProc();
  ASSERT_GT(expected, 0u) << "no Cpus_allowed_list in /proc/thread-self/status";
  EXPECT_EQ(UsableCores(), expected);
}

TEST(CoresTest, ANarrowedAffinityMaskNarrowsTheCountAndThePipelinesWorkers) {
  // On a thread of its own, so the rest of the test process keeps its mask.
  size_t narrowed = 0, by_proc = 0, workers = 0;
  bool pinned = false;
  std::thread t([&] {
    cpu_set_t set;
    CPU_ZERO(&set);
    ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
    int first = -1;
    for (int cpu = 0; cpu < CPU_SETSIZE && first < 0; ++cpu) {
      if (CPU_ISSET(cpu, &set)) first = cpu;
    }
    ASSERT_GE(first, 0);
    CPU_ZERO(&set);
    CPU_SET(first, &set);
    pinned = sched_setaffinity(0, sizeof set, &set) == 0;
    if (!pinned) return;
    narrowed = UsableCores();
    by_proc = CpusAllowedByProc();
    // A pipeline with the default worker count, started here, has one
    // worker (threads inherit the mask of the thread that starts them).
    std::mutex mu;
    std::set<std::thread::id> ids;
    RunPipeline<int>(
        32, {}, [](size_t i, bool*) -> std::optional<int> { return static_cast<int>(i); },
        [&](size_t, int) {
          std::lock_guard<std::mutex> lock(mu);
          ids.insert(std::this_thread::get_id());
        });
    workers = ids.size();
  });
  t.join();
  ASSERT_TRUE(pinned) << "sched_setaffinity to one CPU failed";
  EXPECT_EQ(by_proc, 1u);
  EXPECT_EQ(narrowed, 1u);
  EXPECT_EQ(workers, 1u);
}

}  // namespace
}  // namespace keywarden::pki
