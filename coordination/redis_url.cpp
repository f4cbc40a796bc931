#include "coordination/redis_url.hpp"

#include <boost/url/parse.hpp>
#include <charconv>

#include "proxy/config.hpp"

namespace accel {
namespace {

[[noreturn]] void fail(const std::string& problem) { throw ConfigError("redis URL: " + problem); }

int parse_database(std::string_view path) {
  if (path.empty() || path == "/") return 0;
  std::string_view digits = path.substr(1);
  int db = -1;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), db);
  if (path.front() != '/' || ec != std::errc() || end != digits.data() + digits.size() || db < 0)
    fail("the path must be a database number (/0, /1, ...)");
  return db;
}

}  // namespace

std::string RedisEndpoint::display() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return std::string(tls ? "rediss://" : "redis://") + h + ":" + std::to_string(port) + "/" + std::to_string(database);
}

RedisEndpoint parse_redis_url(std::string_view text) {
  auto url = boost::urls::parse_absolute_uri(text);
  if (!url) fail("not a valid URL (expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB])");
  RedisEndpoint e;
  if (url->scheme() == "rediss") e.tls = true;
  else if (url->scheme() != "redis") fail("the scheme must be redis:// or rediss://");
  e.host = std::string(url->host_address());
  if (e.host.empty()) fail("no host");
  if (url->has_port()) {
    std::string_view digits = url->port();
    unsigned port = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (ec != std::errc() || end != digits.data() + digits.size() || port == 0 || port > 65535) fail("invalid port");
    e.port = static_cast<uint16_t>(port);
  }
  e.database = parse_database(url->encoded_path());
  if (url->has_query() || url->has_fragment()) fail("query and fragment are not supported");
  if (url->has_userinfo()) {
    e.username = std::string(url->user());
    e.password = std::string(url->password());
    if (!url->has_password()) fail("a user name needs a password (redis://USER:PASSWORD@HOST)");
    if (e.password.empty()) fail("empty password");
  }
  return e;
}

}  // namespace accel
