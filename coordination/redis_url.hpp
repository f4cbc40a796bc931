// Where the coordination Redis lives: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, or `rediss://`
// for TLS. Plain parsing (no sockets), so the configuration can check the URL at start.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace accel {

struct RedisEndpoint {
  bool tls = false;      // rediss://
  std::string host;      // a name or an address (IPv6 without brackets)
  uint16_t port = 6379;
  int database = 0;      // SELECT after connecting when not 0
  std::string username;  // Redis 6 ACL user; empty: AUTH with the password alone
  std::string password;  // empty: no AUTH

  // "redis://host:port/db" without credentials: what logs and errors may show.
  std::string display() const;
};

// Throws ConfigError naming the problem; the message never repeats the URL (it may hold a password).
RedisEndpoint parse_redis_url(std::string_view url);

}  // namespace accel
