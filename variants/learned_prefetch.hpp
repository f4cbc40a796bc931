// Learned prefetch, the orchestration: what the HTTP side served from the cache goes to the
// StartupRecorder (startup_recorder.*); a thread of its own collects finished start-ups every
// 250 ms, maps them to files through each layer's FileIndex (read from the cached blob, by the
// format's plug-in), and hands them to the PrefetchLearner (prefetch_learner.*). When an image's
// start-ups agree, it converts the variant again with the learned list (a conversion of its own,
// under another cache key); once that is done the list is part of the image's options, so the
// suffix tag, the mirror header and Accept resolve to the optimized variant. The config's
// prefetch rule for a repository wins. Learned lists are kept in the cache's notes, so a restart
// keeps them. Off (`variants.learn_prefetch.enabled: false`) none of this exists.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cache/cache.hpp"
#include "proxy/config.hpp"
#include "proxy/metrics.hpp"
#include "variants/conversions.hpp"
#include "variants/prefetch_learner.hpp"
#include "variants/startup_recorder.hpp"

namespace accel {

class LearnedPrefetch : public std::enable_shared_from_this<LearnedPrefetch> {
 public:
  // Restores the stored lists; start() then starts the thread.
  LearnedPrefetch(const Config& config, cache::Cache& cache, Conversions& conversions, Metrics& metrics);
  ~LearnedPrefetch();
  void start();

  // The HTTP side served `event`'s object from the cache to `client` (a hash of its address
  // and credential) after its read check. Any thread; a mutex'd append.
  void served(const std::string& client, ReadEvent event);
  // A variant request for `key` passed its read check: a learned image waiting for its
  // optimization (no robot account to convert with) starts it with this client's access.
  // `access` is only called then.
  void variant_requested(const ConversionKey& key, const std::function<RegistryAccess()>& access);
  // The learned list a conversion of `key` takes (the optimized image's), or empty.
  std::vector<std::string> optimized_files(const ConversionKey& key) const;

  // GET /api/prefetch: every image (with `source_key`, "upstream/repository@digest": its
  // formats), as JSON; empty when `source_key` names none.
  std::string listing(const std::string& source_key, bool& found) const;

  // "upstream/repository@digest|format", the learner's name for an image.
  static std::string image_key(const ConversionKey& key) { return key.source_key() + "|" + key.format; }
  static std::optional<ConversionKey> parse_image_key(const std::string& image);

 private:
  class Catalog;
  void run();
  void learned(const std::string& image);  // mutex_ held
  void optimize(const std::string& image, RegistryAccess access);
  void finished(const std::string& image, const std::shared_ptr<ConversionJob>& job);
  void store(const std::string& image, const LearnedImage& record);  // mutex_ held

  const Config& config_;
  cache::Cache& cache_;
  Conversions& conversions_;
  Metrics& metrics_;
  StartupRecorder recorder_;
  std::unique_ptr<Catalog> catalog_;  // the learning thread's only

  mutable std::mutex mutex_;
  PrefetchLearner learner_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace accel
