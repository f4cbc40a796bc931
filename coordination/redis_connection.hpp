// One blocking connection to a Redis server: TCP with timeouts, TLS (OpenSSL) for rediss://,
// AUTH and SELECT at connect. The RESP framing is hiredis's (redisFormatCommandArgv to write
// commands, its redisReader to parse replies); the transport is ours because Debian 12's
// hiredis 0.14 has no TLS (docs/DECISIONS.md). Not thread-safe: one owner at a time.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "coordination/redis_url.hpp"

namespace accel {

// Connection, TLS, protocol or authentication failures, and error replies. The message names
// the server by RedisEndpoint::display() (never a password).
struct RedisError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct RedisReply {
  enum class Type { string, status, error, integer, nil, array };
  Type type = Type::nil;
  std::string text;  // string, status, error
  long long integer = 0;
  std::vector<RedisReply> elements;  // array

  bool is_nil() const { return type == Type::nil; }
};

class RedisConnection {
 public:
  using Clock = std::chrono::steady_clock;

  // Connects within `timeout` (per step: connect, TLS handshake, each reply), verifies a TLS
  // server against `ca_file` (empty: the system CAs) and its name, then AUTH and SELECT as the
  // endpoint says. Throws RedisError.
  RedisConnection(const RedisEndpoint& endpoint, const std::string& ca_file, std::chrono::milliseconds timeout);
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  // Sends a command and reads its reply within the timeout. An error reply throws RedisError;
  // so does a timeout, after which the connection is unusable.
  RedisReply command(const std::vector<std::string>& args);

  // For pub/sub: sends without reading, and reads the next pushed reply. read_next returns
  // nothing when `deadline` passes first; the connection stays usable.
  void send(const std::vector<std::string>& args);
  std::optional<RedisReply> read_next(Clock::time_point deadline);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace accel
