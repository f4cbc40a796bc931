// The coordination module against a real redis-server (tests/unit/redis_server.hpp). Each
// Coordinator stands for one proxy replica.
#include <catch2/catch.hpp>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <future>
#include <thread>

#include "redis_server.hpp"
#include "coordination/coordination.hpp"
#include "coordination/redis_connection.hpp"

using namespace accel;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Acquire = AcquireResult::Outcome;
using Wait = WaitResult::Outcome;

namespace {

CoordinationSettings settings_for(const std::string& url, Duration ttl = 1s) {
  CoordinationSettings s;
  s.redis_url = url;
  s.lease_ttl = ttl;
  s.io_timeout = 1s;
  return s;
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Polls `condition` up to `limit`; true as soon as it holds.
template <class F>
bool eventually(F condition, Duration limit) {
  auto deadline = Clock::now() + limit;
  while (!condition()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

// Captures the default logger's lines for the test's lifetime.
class LogCapture {
 public:
  LogCapture() : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(1000)), previous_(spdlog::default_logger()) {
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink_));
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  size_t count(const std::string& fragment) const {
    size_t n = 0;
    for (const auto& line : sink_->last_formatted())
      if (line.find(fragment) != std::string::npos) {
        UNSCOPED_INFO(line);
        ++n;
      }
    return n;
  }

 private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
  std::shared_ptr<spdlog::logger> previous_;
};

}  // namespace

TEST_CASE("exactly one of many concurrent replicas acquires a conversion's lease", "[redis]") {
  RedisServer redis;
  constexpr int kReplicas = 8;
  Metrics metrics;
  std::vector<std::unique_ptr<Coordinator>> replicas;
  for (int i = 0; i < kReplicas; ++i) replicas.push_back(std::make_unique<Coordinator>(settings_for(redis.url()), metrics));
  std::barrier start(kReplicas);
  std::atomic<int> acquired = 0, held_elsewhere = 0;
  std::vector<AcquireResult> results(kReplicas);
  std::vector<std::thread> threads;
  for (int i = 0; i < kReplicas; ++i)
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      results[i] = replicas[i]->try_acquire("harbor/library/app@sha256:aa|nydus|");
      if (results[i].outcome == Acquire::acquired) ++acquired;
      if (results[i].outcome == Acquire::held_elsewhere) ++held_elsewhere;
    });
  for (auto& t : threads) t.join();
  CHECK(acquired == 1);
  CHECK(held_elsewhere == kReplicas - 1);
  std::string text = metrics.render();
  CHECK_THAT(text, Catch::Contains("accel_coordination_redis_up 1\n"));
  CHECK_THAT(text, Catch::Contains("accel_coordination_leases_acquired_total 1\n"));
  CHECK_THAT(text, Catch::Contains("accel_coordination_leases_held_elsewhere_total 7\n"));
  results.clear();  // leases go before their coordinators
}

TEST_CASE("a renewed lease outlives several TTLs; released, the key is free at once", "[redis]") {
  RedisServer redis;
  Metrics metrics;
  Coordinator holder(settings_for(redis.url(), 600ms), metrics), other(settings_for(redis.url(), 600ms), metrics);
  auto got = holder.try_acquire("key");
  REQUIRE(got.outcome == Acquire::acquired);
  CHECK(got.lease.key() == "key");
  std::this_thread::sleep_for(2s);  // more than three TTLs
  CHECK(other.try_acquire("key").outcome == Acquire::held_elsewhere);
  CHECK_FALSE(got.lease.lost());
  got.lease = Lease();  // released
  CHECK(other.try_acquire("key").outcome == Acquire::acquired);
}

TEST_CASE("a holder that dies without releasing: a waiter learns it after the lease expires, not before, and takes over",
          "[redis]") {
  RedisServer redis;
  Metrics metrics;
  const Duration ttl = 1s;
  Coordinator crashed(settings_for(redis.url(), ttl), metrics), survivor(settings_for(redis.url(), ttl), metrics);
  auto got = crashed.try_acquire("key");
  auto acquired_at = Clock::now();
  REQUIRE(got.outcome == Acquire::acquired);
  got.lease.abandon_for_test();  // no more renewals, no release

  CHECK(survivor.try_acquire("key").outcome == Acquire::held_elsewhere);
  auto waited = survivor.wait("key", 10s);
  double elapsed = seconds_since(acquired_at);
  CHECK(waited.outcome == Wait::released_without_done);
  CHECK(elapsed >= 0.95);  // not before the lease's expiry
  CHECK(elapsed < 2.5);    // noticed within lease_ttl/2 (plus slack)
  CHECK(survivor.try_acquire("key").outcome == Acquire::acquired);
  CHECK_THAT(metrics.render(), Catch::Contains("accel_coordination_takeovers_total 1\n"));
}

TEST_CASE("a lease released without a result wakes its waiter at once, not at its next lease check", "[redis]") {
  // What a lock (write-back's fallback tag) needs: the next writer goes as soon as the last is done.
  RedisServer redis;
  Metrics metrics;
  const Duration ttl = 20s;  // a lease check every 10 s: far later than the wake-up must come
  Coordinator holder(settings_for(redis.url(), ttl), metrics), waiter(settings_for(redis.url(), ttl), metrics);
  auto got = holder.try_acquire("key");
  REQUIRE(got.outcome == Acquire::acquired);
  auto waiting = std::async(std::launch::async, [&] { return waiter.wait("key", 15s); });
  std::this_thread::sleep_for(300ms);  // the waiter is subscribed
  const auto released_at = Clock::now();
  got.lease = Lease();
  auto waited = waiting.get();
  CHECK(waited.outcome == Wait::released_without_done);
  CHECK(seconds_since(released_at) < 2.0);
  CHECK(waiter.try_acquire("key").outcome == Acquire::acquired);
}

TEST_CASE("a release followed at once by another replica's acquire: the waiter keeps waiting for that one", "[redis]") {
  RedisServer redis;
  Metrics metrics;
  const Duration ttl = 20s;
  Coordinator first(settings_for(redis.url(), ttl), metrics), second(settings_for(redis.url(), ttl), metrics),
      waiter(settings_for(redis.url(), ttl), metrics);
  auto got = first.try_acquire("key");
  REQUIRE(got.outcome == Acquire::acquired);
  auto waiting = std::async(std::launch::async, [&] { return waiter.wait("key", 3s); });
  std::this_thread::sleep_for(300ms);
  // Taken again before the waiter looks: (usually) still held when the waiter checks.
  auto second_got = second.try_acquire("key");
  CHECK(second_got.outcome == Acquire::held_elsewhere);
  got.lease = Lease();
  second_got = second.try_acquire("key");
  REQUIRE(second_got.outcome == Acquire::acquired);
  auto waited = waiting.get();
  // Either the waiter looked between release and re-acquire (free), or after (held: it waits on
  // to its timeout); never "done", which nobody announced.
  CHECK(waited.outcome != Wait::done);
  if (waited.outcome == Wait::released_without_done) CHECK(waiter.try_acquire("key").outcome == Acquire::held_elsewhere);
}

TEST_CASE("announce_done wakes every waiter at once; later replicas see the result", "[redis]") {
  RedisServer redis;
  Metrics metrics;
  const Duration ttl = 4s;
  Coordinator converter(settings_for(redis.url(), ttl), metrics), waiter(settings_for(redis.url(), ttl), metrics);
  auto got = converter.try_acquire("key");
  REQUIRE(got.outcome == Acquire::acquired);

  std::vector<std::future<std::pair<WaitResult, Clock::time_point>>> waits;
  for (int i = 0; i < 3; ++i)
    waits.push_back(std::async(std::launch::async, [&] {
      auto r = waiter.wait("key", 10s);
      return std::make_pair(r, Clock::now());
    }));
  std::this_thread::sleep_for(300ms);  // the waiters are subscribed
  auto announced_at = Clock::now();
  REQUIRE(converter.announce_done("key", "sha256:converted"));
  for (auto& w : waits) {
    auto [result, woke_at] = w.get();
    CHECK(result.outcome == Wait::done);
    CHECK(result.result == "sha256:converted");
    CHECK(woke_at - announced_at < ttl / 8);  // pushed, not found by the lease check
  }
  got.lease = Lease();

  Coordinator late(settings_for(redis.url(), ttl), metrics);
  auto again = late.try_acquire("key");
  CHECK(again.outcome == Acquire::done);
  CHECK(again.result == "sha256:converted");
  auto wait_after = late.wait("key", 5s);  // announced before the wait began: not missed
  CHECK(wait_after.outcome == Wait::done);
  CHECK(wait_after.result == "sha256:converted");
  CHECK(late.wait("never-started", 300ms).outcome == Wait::released_without_done);
}

TEST_CASE("a wait ends with timeout while the holder keeps converting", "[redis]") {
  RedisServer redis;
  Metrics metrics;
  Coordinator converter(settings_for(redis.url(), 400ms), metrics), waiter(settings_for(redis.url(), 400ms), metrics);
  auto got = converter.try_acquire("key");
  REQUIRE(got.outcome == Acquire::acquired);
  auto start = Clock::now();
  CHECK(waiter.wait("key", 1200ms).outcome == Wait::timeout);  // several lease checks found it held
  CHECK(seconds_since(start) >= 1.1);
  CHECK(seconds_since(start) < 2.5);
}

TEST_CASE("Redis stopped mid-wait: calls answer unavailable promptly, the log says so once, and Redis is used again once back",
          "[redis]") {
  LogCapture log;
  RedisServer redis;
  Metrics metrics;
  const Duration ttl = 1s;
  Coordinator holder(settings_for(redis.url(), ttl), metrics), waiter(settings_for(redis.url(), ttl), metrics);
  auto got = holder.try_acquire("key");
  REQUIRE(got.outcome == Acquire::acquired);
  auto waiting = std::async(std::launch::async, [&] { return waiter.wait("key", 30s); });
  std::this_thread::sleep_for(300ms);

  redis.stop();
  auto stopped_at = Clock::now();
  REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
  CHECK(waiting.get().outcome == Wait::unavailable);
  CHECK(seconds_since(stopped_at) < 3);
  CHECK_FALSE(waiter.available());
  for (int i = 0; i < 5; ++i) {  // each call answers at once: the backoff, not a connect per call
    auto start = Clock::now();
    CHECK(waiter.try_acquire("other").outcome == Acquire::unavailable);
    CHECK(waiter.wait("other", 5s).outcome == Wait::unavailable);
    CHECK(seconds_since(start) < 2.5);
  }
  CHECK_FALSE(waiter.announce_done("other", "x"));
  CHECK(eventually([&] { return got.lease.lost(); }, 3s));  // not renewable for a whole ttl
  CHECK_THAT(metrics.render(), Catch::Contains("accel_coordination_redis_up 0\n"));
  CHECK(log.count("Redis unreachable") == 2);  // once per replica, not once per call

  redis.start();
  CHECK(eventually([&] { return waiter.available() && holder.available(); }, 10s));
  CHECK(waiter.try_acquire("other").outcome == Acquire::acquired);
  CHECK(log.count("reachable again") == 2);
  CHECK_THAT(metrics.render(), Catch::Contains("accel_coordination_redis_up 1\n"));
  CHECK_THAT(metrics.render(), Catch::Contains("accel_coordination_leases_lost_total 1\n"));
}

TEST_CASE("a Redis that stops answering: calls give up within the I/O timeout instead of hanging", "[redis]") {
  RedisServer redis;
  Metrics metrics;
  Coordinator holder(settings_for(redis.url(), 10s), metrics), waiter(settings_for(redis.url(), 2s), metrics);
  auto got = holder.try_acquire("key");
  REQUIRE(got.outcome == Acquire::acquired);
  auto waiting = std::async(std::launch::async, [&] { return waiter.wait("key", 30s); });
  std::this_thread::sleep_for(200ms);

  redis.freeze();
  auto frozen_at = Clock::now();
  CHECK(holder.try_acquire("other").outcome == Acquire::unavailable);
  CHECK(seconds_since(frozen_at) < 4);  // one io_timeout, and one more on a fresh connection
  CHECK_THAT(holder.last_error(), Catch::Contains("no reply"));
  // The waiter notices at its next lease check (lease_ttl/2) plus one io_timeout.
  REQUIRE(waiting.wait_for(6s) == std::future_status::ready);
  CHECK(waiting.get().outcome == Wait::unavailable);
  redis.resume();
  CHECK(eventually([&] { return holder.available(); }, 10s));
}

TEST_CASE("no Redis at all: the replica works alone without waiting on it", "[redis]") {
  Metrics metrics;
  uint16_t port;
  {
    RedisServer gone;  // a port where nothing listens once it stops
    port = gone.port();
  }
  auto start = Clock::now();
  Coordinator alone(settings_for("redis://127.0.0.1:" + std::to_string(port)), metrics);
  CHECK_FALSE(alone.available());
  CHECK_THAT(alone.last_error(), Catch::Contains("cannot connect"));
  CHECK(alone.try_acquire("key").outcome == Acquire::unavailable);
  CHECK(seconds_since(start) < 1);
  CHECK_THAT(metrics.render(), Catch::Contains("accel_coordination_unavailable_total 1\n"));

  Config config;
  CHECK(Coordinator::from_config(config, metrics) == nullptr);  // not configured: nothing changes
}

TEST_CASE("rediss:// verifies the server against the given CA; another CA is refused", "[redis]") {
  TempDir certs("accel-redis-tls");
  make_test_certificates(certs.path());
  RedisServerOptions tls_only;
  tls_only.tls_cert = certs.path() + "/server.pem";
  tls_only.tls_key = certs.path() + "/server.key";
  RedisServer redis(tls_only);
  Metrics metrics;

  auto trusted = settings_for(redis.url());
  trusted.ca_file = certs.path() + "/ca.pem";
  Coordinator ok(trusted, metrics);
  CHECK(ok.available());
  auto got = ok.try_acquire("key");
  CHECK(got.outcome == Acquire::acquired);
  auto waited = ok.wait("key", 200ms);  // SUBSCRIBE over TLS too
  CHECK(waited.outcome == Wait::timeout);

  auto untrusted = trusted;
  untrusted.ca_file = certs.path() + "/other-ca.pem";
  Coordinator refused(untrusted, metrics);
  CHECK_FALSE(refused.available());
  CHECK_THAT(refused.last_error(), Catch::Contains("certificate is not trusted"));
  CHECK(refused.try_acquire("key").outcome == Acquire::unavailable);

  auto plain = settings_for("redis://127.0.0.1:" + std::to_string(redis.port()));
  Coordinator no_tls(plain, metrics);
  CHECK_FALSE(no_tls.available());
}

TEST_CASE("a password or an ACL user: the right one works, a wrong one is a clear error", "[redis]") {
  RedisServerOptions with_auth;
  with_auth.password = "s3cret";
  with_auth.acl_user = "proxy pr0xy";
  RedisServer redis(with_auth);
  Metrics metrics;
  Coordinator with_password(settings_for(redis.url(":s3cret@")), metrics);
  CHECK(with_password.available());
  auto held = with_password.try_acquire("key");
  CHECK(held.outcome == Acquire::acquired);
  Coordinator acl_user(settings_for(redis.url("proxy:pr0xy@")), metrics);
  CHECK(acl_user.available());
  CHECK(acl_user.try_acquire("key").outcome == Acquire::held_elsewhere);

  Coordinator wrong(settings_for(redis.url(":guess@")), metrics);
  CHECK_FALSE(wrong.available());
  CHECK_THAT(wrong.last_error(), Catch::Contains("AUTH: WRONGPASS"));
  CHECK(wrong.last_error().find("guess") == std::string::npos);
  Coordinator none(settings_for(redis.url()), metrics);
  CHECK_FALSE(none.available());
  CHECK_THAT(none.last_error(), Catch::Contains("NOAUTH"));
}

TEST_CASE("keys live under accel-proxy: in the URL's database", "[redis]") {
  RedisServer redis;
  Metrics metrics;
  Coordinator replica(settings_for(redis.url("", "/3")), metrics);
  auto got = replica.try_acquire("up/repo@sha256:1|estargz|");
  REQUIRE(got.outcome == Acquire::acquired);
  REQUIRE(replica.announce_done("up/repo@sha256:1|estargz|", "result"));

  RedisConnection look(parse_redis_url(redis.url("", "/3")), "", 1s);
  auto lease = look.command({"GET", "accel-proxy:lease:up/repo@sha256:1|estargz|"});
  CHECK_THAT(lease.text, Catch::StartsWith(replica.replica_id() + ":"));
  CHECK(look.command({"GET", "accel-proxy:done:up/repo@sha256:1|estargz|"}).text == "result");
  auto ttl = look.command({"PTTL", "accel-proxy:done:up/repo@sha256:1|estargz|"}).integer;
  CHECK(ttl > 3500 * 1000);
  CHECK(ttl <= 3600 * 1000);
  RedisConnection db0(parse_redis_url(redis.url()), "", 1s);
  CHECK(db0.command({"DBSIZE"}).integer == 0);
}

TEST_CASE("broadcasts reach every listening replica, the sender too; a listener subscribes again after Redis restarts",
          "[redis]") {
  RedisServer redis;
  Metrics metrics;
  // Declared before the coordinators: their listener threads use these until they are destroyed.
  std::mutex mutex;
  std::vector<std::string> heard_by_sender, heard_by_receiver, heard_elsewhere;
  Coordinator sender(settings_for(redis.url()), metrics), receiver(settings_for(redis.url()), metrics);
  auto collect = [&](std::vector<std::string>& into) {
    return [&mutex, &into](const std::string& message) {
      std::lock_guard lock(mutex);
      into.push_back(message);
    };
  };
  sender.listen("tags", collect(heard_by_sender));
  receiver.listen("tags", collect(heard_by_receiver));
  receiver.listen("other-topic", collect(heard_elsewhere));
  auto count = [&](const std::vector<std::string>& v) {
    std::lock_guard lock(mutex);
    return v.size();
  };
  auto heard = [&](const std::vector<std::string>& v, const std::string& message) {
    std::lock_guard lock(mutex);
    return std::find(v.begin(), v.end(), message) != v.end();
  };
  // Subscribing takes a moment: repeat the first message until it is heard (Redis keeps none).
  REQUIRE(eventually([&] { sender.broadcast("tags", "warm-up"); return count(heard_by_receiver) > 0 && count(heard_by_sender) > 0; }, 5s));
  REQUIRE(sender.broadcast("tags", "one"));
  CHECK(eventually([&] { return heard(heard_by_receiver, "one") && heard(heard_by_sender, "one"); }, 3s));
  CHECK(count(heard_elsewhere) == 0);

  redis.stop();
  CHECK(eventually([&] { return !sender.broadcast("tags", "lost"); }, 5s));  // nothing to send to: false
  redis.start();
  CHECK(eventually([&] { sender.broadcast("tags", "two"); return heard(heard_by_receiver, "two"); }, 15s));
  CHECK_FALSE(heard(heard_by_receiver, "lost"));
}
