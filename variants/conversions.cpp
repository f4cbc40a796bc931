#include "variants/conversions.hpp"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iterator>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "convert/formats.hpp"
#include "convert/image.hpp"
#include "convert/sha256.hpp"
#include "convert/streams.hpp"
#include "proxy/oci_names.hpp"
#include "variants/upstream_variant.hpp"
#include "variants/webhooks.hpp"
#include "variants/writeback.hpp"

namespace accel {

namespace {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

int64_t unix_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

const char* state_name(ConversionJob::State s) {
  switch (s) {
    case ConversionJob::State::queued: return "queued";
    case ConversionJob::State::running: return "running";
    case ConversionJob::State::done: return "done";
    case ConversionJob::State::failed: return "failed";
  }
  return "?";
}

// Proof that a converted object may be shown to a client of `scope`: the source object it came
// from, which the client must be able to read upstream ("manifest:<digest>" / "blob:<digest>").
std::string source_proof(const std::string& kind, const std::string& digest) { return kind + ":" + digest; }

// The conversion's destination: blobs and manifests go into the cache, each recorded as a
// member of the repository scope it was made for, with the source that proves a client may
// read it.
class CacheTarget : public convert::ImageTarget {
 public:
  CacheTarget(cache::Cache& cache, std::string scope, std::string proof)
      : cache_(cache), scope_(std::move(scope)), proof_(std::move(proof)) {}

  bool has_blob(const std::string& digest) override { return cache_.blob(digest).has_value(); }

  void put_blob(const convert::Descriptor& blob, const std::string& path) override {
    if (!cache_.blob(blob.digest)) cache_.adopt_blob(path, blob.digest, blob.size, blob.media_type);
    cache_.put_member(scope_, blob.digest, proof_);
    blobs_.push_back(blob.digest);
  }

  std::unique_ptr<convert::ByteSource> read_blob(const convert::Descriptor& blob, uint64_t offset) override {
    // Pinned while it is opened; the open file then outlives an eviction (which unlinks it).
    auto pin = cache_.pin(blob.digest);
    if (!cache_.blob(blob.digest)) throw convert::ConvertError("blob " + blob.digest + " left the cache during the conversion");
    return std::make_unique<convert::FileSource>(cache_.blob_path(blob.digest), offset);
  }

  void reuse_blob(const convert::Descriptor& blob) override {
    cache_.put_member(scope_, blob.digest, proof_);
    cache_.touch(blob.digest);
    blobs_.push_back(blob.digest);
  }

  void put_manifest(const convert::ManifestBytes& manifest, const std::string& tag) override {
    if (!cache_.blob(manifest.digest)) {
      auto writer = cache_.begin_blob();
      writer->write(manifest.bytes.data(), manifest.bytes.size());
      writer->commit(manifest.media_type, manifest.digest);
    }
    cache_.put_member(scope_, manifest.digest, proof_);
    blobs_.push_back(manifest.digest);
  }

  const std::vector<std::string>& blobs() const { return blobs_; }

 private:
  cache::Cache& cache_;
  std::string scope_, proof_;
  std::vector<std::string> blobs_;
};

}  // namespace

// Layer mappings in the cache, with one lock per source layer for single flight.
class CacheLayerMemo : public convert::LayerMemo {
 public:
  CacheLayerMemo(Conversions& owner, cache::Cache& cache, std::string suffix)
      : owner_(owner), cache_(cache), suffix_(std::move(suffix)) {}
  // The converter has released every layer lock by now; a lock no other conversion holds a
  // reference to leaves the map (it would otherwise grow by one entry per layer ever seen).
  ~CacheLayerMemo() override {
    std::lock_guard guard(owner_.layer_locks_mutex_);
    for (auto& [digest, m] : held_) {
      m.reset();
      auto it = owner_.layer_locks_.find(digest);
      if (it != owner_.layer_locks_.end() && it->second.use_count() == 1) owner_.layer_locks_.erase(it);
    }
  }

  std::unique_lock<std::mutex> lock(const std::string& source_digest) override {
    std::shared_ptr<std::mutex> m;
    {
      std::lock_guard guard(owner_.layer_locks_mutex_);
      auto& slot = owner_.layer_locks_[source_digest];
      if (!slot) slot = std::make_shared<std::mutex>();
      m = slot;
      held_.emplace_back(source_digest, m);  // keeps the mutex alive while this conversion may hold it
    }
    return std::unique_lock<std::mutex>(*m);
  }

  std::optional<convert::ConvertedLayer> find(const std::string& source_digest) override {
    auto record = cache_.layer_variant(source_digest + suffix_);
    if (!record) return std::nullopt;
    convert::ConvertedLayer layer;
    layer.digest = record->digest;
    layer.size = record->size;
    layer.media_type = record->media_type;
    layer.diff_id = record->diff_id;
    layer.annotations = record->annotations;
    return layer;
  }

  void remember(const std::string& source_digest, const convert::ConvertedLayer& layer) override {
    cache::VariantRecord record;
    record.digest = layer.digest;
    record.size = layer.size;
    record.media_type = layer.media_type;
    record.diff_id = layer.diff_id;
    record.annotations = layer.annotations;
    record.blobs = {layer.digest};
    record.created = unix_now();
    cache_.put_layer_variant(source_digest + suffix_, record);
  }

 private:
  Conversions& owner_;
  cache::Cache& cache_;
  std::string suffix_;
  std::vector<std::pair<std::string, std::shared_ptr<std::mutex>>> held_;
};

std::string ConversionKey::cache_key(const std::string& options) const {
  return source_key() + "|" + format + "|" + options;
}

std::string ConversionKey::format_in(std::string_view cache_key) {
  const size_t bar = cache_key.find('|');
  if (bar == std::string_view::npos) return {};
  const size_t end = cache_key.find('|', bar + 1);
  return std::string(cache_key.substr(bar + 1, end == std::string_view::npos ? std::string_view::npos : end - bar - 1));
}

ConversionJob::State ConversionJob::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

std::string ConversionJob::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

uint64_t ConversionJob::bytes_done() const {
  std::lock_guard lock(mutex_);
  return bytes_done_;
}

void ConversionJob::on_finished(std::function<void()> callback) {
  {
    std::lock_guard lock(mutex_);
    if (state_ != State::done && state_ != State::failed) {
      callbacks_.push_back(std::move(callback));
      return;
    }
  }
  callback();
}

void ConversionJob::finish(State state, std::string error) {
  std::vector<std::function<void()>> callbacks;
  {
    std::lock_guard lock(mutex_);
    state_ = state;
    error_ = std::move(error);
    callbacks.swap(callbacks_);
  }
  for (auto& c : callbacks) c();
}

Conversions::Conversions(const Config& config, cache::Cache& cache, Metrics& metrics)
    : config_(config), cache_(cache), metrics_(metrics) {
  using T = Metrics::Type;
  metrics_.describe("accel_proxy_conversions_total", T::counter, "Conversions finished, by format and outcome.");
  metrics_.describe("accel_proxy_conversion_duration_seconds", T::histogram, "Conversion time, by format.");
  metrics_.describe("accel_proxy_conversion_bytes_total", T::counter, "Bytes read and written by conversions, by format and direction.");
  metrics_.describe("accel_proxy_conversion_joins_total", T::counter, "Requests that joined a conversion already under way.");
  metrics_.describe("accel_proxy_conversion_queue_depth", T::gauge, "Conversions waiting for a worker.");
  metrics_.describe("accel_proxy_variants_found_upstream_total", T::counter, "Variants the upstream held already (not converted), by format.");
  metrics_.describe("accel_proxy_writebacks_total", T::counter, "Variants pushed to their upstream, by format and outcome.");
  metrics_.describe("accel_proxy_writeback_tags_total", T::counter, "Suffix-tag writes of write-back, by outcome (tagged, source-moved, repaired, unrepaired, none).");
  coordinator_ = Coordinator::from_config(config, metrics);
  for (int i = 0; i < config.variants.workers; ++i) threads_.emplace_back([this] { worker(); });
}

Conversions::~Conversions() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (auto& t : threads_) t.join();
  // Jobs still queued never ran: let their waiters go.
  for (auto& job : queue_) job->finish(ConversionJob::State::failed, "the proxy is shutting down");
}

const std::vector<std::string>& Conversions::configured_prefetch(const ConversionKey& key) const {
  static const std::vector<std::string> none;
  for (const auto& rule : config_.variants.prefetch)
    for (const auto& pattern : rule.repositories)
      if (repository_matches(pattern, key.repository)) return rule.files;
  return none;
}

std::vector<std::string> Conversions::prefetch_files(const ConversionKey& key, bool* learned) const {
  if (learned) *learned = false;
  const auto& configured = configured_prefetch(key);
  if (!configured.empty() || !learned_prefetch_) return configured;
  auto list = learned_prefetch_(key);
  if (learned) *learned = !list.empty();
  return list;
}

convert::LayerOptions Conversions::layer_options(const ConversionKey& key, const std::vector<std::string>& prefetch) const {
  convert::LayerOptions layer;
  layer.compression_level = config_.variants.compression_level;
  layer.nydus.chunk_size = config_.variants.nydus.chunk_size;
  layer.nydus.compressor = config_.variants.nydus.compressor;
  layer.nydus.level = config_.variants.nydus.compression_level;
  layer.prioritized_files = prefetch;
  layer.threads = config_.variants.threads ? config_.variants.threads : std::max(1u, std::thread::hardware_concurrency());
  return layer;
}

std::string Conversions::options_key(const ConversionKey& key, const std::vector<std::string>& prefetch) const {
  const auto* format = convert::find_format(key.format);
  const convert::LayerOptions layer = layer_options(key, prefetch);
  std::string options = format ? format->options_key(layer) : "";
  if (!layer.prioritized_files.empty()) {
    std::string list;
    for (const auto& f : layer.prioritized_files) list += f + '\n';
    options += ",prefetch=" + convert::Sha256::of(list).substr(7, 16);
  }
  return options;
}

std::string Conversions::cache_key(const ConversionKey& key) const {
  return key.cache_key(options_key(key, prefetch_files(key)));
}

std::shared_ptr<ConversionJob> Conversions::start(const ConversionKey& key, RegistryAccess access, std::string source_tag,
                                                  std::optional<std::vector<std::string>> prefetch) {
  bool learned = prefetch.has_value();
  std::vector<std::string> files = prefetch ? std::move(*prefetch) : prefetch_files(key, &learned);
  const std::string cache_key = key.cache_key(options_key(key, files));
  std::lock_guard lock(mutex_);
  if (auto it = active_.find(cache_key); it != active_.end()) {
    metrics_.add("accel_proxy_conversion_joins_total", {{"format", key.format}});
    return it->second;
  }
  if (auto failure = cache_.failure(cache_key); failure && failure->retry_after > unix_now_ms()) {
    auto job = std::make_shared<ConversionJob>(key, cache_key);
    job->finish(ConversionJob::State::failed, failure->reason + " (retried after backoff)");
    return job;
  }
  // `queue` counts conversions waiting for a worker; one an idle worker takes at once is not.
  const int idle_workers = config_.variants.workers - running_;
  if (static_cast<int>(queue_.size()) >= config_.variants.queue + std::max(0, idle_workers)) return nullptr;
  auto job = std::make_shared<ConversionJob>(key, cache_key);
  job->access_ = std::move(access);
  job->source_tag_ = std::move(source_tag);
  job->prefetch_ = std::move(files);
  job->learned_ = learned;
  active_[cache_key] = job;
  queue_.push_back(job);
  metrics_.set("accel_proxy_conversion_queue_depth", {}, static_cast<double>(queue_.size()));
  work_ready_.notify_one();
  return job;
}

size_t Conversions::queue_depth() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

std::vector<ConversionInfo> Conversions::list() const {
  std::vector<ConversionInfo> out;
  std::lock_guard lock(mutex_);
  auto add = [&](const std::shared_ptr<ConversionJob>& j) {
    out.push_back({j->key(), state_name(j->state()), j->error(), j->bytes_done()});
  };
  for (const auto& [k, j] : active_) add(j);
  for (const auto& j : finished_) add(j);
  return out;
}

void Conversions::worker() {
  while (true) {
    std::shared_ptr<ConversionJob> job;
    {
      std::unique_lock lock(mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = queue_.front();
      queue_.pop_front();
      ++running_;
      metrics_.set("accel_proxy_conversion_queue_depth", {}, static_cast<double>(queue_.size()));
    }
    {
      std::lock_guard lock(job->mutex_);
      job->state_ = ConversionJob::State::running;
    }
    run(*job);
    std::lock_guard lock(mutex_);
    --running_;
    active_.erase(job->cache_key());
    finished_.push_back(job);
    if (finished_.size() > 100) finished_.pop_front();
  }
}

std::string Conversions::suffix_tag(const ConversionKey& key, const std::string& source_tag) const {
  auto suffix = config_.variants.suffixes.find(key.format);
  if (source_tag.empty() || suffix == config_.variants.suffixes.end()) return {};
  std::string tag = source_tag + suffix->second;
  return is_valid_tag(tag) ? tag : std::string();
}

void Conversions::put_child_variant(const ConversionKey& key, const std::string& options, const std::string& child_source,
                                    const convert::Descriptor& child, cache::VariantRecord record) {
  ConversionKey child_key = key;
  child_key.source_digest = child_source;
  record.digest = child.digest;
  record.media_type = child.media_type;
  record.size = child.size;
  cache_.put_manifest_variant(child_key.cache_key(options), record);
}

cache::VariantRecord Conversions::import(const ConversionKey& key, const UpstreamVariant& variant, const std::string& options) {
  const std::string proof = source_proof("manifest", key.source_digest);
  auto store = [&](const convert::ManifestBytes& manifest) {
    if (!cache_.blob(manifest.digest)) {
      auto writer = cache_.begin_blob();
      writer->write(manifest.bytes.data(), manifest.bytes.size());
      writer->commit(manifest.media_type, manifest.digest);
    }
    cache_.put_member(key.scope(), manifest.digest, proof);
  };
  cache::VariantRecord record;
  record.digest = variant.top.digest;
  record.media_type = variant.top.media_type;
  record.size = variant.top.bytes.size();
  record.blobs = {variant.top.digest};  // configs and layers stay upstream: clients read them there
  record.created = unix_now();
  store(variant.top);
  for (const auto& child : variant.children) store(child.manifest);
  cache_.put_manifest_variant(key.cache_key(options), record);
  for (const auto& child : variant.children) {
    cache::VariantRecord child_record = record;
    child_record.blobs.push_back(child.manifest.digest);
    put_child_variant(key, options, child.source_digest, {child.manifest.media_type, child.manifest.digest, child.manifest.bytes.size()},
                      child_record);
  }
  return record;
}

cache::VariantRecord Conversions::convert(ConversionJob& job, const convert::LayerFormat& format, bool& from_upstream) {
  const auto& key = job.key();
  from_upstream = false;
  RegistryStore source(job.access_);
  // Someone converted it already (another replica, Harbor's acceleration service, nydusify):
  // serve theirs. Not for a learned prefetch list: theirs does not have it.
  if (!job.learned_)
    if (auto found = find_upstream_variant(source, format, key.source_digest, suffix_tag(key, job.source_tag_))) {
      from_upstream = true;
      return import(key, *found, options_key(key, job.prefetch_));
    }

  CacheTarget target(cache_, key.scope(), source_proof("manifest", key.source_digest));
  CacheLayerMemo memo(*this, cache_, "|" + key.format + "|" + options_key(key, job.prefetch_));
  convert::ImageConvertOptions options;
  options.layer = layer_options(key, job.prefetch_);
  options.max_image_bytes = config_.variants.max_image_bytes;
  options.work_dir = cache_.temp_dir();  // same filesystem: finished blobs move into the store
  options.layer.work_dir = options.work_dir;
  options.layer_memo = &memo;
  options.progress = [&](const convert::ImageProgress& p) {
    if (p.event == "layer-progress" || p.event == "layer-done") {
      std::lock_guard lock(job.mutex_);
      job.bytes_done_ = p.bytes_in;
    }
  };
  const auto started = std::chrono::steady_clock::now();
  convert::ImageConverter converter(format, options);
  auto result = converter.convert(source, key.source_digest, target, "");

  cache::VariantRecord record;
  record.digest = result.manifest.digest;
  record.media_type = result.manifest.media_type;
  record.size = result.manifest.bytes.size();
  record.blobs = target.blobs();
  std::sort(record.blobs.begin(), record.blobs.end());
  record.blobs.erase(std::unique(record.blobs.begin(), record.blobs.end()), record.blobs.end());
  record.created = unix_now();
  cache_.put_manifest_variant(job.cache_key(), record);
  // The platform manifests of an index are variants of their own sources too, so the
  // Referrers API of a source platform manifest lists its converted one (nydus-snapshotter
  // asks by the platform manifest's digest). They need the image's blobs as the index does.
  for (const auto& m : result.manifests)
    if (m.source_digest != key.source_digest) put_child_variant(key, options_key(key, job.prefetch_), m.source_digest, m.result, record);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  metrics_.add("accel_proxy_conversions_total", {{"format", key.format}, {"outcome", "done"}});
  metrics_.observe("accel_proxy_conversion_duration_seconds", {{"format", key.format}}, seconds);
  metrics_.add("accel_proxy_conversion_bytes_total", {{"format", key.format}, {"direction", "in"}}, static_cast<double>(result.bytes_in));
  metrics_.add("accel_proxy_conversion_bytes_total", {{"format", key.format}, {"direction", "out"}}, static_cast<double>(result.bytes_out));
  spdlog::info("conversion done upstream={} repo={} source={} format={} result={} layers_converted={} layers_reused={} seconds={:.2f}",
               key.upstream, key.repository, key.source_digest, key.format, record.digest, result.layers_converted,
               result.layers_reused, seconds);
  if (result.already_converted) from_upstream = true;  // the source is the variant: nothing to write back
  return record;
}

void Conversions::run(ConversionJob& job) {
  const auto& key = job.key();
  const std::string& cache_key = job.cache_key();
  const auto* format = convert::find_format(key.format);
  const auto* upstream = config_.find_upstream(key.upstream);
  cache::VariantRecord record;
  bool from_upstream = false;
  Lease lease;  // held until the variant is written back and announced
  try {
    if (!format) throw convert::ConvertError("unknown format " + key.format);
    if (auto cached = cache_.manifest_variant(cache_key)) {
      record = *cached;  // converted before (a write-back or a re-tag asked for it again)
    } else {
      lease = coordinate(job);
      record = convert(job, *format, from_upstream);
      if (from_upstream) {
        metrics_.add("accel_proxy_variants_found_upstream_total", {{"format", key.format}});
        spdlog::info("variant found upstream upstream={} repo={} source={} format={} variant={}", key.upstream,
                     key.repository, key.source_digest, key.format, record.digest);
      }
    }
    cache_.clear_failure(cache_key);
    cache_.evict();
    job.finish(ConversionJob::State::done, "");
  } catch (const std::exception& e) {
    // Remember the failure, with a backoff that doubles per attempt (capped at an hour).
    auto previous = cache_.failure(cache_key);
    cache::FailureRecord failure;
    failure.reason = e.what();
    failure.attempts = previous ? previous->attempts + 1 : 1;
    int64_t backoff_ms = config_.variants.retry_backoff.count();
    for (int i = 1; i < failure.attempts && backoff_ms < 3600'000; ++i) backoff_ms *= 2;
    failure.retry_after = unix_now_ms() + std::min<int64_t>(backoff_ms, 3600'000);  // unix milliseconds
    try {
      cache_.put_failure(cache_key, failure);
    } catch (...) {
    }
    metrics_.add("accel_proxy_conversions_total", {{"format", key.format}, {"outcome", "failed"}});
    spdlog::warn("conversion failed upstream={} repo={} source={} format={} error=\"{}\"", key.upstream, key.repository,
                 key.source_digest, key.format, e.what());
    job.finish(ConversionJob::State::failed, e.what());
    return;
  }
  // Waiting pulls are served already; the push to the upstream follows. A failed write-back
  // leaves the variant served from the cache and is retried by the next conversion request.
  if (upstream && upstream->writeback.enabled && !from_upstream) {
    try {
      write_back(job, record);
    } catch (const std::exception& e) {
      metrics_.add("accel_proxy_writebacks_total", {{"format", key.format}, {"outcome", "failed"}});
      spdlog::warn("write-back failed upstream={} repo={} variant={} format={} error=\"{}\"", key.upstream, key.repository,
                   record.digest, key.format, e.what());
    }
  }
  // Replicas waiting for this conversion look for the variant upstream now.
  if (lease.held()) coordinator_->announce_done(cache_key, record.digest);
}

Lease Conversions::coordinate(const ConversionJob& job) {
  if (!coordinator_) return {};
  using Outcome = AcquireResult::Outcome;
  const auto deadline = std::chrono::steady_clock::now() + config_.variants.wait_limit;
  while (true) {
    auto got = coordinator_->try_acquire(job.cache_key());
    if (got.outcome == Outcome::acquired) return std::move(got.lease);
    if (got.outcome != Outcome::held_elsewhere) return {};  // done elsewhere, or Redis is gone: go on alone
    const auto left = std::chrono::duration_cast<Duration>(deadline - std::chrono::steady_clock::now());
    if (left <= Duration::zero()) return {};
    spdlog::info("conversion held by another replica repo={} source={} format={}: waiting", job.key().repository,
                 job.key().source_digest, job.key().format);
    auto waited = coordinator_->wait(job.cache_key(), left);
    // The holder died (its lease expired unannounced): take the conversion over.
    if (waited.outcome == WaitResult::Outcome::released_without_done) continue;
    return {};
  }
}

std::shared_ptr<void> Conversions::lock_upstream_tag(const std::string& upstream, const std::string& repository,
                                                     const std::string& tag) {
  const std::string name = upstream + "/" + repository + ":" + tag;
  struct Guard {
    std::unique_lock<std::mutex> local;
    Lease replicas;  // released first (members go in reverse order)
  };
  auto guard = std::make_shared<Guard>();
  guard->local = std::unique_lock(tag_locks_[std::hash<std::string>{}(name) % tag_locks_.size()]);
  if (!coordinator_) return guard;
  using Outcome = AcquireResult::Outcome;
  const std::string key = "tag-lock:" + name;
  const auto deadline = std::chrono::steady_clock::now() + config_.variants.wait_limit;
  while (true) {
    auto got = coordinator_->try_acquire(key);
    if (got.outcome == Outcome::acquired) {
      guard->replicas = std::move(got.lease);
      return guard;
    }
    // Redis unreachable (or a stray result under the key): this process's lock is all there is,
    // and the writer's read-back still catches what it can.
    if (got.outcome != Outcome::held_elsewhere) return guard;
    const auto left = std::chrono::duration_cast<Duration>(deadline - std::chrono::steady_clock::now());
    if (left <= Duration::zero()) {
      spdlog::warn("write-back: tag {} of {} still held by another replica; writing without its lock", tag, repository);
      return guard;
    }
    coordinator_->wait(key, left);  // the holder releases without announcing: try again
  }
}

void Conversions::write_back(const ConversionJob& job, const cache::VariantRecord& record) {
  const auto& key = job.key();
  const auto& upstream = *config_.find_upstream(key.upstream);
  RegistryStore store(robot_access(upstream, key.repository, /*push=*/true));

  WriteBackRequest request;
  request.source_digest = key.source_digest;
  if (upstream.writeback.tag) {
    request.source_tag = job.source_tag_;
    request.suffix_tag = suffix_tag(key, job.source_tag_);
  }
  std::vector<cache::Cache::Pin> pins;  // nothing of the variant is evicted while it is pushed
  for (const auto& digest : record.blobs) {
    pins.push_back(cache_.pin(digest));
    auto info = cache_.blob(digest);
    if (!info) throw convert::ConvertError("blob " + digest + " left the cache before write-back");
    const std::string path = cache_.blob_path(digest);
    if (convert::is_index(info->media_type) || info->media_type == convert::media_type::oci_manifest ||
        info->media_type == convert::media_type::docker_manifest) {
      std::ifstream in(path, std::ios::binary);
      convert::ManifestBytes manifest{info->media_type, std::string(std::istreambuf_iterator<char>(in), {}), digest};
      if (digest == record.digest) request.top = std::move(manifest);
      else request.manifests.push_back(std::move(manifest));
    } else {
      request.blobs.push_back({{info->media_type, digest, info->size}, path});
    }
  }
  if (request.top.digest.empty()) throw convert::ConvertError("variant manifest " + record.digest + " is not in the cache");
  // A blob this cache also holds for another repository of the same upstream may be there
  // already (written back earlier): a mount costs one request, an upload the whole blob.
  const std::string own_scope = key.scope();
  const std::string upstream_prefix = key.upstream + "/";
  request.mount_sources = [&](const std::string& digest) {
    std::vector<std::string> repositories;
    for (const auto& scope : cache_.scopes_of(digest))
      if (scope != own_scope && scope.starts_with(upstream_prefix)) repositories.push_back(scope.substr(upstream_prefix.size()));
    return repositories;
  };

  request.lock_fallback_tag = [&](const std::string& tag) { return lock_upstream_tag(key.upstream, key.repository, tag); };

  auto result = accel::write_back(store, request);
  const char* tag_outcome = result.tag == TagOutcome::tagged         ? "tagged"
                            : result.tag == TagOutcome::source_moved ? "source-moved"
                            : result.tag == TagOutcome::repaired     ? "repaired"
                            : result.tag == TagOutcome::unrepaired   ? "unrepaired"
                                                                     : "none";
  metrics_.add("accel_proxy_writebacks_total", {{"format", key.format}, {"outcome", "done"}});
  metrics_.add("accel_proxy_writeback_tags_total", {{"outcome", tag_outcome}});
  spdlog::info("write-back done upstream={} repo={} variant={} format={} uploaded={} mounted={} present={} manifests={} "
               "fallback_links={} tag={} tag_outcome={}",
               key.upstream, key.repository, record.digest, key.format, result.blobs_uploaded, result.blobs_mounted,
               result.blobs_present, result.manifests_pushed, result.fallback_links, request.suffix_tag, tag_outcome);
  // The source tag moved on: convert what it names now, so the suffix tag follows it.
  if ((result.tag == TagOutcome::source_moved || result.tag == TagOutcome::repaired) && result.source_now &&
      *result.source_now != key.source_digest) {
    ConversionKey next = key;
    next.source_digest = *result.source_now;
    start(next, robot_access(upstream, key.repository), job.source_tag_);
  }
}

}  // namespace accel
