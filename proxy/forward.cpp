#include "proxy/forward.hpp"

#include "proxy/exchange.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <chrono>
#include <span>
#include <spdlog/spdlog.h>

#include "proxy/http_headers.hpp"
#include "proxy/oci_error.hpp"
#include "proxy/range.hpp"
#include "proxy/referrers.hpp"
#include "proxy/route.hpp"
#include "proxy/tags_page.hpp"
#include "variants/variants.hpp"

namespace accel {

namespace beast = boost::beast;
using Clock = std::chrono::steady_clock;

// --- ResponseHead / ClientConnection ----------------------------------------------------------

void ResponseHead::set(std::string name, std::string value) {
  for (auto& [k, v] : fields)
    if (iequals(k, name)) {
      v = std::move(value);
      return;
    }
  fields.emplace_back(std::move(name), std::move(value));
}

ClientConnection::ClientConnection(ClientStream& stream, Deadline& deadline, Duration write_timeout)
    : stream_(stream), deadline_(deadline), write_timeout_(write_timeout), scratch_(new char[kScratchSize]) {}

// Every write to the client goes through here: plain TCP or TLS, the same call. async_write
// stops without an error when a stream writes 0 bytes; a short write must never pass as whole.
template <class Buffers>
net::awaitable<void> ClientConnection::write(const Buffers& buffers) {
  const size_t want = net::buffer_size(buffers);
  size_t n = co_await std::visit([&](auto& s) { return net::async_write(s, buffers, net::use_awaitable); }, stream_);
  if (n != want) throw std::runtime_error("short write to the client");
}

namespace {

// The parts of a write without an empty first one (the head once sent). beast::ssl_stream sizes
// each write by its first buffer: an empty one before a large body made it write nothing.
std::span<const net::const_buffer> without_empty_head(std::span<const net::const_buffer> parts) {
  return parts.front().size() == 0 ? parts.subspan(1) : parts;
}

}  // namespace

void ClientConnection::begin(bool head_request, bool keep_alive, bool http10) {
  head_request_ = head_request;
  keep_alive_ = keep_alive;
  http10_ = http10;
  head_sent_ = false;
  chunked_ = false;
  status_ = 0;
  body_bytes_ = 0;
  pending_head_.clear();
}

net::awaitable<void> ClientConnection::write_head(const ResponseHead& head) {
  status_ = head.status;
  // 1xx and 204 must not carry a Content-Length; a 304's would have to be the full body's, and
  // may be left out (RFC 9110 §8.6), so it is. None of them has a body.
  const bool length_forbidden = head.status == 204 || head.status == 304 || head.status / 100 == 1;
  const bool bodyless = head_request_ || length_forbidden;
  // Appended in place into a buffer kept across requests: no temporaries on this per-request path.
  std::string& out = pending_head_;
  char number[24];
  out.assign("HTTP/1.1 ");
  out.append(number, std::to_chars(number, number + sizeof number, head.status).ptr);
  out += ' ';
  out += http::obsolete_reason(static_cast<http::status>(head.status));
  out += "\r\n";
  for (const auto& [k, v] : head.fields) out.append(k).append(": ").append(v).append("\r\n");
  if (head.content_length && !length_forbidden) {
    out += "Content-Length: ";
    out.append(number, std::to_chars(number, number + sizeof number, *head.content_length).ptr);
    out += "\r\n";
  } else if (!bodyless && !http10_) {
    out += "Transfer-Encoding: chunked\r\n";
    chunked_ = true;
  } else if (!bodyless) {
    keep_alive_ = false;  // HTTP/1.0 has no chunked encoding: the body ends at close
  } else if (!length_forbidden) {
    out += "Content-Length: 0\r\n";
  }
  if (!keep_alive_) out += "Connection: close\r\n";
  else if (http10_) out += "Connection: keep-alive\r\n";
  out += "\r\n";
  head_sent_ = true;
  if (bodyless) co_await finish();
}

net::awaitable<void> ClientConnection::write_body(net::const_buffer data) {
  if (head_request_ || data.size() == 0) co_return;
  body_bytes_ += data.size();
  deadline_.expires_after(write_timeout_);
  if (chunked_) {
    char size_line[24];
    int n = std::snprintf(size_line, sizeof size_line, "%zx\r\n", data.size());
    std::array<net::const_buffer, 4> parts{net::buffer(pending_head_), net::buffer(size_line, n), data,
                                           net::buffer("\r\n", 2)};
    co_await write(without_empty_head(parts));
  } else {
    std::array<net::const_buffer, 2> parts{net::buffer(pending_head_), data};
    co_await write(without_empty_head(parts));
  }
  pending_head_.clear();
}

net::awaitable<void> ClientConnection::flush() {
  if (!pending_head_.empty()) {
    deadline_.expires_after(write_timeout_);
    co_await write(net::buffer(pending_head_));
    pending_head_.clear();
  }
  deadline_.expires_never();
}

net::awaitable<void> ClientConnection::finish() {
  if (chunked_ && !head_request_) pending_head_ += "0\r\n\r\n";
  chunked_ = false;
  if (!pending_head_.empty()) {
    deadline_.expires_after(write_timeout_);
    co_await write(net::buffer(pending_head_));
    pending_head_.clear();
  }
}

// --- Local answers ----------------------------------------------------------------------------

net::awaitable<void> send_local(ClientConnection& client, unsigned status, std::string_view content_type,
                                std::string_view body, ResponseHead head) {
  head.status = status;
  head.set("Content-Type", std::string(content_type));
  head.content_length = body.size();
  co_await client.write_head(head);
  co_await client.write_body(net::buffer(body));
  co_await client.finish();
}

ResponseHead registry_head() {
  ResponseHead h;
  h.set("Docker-Distribution-API-Version", "registry/2.0");
  return h;
}

net::awaitable<void> send_error(ClientConnection& client, unsigned status, std::string_view code,
                                std::string_view message) {
  co_await send_local(client, status, "application/json", oci_error_json(code, message), registry_head());
}

// --- Talking to upstreams ---------------------------------------------------------------------

using Fetched = UpstreamClient::Fetched;

net::awaitable<Fetched> fetch(ProxyContext& ctx, std::string_view upstream_name, Endpoint endpoint, Request request) {
  co_return co_await ctx.upstreams.fetch(std::move(endpoint), std::move(request), [&](double seconds) {
    ctx.metrics.observe("accel_proxy_upstream_request_duration_seconds", {{"upstream", upstream_name}}, seconds);
  });
}

// The request to send upstream: the client's end-to-end headers, our Host.
Request upstream_request(const Request& client_request, http::verb method, std::string target,
                         const Endpoint& endpoint) {
  Request r{method, target, 11};
  auto connection = client_request[http::field::connection];
  for (const auto& f : client_request) {
    auto name = f.name_string();
    if (is_hop_by_hop(name) || connection_lists(connection, name)) continue;
    if (f.name() == http::field::host || f.name() == http::field::content_length) continue;
    r.insert(name, f.value());
  }
  r.set(http::field::host, endpoint.host_header());
  r.keep_alive(true);
  return r;
}

// The upstream's end-to-end headers, to pass on to the client.
ResponseHead head_from(const UpstreamResponse& response) {
  ResponseHead h;
  h.status = response.status();
  h.fields.reserve(12);  // a registry answer carries about 6 to 10
  const auto& fields = response.headers();
  auto connection = fields[http::field::connection];
  for (const auto& f : fields) {
    auto name = f.name_string();
    if (is_hop_by_hop(name) || connection_lists(connection, name)) continue;
    if (f.name() == http::field::content_length) continue;
    h.fields.emplace_back(std::string(name), std::string(f.value()));
  }
  h.content_length = response.content_length();
  return h;
}

// Bodies with less than this left to read after the header are copied: splice(2) costs a pipe
// round trip and separate writes, which only pays off for blobs.
constexpr uint64_t kSpliceMinBytes = 64 * 1024;

net::awaitable<void> stream_body(UpstreamResponse& response, ClientConnection& client, uint64_t limit,
                                 OriginalCapture* capture) {
  auto unbuffered = response.unbuffered_body_bytes();
  auto* plain_client = client.plain_socket();
  if (limit == UINT64_MAX && plain_client && client.raw_body() && unbuffered && *unbuffered >= kSpliceMinBytes) {
    // Zero-copy when both sides are plain TCP: the fast path for blobs. The body bytes that came
    // with the upstream's header go out with the response head, in one write.
    auto scratch = client.scratch();
    while (size_t buffered = response.buffered_body_bytes()) {
      size_t n = co_await response.read_some(net::buffer(scratch.data(), std::min<uint64_t>(buffered, scratch.size())));
      if (n == 0) break;
      if (capture) capture->write(scratch.data(), n);
      co_await client.write_body(net::buffer(scratch.data(), n));
    }
    co_await client.flush();
    uint64_t moved = 0;
    bool spliced = false;
    // Kept for the cache too: tee(2) gives the capture its copy without a pass through user
    // space, into a pipe that the capture's own thread writes to the file (the copy into the
    // page cache is then not this thread's work), else into the file.
    TeeSink sink;
    if (capture && response.can_splice()) {
      sink.fd = capture->sink_pipe();
      sink.pipe = sink.fd >= 0;
      if (!sink.pipe) sink.fd = capture->fd();
    }
    try {
      spliced = sink.fd >= 0 ? co_await response.tee_to(*plain_client, sink, client.write_timeout(), moved)
                             : co_await response.splice_to(*plain_client, client.write_timeout(), moved);
    } catch (...) {
      client.count_body(moved);
      throw;
    }
    if (sink.fd >= 0) {
      if (!sink.pipe) capture->wrote(sink.written);  // a pipe's thread counts what reached the file
      if (sink.failed) capture->fail();
    }
    if (spliced) {
      client.count_body(moved);
      co_return;
    }
  }
  auto scratch = client.scratch();
  uint64_t left = limit;
  while (left > 0) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(left, scratch.size()));
    size_t n = co_await response.read_some(net::buffer(scratch.data(), want));
    if (n == 0) break;
    if (capture) capture->write(scratch.data(), n);
    co_await client.write_body(net::buffer(scratch.data(), n));
    left -= n;
  }
}

// Relays the upstream answer as it is (headers filtered, body streamed).
net::awaitable<void> relay(UpstreamResponse& response, ClientConnection& client, ResponseHead head) {
  co_await client.write_head(head);
  co_await stream_body(response, client);
  co_await client.finish();
}

std::string proxy_base_url(const Request& request, const Config& config) {
  const std::string scheme = config.tls.enabled() ? "https://" : "http://";
  auto host = request[http::field::host];
  if (!host.empty() && host.find_first_of(" \r\n\"<>") == std::string_view::npos) return scheme + std::string(host);
  return scheme + config.listen_host + ":" + std::to_string(config.listen_port);
}

// For upstreams with token_proxy: point the client's token requests at us.
void rewrite_challenge(ProxyContext& ctx, const UpstreamConfig& upstream, const Request& request, ResponseHead& head) {
  if (!upstream.token_proxy) return;
  for (auto& [k, v] : head.fields) {
    if (!iequals(k, "WWW-Authenticate")) continue;
    auto rewrite = rewrite_bearer_realm(v, proxy_base_url(request, ctx.config) + "/auth/token/" + upstream.name);
    if (rewrite.original_realm) {
      ctx.realms.remember(upstream.name, *rewrite.original_realm);
      v = rewrite.header;
    }
  }
}

namespace {

// --- Range answered by us, for upstreams (or storage) that ignored it ---------------------------

// `origin` and `origin_request` are the request as first sent (before any redirect), for re-reads.
net::awaitable<void> serve_ranges(ProxyContext& ctx, std::string_view upstream_name, const Endpoint& origin,
                                  const Request& origin_request, Fetched fetched, const RangeHeader& range,
                                  ClientConnection& client) {
  auto& first_response = *fetched.response;
  const uint64_t size = *first_response.content_length();
  ResponseHead head = head_from(first_response);
  head.set("Accept-Ranges", "bytes");
  auto ranges = resolve_ranges(range.specs, size);
  if (ranges.empty()) {
    ResponseHead err = registry_head();
    err.set("Content-Range", "bytes */" + std::to_string(size));
    co_await send_local(client, 416, "application/json", oci_error_json("RANGE_INVALID", "requested range not satisfiable"), err);
    co_return;
  }
  std::string part_type = "application/octet-stream";
  for (const auto& [k, v] : head.fields)
    if (iequals(k, "Content-Type")) part_type = v;

  head.status = 206;
  std::optional<MultipartFraming> framing;
  if (ranges.size() == 1) {
    head.set("Content-Range", content_range(ranges[0], size));
    head.content_length = ranges[0].length();
  } else {
    framing = frame_multipart(ranges, size, part_type, make_boundary());
    head.set("Content-Type", framing->content_type);
    head.content_length = framing->content_length;
  }
  co_await client.write_head(head);

  // One pass through the body while ranges ascend; a range before the current position opens a
  // new upstream stream (asking it for the rest from there, in case it honours Range after all).
  std::unique_ptr<UpstreamResponse> body = std::move(fetched.response);
  uint64_t position = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto& r = ranges[i];
    if (framing) co_await client.write_body(net::buffer(framing->part_headers[i]));
    if (r.first < position) {
      body.reset();
      Request again = origin_request;
      again.set(http::field::range, "bytes=" + std::to_string(r.first) + "-");
      auto refetched = co_await fetch(ctx, upstream_name, origin, std::move(again));
      body = std::move(refetched.response);
      position = 0;
      if (body->status() == 206) {
        position = r.first;
      } else if (body->status() != 200) {
        throw UpstreamError("upstream answered " + std::to_string(body->status()) + " when re-reading a range");
      }
    }
    co_await body->skip(r.first - position, client.scratch());
    position = r.first;
    auto scratch = client.scratch();
    uint64_t left = r.length();
    while (left > 0) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(left, scratch.size()));
      size_t n = co_await body->read_some(net::buffer(scratch.data(), want));
      if (n == 0) throw UpstreamError("upstream body shorter than its declared length");
      co_await client.write_body(net::buffer(scratch.data(), n));
      left -= n;
    }
    position = r.last + 1;
  }
  if (framing) co_await client.write_body(net::buffer(framing->closing));
  co_await client.finish();
}

// --- Identical manifest requests share one upstream exchange ------------------------------------
//
// A rollout pulls one tag on many nodes at once. While a manifest request is in flight upstream,
// an identical one (same upstream, method, target and every forwarded header, Authorization
// included, so an answer only ever reaches holders of the same credential) waits for its answer
// instead of asking again. Nothing outlives the exchange: a request arriving after the answer
// asks the upstream anew, so this never serves a stale tag. One table per worker thread: no locks.

// Answers up to this size are held in memory to be shared; larger ones stream as before.
constexpr uint64_t kSharedAnswerMaxBytes = 1024 * 1024;

}  // namespace

struct SharedAnswer {
  ResponseHead head;  // as the upstream sent it: the token realm is rewritten per client
  std::string body;
};

struct ManifestFlight {
  explicit ManifestFlight(const net::any_io_executor& executor)
      : landed(executor, net::steady_timer::time_point::max()) {}
  net::steady_timer landed;            // cancelled when the leading request is done
  std::optional<SharedAnswer> answer;  // unset: each waiting request asks the upstream itself
};

namespace {

// Everything of an upstream request that can shape its answer.
std::string flight_key(const Endpoint& endpoint, const Request& out) {
  std::string key = endpoint.key();
  key.append(" ").append(out.method_string()).append(" ").append(out.target()).append("\n");
  for (const auto& f : out) key.append(f.name_string()).append(":").append(f.value()).append("\n");
  return key;
}

// Held by the leading request: lands its flight when it is done, also when it throws, so that
// waiting requests never wait for an answer that is not coming.
class FlightLanding {
 public:
  FlightLanding(ManifestFlights& flights, std::string key, std::shared_ptr<ManifestFlight> flight)
      : flights_(flights), key_(std::move(key)), flight_(std::move(flight)) {}
  FlightLanding(const FlightLanding&) = delete;
  FlightLanding& operator=(const FlightLanding&) = delete;
  ~FlightLanding() { land(); }

  // Shares `answer` with the waiting requests and lands; the flight returned keeps it alive.
  std::shared_ptr<const ManifestFlight> land_with(SharedAnswer answer) {
    std::shared_ptr<const ManifestFlight> landed = flight_;
    flight_->answer = std::move(answer);
    land();
    return landed;
  }

  // Lands without an answer: the waiting requests ask the upstream themselves.
  void land() {
    if (!flight_) return;
    if (auto it = flights_.by_key.find(key_); it != flights_.by_key.end() && it->second == flight_)
      flights_.by_key.erase(it);
    flight_->landed.cancel();
    flight_.reset();
  }

 private:
  ManifestFlights& flights_;
  std::string key_;
  std::shared_ptr<ManifestFlight> flight_;
};

net::awaitable<void> send_shared(ProxyContext& ctx, const UpstreamConfig& upstream, const Request& request,
                                 const SharedAnswer& answer, ClientConnection& client) {
  ResponseHead head = answer.head;
  if (head.status == 401) rewrite_challenge(ctx, upstream, request, head);
  co_await client.write_head(head);
  co_await client.write_body(net::buffer(answer.body));
  co_await client.finish();
}

// --- Route handlers ---------------------------------------------------------------------------

// An upstream's `Location` (the next upload request, or where a blob or manifest now is) as the
// client should follow it: through the proxy, and back to this upstream when `?ns=` chose it.
// A Location on another host (storage the upstream hands uploads to) is left as it is.
void point_location_at_proxy(ProxyContext& ctx, const Request& request, const Route& route, const Endpoint& endpoint,
                             ResponseHead& head) {
  for (auto& [k, v] : head.fields) {
    if (!iequals(k, "Location")) continue;
    auto resolved = resolve_url(v, endpoint);
    if (!resolved || resolved->endpoint.key() != endpoint.key()) continue;
    std::string location = proxy_base_url(request, ctx.config) + resolved->target;
    if (auto ns = route.query_value("ns"); ns && !ns->empty() &&
        ns->find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:_") == std::string::npos)
      location.append(location.find('?') == std::string::npos ? "?" : "&").append("ns=").append(*ns);
    v = std::move(location);
  }
}


net::awaitable<void> forward_registry(ProxyContext& ctx, const Request& request, Route route,
                                      ClientConnection& client, ExchangeInfo& info) {
  const auto& upstream = ctx.config.upstream_for_ns(route.query_value("ns").value_or(""));
  info.upstream = upstream.name;
  // Variants and cached objects first; a miss that falls back re-points `route` at the source.
  if (co_await handle_variant_request(ctx, request, route, upstream, client, info)) co_return;
  const Endpoint endpoint = endpoint_of(upstream);
  const bool head_request = request.method() == http::verb::head;

  RangeHeader range;
  if (route.kind == RouteKind::blob) {
    range = parse_range_header(request[http::field::range]);
    if (range.kind == RangeHeader::Kind::invalid) {
      co_await send_error(client, 416, "RANGE_INVALID", "malformed Range header");
      co_return;
    }
  }

  Request out = upstream_request(request, request.method(), upstream_path(route) + upstream_query(route), endpoint);
  if (route.kind == RouteKind::blob && range.kind == RangeHeader::Kind::absent) out.erase(http::field::range);

  // A manifest request identical to one in flight waits for that one's answer; otherwise it
  // leads a flight of its own that later identical requests can join.
  std::optional<FlightLanding> landing;
  if (route.kind == RouteKind::manifest && ctx.flights) {
    std::string key = flight_key(endpoint, out);
    if (auto it = ctx.flights->by_key.find(key); it != ctx.flights->by_key.end()) {
      std::shared_ptr<ManifestFlight> joined = it->second;
      co_await joined->landed.async_wait(net::as_tuple(net::use_awaitable));
      if (joined->answer) {
        info.coalesced = true;
        ctx.metrics.add("accel_proxy_coalesced_requests_total", {{"upstream", upstream.name}});
        co_await send_shared(ctx, upstream, request, *joined->answer, client);
        co_return;
      }
      // The leading request got no answer to share (too large, or it failed): ask ourselves.
    } else {
      auto flight = std::make_shared<ManifestFlight>(co_await net::this_coro::executor);
      ctx.flights->by_key.emplace(key, flight);
      landing.emplace(*ctx.flights, std::move(key), std::move(flight));
    }
  }

  // serve_ranges may have to ask again with the same request; otherwise it is sent, not copied.
  std::optional<Request> origin_request;
  if (route.kind == RouteKind::blob && range.kind == RangeHeader::Kind::ranges) origin_request = out;
  Fetched fetched = co_await fetch(ctx, upstream.name, endpoint, std::move(out));
  UpstreamResponse& response = *fetched.response;
  const unsigned status = response.status();
  // As the upstream sent it: a 401's token realm is rewritten where it leaves (send_shared, relay).
  ResponseHead head = head_from(response);

  switch (route.kind) {
    case RouteKind::manifest: {
      const auto length = response.content_length();
      if (status == 200 && length && *length > ctx.config.limits.max_manifest_bytes) {
        co_await send_error(client, 502, "MANIFEST_INVALID", "upstream manifest exceeds the size limit");
        co_return;
      }
      std::optional<std::string> body;  // set when the whole answer is read here
      // cache_originals: a manifest by digest is read whole (it is at most max_manifest_bytes) and
      // kept once its digest checks out.
      const bool keep = status == 200 && keeps_original(ctx, request, route, upstream);
      if (status == 200 && !length && !head_request) {  // chunked: read it whole (bounded) to check the size
        std::string whole;
        try {
          whole = co_await response.read_all(ctx.config.limits.max_manifest_bytes);
        } catch (const UpstreamError&) {
          whole.clear();
        }
        if (!response.body_done()) {
          co_await send_error(client, 502, "MANIFEST_INVALID", "upstream manifest exceeds the size limit");
          co_return;
        }
        body = std::move(whole);
      } else if ((landing || keep) &&
                 (head_request || response.body_done() || (length && (keep || *length <= kSharedAnswerMaxBytes)))) {
        // (no co_await inside ?: — GCC 12 miscompiles the temporaries there)
        body.emplace();
        const uint64_t limit = keep ? ctx.config.limits.max_manifest_bytes : kSharedAnswerMaxBytes;
        if (!response.body_done()) *body = co_await response.read_all(limit);
      }
      if (body) {
        if (keep) keep_original_manifest(ctx, request, route, upstream, response, *body);
        SharedAnswer answer{std::move(head), std::move(*body)};
        // A HEAD, 204 or 304 answer keeps the upstream's Content-Length (that of the full body).
        if (!head_request && status != 204 && status != 304) answer.head.content_length = answer.body.size();
        fetched.response.reset();  // read to the end: its connection goes back to the pool now
        if (landing) {
          auto landed = landing->land_with(std::move(answer));
          co_await send_shared(ctx, upstream, request, *landed->answer, client);
        } else {
          co_await send_shared(ctx, upstream, request, answer, client);
        }
        co_return;
      }
      break;
    }

    case RouteKind::blob:
      if (status == 200 || status == 206) head.set("Accept-Ranges", "bytes");
      if (range.kind == RangeHeader::Kind::ranges && status == 200 && !head_request && response.content_length()) {
        co_await serve_ranges(ctx, upstream.name, endpoint, *origin_request, std::move(fetched), range, client);
        co_return;
      }
      // cache_originals: the body is also written to the cache as it streams, and committed only
      // once all of it came and matches the digest (variants/originals.hpp).
      if (auto capture = capture_original(ctx, request, route, upstream, response)) {
        co_await client.write_head(head);
        co_await stream_body(response, client, UINT64_MAX, capture.get());
        capture->finish();  // every byte came from the upstream and went to the client's socket
        co_await client.finish();
        co_return;
      }
      break;

    case RouteKind::tags:
    case RouteKind::catalog: {
      // An `n` that is not a number is the upstream's to judge (distribution 2.8 ignores it, a
      // registry may answer 400 PAGINATION_NUMBER_INVALID): its answer is relayed, not paginated.
      std::optional<uint64_t> n;
      bool n_valid = true;
      if (auto v = route.query_value("n")) {
        uint64_t value = 0;
        auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), value);
        n_valid = ec == std::errc() && ptr == v->data() + v->size() && !v->empty();
        if (n_valid) n = value;
      }
      if (status == 200 && !head_request) {
        std::string body = co_await response.read_all(64 * 1024 * 1024);
        std::optional<TagsPage> page;
        if (route.kind == RouteKind::tags && route.well_formed && n_valid)
          page = paginate_tags(body, route.repository, n, route.query_value("last"), response.headers()[http::field::link]);
        if (!page) page = TagsPage{body, relative_link(response.headers()[http::field::link])};
        std::erase_if(head.fields, [](const auto& f) { return iequals(f.first, "Link"); });
        if (!page->link.empty()) head.set("Link", page->link);
        head.content_length = page->body.size();
        co_await client.write_head(head);
        co_await client.write_body(net::buffer(page->body));
        co_await client.finish();
        co_return;
      }
      break;
    }

    case RouteKind::referrers: {
      if (!route.well_formed) break;  // no fallback tag or variants for a malformed digest
      auto artifact_type = route.query_value("artifactType");
      std::optional<std::string> index;
      if (status == 200 && !head_request) {
        std::string body = co_await response.read_all(ctx.config.limits.max_manifest_bytes);
        bool filtered_upstream = !response.headers()["OCI-Filters-Applied"].empty();
        index = filtered_upstream ? body : filter_referrers(body, artifact_type).value_or(body);
      } else if (status == 404) {
        // No Referrers API upstream: the spec's fallback is an index under the tag <alg>-<hex>.
        fetched.response.reset();
        Request fallback = upstream_request(request, http::verb::get,
                                            "/v2/" + route.repository + "/manifests/" + referrers_fallback_tag(route.reference),
                                            endpoint);
        fallback.set(http::field::accept, std::string(kOciIndexMediaType));
        auto tag = co_await fetch(ctx, upstream.name, endpoint, std::move(fallback));
        if (tag.response->status() == 200) {
          std::string body = co_await tag.response->read_all(ctx.config.limits.max_manifest_bytes);
          index = filter_referrers(body, artifact_type).value_or(empty_referrers_index());
        } else if (tag.response->status() == 404) {
          index = empty_referrers_index();
        } else {
          ResponseHead tag_head = head_from(*tag.response);
          if (tag.response->status() == 401) rewrite_challenge(ctx, upstream, request, tag_head);
          co_await relay(*tag.response, client, tag_head);
          co_return;
        }
        head = registry_head();
      }
      if (index) {
        // The variants we hold of that manifest are referrers too.
        auto variants = variant_referrers(ctx, upstream.name, route.repository, route.reference);
        if (!variants.empty()) index = add_referrers(*index, variants, artifact_type);
        head.status = 200;
        head.set("Content-Type", std::string(kOciIndexMediaType));
        if (artifact_type) head.set("OCI-Filters-Applied", "artifactType");
        std::erase_if(head.fields, [](const auto& f) { return iequals(f.first, "Docker-Content-Digest"); });
        head.content_length = index->size();
        co_await client.write_head(head);
        co_await client.write_body(net::buffer(*index));
        co_await client.finish();
        co_return;
      }
      break;
    }
    default:
      break;
  }
  if (landing) landing->land();  // nothing to share: waiting requests ask for themselves now
  if (status == 401) rewrite_challenge(ctx, upstream, request, head);
  if (route.kind == RouteKind::blob_upload) point_location_at_proxy(ctx, request, route, endpoint, head);  // upload status
  co_await relay(*fetched.response, client, std::move(head));
}

// --- Pushes -----------------------------------------------------------------------------------

// What /metrics counts of a push the upstream accepted.
void count_push(ProxyContext& ctx, const UpstreamConfig& upstream, const Request& request, const Route& route,
                unsigned status) {
  if (status / 100 != 2) return;
  const auto method = request.method();
  if (route.kind == RouteKind::manifest && method == http::verb::put) {
    ctx.metrics.add("accel_proxy_push_manifests_total", {{"upstream", upstream.name}});
  } else if (route.kind == RouteKind::blob_upload && status == 201) {
    // 201 closes an upload: the final PUT, a monolithic POST with `digest`, or a mount.
    const bool mounted = method == http::verb::post && route.query_value("mount");
    ctx.metrics.add("accel_proxy_push_blobs_total", {{"upstream", upstream.name}, {"how", mounted ? "mount" : "upload"}});
  }
}

// Writes under /v2/ (blob uploads in every form, manifest PUT, DELETE): forwarded to the
// upstream with the client's credentials, the body streamed through one buffer, the answer
// relayed with Locations pointed back at the proxy. A successful manifest PUT or DELETE drops
// the cached resolution of that tag first (no variant of a replaced image is served after the
// client has its answer), and a PUT starts the conversions webhooks.rules ask for.
net::awaitable<void> forward_write(ProxyContext& ctx, const Request& request, const Route& route, BodySource* body,
                                   ClientConnection& client, ExchangeInfo& info) {
  const auto& upstream = ctx.config.upstream_for_ns(route.query_value("ns").value_or(""));
  info.upstream = upstream.name;
  if (upstream.writes == UpstreamConfig::Writes::refuse) {
    if (body && !body->done()) client.close_after();  // its body stays unread: the connection ends
    co_await send_error(client, 405, "UNSUPPORTED", "accel-proxy mirrors this registry read-only: push to the registry itself");
    co_return;
  }
  const Endpoint endpoint = endpoint_of(upstream);
  Request out = upstream_request(request, request.method(), upstream_path(route) + upstream_query(route), endpoint);
  // A streamed body's 100-continue is asked of the upstream by send_streaming, which knows
  // whether the client is still waiting for it; any other body has been read whole already.
  out.erase(http::field::expect);
  const auto started = Clock::now();
  std::unique_ptr<UpstreamResponse> response;
  if (body) {
    try {
      response = co_await ctx.upstreams.send_streaming(endpoint, out, *body, client.scratch(), info.request_bytes);
    } catch (...) {
      ctx.metrics.add("accel_proxy_push_bytes_total", {{"upstream", upstream.name}}, static_cast<double>(info.request_bytes));
      throw;
    }
    ctx.metrics.add("accel_proxy_push_bytes_total", {{"upstream", upstream.name}}, static_cast<double>(info.request_bytes));
    if (!body->done()) client.close_after();  // the upstream answered before taking it all
  } else {
    out.body() = request.body();
    response = co_await ctx.upstreams.send(endpoint, out);
  }
  ctx.metrics.observe("accel_proxy_upstream_request_duration_seconds", {{"upstream", upstream.name}},
                      std::chrono::duration<double>(Clock::now() - started).count());
  const unsigned status = response->status();
  ResponseHead head = head_from(*response);
  point_location_at_proxy(ctx, request, route, endpoint, head);
  if (status == 401) rewrite_challenge(ctx, upstream, request, head);
  count_push(ctx, upstream, request, route, status);

  const bool manifest_changed = route.kind == RouteKind::manifest && route.well_formed && status / 100 == 2 &&
                                (request.method() == http::verb::put || request.method() == http::verb::delete_);
  if (manifest_changed) forget_tag(ctx, upstream, route.repository, route.reference);
  co_await relay(*response, client, std::move(head));
  if (manifest_changed && request.method() == http::verb::put) {
    std::string digest(response->headers()["Docker-Content-Digest"]);
    convert_pushed(ctx, upstream, route.repository, digest.empty() ? route.reference : digest, route.reference);
  }
}

// /auth/token/<upstream>: forwards the client's token request (GET with query, or OAuth2 POST)
// to the realm the upstream named in its challenge.
net::awaitable<void> forward_token(ProxyContext& ctx, const Request& request, const Route& route,
                                   ClientConnection& client, ExchangeInfo& info) {
  const UpstreamConfig* upstream = ctx.config.find_upstream(route.upstream);
  if (!upstream || !upstream->token_proxy) {
    co_await send_error(client, 404, "NAME_UNKNOWN", "no token proxy for this upstream");
    co_return;
  }
  info.upstream = upstream->name;
  const Endpoint endpoint = endpoint_of(*upstream);
  auto realm = ctx.realms.lookup(upstream->name);
  if (!realm) {  // not seen a challenge yet (e.g. after a restart): ask the upstream for one
    Request ping = upstream_request(Request{}, http::verb::get, "/v2/", endpoint);
    auto pinged = co_await fetch(ctx, upstream->name, endpoint, std::move(ping));
    if (auto c = parse_challenge(pinged.response->headers()[http::field::www_authenticate]))
      if (auto r = c->param("realm")) {
        ctx.realms.remember(upstream->name, *r);
        realm = r;
      }
  }
  if (!realm) {
    co_await send_error(client, 502, "UNAVAILABLE", "upstream did not name a token service");
    co_return;
  }
  auto target = resolve_url(*realm, endpoint);
  if (!target) {
    co_await send_error(client, 502, "UNAVAILABLE", "upstream token realm is not a usable URL");
    co_return;
  }
  std::string path = target->target;
  std::string client_query = upstream_query(route);  // drops ns
  if (!client_query.empty()) path += (path.find('?') == std::string::npos ? "?" : "&") + client_query.substr(1);
  Request out = upstream_request(request, request.method(), path, target->endpoint);
  out.body() = request.body();
  auto fetched = co_await fetch(ctx, upstream->name, target->endpoint, std::move(out));
  co_await relay(*fetched.response, client, head_from(*fetched.response));
}

net::awaitable<void> answer_readyz(ProxyContext& ctx, ClientConnection& client) {
  const auto& upstream = *ctx.config.find_upstream(ctx.config.default_upstream);
  const Endpoint endpoint = endpoint_of(upstream);
  std::string problem;
  try {
    auto fetched = co_await fetch(ctx, upstream.name, endpoint, upstream_request(Request{}, http::verb::get, "/v2/", endpoint));
    if (fetched.response->status() >= 500) problem = "upstream answered " + std::to_string(fetched.response->status());
    else co_await fetched.response->read_all(1024 * 1024);
  } catch (const std::exception& e) {
    problem = e.what();
  }
  if (problem.empty())
    co_await send_local(client, 200, "text/plain", "ready\n");
  else
    co_await send_local(client, 503, "text/plain", "not ready: " + problem + "\n");
}

}  // namespace

net::awaitable<void> handle_request(ProxyContext& ctx, const Request& request, ClientConnection& client,
                                    ExchangeInfo& info, BodySource* body) {
  Route route = parse_route(request.target());
  info.route = std::string(route_label(route.kind));
  info.repository = route.repository;
  const auto method = request.method();
  const bool read_method = method == http::verb::get || method == http::verb::head;

  try {
    switch (route.kind) {
      case RouteKind::healthz:
        co_await send_local(client, 200, "text/plain", "ok\n");
        co_return;
      case RouteKind::metrics:
        co_await send_local(client, 200, "text/plain; version=0.0.4", ctx.metrics.render());
        co_return;
      case RouteKind::readyz:
        co_await answer_readyz(ctx, client);
        co_return;
      case RouteKind::not_found:
        co_await send_error(client, 404, "NOT_FOUND", "no such route");
        co_return;
      case RouteKind::invalid:
        co_await send_error(client, route.error_status, route.error_code, route.error_message);
        co_return;
      case RouteKind::token:
        if (method != http::verb::get && method != http::verb::post) {
          co_await send_error(client, 405, "UNSUPPORTED", "token requests are GET or POST");
          co_return;
        }
        co_await forward_token(ctx, request, route, client, info);
        co_return;
      case RouteKind::webhook_harbor:
      case RouteKind::webhook_registry:
        co_await handle_webhook(ctx, request, route, client);
        co_return;
      case RouteKind::conversions_api:
        co_await handle_conversions_api(ctx, request, client);
        co_return;
      case RouteKind::prefetch_api:
        co_await handle_prefetch_api(ctx, request, route, client);
        co_return;
      default:
        if (!read_method) {  // pushes: uploads, manifest PUT, DELETE (reading an upload's state is a read)
          co_await forward_write(ctx, request, route, body, client, info);
          co_return;
        }
        co_await forward_registry(ctx, request, std::move(route), client, info);
        co_return;
    }
  } catch (const std::exception& e) {
    if (client.head_sent()) throw;
    // Nothing sent yet: the client gets a proper error instead of a dropped connection.
    spdlog::warn("upstream failure route={} upstream={} error=\"{}\"", info.route, info.upstream, e.what());
    ctx.metrics.add("accel_proxy_upstream_errors_total", {{"upstream", info.upstream}});
    client.close_after();
  }
  co_await send_error(client, 502, "UNAVAILABLE", "upstream unavailable or answered badly");
}

}  // namespace accel
