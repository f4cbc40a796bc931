// Conversions coordinated across proxy replicas through Redis, so each image converts once
// behind a load balancer (docs/ARCHITECTURE.md, "How replicas coordinate").
//
// A conversion key (e.g. a variant's cache key: upstream/repo@digest|format|options; never client
// credentials) maps to Redis keys under the prefix `accel-proxy:`:
//   accel-proxy:lease:<key>  "<replica-id>:<nonce>", PX lease_ttl: who converts it now
//   accel-proxy:done:<key>   the result string, PX done_ttl: it has been converted
//   channel accel-proxy:done:<key>  PUBLISHed with the result when it is
//   channel accel-proxy:released:<key>  PUBLISHed when a lease is released without a result
//   channel accel-proxy:topic:<topic>    broadcasts to every replica (broadcast / listen)
//
// The calls block, with bounded time (io_timeout per Redis exchange): they are for conversion
// worker threads, not for the HTTP event loops. Without Redis (unreachable, refused, wrong
// password) every call answers `unavailable` at once and the caller converts alone; the
// coordinator retries with backoff in the background, logs one warning when Redis goes and one
// line when it is back, and keeps accel_coordination_redis_up in /metrics.
//
// Typical use by a conversion worker:
//   auto got = coordinator.try_acquire(key);
//   if (got.outcome == acquired) { convert; coordinator.announce_done(key, result); }  // then drop got.lease
//   else if (got.outcome == held_elsewhere) { auto w = coordinator.wait(key, limit);
//     done: use w.result; released_without_done: try_acquire again (the holder died); ... }
//   else if (got.outcome == done) use got.result;
//   else (unavailable) convert alone.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "proxy/config.hpp"
#include "proxy/metrics.hpp"

namespace accel {

struct CoordinationSettings {
  std::string redis_url;  // redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss://...
  std::string ca_file;    // rediss://: the CA to trust; empty: the system's CAs
  Duration lease_ttl{std::chrono::seconds(30)};  // a dead holder's lease lasts at most this long
  Duration done_ttl{std::chrono::hours(1)};      // how long a result is remembered
  Duration io_timeout{std::chrono::seconds(2)};  // connect, TLS handshake, and each reply
  std::string replica_id;                        // in lease values, for operators; empty: hostname:pid

  // From `coordination:` in the configuration (which has checked the URL).
  static CoordinationSettings from_config(const CoordinationConfig& config);
};

class Coordinator;

// This replica's right to convert one key. While held, a background thread renews it every
// lease_ttl/3 (only if it is still ours: compare-and-PEXPIRE). Destroying it releases it
// (compare-and-DEL); call announce_done first, so no waiter mistakes the release for a crash.
// Movable; must not outlive its Coordinator.
class Lease {
 public:
  Lease() = default;
  Lease(Lease&& other) noexcept;
  Lease& operator=(Lease&& other) noexcept;
  ~Lease();

  bool held() const { return state_ != nullptr; }
  const std::string& key() const;
  // Renewal found the lease gone or someone else's, or could not reach Redis for a whole
  // lease_ttl: another replica may be converting the same key. (Converting on is harmless,
  // conversions are deterministic, only wasteful.)
  bool lost() const;
  // Stops renewing without releasing: what a replica that crashed leaves behind (tests).
  void abandon_for_test();

  struct State;

 private:
  friend class Coordinator;
  Lease(Coordinator* owner, std::shared_ptr<State> state) : owner_(owner), state_(std::move(state)) {}
  void release();

  Coordinator* owner_ = nullptr;
  std::shared_ptr<State> state_;
};

struct AcquireResult {
  enum class Outcome {
    acquired,        // this replica converts; keep `lease` until done
    held_elsewhere,  // another replica converts: wait()
    done,            // converted already: `result` is what its converter announced
    unavailable,     // Redis unreachable: convert alone
  };
  Outcome outcome = Outcome::unavailable;
  Lease lease;         // acquired
  std::string result;  // done
};

struct WaitResult {
  enum class Outcome {
    done,                   // `result` is what the converter announced
    released_without_done,  // the lease expired or was released with no result: try_acquire to take over
    timeout,
    unavailable,            // Redis unreachable (before or during the wait): convert alone
  };
  Outcome outcome = Outcome::unavailable;
  std::string result;
};

// Thread-safe; one per process. Connects (bounded by io_timeout) when constructed.
class Coordinator {
 public:
  Coordinator(CoordinationSettings settings, Metrics& metrics);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // nullptr when the configuration names no Redis: conversions then run as before.
  static std::unique_ptr<Coordinator> from_config(const Config& config, Metrics& metrics);

  // Atomically: the result if announced, else the lease if free (SET NX PX), else held_elsewhere.
  AcquireResult try_acquire(const std::string& key);

  // Records the result for done_ttl and wakes every waiter (SET + PUBLISH in one script).
  // False when Redis is unreachable (waiters then see the lease end without a result).
  bool announce_done(const std::string& key, const std::string& result);

  // Blocks until the key is done, its lease ends without a result, `timeout` passes, or Redis
  // is lost. Subscribes on a connection of its own first, then checks the done key (no lost
  // wakeup), wakes when the holder releases, and looks at the lease at most every lease_ttl/2 to
  // notice a dead holder. Talks only to Redis.
  WaitResult wait(const std::string& key, Duration timeout);

  // Tells every replica listening on `topic` (PUBLISH on accel-proxy:topic:<topic>), this one
  // included. False when Redis is unreachable: Redis keeps no messages, so a replica that is not
  // subscribed at that moment never hears it (callers bound staleness some other way).
  bool broadcast(const std::string& topic, const std::string& message);

  // Calls `on_message` for every message broadcast on `topic` from now until the Coordinator is
  // destroyed, on a thread of its own that holds a subscriber connection and subscribes again,
  // with backoff, when Redis comes back. Call before the replica serves, and only once a topic.
  void listen(const std::string& topic, std::function<void(const std::string&)> on_message);

  // Last known reachability (the background thread retries with backoff while it is false).
  bool available() const;
  // Why Redis was last unreachable (e.g. a refused password); empty if it never was.
  std::string last_error() const;

  const std::string& replica_id() const;

 private:
  friend class Lease;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace accel
