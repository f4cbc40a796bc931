// WWW-Authenticate challenges (RFC 9110 §11.6.1) as registries send them, e.g.
//   Bearer realm="https://harbor/service/token",service="harbor-registry",scope="repository:a:pull"
// The proxy rewrites the realm of Bearer challenges when clients cannot reach the upstream's
// token service, and remembers the original realm to forward token requests to it.
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace accel {

struct Challenge {
  std::string scheme;  // "Bearer", "Basic"
  std::vector<std::pair<std::string, std::string>> params;

  std::optional<std::string> param(std::string_view name) const;
};

// Parses the first challenge of a header value. Returns nullopt on malformed input.
std::optional<Challenge> parse_challenge(std::string_view header);
std::string format_challenge(const Challenge& challenge);

// For a Bearer challenge: a copy with `realm` replaced, and the original realm. Other schemes
// (Basic) come back unchanged with no realm.
struct RealmRewrite {
  std::string header;
  std::optional<std::string> original_realm;
};
RealmRewrite rewrite_bearer_realm(std::string_view header, std::string_view new_realm);

// The token service realm learned per upstream from its challenges (thread-safe).
class TokenRealms {
 public:
  void remember(const std::string& upstream, const std::string& realm);
  std::optional<std::string> lookup(const std::string& upstream) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, std::string> realms_;
};

}  // namespace accel
