#include "variants/variants.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <fcntl.h>
#include <functional>
#include <fstream>
#include <iterator>
#include <set>
#include <spdlog/spdlog.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include "auth/credentials.hpp"
#include "cache/blob_store.hpp"
#include "convert/sha256.hpp"
#include "proxy/exchange.hpp"
#include "proxy/http_headers.hpp"
#include "proxy/oci_names.hpp"
#include "proxy/oci_error.hpp"
#include "proxy/range.hpp"
#include "convert/formats.hpp"
#include "proxy/referrers.hpp"
#include "variants/variant_request.hpp"
#include "variants/webhooks.hpp"
#include <nlohmann/json.hpp>

namespace accel {

namespace {

constexpr const char* kManifestAccept =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
constexpr auto use_tuple = net::as_tuple(net::use_awaitable);

// Variants proper (conversions, variant requests, webhooks, referrers) are on. The Variants object
// also exists for `cache_originals` alone; then only cached originals are served.
bool variants_on(const ProxyContext& ctx) { return ctx.variants && ctx.config.variants.enabled; }

// Bodies up to this size are read from the file and leave with the answer's head in one write:
// for a manifest, a separate write of the head and a sendfile cost more than the copy.
constexpr uint64_t kInlineMaxBytes = 64 * 1024;

cache::CacheLimits cache_limits(const Config& config) {
  cache::CacheLimits l;
  l.max_bytes = config.variants.cache_max_bytes;
  return l;
}

// Over TLS the bytes must be encrypted on their way: read into the connection's scratch buffer
// and written like any other body.
net::awaitable<void> copy_file_to_client(ClientConnection& client, int fd, uint64_t offset, uint64_t length) {
  auto scratch = client.scratch();
  uint64_t left = length;
  while (left > 0) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(left, scratch.size()));
    ssize_t n = ::pread(fd, scratch.data(), want, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error(n == 0 ? "cached blob shorter than indexed" : "reading a cached blob failed");
    co_await client.write_body(net::buffer(scratch.data(), static_cast<size_t>(n)));
    offset += static_cast<uint64_t>(n);
    left -= static_cast<uint64_t>(n);
  }
}

// At most this much per sendfile(2) call. One call fills the whole send buffer (megabytes) under
// the socket's lock, and the client's ACKs wait in the backlog until it returns: the two sides
// take turns instead of overlapping. Measured on the 1 GiB cached blob over loopback (2026-12-08,
// interleaved): 256 KiB calls 1.7-2.3 GB/s, unbounded calls 1.0-1.5 GB/s, the registry itself
// 1.2-1.7 GB/s; 16 concurrent GETs were no slower (1.44-1.57 against 1.35-1.52 GB/s).
constexpr uint64_t kSendfileMaxBytes = 256 * 1024;

// Moves `length` bytes of a file from `offset` to the client socket with sendfile(2) (plain
// TCP), or copies them (TLS).
net::awaitable<void> send_file_range(ClientConnection& client, int fd, uint64_t offset, uint64_t length) {
  auto* plain = client.plain_socket();
  if (!plain) {
    co_await copy_file_to_client(client, fd, offset, length);
    co_return;
  }
  auto& socket = *plain;
  if (!socket.non_blocking()) socket.non_blocking(true);  // each call is an ioctl
  off_t pos = static_cast<off_t>(offset);
  uint64_t left = length;
  while (left > 0) {
    ssize_t n = ::sendfile(socket.native_handle(), fd, &pos, static_cast<size_t>(std::min<uint64_t>(left, kSendfileMaxBytes)));
    if (n > 0) {
      left -= static_cast<uint64_t>(n);
      client.count_body(static_cast<uint64_t>(n));
    } else if (n < 0 && errno == EAGAIN) {
      if (!co_await wait_ready(socket, net::ip::tcp::socket::wait_write, client.write_timeout()))
        throw std::runtime_error("client stalled while receiving a cached blob");
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      throw std::runtime_error(n == 0 ? "cached blob shorter than indexed" : "sendfile failed");
    }
  }
}

// What serve_cached() sent, for learned prefetch.
struct Served {
  std::string digest;
  bool head = false;
  std::vector<ByteRange> ranges;  // empty: the whole object
};

// Serves a cached object (manifest or blob) with HEAD, Range and multi-range. Returns false,
// having sent nothing, when the cache does not hold it (never cached, or evicted meanwhile).
// `kind` ("blob", "manifest") labels the metrics: a variant's hit, or with `original` an
// original's (hits and body bytes).
net::awaitable<bool> serve_cached(ProxyContext& ctx, const Request& request, ClientConnection& client,
                                  const std::string& digest, const char* kind, bool original = false,
                                  Served* served = nullptr) {
  auto& cache = ctx.variants->cache();
  auto pin = cache.pin(digest);  // first: a pinned blob is not evicted while we send it
  auto info = cache.blob(digest);
  int fd = -1;
  if (info) {
    try {
      fd = ::open(cache.blob_path(digest).c_str(), O_RDONLY | O_CLOEXEC);
    } catch (const cache::CacheError&) {
      fd = -1;
    }
  }
  if (fd < 0) co_return false;
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close_fd{fd};
  cache.touch(digest);
  if (original) ctx.metrics.add("accel_proxy_originals_hits_total", {{"kind", kind}});
  else ctx.metrics.add("accel_proxy_cache_hits_total", {{"kind", kind}});
  const uint64_t sent_before = client.body_bytes();
  struct CountBytes {  // also when the transfer breaks off: what was sent, was sent
    ProxyContext& ctx;
    ClientConnection& client;
    const char* kind;
    bool original;
    uint64_t before;
    ~CountBytes() {
      if (original && client.body_bytes() > before)
        ctx.metrics.add("accel_proxy_originals_served_bytes_total", {{"kind", kind}},
                        static_cast<double>(client.body_bytes() - before));
    }
  } count_bytes{ctx, client, kind, original, sent_before};

  const uint64_t size = info->size;
  ResponseHead head = registry_head();
  head.set("Content-Type", info->media_type.empty() ? "application/octet-stream" : info->media_type);
  head.set("Docker-Content-Digest", digest);
  head.set("ETag", "\"" + digest + "\"");
  head.set("Accept-Ranges", "bytes");
  const bool head_only = request.method() == http::verb::head;
  auto range = parse_range_header(request[http::field::range]);
  if (range.kind == RangeHeader::Kind::invalid) {
    co_await send_error(client, 416, "RANGE_INVALID", "malformed Range header");
    co_return true;
  }
  std::vector<ByteRange> ranges;
  if (range.kind == RangeHeader::Kind::ranges && !head_only) {
    ranges = resolve_ranges(range.specs, size);
    if (ranges.empty()) {
      ResponseHead err = registry_head();
      err.set("Content-Range", "bytes */" + std::to_string(size));
      co_await send_local(client, 416, "application/json", oci_error_json("RANGE_INVALID", "requested range not satisfiable"), err);
      co_return true;
    }
  }
  if (served) *served = {digest, head_only, ranges};
  if (ranges.empty()) {
    head.content_length = size;
    co_await client.write_head(head);
    if (head_only) co_return true;
    if (size <= kInlineMaxBytes) {
      auto scratch = client.scratch();
      ssize_t n = ::pread(fd, scratch.data(), static_cast<size_t>(size), 0);
      if (n < 0 || static_cast<uint64_t>(n) != size) throw std::runtime_error("cached blob shorter than indexed");
      co_await client.write_body(net::buffer(scratch.data(), static_cast<size_t>(n)));
      co_await client.finish();
      co_return true;
    }
    co_await client.flush();
    co_await send_file_range(client, fd, 0, size);
    co_return true;
  }
  head.status = 206;
  if (ranges.size() == 1) {
    head.set("Content-Range", content_range(ranges[0], size));
    head.content_length = ranges[0].length();
    co_await client.write_head(head);
    co_await client.flush();
    co_await send_file_range(client, fd, ranges[0].first, ranges[0].length());
    co_return true;
  }
  auto framing = frame_multipart(ranges, size, info->media_type.empty() ? "application/octet-stream" : info->media_type,
                                 make_boundary());
  head.set("Content-Type", framing.content_type);
  head.content_length = framing.content_length;
  co_await client.write_head(head);
  for (size_t i = 0; i < ranges.size(); ++i) {
    co_await client.write_body(net::buffer(framing.part_headers[i]));
    co_await client.flush();
    co_await send_file_range(client, fd, ranges[i].first, ranges[i].length());
  }
  co_await client.write_body(net::buffer(framing.closing));
  co_await client.finish();
  co_return true;
}

// The converted manifest mapped under `cache_key`, if the cache holds it (a mapping goes with its
// blobs on eviction); false, with nothing sent, when it does not.
net::awaitable<bool> serve_variant(ProxyContext& ctx, const Request& request, ClientConnection& client,
                                   const std::string& cache_key, Served* served) {
  auto variant = ctx.variants->cache().manifest_variant(cache_key);
  if (!variant) co_return false;
  co_return co_await serve_cached(ctx, request, client, variant->digest, "manifest", false, served);
}

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Learned prefetch: what a client (its address and credential, hashed) was served from the
// cache after its read check.
void note_served(ProxyContext& ctx, const Request& request, ClientConnection& client, const std::string& scope,
                 bool manifest, const Served& served) {
  auto* learned = ctx.variants->learned();
  if (!learned || served.head || served.digest.empty()) return;
  ReadEvent event;
  event.at_ms = unix_ms();
  event.manifest = manifest;
  event.scope = scope;
  event.digest = served.digest;
  for (const auto& r : served.ranges) event.ranges.emplace_back(r.first, r.last + 1);
  learned->served(client_key(client.peer_address(), request[http::field::authorization]), std::move(event));
}

// Asks the upstream whether this client may read `proof` ("manifest:<digest>" or
// "blob:<digest>") in the repository, with the client's own credentials. On "no" the upstream's
// answer (401 with its challenge, 403, 404) has been relayed and false is returned.
net::awaitable<bool> client_may_read(ProxyContext& ctx, const Request& request, const UpstreamConfig& upstream,
                                     const std::string& repository, const std::string& proof, ClientConnection& client) {
  auto& grants = ctx.variants->grants();
  const auto authorization = request[http::field::authorization];
  if (grants.allowed(authorization, upstream.name, repository)) {
    ctx.metrics.add("accel_proxy_authorization_checks_total", {{"result", "cached"}});
    co_return true;
  }
  const bool manifest = proof.starts_with("manifest:");
  const std::string digest = proof.substr(proof.find(':') + 1);
  const Endpoint endpoint = endpoint_of(upstream);
  Request check = upstream_request(request, http::verb::head,
                                   "/v2/" + repository + (manifest ? "/manifests/" : "/blobs/") + digest, endpoint);
  check.erase(http::field::range);
  check.set(http::field::accept, kManifestAccept);
  auto answer = co_await fetch(ctx, upstream.name, endpoint, std::move(check));
  if (answer.response->status() == 200) {
    grants.grant(authorization, upstream.name, repository);
    ctx.metrics.add("accel_proxy_authorization_checks_total", {{"result", "allowed"}});
    co_return true;
  }
  ctx.metrics.add("accel_proxy_authorization_checks_total", {{"result", "denied"}});
  ResponseHead head = head_from(*answer.response);
  if (answer.response->status() == 401) rewrite_challenge(ctx, upstream, request, head);
  // A HEAD answer has no body; give the client a proper error body for the status.
  const unsigned status = answer.response->status();
  std::string code = status == 401 ? "UNAUTHORIZED" : status == 403 ? "DENIED" : status == 404 ? "NAME_UNKNOWN" : "UNAVAILABLE";
  std::string body = oci_error_json(code, "the upstream does not let this client read the source");
  head.set("Content-Type", "application/json");
  head.content_length = body.size();
  std::erase_if(head.fields, [](const auto& f) { return iequals(f.first, "Docker-Content-Digest"); });
  co_await client.write_head(head);
  co_await client.write_body(net::buffer(body));
  co_await client.finish();
  co_return false;
}

// Waits until `job` finishes or `limit` passes; true when it finished.
net::awaitable<bool> wait_for(std::shared_ptr<ConversionJob> job, Duration limit) {
  auto executor = co_await net::this_coro::executor;
  auto timer = std::make_shared<net::steady_timer>(executor, limit);
  job->on_finished([timer, executor] { net::post(executor, [timer] { timer->cancel(); }); });
  co_await timer->async_wait(use_tuple);  // cancelled (finished) or expired: the state tells
  auto state = job->state();
  co_return state == ConversionJob::State::done || state == ConversionJob::State::failed;
}

net::awaitable<bool> answer_variant(ProxyContext& ctx, const Request& request, Route& route, const UpstreamConfig& upstream,
                                    ClientConnection& client, const VariantAsk& ask, const std::string& source_digest);

}  // namespace

Variants::Variants(const Config& config, Metrics& metrics)
    : metrics_(metrics),
      cache_(config.cache_dir, cache_limits(config)),
      conversions_(config, cache_, metrics),
      grants_(config.variants.authorization_ttl),
      originals_(config.caches_originals() ? std::make_unique<Originals>(cache_, metrics, config.variants.cache_max_bytes)
                                           : nullptr) {
  using T = Metrics::Type;
  metrics.describe("accel_proxy_cache_hits_total", T::counter, "Variant objects served from the cache, by kind.");
  metrics.describe("accel_proxy_cache_misses_total", T::counter, "Variant requests that needed a conversion, by format.");
  metrics.describe("accel_proxy_authorization_checks_total", T::counter, "Upstream read checks before serving cached content, by result.");
  metrics.describe("accel_proxy_cache_evictions_total", T::counter, "Blobs evicted from the cache.");
  cache_.on_evict = [&metrics](const std::string&) { metrics.add("accel_proxy_cache_evictions_total", {}); };
  metrics.describe("accel_proxy_tag_invalidations_total", T::counter,
                   "Cached tag resolutions forgotten after a manifest PUT or DELETE, by origin (push: through this replica; replica: told by another).");
  if (auto* coordinator = conversions_.coordinator())
    coordinator->listen("tags", [this, self = coordinator->replica_id()](const std::string& message) {
      on_tag_broadcast(message, self);
    });
  if (config.variants.enabled && config.variants.learn_prefetch.enabled) {
    learned_ = std::make_shared<LearnedPrefetch>(config, cache_, conversions_, metrics);
    std::weak_ptr<LearnedPrefetch> weak = learned_;
    conversions_.set_learned_prefetch([weak](const ConversionKey& key) {
      auto learned = weak.lock();
      return learned ? learned->optimized_files(key) : std::vector<std::string>{};
    });
    learned_->start();
  }
}

void Variants::drop_resolutions(const std::string& upstream, const std::string& repository, const std::string& reference) {
  // Resolutions are keyed "<upstream>/<repository>:<tag>" (handle_variant_request).
  const std::string scope = upstream + "/" + repository + ":";
  if (looks_like_digest(reference)) cache_.drop_tags_naming(scope, reference);
  else cache_.drop_tag(scope + reference);
}

void Variants::forget_tag(const std::string& upstream, const std::string& repository, const std::string& reference) {
  drop_resolutions(upstream, repository, reference);
  metrics_.add("accel_proxy_tag_invalidations_total", {{"origin", "push"}});
  auto* coordinator = conversions_.coordinator();
  if (!coordinator) return;
  // Upstream names are the replicas' shared configuration, so they name the same registry.
  const nlohmann::json message{{"replica", coordinator->replica_id()},
                               {"upstream", upstream},
                               {"repository", repository},
                               {"reference", reference}};
  if (!coordinator->broadcast("tags", message.dump()))
    spdlog::warn("push upstream={} repo={} reference={}: Redis unreachable, other replicas keep their resolution of it "
                 "until variants.tag_ttl passes",
                 upstream, repository, reference);
}

void Variants::on_tag_broadcast(const std::string& message, const std::string& own_replica_id) {
  auto doc = nlohmann::json::parse(message, nullptr, false);
  if (!doc.is_object()) return;
  auto text = [&](const char* name) { return doc.contains(name) && doc[name].is_string() ? doc[name].get<std::string>() : std::string(); };
  if (text("replica") == own_replica_id) return;  // ours: done already
  const std::string upstream = text("upstream"), repository = text("repository"), reference = text("reference");
  if (upstream.empty() || repository.empty() || reference.empty()) return;
  drop_resolutions(upstream, repository, reference);
  metrics_.add("accel_proxy_tag_invalidations_total", {{"origin", "replica"}});
  spdlog::info("tag resolution forgotten upstream={} repo={} reference={}: pushed through another replica", upstream,
               repository, reference);
}

net::awaitable<bool> handle_variant_request(ProxyContext& ctx, const Request& request, Route& route,
                                            const UpstreamConfig& upstream, ClientConnection& client, ExchangeInfo& info) {
  // A malformed name, tag or digest is the upstream's to answer: never a cache key or a conversion.
  if (!ctx.variants || !route.well_formed) co_return false;
  auto& cache = ctx.variants->cache();
  const std::string scope = upstream.name + "/" + route.repository;

  // Anything we made or kept for this repository, asked for by digest (blobs, child manifests, the
  // variant manifest itself after a client resolved its tag, and with cache_originals the
  // originals fetched through this repository).
  if (route.kind == RouteKind::blob || (route.kind == RouteKind::manifest && route.reference_is_digest())) {
    if (auto proof = cache.member(scope, route.reference)) {
      // An original's proof is the object itself; a converted object's is its source.
      const bool original = std::string_view(*proof).substr(proof->find(':') + 1) == route.reference;
      const char* kind = route.kind == RouteKind::blob ? "blob" : "manifest";
      bool serve = original ? upstream.cache_originals : variants_on(ctx);
      if (serve && original && route.kind == RouteKind::manifest) {
        // A client that does not accept the kept manifest's type gets whatever the upstream says.
        auto info = cache.blob(route.reference);
        serve = info && accept_allows(request[http::field::accept], info->media_type);
      }
      if (serve) {
        if (!co_await client_may_read(ctx, request, upstream, route.repository, *proof, client)) co_return true;
        // Evicted meanwhile: the upstream may still have the object, so the ordinary path asks it.
        Served served;
        if (co_await serve_cached(ctx, request, client, route.reference, kind, original, &served)) {
          // Learned prefetch reads what lazy pullers read of variants; originals have no file index.
          if (!original) note_served(ctx, request, client, scope, route.kind == RouteKind::manifest, served);
          co_return true;
        }
      }
    }
  }
  if (route.kind != RouteKind::manifest || !variants_on(ctx)) co_return false;
  auto ask = variant_asked(route.reference, request[ctx.config.variants.header], request[http::field::accept],
                           ctx.config.variants);
  if (!ask) co_return false;
  const Endpoint endpoint = endpoint_of(upstream);

  if (ask->how == VariantAsk::How::tag_suffix) {
    // The upstream's own tag of that name wins.
    Request probe = upstream_request(request, http::verb::head, "/v2/" + route.repository + "/manifests/" + route.reference, endpoint);
    auto answer = co_await fetch(ctx, upstream.name, endpoint, std::move(probe));
    if (answer.response->status() != 404) co_return false;  // 200 or 401: the ordinary path answers
  }

  // Resolve the source and check, with the client's credentials, that it may read it. Both
  // answers are reused for a short time: the tag's digest for `tag_ttl` (per repository), the
  // client's read grant for `authorization_ttl` (per credential and repository).
  const std::string tag_key = scope + ":" + ask->source_reference;
  const auto authorization = request[http::field::authorization];
  if (!looks_like_digest(ask->source_reference) && ctx.variants->grants().allowed(authorization, upstream.name, route.repository)) {
    if (auto digest = cache.tag(tag_key)) {
      ctx.metrics.add("accel_proxy_authorization_checks_total", {{"result", "cached"}});
      co_return co_await answer_variant(ctx, request, route, upstream, client, *ask, *digest);
    }
  }
  Request resolve = upstream_request(request, http::verb::head, "/v2/" + route.repository + "/manifests/" + ask->source_reference, endpoint);
  resolve.set(http::field::accept, kManifestAccept);
  auto resolved = co_await fetch(ctx, upstream.name, endpoint, std::move(resolve));
  if (resolved.response->status() != 200) {
    resolved.response.reset();
    route.reference = ask->source_reference;  // the ordinary path relays the upstream's answer
    co_return false;
  }
  std::string source_digest(resolved.response->headers()["Docker-Content-Digest"]);
  resolved.response.reset();
  if (source_digest.empty()) {
    if (looks_like_digest(ask->source_reference)) {
      source_digest = ask->source_reference;
    } else {
      Request get = upstream_request(request, http::verb::get, "/v2/" + route.repository + "/manifests/" + ask->source_reference, endpoint);
      get.set(http::field::accept, kManifestAccept);
      auto body = co_await fetch(ctx, upstream.name, endpoint, std::move(get));
      source_digest = convert::Sha256::of(co_await body.response->read_all(ctx.config.limits.max_manifest_bytes));
    }
  }
  ctx.variants->grants().grant(authorization, upstream.name, route.repository);
  if (!looks_like_digest(ask->source_reference))
    cache.put_tag(tag_key, source_digest,
                  std::max(std::chrono::seconds(1), std::chrono::duration_cast<std::chrono::seconds>(ctx.config.variants.tag_ttl)));
  co_return co_await answer_variant(ctx, request, route, upstream, client, *ask, source_digest);
}

namespace {

// The variant of a resolved source digest: from the cache, or converted now (per `on_miss`).
// Returns false when the request is to be forwarded (fallback to the original image).
net::awaitable<bool> answer_variant(ProxyContext& ctx, const Request& request, Route& route, const UpstreamConfig& upstream,
                                    ClientConnection& client, const VariantAsk& ask, const std::string& source_digest) {
  auto& conversions = ctx.variants->conversions();
  const ConversionKey key{upstream.name, route.repository, source_digest, ask.format};
  const std::string cache_key = conversions.cache_key(key);
  const std::string scope = upstream.name + "/" + route.repository;
  auto access = [&] {
    RegistryAccess a;
    a.upstream = upstream;
    a.repository = route.repository;
    a.authorization = std::string(request[http::field::authorization]);
    return a;
  };
  // A learned prefetch list waiting for a client to convert with (no robot account): this one.
  if (auto* learned = ctx.variants->learned()) learned->variant_requested(key, access);
  Served served;
  if (co_await serve_variant(ctx, request, client, cache_key, &served)) {
    note_served(ctx, request, client, scope, true, served);
    co_return true;
  }

  ctx.metrics.add("accel_proxy_cache_misses_total", {{"format", ask.format}});
  auto job = conversions.start(key, access(), looks_like_digest(ask.source_reference) ? "" : ask.source_reference);
  const auto policy = ctx.config.variants.on_miss;
  if (job && policy != VariantsConfig::OnMiss::reject)
    co_await wait_for(job, policy == VariantsConfig::OnMiss::wait ? ctx.config.variants.wait_limit : ctx.config.variants.wait);
  if (co_await serve_variant(ctx, request, client, cache_key, &served)) {
    note_served(ctx, request, client, scope, true, served);
    co_return true;
  }
  std::string why = !job ? "conversion queue is full"
                    : job->state() == ConversionJob::State::failed ? "conversion failed: " + job->error()
                                                                   : "conversion is still running";
  if (policy == VariantsConfig::OnMiss::fallback) {
    // A pull never fails because of conversion: the original image it is.
    spdlog::info("variant fallback repo={} reference={} format={} reason=\"{}\"", route.repository, route.reference,
                 ask.format, why);
    route.reference = ask.source_reference;
    co_return false;
  }
  if (policy == VariantsConfig::OnMiss::reject) {
    co_await send_error(client, 404, "MANIFEST_UNKNOWN", "variant not converted yet (" + why + ")");
  } else {
    co_await send_error(client, 502, "UNAVAILABLE", why);
  }
  co_return true;
}

}  // namespace

namespace {

// Webhooks and the API carry no registry credentials: a shared secret guards them.
bool secret_ok(const ProxyContext& ctx, const Request& request) {
  return secret_matches(request[http::field::authorization], ctx.config.webhooks.secret);
}

// Why a pushed manifest is not converted, or nullptr when it is a source.
const char* not_a_source(ProxyContext& ctx, const UpstreamConfig& upstream, const PushEvent& event) {
  if (ctx.variants->cache().member(upstream.name + "/" + event.repository, event.digest)) return "ignored: made by this proxy";
  if (event.tag.starts_with("sha256-") && event.tag.size() == 7 + 64) return "ignored: a referrers index";
  for (const auto& [format, suffix] : ctx.config.variants.suffixes)
    if (!suffix.empty() && event.tag.size() > suffix.size() && event.tag.ends_with(suffix)) return "ignored: a variant tag";
  return nullptr;
}

// Starts what the rules ask for each pushed image; returns the JSON answer. (A plain function:
// GCC 12 miscompiles some brace-initialised JSON inside coroutines.)
std::string start_pushed_conversions(ProxyContext& ctx, const UpstreamConfig& upstream, const std::vector<PushEvent>& events) {
  nlohmann::json accepted = nlohmann::json::array();
  for (const auto& event : events) {
    if (!is_valid_repository(event.repository) || !is_valid_digest(event.digest)) continue;
    // Write-back makes the registry send events for the proxy's own pushes (Harbor sends one
    // per manifest PUT): variants, referrers fallback indexes and suffix tags are not sources.
    if (const char* why = not_a_source(ctx, upstream, event)) {
      accepted.push_back({{"repository", event.repository}, {"digest", event.digest}, {"tag", event.tag}, {"state", why}});
      continue;
    }
    std::set<std::string> formats;
    for (const auto& rule : ctx.config.webhooks.rules)
      for (const auto& pattern : rule.repositories)
        if (repository_matches(pattern, event.repository)) formats.insert(rule.formats.begin(), rule.formats.end());
    for (const auto& format : formats) {
      ConversionKey key{upstream.name, event.repository, event.digest, format};
      auto& conversions = ctx.variants->conversions();
      std::string state = "cached";
      if (!ctx.variants->cache().manifest_variant(conversions.cache_key(key))) {
        auto job = conversions.start(key, robot_access(upstream, event.repository), event.tag == event.digest ? "" : event.tag);
        if (!job) state = std::string("rejected: queue full");
        else if (job->state() == ConversionJob::State::failed) state = "failed: " + job->error();
        else state = std::string("queued");
      }
      accepted.push_back({{"repository", event.repository}, {"digest", event.digest}, {"tag", event.tag},
                          {"format", format}, {"state", state}});
    }
  }
  return nlohmann::json{{"conversions", accepted}}.dump();
}

std::string conversions_listing(ProxyContext& ctx) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& c : ctx.variants->conversions().list())
    list.push_back({{"upstream", c.key.upstream},
                    {"repository", c.key.repository},
                    {"source", c.key.source_digest},
                    {"format", c.key.format},
                    {"state", c.state},
                    {"error", c.error},
                    {"bytes_done", c.bytes_done}});
  return nlohmann::json{{"conversions", list}, {"queue_depth", ctx.variants->conversions().queue_depth()}}.dump();
}

}  // namespace

void forget_tag(ProxyContext& ctx, const UpstreamConfig& upstream, const std::string& repository,
                const std::string& reference) {
  if (ctx.variants) ctx.variants->forget_tag(upstream.name, repository, reference);
}

void convert_pushed(ProxyContext& ctx, const UpstreamConfig& upstream, const std::string& repository,
                    const std::string& digest, const std::string& reference) {
  if (!variants_on(ctx) || ctx.config.webhooks.rules.empty()) return;
  PushEvent event;
  event.repository = repository;
  event.digest = digest;
  event.tag = reference;
  std::string answer = start_pushed_conversions(ctx, upstream, {event});
  spdlog::info("push repo={} digest={} conversions={}", repository, digest, answer);
}

std::vector<std::string> variant_referrers(ProxyContext& ctx, const std::string& upstream, const std::string& repository,
                                           const std::string& source_digest) {
  std::vector<std::string> out;
  if (!variants_on(ctx)) return out;
  const ConversionKey source{upstream, repository, source_digest, ""};
  auto& cache = ctx.variants->cache();
  for (const auto& [key, record] : cache.variants_of(source.source_key())) {
    const std::string format = ConversionKey::format_in(key);
    // The descriptor the spec asks for is built from the manifest itself (artifactType from its
    // config, its annotations), as a registry with the Referrers API would list it.
    auto pin = cache.pin(record.digest);
    if (!cache.blob(record.digest)) continue;  // evicted meanwhile
    std::ifstream in(cache.blob_path(record.digest), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto descriptor = referrer_descriptor(bytes, record.media_type, record.digest);
    if (!descriptor) continue;
    const auto* f = convert::find_format(format);
    if (f && f->listed_first_among_referrers()) out.insert(out.begin(), std::move(*descriptor));
    else out.push_back(std::move(*descriptor));
  }
  return out;
}

net::awaitable<void> handle_webhook(ProxyContext& ctx, const Request& request, const Route& route, ClientConnection& client) {
  if (!variants_on(ctx) || ctx.config.webhooks.secret.empty()) {
    co_await send_error(client, 404, "UNSUPPORTED", "webhooks are not configured");
    co_return;
  }
  if (request.method() != http::verb::post) {
    co_await send_error(client, 405, "UNSUPPORTED", "webhooks are POST requests");
    co_return;
  }
  if (!secret_ok(ctx, request)) {
    co_await send_error(client, 401, "UNAUTHORIZED", "missing or wrong webhook secret");
    co_return;
  }
  std::vector<PushEvent> events;
  std::string malformed;
  try {
    events = route.kind == RouteKind::webhook_harbor ? parse_harbor_webhook(request.body(), request["Ce-Type"])
                                                     : parse_registry_notification(request.body());
  } catch (const std::exception& e) {
    malformed = e.what();
  }
  if (!malformed.empty()) {
    co_await send_error(client, 400, "UNSUPPORTED", "malformed webhook payload: " + malformed);
    co_return;
  }
  std::string answer = start_pushed_conversions(ctx, *ctx.config.find_upstream(ctx.config.webhooks.upstream), events);
  ResponseHead head;
  head.status = 202;
  co_await send_local(client, 202, "application/json", answer, head);
}

net::awaitable<void> handle_prefetch_api(ProxyContext& ctx, const Request& request, const Route& route,
                                         ClientConnection& client) {
  if (!ctx.variants || !ctx.variants->learned()) {
    co_await send_error(client, 404, "UNSUPPORTED", "learned prefetch is off");
    co_return;
  }
  if (request.method() != http::verb::get && request.method() != http::verb::head) {
    co_await send_error(client, 405, "UNSUPPORTED", "the prefetch API is read-only");
    co_return;
  }
  if (!ctx.config.webhooks.secret.empty() && !secret_ok(ctx, request)) {
    co_await send_error(client, 401, "UNAUTHORIZED", "missing or wrong secret");
    co_return;
  }
  // /api/prefetch/<upstream>/<repository>@<digest>: that source's images only.
  const std::string& source = route.reference;
  if (!source.empty()) {
    const size_t slash = source.find('/'), at = source.rfind('@');
    if (slash == std::string::npos || at == std::string::npos || at < slash ||
        !is_valid_repository(source.substr(slash + 1, at - slash - 1)) || !is_valid_digest(source.substr(at + 1))) {
      co_await send_error(client, 400, "NAME_INVALID", "expected /api/prefetch/<upstream>/<repository>@<digest>");
      co_return;
    }
  }
  bool found = false;
  std::string listing = ctx.variants->learned()->listing(source, found);
  if (!source.empty() && !found) {
    co_await send_error(client, 404, "NOT_FOUND", "nothing recorded for this image");
    co_return;
  }
  co_await send_local(client, 200, "application/json", listing);
}

net::awaitable<void> handle_conversions_api(ProxyContext& ctx, const Request& request, ClientConnection& client) {
  if (!variants_on(ctx)) {
    co_await send_error(client, 404, "UNSUPPORTED", "variants are off");
    co_return;
  }
  if (!ctx.config.webhooks.secret.empty() && !secret_ok(ctx, request)) {
    co_await send_error(client, 401, "UNAUTHORIZED", "missing or wrong secret");
    co_return;
  }
  std::string listing = conversions_listing(ctx);
  co_await send_local(client, 200, "application/json", listing);
}

// --- Originals (cache_originals) -----------------------------------------------------------------

bool keeps_original(const ProxyContext& ctx, const Request& request, const Route& route, const UpstreamConfig& upstream) {
  // Only what a digest names: its bytes can be checked, and they never change. A tag's answer is
  // the upstream's to give each time. A Range answer is a part, never kept.
  return upstream.cache_originals && ctx.variants && ctx.variants->originals() && route.well_formed &&
         request.method() == http::verb::get && request[http::field::range].empty() &&
         (route.kind == RouteKind::blob || route.kind == RouteKind::manifest) && cache::is_sha256_digest(route.reference);
}

namespace {

// The object of an upstream's 200 to a GET by digest; also remembers that answer as the
// client's read grant for the repository (it is one: the upstream let these credentials read it).
OriginalObject original_of(ProxyContext& ctx, const Request& request, const Route& route, const UpstreamConfig& upstream,
                           const UpstreamResponse& response, const char* kind) {
  ctx.variants->grants().grant(request[http::field::authorization], upstream.name, route.repository);
  ctx.metrics.add("accel_proxy_originals_misses_total", {{"kind", kind}});
  OriginalObject object;
  object.scope = upstream.name + "/" + route.repository;
  object.kind = kind;
  object.digest = route.reference;
  object.media_type = std::string(response.headers()[http::field::content_type]);
  return object;
}

}  // namespace

std::unique_ptr<OriginalCapture> capture_original(ProxyContext& ctx, const Request& request, const Route& route,
                                                  const UpstreamConfig& upstream, const UpstreamResponse& response) {
  if (route.kind != RouteKind::blob || response.status() != 200 || !keeps_original(ctx, request, route, upstream))
    return nullptr;
  const auto length = response.content_length();
  if (!length) return nullptr;  // registries send blobs with a length; a chunked one is not kept
  OriginalObject object = original_of(ctx, request, route, upstream, response, "blob");
  if (object.media_type.empty()) object.media_type = "application/octet-stream";
  object.size = *length;
  return ctx.variants->originals()->capture(object);
}

void keep_original_manifest(ProxyContext& ctx, const Request& request, const Route& route, const UpstreamConfig& upstream,
                            const UpstreamResponse& response, std::string body) {
  if (route.kind != RouteKind::manifest || response.status() != 200 || !keeps_original(ctx, request, route, upstream))
    return;
  OriginalObject object = original_of(ctx, request, route, upstream, response, "manifest");
  if (object.media_type.empty()) return;  // the Content-Type a cached answer needs is unknown
  ctx.variants->originals()->store(object, std::move(body));
}

}  // namespace accel
