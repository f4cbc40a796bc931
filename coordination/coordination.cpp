#include "coordination/coordination.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <openssl/rand.h>
#include <optional>
#include <spdlog/spdlog.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "coordination/redis_connection.hpp"

namespace accel {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr std::string_view kPrefix = "accel-proxy:";

std::string lease_key(const std::string& key) { return std::string(kPrefix) + "lease:" + key; }
std::string done_key(const std::string& key) { return std::string(kPrefix) + "done:" + key; }
std::string done_channel(const std::string& key) { return std::string(kPrefix) + "done:" + key; }
// Released without a result: waiters look again at once instead of at their next lease check.
std::string released_channel(const std::string& key) { return std::string(kPrefix) + "released:" + key; }
std::string topic_channel(const std::string& topic) { return std::string(kPrefix) + "topic:" + topic; }

// Each script runs atomically in Redis. KEYS[1] is the lease, KEYS[2] the done key.
// try_acquire: the result if there is one, else the lease if free (or already ours: a retried
// SET whose first reply was lost), else who holds it.
constexpr const char* kAcquireScript = R"(
local done = redis.call('GET', KEYS[2])
if done then return {'done', done} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'acquired'} end
if redis.call('GET', KEYS[1]) == ARGV[1] then return {'acquired'} end
return {'held'})";
// Renewal and release touch the lease only while it is still this holder's.
constexpr const char* kRenewScript = R"(
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0)";
// ARGV[2]: the released channel, told after the DEL.
constexpr const char* kReleaseScript = R"(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0)";
// KEYS[1] the done key; ARGV[1] the channel, ARGV[2] the result, ARGV[3] its lifetime in ms.
constexpr const char* kAnnounceScript = R"(
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return redis.call('PUBLISH', ARGV[1], ARGV[2]))";
// What a waiter needs to know, read at one instant: done, still held, or free.
constexpr const char* kStatusScript = R"(
local done = redis.call('GET', KEYS[2])
if done then return {'done', done} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'held'} end
return {'free'})";

std::string random_hex(size_t bytes) {
  std::vector<unsigned char> raw(bytes);
  if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1) throw std::runtime_error("RAND_bytes failed");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : raw) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

std::string default_replica_id() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown");
  return std::string(host) + ":" + std::to_string(::getpid());
}

std::string millis(Duration d) { return std::to_string(d.count()); }

// The first element of a script's array reply ("done", "acquired", ...), and the second.
std::string word(const RedisReply& r, size_t i) {
  return r.type == RedisReply::Type::array && r.elements.size() > i ? r.elements[i].text : std::string();
}

constexpr std::string_view kRedisUp = "accel_coordination_redis_up";
constexpr std::string_view kAcquired = "accel_coordination_leases_acquired_total";
constexpr std::string_view kHeldElsewhere = "accel_coordination_leases_held_elsewhere_total";
constexpr std::string_view kTakeovers = "accel_coordination_takeovers_total";
constexpr std::string_view kUnavailable = "accel_coordination_unavailable_total";
constexpr std::string_view kLost = "accel_coordination_leases_lost_total";

}  // namespace

struct Lease::State {
  std::string key;
  std::string token;  // the lease's value: replica id and a nonce
  std::atomic<bool> lost{false};
  std::atomic<bool> renewing{true};
  Clock::time_point renewed_at;  // only the renewal thread touches it after registration
};

// Owns the one command connection (behind a mutex), reachability and its backoff, and the
// thread that renews leases and, while Redis is away, retries it.
struct Coordinator::Impl {
  CoordinationSettings settings;
  RedisEndpoint endpoint;
  Metrics& metrics;

  // The command connection and what we know of reachability.
  std::mutex connection_mutex;
  std::unique_ptr<RedisConnection> connection;
  Clock::time_point next_attempt{};  // while down: no attempt before this
  Duration backoff{0};
  std::atomic<bool> up{false};
  bool reported = false;  // has the state been logged once (so the first failure warns too)
  mutable std::mutex error_mutex;
  std::string last_error;

  // Leases this replica holds, renewed by `renewer`.
  std::mutex leases_mutex;
  std::condition_variable leases_changed;
  std::map<std::string, std::shared_ptr<Lease::State>> leases;  // token -> state
  bool stopping = false;
  std::thread renewer;
  std::vector<std::thread> listeners;  // one a topic (listen); they also stop on `stopping`

  Impl(CoordinationSettings s, Metrics& m) : settings(std::move(s)), endpoint(parse_redis_url(settings.redis_url)), metrics(m) {
    if (settings.replica_id.empty()) settings.replica_id = default_replica_id();
    using T = Metrics::Type;
    metrics.describe(kRedisUp, T::gauge, "1 while the coordination Redis is reachable, else 0 (each replica converts alone).");
    metrics.describe(kAcquired, T::counter, "Conversion leases this replica acquired.");
    metrics.describe(kHeldElsewhere, T::counter, "Conversions found under way on another replica.");
    metrics.describe(kTakeovers, T::counter, "Waits that ended with the holder's lease gone and no result (a replica died): the waiter may take over.");
    metrics.describe(kUnavailable, T::counter, "Coordination calls answered 'unavailable' (Redis unreachable): the replica converted alone.");
    metrics.describe(kLost, T::counter, "Leases this replica lost while converting (not renewable).");
    metrics.set(kRedisUp, {}, 0);
  }

  // --- reachability ----------------------------------------------------------------------

  void note_up() {
    if (!up.exchange(true) || !reported) {
      if (reported) spdlog::info("coordination: Redis at {} is reachable again: conversions are coordinated", endpoint.display());
      else spdlog::info("coordination: using Redis at {} as replica {}", endpoint.display(), settings.replica_id);
      metrics.set(kRedisUp, {}, 1);
    }
    reported = true;
    backoff = Duration(0);
  }

  // Called with connection_mutex held.
  void note_down(const std::string& error) {
    {
      std::lock_guard lock(error_mutex);
      last_error = error;
    }
    if (up.exchange(false) || !reported)
      spdlog::warn("coordination: Redis unreachable, each replica converts alone until it is back: {}", error);
    reported = true;
    metrics.set(kRedisUp, {}, 0);
    connection.reset();
    backoff = std::clamp(backoff * 2, Duration(250ms), Duration(5s));
    next_attempt = Clock::now() + backoff;
  }

  // One command on the shared connection; nothing when Redis is unreachable (or was, and the
  // backoff has not passed). A failure on a connection that had served before is retried once
  // on a fresh one: a server restart leaves the old one closed.
  std::optional<RedisReply> run(const std::vector<std::string>& args) {
    std::lock_guard lock(connection_mutex);
    for (int attempt = 0; attempt < 2; ++attempt) {
      bool fresh = false;
      if (!connection) {
        if (Clock::now() < next_attempt) return std::nullopt;
        try {
          connection = std::make_unique<RedisConnection>(endpoint, settings.ca_file, settings.io_timeout);
          fresh = true;
        } catch (const RedisError& e) {
          note_down(e.what());
          return std::nullopt;
        }
      }
      try {
        RedisReply reply = connection->command(args);
        note_up();
        return reply;
      } catch (const RedisError& e) {
        connection.reset();
        if (fresh || attempt == 1) {
          note_down(e.what());
          return std::nullopt;
        }
      }
    }
    return std::nullopt;
  }

  std::optional<RedisReply> eval(const char* script, std::vector<std::string> keys, std::vector<std::string> args) {
    std::vector<std::string> command{"EVAL", script, std::to_string(keys.size())};
    for (auto& k : keys) command.push_back(std::move(k));
    for (auto& a : args) command.push_back(std::move(a));
    return run(command);
  }

  // May a new exchange with Redis be tried now (it is up, or the backoff has passed)?
  bool worth_trying() {
    if (up) return true;
    std::lock_guard lock(connection_mutex);
    return Clock::now() >= next_attempt;
  }

  // --- leases ----------------------------------------------------------------------------

  void renew_loop() {
    const Duration period = std::max<Duration>(settings.lease_ttl / 3, Duration(10));
    std::unique_lock lock(leases_mutex);
    while (!stopping) {
      Clock::time_point wake = Clock::now() + period;
      if (!up) {
        std::lock_guard connection_lock(connection_mutex);
        wake = std::min(wake, std::max(next_attempt, Clock::now() + 10ms));
      }
      leases_changed.wait_until(lock, wake, [&] { return stopping; });
      if (stopping) break;
      std::vector<std::shared_ptr<Lease::State>> held;
      for (const auto& [token, state] : leases) held.push_back(state);
      lock.unlock();
      for (const auto& state : held) renew(*state);
      if (held.empty() && !up) run({"PING"});  // nothing to renew: just see whether Redis is back
      lock.lock();
      for (const auto& state : held)
        if (state->lost) leases.erase(state->token);
    }
  }

  void renew(Lease::State& state) {
    if (!state.renewing) return;
    auto reply = eval(kRenewScript, {lease_key(state.key)}, {state.token, millis(settings.lease_ttl)});
    if (reply && reply->integer == 1) {
      state.renewed_at = Clock::now();
      return;
    }
    // Released meanwhile by its holder: not a loss.
    if (!state.renewing) return;
    // Gone or someone else's; or Redis unreachable for a whole ttl, so it has expired there.
    if (reply || Clock::now() - state.renewed_at >= settings.lease_ttl) {
      if (!state.lost.exchange(true)) {
        metrics.add(kLost, {});
        spdlog::warn("coordination: lost the lease on {} ({})", state.key,
                     reply ? "another replica holds it or it expired" : "no renewal reached Redis for a whole lease_ttl");
      }
    }
  }

  // --- broadcasts ------------------------------------------------------------------------

  // Waits up to `d`, or less when stopping. Returns whether the Coordinator is stopping.
  bool stop_within(Duration d) {
    std::unique_lock lock(leases_mutex);
    return leases_changed.wait_for(lock, d, [&] { return stopping; });
  }

  bool is_stopping() {
    std::lock_guard lock(leases_mutex);
    return stopping;
  }

  // A subscriber connection of its own, read in short slices so that a stop is noticed soon.
  void listen_loop(const std::string& topic, const std::function<void(const std::string&)>& on_message) {
    const std::string channel = topic_channel(topic);
    Duration retry{250ms};
    while (!is_stopping()) {
      try {
        RedisConnection subscriber(endpoint, settings.ca_file, settings.io_timeout);
        subscriber.send({"SUBSCRIBE", channel});
        if (!subscriber.read_next(Clock::now() + settings.io_timeout)) throw RedisError("no answer to SUBSCRIBE");
        retry = 250ms;
        while (!is_stopping()) {
          auto message = subscriber.read_next(Clock::now() + 200ms);
          if (message && word(*message, 0) == "message") {
            try {
              on_message(word(*message, 2));
            } catch (const std::exception& e) {
              spdlog::warn("coordination: handling a message on {} failed: {}", topic, e.what());
            }
          }
        }
      } catch (const RedisError& e) {
        spdlog::debug("coordination: listening on {}: {}; again in {} ms", topic, e.what(), retry.count());
        if (stop_within(retry)) return;
        retry = std::min<Duration>(retry * 2, 5s);
      }
    }
  }

  void add_lease(const std::shared_ptr<Lease::State>& state) {
    std::lock_guard lock(leases_mutex);
    leases[state->token] = state;
  }

  void drop_lease(const Lease::State& state) {
    std::lock_guard lock(leases_mutex);
    leases.erase(state.token);
  }
};

// --- Lease ---------------------------------------------------------------------------------

Lease::Lease(Lease&& other) noexcept : owner_(other.owner_), state_(std::move(other.state_)) { other.owner_ = nullptr; }

Lease& Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    release();
    owner_ = other.owner_;
    state_ = std::move(other.state_);
    other.owner_ = nullptr;
  }
  return *this;
}

Lease::~Lease() { release(); }

const std::string& Lease::key() const {
  static const std::string none;
  return state_ ? state_->key : none;
}

bool Lease::lost() const { return state_ && state_->lost; }

void Lease::abandon_for_test() {
  if (!state_) return;
  state_->renewing = false;
  owner_->impl_->drop_lease(*state_);
  state_.reset();
}

void Lease::release() {
  if (!state_) return;
  auto& impl = *owner_->impl_;
  state_->renewing = false;  // before the DEL: a renewal racing it then knows the lease was let go
  impl.drop_lease(*state_);
  // Best effort: if Redis is unreachable the lease simply expires.
  if (!state_->lost && impl.worth_trying()) impl.eval(kReleaseScript, {lease_key(state_->key)}, {state_->token, released_channel(state_->key)});
  state_.reset();
}

// --- Coordinator ---------------------------------------------------------------------------

CoordinationSettings CoordinationSettings::from_config(const CoordinationConfig& config) {
  CoordinationSettings s;
  s.redis_url = config.redis;
  s.ca_file = config.redis_ca_file;
  s.lease_ttl = config.lease_ttl;
  return s;
}

Coordinator::Coordinator(CoordinationSettings settings, Metrics& metrics)
    : impl_(std::make_unique<Impl>(std::move(settings), metrics)) {
  impl_->run({"PING"});  // connect now, so the log says at start whether Redis is there
  impl_->renewer = std::thread([this] { impl_->renew_loop(); });
}

Coordinator::~Coordinator() {
  {
    std::lock_guard lock(impl_->leases_mutex);
    impl_->stopping = true;
  }
  impl_->leases_changed.notify_all();
  impl_->renewer.join();
  for (auto& listener : impl_->listeners) listener.join();
}

bool Coordinator::broadcast(const std::string& topic, const std::string& message) {
  auto& impl = *impl_;
  if (!impl.worth_trying()) return false;
  return impl.run({"PUBLISH", topic_channel(topic), message}).has_value();
}

void Coordinator::listen(const std::string& topic, std::function<void(const std::string&)> on_message) {
  auto& impl = *impl_;
  impl.listeners.emplace_back([&impl, topic, handler = std::move(on_message)] { impl.listen_loop(topic, handler); });
}

std::unique_ptr<Coordinator> Coordinator::from_config(const Config& config, Metrics& metrics) {
  if (config.coordination.redis.empty()) return nullptr;
  return std::make_unique<Coordinator>(CoordinationSettings::from_config(config.coordination), metrics);
}

AcquireResult Coordinator::try_acquire(const std::string& key) {
  auto& impl = *impl_;
  AcquireResult result;
  auto state = std::make_shared<Lease::State>();
  state->key = key;
  state->token = impl.settings.replica_id + ":" + random_hex(12);
  state->renewed_at = Clock::now();
  std::optional<RedisReply> reply;
  if (impl.worth_trying())
    reply = impl.eval(kAcquireScript, {lease_key(key), done_key(key)}, {state->token, millis(impl.settings.lease_ttl)});
  std::string outcome = reply ? word(*reply, 0) : std::string();
  if (outcome == "acquired") {
    impl.add_lease(state);
    result.outcome = AcquireResult::Outcome::acquired;
    result.lease = Lease(this, std::move(state));
    impl.metrics.add(kAcquired, {});
  } else if (outcome == "held") {
    result.outcome = AcquireResult::Outcome::held_elsewhere;
    impl.metrics.add(kHeldElsewhere, {});
  } else if (outcome == "done") {
    result.outcome = AcquireResult::Outcome::done;
    result.result = word(*reply, 1);
  } else {
    result.outcome = AcquireResult::Outcome::unavailable;
    impl.metrics.add(kUnavailable, {});
  }
  return result;
}

bool Coordinator::announce_done(const std::string& key, const std::string& result) {
  auto& impl = *impl_;
  if (!impl.worth_trying()) return false;
  return impl.eval(kAnnounceScript, {done_key(key)}, {done_channel(key), result, millis(impl.settings.done_ttl)})
      .has_value();
}

WaitResult Coordinator::wait(const std::string& key, Duration timeout) {
  auto& impl = *impl_;
  const auto deadline = Clock::now() + timeout;
  auto unavailable = [&] {
    impl.metrics.add(kUnavailable, {});
    return WaitResult{WaitResult::Outcome::unavailable, {}};
  };
  // What Redis says now: done, released without a result, or (nothing) still held.
  auto status = [&]() -> std::optional<WaitResult> {
    auto reply = impl.eval(kStatusScript, {lease_key(key), done_key(key)}, {});
    if (!reply) return unavailable();
    std::string s = word(*reply, 0);
    if (s == "done") return WaitResult{WaitResult::Outcome::done, word(*reply, 1)};
    if (s == "free") {
      impl.metrics.add(kTakeovers, {});
      return WaitResult{WaitResult::Outcome::released_without_done, {}};
    }
    return std::nullopt;
  };

  if (!impl.worth_trying()) return unavailable();
  std::unique_ptr<RedisConnection> subscriber;
  try {
    // Subscribed before the first look at the done key: an announcement in between is not missed.
    subscriber = std::make_unique<RedisConnection>(impl.endpoint, impl.settings.ca_file, impl.settings.io_timeout);
    subscriber->send({"SUBSCRIBE", done_channel(key), released_channel(key)});
    for (int confirmations = 0; confirmations < 2; ++confirmations)
      if (!subscriber->read_next(Clock::now() + impl.settings.io_timeout)) throw RedisError("no answer to SUBSCRIBE");
  } catch (const RedisError& e) {
    {
      std::lock_guard lock(impl.connection_mutex);
      impl.note_down(e.what());
    }
    return unavailable();
  }
  if (auto now = status()) return *now;

  const Duration lease_check = std::max<Duration>(impl.settings.lease_ttl / 2, Duration(10));
  auto next_check = Clock::now() + lease_check;
  for (;;) {
    std::optional<RedisReply> message;
    try {
      message = subscriber->read_next(std::min(deadline, next_check));
    } catch (const RedisError& e) {
      std::lock_guard lock(impl.connection_mutex);
      impl.note_down(e.what());
      return unavailable();
    }
    // ["message", channel, result]
    const bool published = message && word(*message, 0) == "message";
    if (published && word(*message, 1) == done_channel(key)) return WaitResult{WaitResult::Outcome::done, word(*message, 2)};
    if (Clock::now() >= deadline) return WaitResult{WaitResult::Outcome::timeout, {}};
    // A release, or time for the periodic look: free now, or taken again by another replica.
    if (published || Clock::now() >= next_check) {
      if (auto now = status()) return *now;
      next_check = Clock::now() + lease_check;
    }
  }
}

bool Coordinator::available() const { return impl_->up; }

std::string Coordinator::last_error() const {
  std::lock_guard lock(impl_->error_mutex);
  return impl_->last_error;
}

const std::string& Coordinator::replica_id() const { return impl_->settings.replica_id; }

}  // namespace accel
