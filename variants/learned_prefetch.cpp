#include "variants/learned_prefetch.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <set>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "convert/formats.hpp"
#include "variants/registry_store.hpp"

namespace accel {

namespace {

constexpr const char* kNotePrefix = "prefetch|";
constexpr size_t kMaxLayers = 65536;     // blobs known as layers of some variant
constexpr size_t kMaxIndexes = 64;       // file indexes kept built
constexpr uint64_t kMaxManifestBytes = 4 << 20;

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

// Which cached blobs are layers of which variant image, and their file indexes: from the
// manifests a client was served (their membership proof names the source; the variant record
// of that source which holds the manifest names the format) and the cached blobs themselves.
// Used by the learning thread only.
class LearnedPrefetch::Catalog : public LayerCatalog {
 public:
  explicit Catalog(cache::Cache& cache) : cache_(cache) {}

  void manifest_served(const std::string& scope, const std::string& digest) override {
    if (!manifests_.insert(scope + "|" + digest).second) return;
    if (manifests_.size() > kMaxLayers) manifests_.clear();  // crude but bounded: they are looked up again
    auto proof = cache_.member(scope, digest);
    if (!proof || !proof->starts_with("manifest:")) return;
    const std::string source_key = scope + "@" + proof->substr(9);
    std::string format;
    for (const auto& [key, record] : cache_.variants_of(source_key))
      if (record.digest == digest || std::find(record.blobs.begin(), record.blobs.end(), digest) != record.blobs.end()) {
        format = ConversionKey::format_in(key);
        break;
      }
    if (format.empty()) return;  // not a variant (an index's own manifest list has no layers anyway)
    nlohmann::json manifest;
    try {
      auto pin = cache_.pin(digest);
      auto info = cache_.blob(digest);
      if (!info || info->size > kMaxManifestBytes) return;
      std::ifstream in(cache_.blob_path(digest), std::ios::binary);
      manifest = nlohmann::json::parse(std::string(std::istreambuf_iterator<char>(in), {}));
    } catch (const std::exception&) {
      return;
    }
    if (!manifest.is_object() || !manifest.contains("layers") || !manifest["layers"].is_array()) return;
    if (layers_.size() > kMaxLayers) layers_.clear();
    for (const auto& layer : manifest["layers"])
      if (layer.is_object() && layer.contains("digest") && layer["digest"].is_string())
        layers_[scope + "|" + layer["digest"].get<std::string>()] = {source_key + "|" + format, format, layer};
  }

  std::optional<LayerRef> layer(const std::string& scope, const std::string& digest) override {
    auto it = layers_.find(scope + "|" + digest);
    if (it == layers_.end()) return std::nullopt;
    auto index = index_of(digest, it->second);
    if (!index) return std::nullopt;
    return LayerRef{it->second.image, index};
  }

 private:
  struct Layer {
    std::string image, format;
    nlohmann::json descriptor;
  };

  // Built once from the cached blob through the format's plug-in; null when it has none.
  std::shared_ptr<const convert::FileIndex> index_of(const std::string& digest, const Layer& layer) {
    if (auto it = indexes_.find(digest); it != indexes_.end()) return it->second;
    std::shared_ptr<const convert::FileIndex> index;
    const auto* format = convert::find_format(layer.format);
    auto pin = cache_.pin(digest);
    auto info = cache_.blob(digest);
    if (!format || !info) return nullptr;  // evicted: asked again later
    int fd = ::open(cache_.blob_path(digest).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nullptr;
    try {
      auto read = [fd](uint64_t offset, uint64_t length) {
        std::string out(length, '\0');
        size_t got = 0;
        while (got < length) {
          ssize_t n = ::pread(fd, out.data() + got, length - got, static_cast<off_t>(offset + got));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) break;
          got += static_cast<size_t>(n);
        }
        out.resize(got);
        return out;
      };
      if (auto built = format->file_index(layer.descriptor, info->size, read))
        index = std::make_shared<const convert::FileIndex>(std::move(*built));
    } catch (const std::exception& e) {
      spdlog::debug("prefetch: no file index for blob {}: {}", digest, e.what());
    }
    ::close(fd);
    if (indexes_.size() >= kMaxIndexes) {
      indexes_.erase(order_.front());
      order_.pop_front();
    }
    indexes_[digest] = index;
    order_.push_back(digest);
    return index;
  }

  cache::Cache& cache_;
  std::set<std::string> manifests_;
  std::map<std::string, Layer> layers_;  // "scope|blob digest" -> its image
  std::map<std::string, std::shared_ptr<const convert::FileIndex>> indexes_;
  std::deque<std::string> order_;
};

LearnedPrefetch::LearnedPrefetch(const Config& config, cache::Cache& cache, Conversions& conversions, Metrics& metrics)
    : config_(config),
      cache_(cache),
      conversions_(conversions),
      metrics_(metrics),
      recorder_(config.variants.learn_prefetch.window.count()),
      catalog_(std::make_unique<Catalog>(cache)),
      learner_(LearnerLimits{config.variants.learn_prefetch.startups}) {
  using T = Metrics::Type;
  metrics_.describe("accel_proxy_prefetch_startups_recorded_total", T::counter,
                    "Lazy-pull start-ups recorded for learned prefetch (with at least one file read).");
  metrics_.describe("accel_proxy_prefetch_optimizations_total", T::counter,
                    "Variants converted again with a learned prefetch list, by format.");
  for (const auto& [key, value] : cache_.notes(kNotePrefix)) {
    auto record = PrefetchLearner::decode(value);
    if (record && parse_image_key(key.substr(std::string_view(kNotePrefix).size())))
      learner_.put(key.substr(std::string_view(kNotePrefix).size()), std::move(*record));
    else
      cache_.drop_note(key);
  }
  for (const auto& dropped : learner_.take_dropped()) cache_.drop_note(kNotePrefix + dropped);
}

LearnedPrefetch::~LearnedPrefetch() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void LearnedPrefetch::start() { thread_ = std::thread([this] { run(); }); }

std::optional<ConversionKey> LearnedPrefetch::parse_image_key(const std::string& image) {
  const size_t slash = image.find('/'), at = image.rfind('@'), bar = image.rfind('|');
  if (slash == std::string::npos || at == std::string::npos || bar == std::string::npos || !(slash < at && at < bar))
    return std::nullopt;
  ConversionKey key{image.substr(0, slash), image.substr(slash + 1, at - slash - 1), image.substr(at + 1, bar - at - 1),
                    image.substr(bar + 1)};
  if (key.upstream.empty() || key.repository.empty() || key.source_digest.empty() || key.format.empty()) return std::nullopt;
  return key;
}

void LearnedPrefetch::served(const std::string& client, ReadEvent event) { recorder_.record(client, std::move(event)); }

std::vector<std::string> LearnedPrefetch::optimized_files(const ConversionKey& key) const {
  std::lock_guard lock(mutex_);
  const auto* record = learner_.find(image_key(key));
  if (!record || record->state != LearnedImage::State::optimized) return {};
  return record->files;
}

void LearnedPrefetch::variant_requested(const ConversionKey& key, const std::function<RegistryAccess()>& access) {
  const std::string image = image_key(key);
  {
    std::lock_guard lock(mutex_);
    const auto* record = learner_.find(image);
    if (!record || record->state != LearnedImage::State::learned) return;
  }
  optimize(image, access());
}

void LearnedPrefetch::run() {
  bool first = true;
  while (true) {
    std::vector<std::pair<std::string, RegistryAccess>> with_robot;
    {
      std::unique_lock lock(mutex_);
      if (!first) wake_.wait_for(lock, std::chrono::milliseconds(250), [&] { return stopping_; });
      if (stopping_) return;
    }
    std::vector<Startup> startups;
    try {
      startups = recorder_.collect(now_ms(), *catalog_, [this](const std::string& image) {
        std::lock_guard lock(mutex_);
        const auto* record = learner_.find(image);
        return !record || record->state == LearnedImage::State::learning;
      });
    } catch (const std::exception& e) {
      spdlog::warn("prefetch: collecting start-ups failed: {}", e.what());
    }
    {
      std::lock_guard lock(mutex_);
      std::vector<std::string> fresh;  // learned now, or (at start) restored learned
      if (first)
        for (const auto& [image, record] : learner_.images())
          if (record.state == LearnedImage::State::learned) fresh.push_back(image);
      for (const auto& s : startups) {
        metrics_.add("accel_proxy_prefetch_startups_recorded_total", {});
        spdlog::info("prefetch start-up recorded image={} files={} reads={} background_reads={}", s.image, s.files.size(),
                     s.reads, s.background_reads);
        if (learner_.add(s, now_ms())) {
          learned(s.image);
          fresh.push_back(s.image);
        }
      }
      for (const auto& dropped : learner_.take_dropped()) cache_.drop_note(kNotePrefix + dropped);
      // They convert with the upstream's robot account when it has one; the others wait for a
      // client's request of the image (variant_requested).
      for (const auto& image : fresh) {
        const auto* record = learner_.find(image);
        if (!record || record->state != LearnedImage::State::learned) continue;
        auto key = parse_image_key(image);
        const auto* upstream = key ? config_.find_upstream(key->upstream) : nullptr;
        if (upstream && !upstream->robot_username.empty())
          with_robot.emplace_back(image, robot_access(*upstream, key->repository));
      }
    }
    first = false;
    for (auto& [image, access] : with_robot) optimize(image, std::move(access));
  }
}

void LearnedPrefetch::learned(const std::string& image) {
  auto* record = learner_.find(image);
  auto key = parse_image_key(image);
  if (!record || !key) return;
  if (!conversions_.configured_prefetch(*key).empty()) {
    record->state = LearnedImage::State::configured;
    spdlog::info("prefetch learned image={} files={} startups={}: the config's prefetch list wins", image,
                 record->files.size(), record->agreeing);
    return;
  }
  spdlog::info("prefetch learned image={} files={} startups={}", image, record->files.size(), record->agreeing);
  store(image, *record);
}

void LearnedPrefetch::store(const std::string& image, const LearnedImage& record) {
  try {
    cache_.put_note(kNotePrefix + image, PrefetchLearner::encode(record));
  } catch (const std::exception& e) {
    spdlog::warn("prefetch: storing the list of {} failed: {}", image, e.what());
  }
}

void LearnedPrefetch::optimize(const std::string& image, RegistryAccess access) {
  auto key = parse_image_key(image);
  if (!key) return;
  std::vector<std::string> files;
  {
    std::lock_guard lock(mutex_);
    auto* record = learner_.find(image);
    if (!record || record->state != LearnedImage::State::learned) return;
    record->state = LearnedImage::State::optimizing;
    files = record->files;
  }
  auto job = conversions_.start(*key, std::move(access), "", std::move(files));
  if (!job) {  // the queue is full: the next request tries again
    std::lock_guard lock(mutex_);
    if (auto* record = learner_.find(image); record && record->state == LearnedImage::State::optimizing)
      record->state = LearnedImage::State::learned;
    return;
  }
  spdlog::info("prefetch optimizing image={} cache_key={}", image, job->cache_key());
  std::weak_ptr<LearnedPrefetch> weak = weak_from_this();
  job->on_finished([weak, image, job] {
    if (auto self = weak.lock()) self->finished(image, job);
  });
}

void LearnedPrefetch::finished(const std::string& image, const std::shared_ptr<ConversionJob>& job) {
  std::lock_guard lock(mutex_);
  auto* record = learner_.find(image);
  if (!record || record->state != LearnedImage::State::optimizing) return;
  if (job->state() == ConversionJob::State::done) {
    if (auto variant = cache_.manifest_variant(job->cache_key())) {
      record->state = LearnedImage::State::optimized;
      record->variant = variant->digest;
      record->updated_ms = now_ms();
      store(image, *record);
      metrics_.add("accel_proxy_prefetch_optimizations_total", {{"format", job->key().format}});
      spdlog::info("prefetch optimized image={} variant={} files={}", image, variant->digest, record->files.size());
      return;
    }
  }
  record->state = LearnedImage::State::learned;
  spdlog::warn("prefetch optimization of {} did not finish ({}); the next request of the image tries again", image,
               job->error());
}

std::string LearnedPrefetch::listing(const std::string& source_key, bool& found) const {
  nlohmann::json images = nlohmann::json::array();
  std::lock_guard lock(mutex_);
  for (const auto& [image, record] : learner_.images()) {
    if (!source_key.empty() && !image.starts_with(source_key + "|")) continue;
    auto key = parse_image_key(image);
    if (!key) continue;
    images.push_back({{"upstream", key->upstream},
                      {"repository", key->repository},
                      {"source", key->source_digest},
                      {"format", key->format},
                      {"state", state_name(record.state)},
                      {"files", record.files},
                      {"startups_agreeing", record.agreeing},
                      {"startups_recorded", record.startups.size()},
                      {"variant", record.variant}});
  }
  found = !images.empty();
  return nlohmann::json{{"images", images}}.dump();
}

}  // namespace accel
