// A two-stage pipeline for batch key recovery: one thread owns the KRA
// card (one session, one login; PKCS#11 sessions are not shared between
// threads) and decrypts key after key, while a pool of workers builds and
// writes the PFX files (PBKDF2 dominates, and parallelises perfectly). A
// bounded queue between them keeps at most `capacity` recovered keys in
// memory at once.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "pki/cores.h"

namespace keywarden::pki {

struct PipelineOptions {
  size_t workers = 0;   // 0: UsableCores() (pki/cores.h)
  size_t capacity = 0;  // items waiting for a worker; 0: 2 * workers
};

// Calls `first(i)` for i = 0, 1, ... count - 1 in order on the calling
// thread. It returns a Work for the workers, std::nullopt when item i ends
// there (it failed; the caller records why), or sets `*stop` to end the run
// after item i (e.g. the card refused the login: nothing more is tried).
// Each Work is handed to `second(i, work)` on one of the workers, in any
// order and concurrently with other items and with `first`; `second` must
// only touch state of item i (or synchronise itself) and must not throw.
// Returns how many items `first` was called for; every Work it produced has
// been through `second` (and destroyed, on the worker) before this returns.
template <typename Work>
size_t RunPipeline(size_t count, const PipelineOptions& options,
                   const std::function<std::optional<Work>(size_t, bool* stop)>& first,
                   const std::function<void(size_t, Work)>& second) {
  size_t workers = options.workers;
  if (workers == 0) workers = UsableCores();
  const size_t capacity = options.capacity > 0 ? options.capacity : 2 * workers;

  std::mutex mu;
  std::condition_variable not_empty, not_full;
  std::deque<std::pair<size_t, Work>> queue;
  bool closed = false;

  std::vector<std::thread> pool;
  pool.reserve(workers);
  for (size_t w = 0; w < workers; ++w) {
    pool.emplace_back([&] {
      for (;;) {
        std::optional<std::pair<size_t, Work>> item;
        {
          std::unique_lock<std::mutex> lock(mu);
          not_empty.wait(lock, [&] { return closed || !queue.empty(); });
          if (queue.empty()) return;  // closed and drained
          item.emplace(std::move(queue.front()));
          queue.pop_front();
        }
        not_full.notify_one();
        second(item->first, std::move(item->second));
      }
    });
  }

  size_t attempted = 0;
  bool stop = false;
  for (size_t i = 0; i < count && !stop; ++i) {
    ++attempted;
    std::optional<Work> work = first(i, &stop);
    if (!work) continue;
    {
      std::unique_lock<std::mutex> lock(mu);
      not_full.wait(lock, [&] { return queue.size() < capacity; });
      queue.emplace_back(i, std::move(*work));
    }
    work.reset();
    not_empty.notify_one();
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    closed = true;
  }
  not_empty.notify_all();
  for (std::thread& t : pool) t.join();
  return attempted;
}

}  // namespace keywarden::pki
