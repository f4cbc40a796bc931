#include "cache/access_tracking.hpp"

#include <algorithm>
#include <utility>

namespace accel::cache {

// --- PinTable ---------------------------------------------------------------------------------

void PinTable::acquire(const std::string& digest) {
  std::unique_lock lock(mutex_);
  removal_finished_.wait(lock, [&] { return !removing_.contains(digest); });
  ++pins_[digest];
}

void PinTable::release(const std::string& digest) {
  std::lock_guard lock(mutex_);
  auto it = pins_.find(digest);
  if (it != pins_.end() && --it->second == 0) pins_.erase(it);
}

bool PinTable::claim_for_removal(const std::string& digest) {
  std::lock_guard lock(mutex_);
  if (pins_.contains(digest)) return false;
  return removing_.insert(digest).second;
}

void PinTable::finish_removal(const std::vector<std::string>& digests) {
  if (digests.empty()) return;
  {
    std::lock_guard lock(mutex_);
    for (const auto& digest : digests) removing_.erase(digest);
  }
  removal_finished_.notify_all();
}

bool PinTable::pinned(const std::string& digest) {
  std::lock_guard lock(mutex_);
  return pins_.contains(digest);
}

bool RemovalClaims::claim(const std::string& digest) {
  if (!pins_.claim_for_removal(digest)) return false;
  digests_.push_back(digest);
  return true;
}

// --- PendingTouches ---------------------------------------------------------------------------

bool PendingTouches::add(const std::string& digest, int64_t now_ms) {
  std::lock_guard lock(mutex_);
  int64_t& access = access_ms_[digest];
  access = std::max(access, now_ms);
  return access_ms_.size() >= batch_size_ || now_ms - last_flush_ms_ >= max_age_ms_;
}

std::unordered_map<std::string, int64_t> PendingTouches::take(int64_t now_ms) {
  std::lock_guard lock(mutex_);
  last_flush_ms_ = now_ms;
  return std::exchange(access_ms_, {});
}

std::optional<int64_t> PendingTouches::latest(const std::string& digest) {
  std::lock_guard lock(mutex_);
  auto it = access_ms_.find(digest);
  if (it == access_ms_.end()) return std::nullopt;
  return it->second;
}

void PendingTouches::forget(const std::string& digest) {
  std::lock_guard lock(mutex_);
  access_ms_.erase(digest);
}

}  // namespace accel::cache
