// In-memory bookkeeping of blob use: pins (who is serving a blob right now) and pending touches
// (when it was last used, not yet written to the index). Both are on the request path, so they
// only take a mutex; nothing here touches the disk.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace accel::cache {

// Reference counts per digest, and the digests being removed (evicted or collected) right now.
class PinTable {
 public:
  // Waits while `digest` is being removed, so that a pin taken before the lookup is reliable.
  void acquire(const std::string& digest);
  void release(const std::string& digest);
  // Marks `digest` as being removed unless it is pinned (or already claimed). False if not.
  bool claim_for_removal(const std::string& digest);
  void finish_removal(const std::vector<std::string>& digests);
  bool pinned(const std::string& digest);

 private:
  std::mutex mutex_;
  std::condition_variable removal_finished_;
  std::unordered_map<std::string, int> pins_;
  std::set<std::string> removing_;
};

// Digests claimed for removal, released on destruction (even when removal throws).
class RemovalClaims {
 public:
  explicit RemovalClaims(PinTable& pins) : pins_(pins) {}
  ~RemovalClaims() { pins_.finish_removal(digests_); }
  RemovalClaims(const RemovalClaims&) = delete;
  RemovalClaims& operator=(const RemovalClaims&) = delete;

  bool claim(const std::string& digest);
  const std::vector<std::string>& digests() const { return digests_; }

 private:
  PinTable& pins_;
  std::vector<std::string> digests_;
};

// Last accesses waiting to be written to the index in one batch.
class PendingTouches {
 public:
  PendingTouches(size_t batch_size, int64_t max_age_ms, int64_t now_ms)
      : batch_size_(batch_size), max_age_ms_(max_age_ms), last_flush_ms_(now_ms) {}

  // Records an access; true when the batch is due to be written.
  bool add(const std::string& digest, int64_t now_ms);
  // Empties the batch and returns it.
  std::unordered_map<std::string, int64_t> take(int64_t now_ms);
  std::optional<int64_t> latest(const std::string& digest);
  void forget(const std::string& digest);

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, int64_t> access_ms_;
  const size_t batch_size_;
  const int64_t max_age_ms_;
  int64_t last_flush_ms_;
};

}  // namespace accel::cache
