// Conversion on the first miss: a bounded pool of worker threads with a queue, single-flight
// per image (concurrent requests for the same variant join one job) and per layer (through the
// cache's layer mappings, so a layer shared by images converts once), failures remembered with
// backoff. Results land in the variant cache; the HTTP side only ever reads them from there.
#pragma once

#include <array>

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cache/cache.hpp"
#include "proxy/config.hpp"
#include "proxy/metrics.hpp"
#include "coordination/coordination.hpp"
#include "variants/registry_store.hpp"

namespace accel {

struct UpstreamVariant;  // variants/upstream_variant.hpp

struct ConversionKey {
  std::string upstream;
  std::string repository;
  std::string source_digest;  // the source manifest or index
  std::string format;

  std::string scope() const { return upstream + "/" + repository; }
  // "upstream/repository@digest": the part of a cache key that names the source.
  std::string source_key() const { return scope() + "@" + source_digest; }
  // The cache key of the converted manifest: source_key() + "|" + format + "|" + options (other
  // options, other blobs).
  std::string cache_key(const std::string& options) const;
  // The format named in such a cache key.
  static std::string format_in(std::string_view cache_key);
};

class ConversionJob {
 public:
  enum class State { queued, running, done, failed };

  ConversionJob(ConversionKey key, std::string cache_key) : key_(std::move(key)), cache_key_(std::move(cache_key)) {}

  const ConversionKey& key() const { return key_; }
  const std::string& cache_key() const { return cache_key_; }
  State state() const;
  std::string error() const;
  uint64_t bytes_done() const;
  // Calls `callback` once the job has finished (at once if it has); any thread.
  void on_finished(std::function<void()> callback);

 private:
  friend class Conversions;
  void finish(State state, std::string error);

  ConversionKey key_;
  std::string cache_key_;
  RegistryAccess access_;
  std::string source_tag_;  // the tag the source was asked by (write-back's suffix tag), or ""
  std::vector<std::string> prefetch_;  // the files it places first
  bool learned_ = false;               // prefetch_ was learned: an upstream variant is not it
  mutable std::mutex mutex_;
  State state_ = State::queued;
  std::string error_;
  uint64_t bytes_done_ = 0;
  std::vector<std::function<void()>> callbacks_;
};

struct ConversionInfo {
  ConversionKey key;
  std::string state;
  std::string error;
  uint64_t bytes_done = 0;
};

class Conversions {
 public:
  Conversions(const Config& config, cache::Cache& cache, Metrics& metrics);
  ~Conversions();

  // The cache key of `key`'s converted manifest, with the options this proxy converts with.
  std::string cache_key(const ConversionKey& key) const;

  // Starts a conversion, or joins the one already queued or running for the same key. Returns
  // nullptr when the queue is full, or a failed job when the last attempt failed and its backoff
  // has not passed.
  // `source_tag` is the tag the source was asked by, if any: write-back tags the variant after it.
  // `prefetch`: a learned list to convert with instead of the usual one (another cache key).
  std::shared_ptr<ConversionJob> start(const ConversionKey& key, RegistryAccess access, std::string source_tag = {},
                                       std::optional<std::vector<std::string>> prefetch = std::nullopt);

  // The prefetch list the config gives the key's repository (empty: none). It wins over a
  // learned one.
  const std::vector<std::string>& configured_prefetch(const ConversionKey& key) const;
  // Where a learned list for a key comes from when the config has none (an empty list: none).
  // Set once, before requests are served; called from any thread.
  void set_learned_prefetch(std::function<std::vector<std::string>(const ConversionKey&)> source) {
    learned_prefetch_ = std::move(source);
  }

  std::vector<ConversionInfo> list() const;
  // The replicas' coordination through Redis; null without `coordination.redis`.
  Coordinator* coordinator() { return coordinator_.get(); }
  size_t queue_depth() const;

 private:
  void worker();
  void run(ConversionJob& job);
  // The variant of `job`'s key: converted now, or imported from the upstream when it has one.
  // Sets `from_upstream`.
  cache::VariantRecord convert(ConversionJob& job, const convert::LayerFormat& format, bool& from_upstream);
  // Records a variant found upstream (its manifests; its blobs stay upstream and pass through).
  cache::VariantRecord import(const ConversionKey& key, const UpstreamVariant& variant, const std::string& options);
  // With Redis configured: this replica's lease on the job's conversion, after waiting for
  // another replica's when one holds it (an empty lease: converted elsewhere, so the upstream
  // has it; or Redis is unreachable and this replica works alone).
  Lease coordinate(const ConversionJob& job);
  // Records a converted platform manifest as the variant of its own source manifest too (the
  // Referrers API of a platform manifest lists it); `record` is the image's, blobs included.
  // `options`: the image's options part of cache keys (the child's key has the same).
  void put_child_variant(const ConversionKey& key, const std::string& options, const std::string& child_source,
                         const convert::Descriptor& child,
                         cache::VariantRecord record);
  // Exclusive use of one tag of an upstream repository while write-back rewrites it (the
  // fallback referrers index): one conversion thread of this process at a time, and with Redis
  // one replica at a time. The guard releases both.
  std::shared_ptr<void> lock_upstream_tag(const std::string& upstream, const std::string& repository, const std::string& tag);
  // Pushes the variant to its upstream (write-back), and tags it when configured.
  void write_back(const ConversionJob& job, const cache::VariantRecord& record);
  // source tag + the format's suffix, when that is a valid tag; else "".
  std::string suffix_tag(const ConversionKey& key, const std::string& source_tag) const;
  // The options a conversion of `key` with this prefetch list uses, as part of its cache key:
  // other options, other blobs.
  std::string options_key(const ConversionKey& key, const std::vector<std::string>& prefetch) const;
  // The layer options the config gives a conversion of `key`, with this prefetch list.
  convert::LayerOptions layer_options(const ConversionKey& key, const std::vector<std::string>& prefetch) const;
  // The list a conversion of `key` uses: the config's, else a learned one (`learned` says which).
  std::vector<std::string> prefetch_files(const ConversionKey& key, bool* learned = nullptr) const;

  const Config& config_;
  cache::Cache& cache_;
  Metrics& metrics_;
  std::unique_ptr<Coordinator> coordinator_;  // null without `coordination.redis`
  std::function<std::vector<std::string>(const ConversionKey&)> learned_prefetch_;
  mutable std::mutex mutex_;
  std::condition_variable work_ready_;
  std::deque<std::shared_ptr<ConversionJob>> queue_;
  std::map<std::string, std::shared_ptr<ConversionJob>> active_;      // queued or running, by cache key
  std::deque<std::shared_ptr<ConversionJob>> finished_;               // recent, for the listing API
  bool stopping_ = false;
  int running_ = 0;  // jobs a worker is converting
  std::vector<std::thread> threads_;

  // Upstream tags being rewritten by write-back, striped by name (lock_upstream_tag).
  std::array<std::mutex, 16> tag_locks_;

  // Per-layer single flight.
  std::mutex layer_locks_mutex_;
  std::map<std::string, std::shared_ptr<std::mutex>> layer_locks_;
  friend class CacheLayerMemo;
};

}  // namespace accel
