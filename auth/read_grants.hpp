// Which clients the upstream lets read which repository, remembered for a short time so that
// serving cached variants does not cost an upstream round trip per request. Only positive
// answers are kept, keyed by a hash of the client's Authorization header (no credential is
// stored), the upstream and the repository. An anonymous client has its own key.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

namespace accel {

class ReadGrants {
 public:
  explicit ReadGrants(std::chrono::milliseconds ttl) : ttl_(ttl) {}

  bool allowed(std::string_view authorization, std::string_view upstream, std::string_view repository);
  void grant(std::string_view authorization, std::string_view upstream, std::string_view repository);

  static std::string key(std::string_view authorization, std::string_view upstream, std::string_view repository);

 private:
  using Clock = std::chrono::steady_clock;
  std::chrono::milliseconds ttl_;
  std::mutex mutex_;
  std::map<std::string, Clock::time_point> expiry_;
};

}  // namespace accel
