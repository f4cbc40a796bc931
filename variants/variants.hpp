// Serving accelerated variants: recognises variant requests (variant_request.hpp), checks with
// the upstream that the client may read the source, answers from the cache, and on a miss
// starts (or joins) a conversion and waits as the configured policy says.
#pragma once

#include <memory>

#include "auth/read_grants.hpp"
#include "cache/cache.hpp"
#include "variants/conversions.hpp"
#include "variants/learned_prefetch.hpp"
#include "variants/originals.hpp"
#include "proxy/forward.hpp"
#include "proxy/route.hpp"

namespace accel {

// Shared by all worker threads; owned by main(). Made when variants are enabled or some upstream
// has `cache_originals` (both keep their objects in the one cache).
class Variants {
 public:
  Variants(const Config& config, Metrics& metrics);
  cache::Cache& cache() { return cache_; }
  Conversions& conversions() { return conversions_; }
  ReadGrants& grants() { return grants_; }
  // Null when `variants.learn_prefetch` (or variants) is off.
  LearnedPrefetch* learned() { return learned_.get(); }
  Originals* originals() { return originals_.get(); }  // null: no upstream has cache_originals

  // A manifest PUT or DELETE through this replica: forgets the cached resolution of the tag
  // (for a digest, of every tag naming it) here, and with Redis tells the other replicas to.
  void forget_tag(const std::string& upstream, const std::string& repository, const std::string& reference);

 private:
  // Drops the resolutions on this replica only.
  void drop_resolutions(const std::string& upstream, const std::string& repository, const std::string& reference);
  // Applies another replica's forget_tag (a broadcast on the "tags" topic). Runs on the
  // coordinator's listener thread, which conversions_ stops before cache_ is destroyed.
  void on_tag_broadcast(const std::string& message, const std::string& own_replica_id);

  Metrics& metrics_;
  cache::Cache cache_;
  Conversions conversions_;
  ReadGrants grants_;
  std::shared_ptr<LearnedPrefetch> learned_;  // its conversion callbacks hold it weakly
  std::unique_ptr<Originals> originals_;  // destroyed first: its committer thread uses the cache
};

// Answers the request if it concerns a variant or a cached object and returns true; otherwise
// returns false and the request is forwarded as usual (`route` may then have been pointed at the
// source image, when a miss falls back to it).
net::awaitable<bool> handle_variant_request(ProxyContext& ctx, const Request& request, Route& route,
                                            const UpstreamConfig& upstream, ClientConnection& client, ExchangeInfo& info);

// Originals (an upstream with `cache_originals`; variants/originals.hpp): the upstream answered
// this GET by digest 200 with its whole body. Returns a capture for the body to be copied into
// while it streams to the client, or null when it is not to be kept. The answer is a positive
// read check with the client's credentials: remembered as its read grant for the repository.
std::unique_ptr<OriginalCapture> capture_original(ProxyContext& ctx, const Request& request, const Route& route,
                                                  const UpstreamConfig& upstream, const UpstreamResponse& response);
// Whether a manifest GET (by digest, of an upstream with `cache_originals`) is to be kept: the
// caller then reads the body whole and hands it to keep_original_manifest.
bool keeps_original(const ProxyContext& ctx, const Request& request, const Route& route, const UpstreamConfig& upstream);
void keep_original_manifest(ProxyContext& ctx, const Request& request, const Route& route, const UpstreamConfig& upstream,
                            const UpstreamResponse& response, std::string body);

// Descriptors (JSON) of the variants the cache holds for a source manifest in this repository,
// for the Referrers API. Empty when variants are off.
std::vector<std::string> variant_referrers(ProxyContext& ctx, const std::string& upstream, const std::string& repository,
                                           const std::string& source_digest);

// A manifest PUT or DELETE through the proxy succeeded: the cached resolution of that tag (or,
// for a digest, of every tag naming it) is forgotten on this replica and, with Redis, on the
// others, so the next variant request resolves it upstream again.
void forget_tag(ProxyContext& ctx, const UpstreamConfig& upstream, const std::string& repository,
                const std::string& reference);

// A manifest PUT through the proxy succeeded: starts the conversions webhooks.rules ask for
// the pushed image, with the upstream's robot account, as a push webhook would.
void convert_pushed(ProxyContext& ctx, const UpstreamConfig& upstream, const std::string& repository,
                    const std::string& digest, const std::string& reference);

// POST /hooks/harbor and /hooks/registry: start the conversions the webhook rules ask for.
net::awaitable<void> handle_webhook(ProxyContext& ctx, const Request& request, const Route& route, ClientConnection& client);

// GET /api/conversions: the conversions queued, running and recently finished.
net::awaitable<void> handle_conversions_api(ProxyContext& ctx, const Request& request, ClientConnection& client);

// GET /api/prefetch[/<upstream>/<repository>@<digest>]: what was learned for each image.
net::awaitable<void> handle_prefetch_api(ProxyContext& ctx, const Request& request, const Route& route,
                                         ClientConnection& client);

}  // namespace accel
