// pki::RunPipeline (the recoverkey --batch pipeline): every item through
// both stages once, the first stage in order on the calling thread, the
// queue bounded, failed items skipped, a stop honoured.
#include "pki/pipeline.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace keywarden::pki {
namespace {

TEST(PipelineTest, EveryItemGoesThroughBothStagesOnceAndTheFirstRunsInOrderOnTheCaller) {
  constexpr size_t kItems = 200;
  const std::thread::id caller = std::this_thread::get_id();
  std::vector<size_t> first_order;
  std::vector<int> second_calls(kItems, 0);
  std::vector<size_t> results(kItems, 0);
  std::atomic<bool> first_elsewhere{false}, second_on_caller{false};
  std::mutex mu;
  std::set<std::thread::id> worker_ids;
  const size_t attempted = RunPipeline<size_t>(
      kItems, {3, 2},
      [&](size_t i, bool*) -> std::optional<size_t> {
        if (std::this_thread::get_id() != caller) first_elsewhere = true;
        first_order.push_back(i);
        return i * i + 7;  // the work: computed here, checked below
      },
      [&](size_t i, size_t work) {
        if (std::this_thread::get_id() == caller) second_on_caller = true;
        std::lock_guard<std::mutex> lock(mu);
        worker_ids.insert(std::this_thread::get_id());
        ++second_calls[i];
        results[i] = work;
      });
  EXPECT_EQ(attempted, kItems);
  EXPECT_FALSE(first_elsewhere);
  EXPECT_FALSE(second_on_caller);
  EXPECT_LE(worker_ids.size(), 3u);
  ASSERT_EQ(first_order.size(), kItems);
  for (size_t i = 0; i < kItems; ++i) {
    EXPECT_EQ(first_order[i], i);
    EXPECT_EQ(second_calls[i], 1) << i;
    EXPECT_EQ(results[i], i * i + 7) << i;
  }
}

TEST(PipelineTest, AtMostCapacityPlusWorkersItemsAreAliveAtOnce) {
  // Each Work owns a counted token; slow workers make the first stage wait.
  constexpr size_t kWorkers = 2, kCapacity = 3;
  std::atomic<int> alive{0}, most{0};
  struct Token {
    explicit Token(std::atomic<int>* a) : alive(a) {}
    ~Token() { --*alive; }
    std::atomic<int>* alive;
  };
  RunPipeline<std::unique_ptr<Token>>(
      40, {kWorkers, kCapacity},
      [&](size_t, bool*) -> std::optional<std::unique_ptr<Token>> {
        const int now = ++alive;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        return std::make_unique<Token>(&alive);
      },
      [&](size_t, std::unique_ptr<Token>) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      });
  EXPECT_EQ(alive.load(), 0);
  // Queued (capacity) + held by workers + the one the first stage just made.
  EXPECT_LE(most.load(), static_cast<int>(kCapacity + kWorkers + 1));
  EXPECT_GE(most.load(), 2);
}

TEST(PipelineTest, FailedItemsSkipTheSecondStageAndAStopEndsTheRun) {
  std::vector<int> second_calls(10, 0);
  std::mutex mu;
  const size_t attempted = RunPipeline<int>(
      10, {2, 0},
      [&](size_t i, bool* stop) -> std::optional<int> {
        if (i == 6) *stop = true;             // e.g. the card refused the login
        if (i % 3 == 0) return std::nullopt;  // 0, 3, 6 fail in the first stage
        return static_cast<int>(i);
      },
      [&](size_t i, int work) {
        std::lock_guard<std::mutex> lock(mu);
        second_calls[i] += 1;
        EXPECT_EQ(work, static_cast<int>(i));
      });
  EXPECT_EQ(attempted, 7u);  // 0..6; 7, 8, 9 never tried
  EXPECT_EQ(second_calls, (std::vector<int>{0, 1, 1, 0, 1, 1, 0, 0, 0, 0}));
}

TEST(PipelineTest, ZeroItemsCallsNeitherStage) {
  bool called = false;
  EXPECT_EQ(RunPipeline<int>(
                0, {},
                [&](size_t, bool*) -> std::optional<int> {
                  called = true;
                  return 1;
                },
                [&](size_t, int) { called = true; }),
            0u);
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace keywarden::pki
