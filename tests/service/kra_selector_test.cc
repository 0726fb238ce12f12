#include "service/archival/kra_selector.h"

#include <atomic>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "service/errors.h"

namespace keywarden::service {
namespace {

using Picks = std::vector<size_t>;

TEST(KraSelectorTest, TwoOfFourAdvanceByTwoAndWrapAround) {
  KraSelector s(4, {0, 1, 2, 3}, 2, 1);  // seed's example: 2 of 4, start at 1
  EXPECT_EQ(s.Next().value(), (Picks{1, 2}));
  EXPECT_EQ(s.Next().value(), (Picks{3, 0}));
  EXPECT_EQ(s.Next().value(), (Picks{1, 2}));
}

TEST(KraSelectorTest, WindowsWrapWhenNDoesNotDivideTheList) {
  KraSelector s(3, {0, 1, 2}, 2, 0);
  EXPECT_EQ(s.Next().value(), (Picks{0, 1}));
  EXPECT_EQ(s.Next().value(), (Picks{2, 0}));
  EXPECT_EQ(s.Next().value(), (Picks{1, 2}));
  EXPECT_EQ(s.Next().value(), (Picks{0, 1}));
}

TEST(KraSelectorTest, OnlyValidKrasAreChosen) {
  // KRAs 1 and 3 of five failed validation (expired, revoked, ...).
  KraSelector s(5, {0, 2, 4}, 2, 0);
  std::set<size_t> seen;
  for (int i = 0; i < 30; ++i) {
    auto picks = s.Next();
    ASSERT_TRUE(picks.ok()) << picks.status();
    seen.insert(picks->begin(), picks->end());
  }
  EXPECT_EQ(seen, (std::set<size_t>{0, 2, 4}));
}

TEST(KraSelectorTest, FewerValidThanNeededIsRefusedWith8009400b) {
  KraSelector s(3, {2}, 2, 0);
  auto picks = s.Next();
  ASSERT_FALSE(picks.ok());
  EXPECT_EQ(HResultOf(picks.status()), 0x8009400bu);
  EXPECT_EQ(picks.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(picks.status().message().find("1 of 3"), absl::string_view::npos) << picks.status();
}

TEST(KraSelectorTest, NoKraConfiguredIsRefusedWith8009400a) {
  KraSelector s(0, {}, 1, 0);
  EXPECT_EQ(HResultOf(s.Next().status()), 0x8009400au);
  EXPECT_NE(s.Usable().message().find("not configured for key archival"), absl::string_view::npos);
}

TEST(KraSelectorTest, RandomStartStillCyclesEvenly) {
  KraSelector s = KraSelector::WithRandomStart(4, {0, 1, 2, 3}, 2);
  std::map<size_t, int> uses;
  for (int i = 0; i < 100; ++i) {
    auto p = s.Next();
    ASSERT_TRUE(p.ok());
    ASSERT_EQ(p->size(), 2u);
    EXPECT_NE((*p)[0], (*p)[1]);
    for (size_t k : *p) ++uses[k];
  }
  for (size_t k = 0; k < 4; ++k) EXPECT_EQ(uses[k], 50) << k;
}

TEST(KraSelectorTest, ConcurrentArchivalsGetEvenlySpreadDistinctWindows) {
  KraSelector s(4, {0, 1, 2, 3}, 2, 3);
  std::mutex mu;
  std::map<size_t, int> uses;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        auto p = s.Next();
        std::lock_guard<std::mutex> lock(mu);
        if (!p.ok()) {
          ++uses[99];  // counted as a failure below
          continue;
        }
        for (size_t k : p.value()) ++uses[k];
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(uses.count(99), 0u);
  for (size_t k = 0; k < 4; ++k) EXPECT_EQ(uses[k], 4000) << k;  // 16000 picks / 4
}

}  // namespace
}  // namespace keywarden::service
