#include "proxy/server.hpp"

#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <optional>
#include <spdlog/spdlog.h>
#include <thread>

#include "proxy/forward.hpp"
#include "proxy/http_headers.hpp"
#include "proxy/listener_tls.hpp"

namespace accel {

namespace beast = boost::beast;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
constexpr auto use_tuple = net::as_tuple(net::use_awaitable);
// How long a closing TLS connection waits for the client's close_notify after sending ours.
constexpr Duration kTlsShutdownTimeout{std::chrono::seconds(1)};

void describe_proxy_metrics(Metrics& m) {
  using T = Metrics::Type;
  m.describe("accel_proxy_http_requests_total", T::counter, "Requests answered, by route, method and status code.");
  m.describe("accel_proxy_http_response_bytes_total", T::counter, "Response body bytes sent to clients, by route.");
  m.describe("accel_proxy_upstream_request_duration_seconds", T::histogram,
             "Time from sending a request upstream to its response header, by upstream.");
  m.describe("accel_proxy_upstream_errors_total", T::counter, "Requests that failed because of an upstream, by upstream.");
  m.describe("accel_proxy_open_connections", T::gauge, "Client connections currently open.");
  m.describe("accel_proxy_coalesced_requests_total", T::counter,
             "Manifest requests answered with the answer of an identical request in flight, by upstream.");
  m.describe("accel_proxy_push_bytes_total", T::counter, "Request body bytes of pushes passed upstream, by upstream.");
  m.describe("accel_proxy_push_blobs_total", T::counter,
             "Blob uploads the upstream completed through the proxy, by upstream and how (upload or mount).");
  m.describe("accel_proxy_push_manifests_total", T::counter, "Manifest PUTs the upstream accepted through the proxy, by upstream.");
  m.describe("accel_proxy_tls_handshake_failures_total", T::counter,
             "Client connections whose TLS handshake failed or timed out (HTTPS listener).");
  m.describe("accel_proxy_tls_reloads_total", T::counter,
             "Certificate reloads on SIGHUP, by result: ok, or failed (the previous certificate kept).");
}

// One thread's share of the server. Member order matters: the upstream client must outlive the
// io_context's pending coroutines, which are destroyed with the io_context (see ~Worker).
struct Server::Worker {
  std::unique_ptr<net::io_context> io = std::make_unique<net::io_context>(1);
  UpstreamClient upstreams;
  ManifestFlights flights;
  ProxyContext context;
  tcp::acceptor acceptor{*io};
  std::thread thread;
  bool draining = false;                   // touched only on this worker's thread
  std::map<tcp::socket*, bool> open;  // client connections; true while waiting for a request
  // The HTTPS listener's context for new connections (null: plain HTTP). Replaced on reload by
  // a task posted to this thread; each connection holds the one it was accepted with.
  std::shared_ptr<ssl::context> tls;

  Worker(const Config& config, Metrics& metrics, TokenRealms& realms, Variants* variants)
      : upstreams(io->get_executor(), config),
        context{config, metrics, realms, upstreams, variants, config.coalesce_manifests ? &flights : nullptr} {}
  ~Worker() {
    if (thread.joinable()) thread.join();
    upstreams.shutdown();  // pooled sockets close while their io_context still exists
    flights.by_key.clear();  // their timers too (requests still waiting hold theirs until destroyed)
    io.reset();            // destroys suspended sessions while `upstreams` still exists
  }

  net::awaitable<void> accept_loop();
  net::awaitable<void> session(tcp::socket accepted, std::shared_ptr<ssl::context> tls_context);
  void drain();  // runs on this worker's thread
};

namespace {

std::string_view method_label(http::verb v) {
  switch (v) {
    case http::verb::get: return "GET";
    case http::verb::head: return "HEAD";
    case http::verb::post: return "POST";
    case http::verb::put: return "PUT";
    case http::verb::patch: return "PATCH";
    case http::verb::delete_: return "DELETE";
    default: return "OTHER";
  }
}

// Answers a request that could not be read at all, then the connection closes.
net::awaitable<void> reject(ClientStream& stream, Deadline& deadline, Duration timeout, unsigned status,
                            std::string_view code, std::string_view message) {
  ClientConnection client(stream, deadline, timeout);
  client.begin(false, false);
  co_await send_error(client, status, code, message);
}


// Hands the parser what the connection has buffered already, until `done()` or it needs more
// (not an error: the caller reads on).
template <class Parser, class Done>
boost::system::error_code feed_buffered(Parser& parser, beast::flat_buffer& buffer, Done done) {
  boost::system::error_code ec;
  while (buffer.size() > 0 && !done()) {
    size_t used = parser.put(buffer.data(), ec);
    buffer.consume(used);
    if (ec || used == 0) break;
  }
  if (ec == http::error::need_more) ec = {};
  return ec;
}

// Reads a request header: what is buffered first (a request usually arrives whole in one read),
// then more under the header timeout only when the parser needs it.
net::awaitable<boost::system::error_code> read_header(ClientStream& stream, beast::flat_buffer& buffer,
                                                      http::request_parser<http::empty_body>& parser,
                                                      Deadline& deadline, Duration timeout) {
  boost::system::error_code ec = feed_buffered(parser, buffer, [&] { return parser.is_header_done(); });
  if (!ec && !parser.is_header_done()) {
    deadline.expires_after(timeout);
    std::tie(ec, std::ignore) =
        co_await std::visit([&](auto& s) { return http::async_read_header(s, buffer, parser, use_tuple); }, stream);
  }
  co_return ec;
}

// Reads the rest of a request whose body the handler gets whole, up to `max_body` bytes.
net::awaitable<boost::system::error_code> read_whole(ClientStream& stream, beast::flat_buffer& buffer,
                                                     http::request_parser<http::empty_body>&& header, Request& out,
                                                     Deadline& deadline, Duration timeout, uint64_t max_body) {
  if (auto length = header.content_length(); length && *length > max_body) co_return http::error::body_limit;
  http::request_parser<http::string_body> parser(std::move(header));
  parser.body_limit(max_body);  // a chunked body is checked chunk by chunk
  parser.eager(true);
  boost::system::error_code ec = feed_buffered(parser, buffer, [&] { return parser.is_done(); });
  if (!ec && !parser.is_done()) {
    deadline.expires_after(timeout);
    std::tie(ec, std::ignore) =
        co_await std::visit([&](auto& s) { return http::async_read(s, buffer, parser, use_tuple); }, stream);
  }
  if (!ec) out = parser.release();
  co_return ec;
}

// Pushes stream their bodies: uploads of any size pass through with bounded memory.
bool streams_body(const http::request_header<>& header) {
  const auto method = header.method();
  if (method != http::verb::put && method != http::verb::post && method != http::verb::patch) return false;
  return header.target().starts_with("/v2/");
}

// A push's body, read from the client's connection as the forwarder sends it upstream. A client
// that announced `Expect: 100-continue` is told to go on when the body is first wanted (once
// the upstream wants it: see send_streaming). Each read waits up to the idle timeout: a client
// that stops sending mid-body is dropped.
class ClientBody final : public BodySource {
 public:
  ClientBody(ClientStream& stream, beast::flat_buffer& buffer, http::request_parser<http::empty_body>&& header,
             Deadline& deadline, Duration timeout)
      : stream_(stream), buffer_(buffer), parser_(std::move(header)), deadline_(deadline), timeout_(timeout) {
    parser_.body_limit(boost::none);
    expect_continue_ = iequals(parser_.get()[http::field::expect], "100-continue") && !parser_.is_done();
  }

  std::optional<uint64_t> size() const override {
    if (parser_.chunked()) return std::nullopt;
    return parser_.content_length().value_or(0);
  }
  bool done() const override { return parser_.is_done(); }
  bool expects_continue() const override { return expect_continue_; }

  net::awaitable<size_t> read_some(net::mutable_buffer out) override {
    if (parser_.is_done() || out.size() == 0) co_return 0;
    if (expect_continue_) {
      expect_continue_ = false;
      deadline_.expires_after(timeout_);
      static constexpr std::string_view go_on = "HTTP/1.1 100 Continue\r\n\r\n";
      co_await std::visit([&](auto& s) { return net::async_write(s, net::buffer(go_on), net::use_awaitable); }, stream_);
    }
    auto& body = parser_.get().body();
    while (true) {
      body.data = out.data();
      body.size = out.size();
      body.more = true;
      deadline_.expires_after(timeout_);
      auto [ec, n] = co_await std::visit(
          [&](auto& s) { return http::async_read_some(s, buffer_, parser_, use_tuple); }, stream_);
      if (ec == http::error::need_buffer) ec = {};
      const size_t got = out.size() - body.size;
      if (parser_.is_done() || (!ec && got > 0)) co_return got;
      if (ec) throw std::runtime_error("client request body ended early: " + ec.message());
    }
  }

 private:
  ClientStream& stream_;
  beast::flat_buffer& buffer_;
  http::request_parser<http::buffer_body> parser_;
  Deadline& deadline_;
  Duration timeout_;
  bool expect_continue_ = false;
};

}  // namespace

net::awaitable<void> Server::Worker::accept_loop() {
  while (!draining) {
    auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
    if (ec) {
      if (draining || ec == net::error::operation_aborted) break;
      spdlog::warn("accept failed: {}", ec.message());
      continue;
    }
    socket.set_option(tcp::no_delay(true));
    net::co_spawn(*io, session(std::move(socket), tls), net::detached);
  }
}

net::awaitable<void> Server::Worker::session(tcp::socket accepted, std::shared_ptr<ssl::context> tls_context) {
  const Config& config = context.config;
  Metrics& metrics = context.metrics;
  // `tls_context` (held by this frame; null for plain HTTP) is the context this connection was
  // accepted with: a reload changes what new connections get, never an open one.
  ClientStream stream = tls_context
                            ? ClientStream(std::in_place_type<ClientTls>, std::move(accepted), *tls_context)
                            : ClientStream(std::in_place_type<tcp::socket>, std::move(accepted));
  tcp::socket& socket = tcp_socket_of(stream);
  Deadline deadline(socket);
  ClientConnection client(stream, deadline, config.timeouts.idle);
  beast::flat_buffer buffer;
  // Listed in `open` (for drain) and counted while the session lasts, however it ends.
  metrics.add("accel_proxy_open_connections", {}, 1);
  struct Listing {
    std::map<tcp::socket*, bool>& open;
    std::map<tcp::socket*, bool>::iterator entry;
    Metrics& metrics;
    ~Listing() {
      open.erase(entry);
      metrics.add("accel_proxy_open_connections", {}, -1);
    }
  } listing{open, open.emplace(&socket, false).first, metrics};
  bool& idle = listing.entry->second;

  bool usable = true;
  if (auto* secure = std::get_if<ClientTls>(&stream)) {
    // The handshake counts as the start of the first request: the header timeout applies, and
    // draining may close a connection still in it.
    idle = true;
    deadline.expires_after(config.timeouts.header);
    auto [ec] = co_await secure->async_handshake(ssl::stream_base::server, use_tuple);
    idle = false;
    if (ec) {
      usable = false;
      metrics.add("accel_proxy_tls_handshake_failures_total", {});
      spdlog::debug("TLS handshake failed: {}", deadline.expired() ? "timed out" : ec.message());
    }
  }

  bool broken = false;
  while (usable && !draining) {
    // Between requests the idle timeout applies; once a request starts, the header timeout.
    if (buffer.size() == 0) {
      idle = true;
      deadline.expires_after(config.timeouts.idle);
      auto [ec, n] = co_await std::visit(
          [&](auto& s) { return s.async_read_some(buffer.prepare(8192), use_tuple); }, stream);
      idle = false;
      if (ec || n == 0) break;
      buffer.commit(n);
    }
    // The header first; then the body is either read whole (reads, webhooks, token requests:
    // bounded by limits.max_body_bytes) or left on the connection for the handler to stream
    // upstream (pushes: see ClientBody).
    http::request_parser<http::empty_body> header_parser;
    header_parser.header_limit(config.limits.max_header_bytes);
    header_parser.body_limit(boost::none);  // checked below, once the kind of request is known
    auto ec = co_await read_header(stream, buffer, header_parser, deadline, config.timeouts.header);
    Request request;
    std::optional<ClientBody> streamed;
    if (!ec && streams_body(header_parser.get())) {
      request = Request(header_parser.get().base());
      streamed.emplace(stream, buffer, std::move(header_parser), deadline, config.timeouts.idle);
    } else if (!ec) {
      ec = co_await read_whole(stream, buffer, std::move(header_parser), request, deadline, config.timeouts.header,
                               config.limits.max_body_bytes);
    }
    if (ec == http::error::header_limit) {
      co_await reject(stream, deadline, config.timeouts.idle, 431, "SIZE_INVALID", "request header fields too large");
      break;
    }
    if (ec == http::error::body_limit) {
      co_await reject(stream, deadline, config.timeouts.idle, 413, "SIZE_INVALID", "request body too large");
      break;
    }
    // operation_aborted: the header timeout passed (or the server is draining).
    // stream_truncated: a TLS client closed the connection without close_notify.
    if (ec == net::error::operation_aborted || ec == http::error::end_of_stream || ec == net::error::eof ||
        ec == net::error::connection_reset || ec == http::error::partial_message || ec == ssl::error::stream_truncated)
      break;
    if (ec) {
      co_await reject(stream, deadline, config.timeouts.idle, 400, "UNSUPPORTED", "malformed HTTP request");
      break;
    }

    const auto started = Clock::now();
    client.begin(request.method() == http::verb::head, request.keep_alive() && !draining, request.version() == 10);
    ExchangeInfo info;
    try {
      co_await handle_request(context, request, client, info, streamed ? &*streamed : nullptr);
    } catch (const std::exception& e) {
      // The answer's head is out: closing is the only honest way to say the body is incomplete.
      spdlog::warn("transfer aborted route={} repo={} upstream={} error=\"{}\"", info.route, info.repository,
                   info.upstream, e.what());
      broken = true;
    }
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
    const std::string code = std::to_string(client.status());
    metrics.add("accel_proxy_http_requests_total",
                {{"route", info.route}, {"method", method_label(request.method())}, {"code", code}});
    metrics.add("accel_proxy_http_response_bytes_total", {{"route", info.route}}, static_cast<double>(client.body_bytes()));
    // Never log headers or query strings: they can carry credentials and tokens.
    spdlog::info("request method={} route={} repo={} status={} bytes={}{} duration_ms={:.2f} upstream={}{}{}",
                 method_label(request.method()), info.route, info.repository.empty() ? "-" : info.repository,
                 client.status(), client.body_bytes(),
                 info.request_bytes ? fmt::format(" received={}", info.request_bytes) : std::string(), ms,
                 info.upstream.empty() ? "-" : info.upstream, info.coalesced ? " coalesced=true" : "",
                 broken ? " aborted=true" : "");
    // A body the handler did not read to its end is still on the connection: it cannot carry
    // another request.
    if (broken || !client.keep_alive() || (streamed && !streamed->done())) break;
  }
  if (auto* secure = std::get_if<ClientTls>(&stream); secure && usable && !broken) {
    // close_notify tells the client our close is an end, not a cut. Bounded: it need not answer.
    deadline.expires_after(kTlsShutdownTimeout);
    co_await secure->async_shutdown(use_tuple);
  }
  beast::error_code ignored;
  socket.shutdown(tcp::socket::shutdown_send, ignored);
  socket.close(ignored);
}

void Server::Worker::drain() {
  draining = true;
  beast::error_code ignored;
  acceptor.close(ignored);
  // Busy connections finish their request and then close; idle ones close now, pooled upstream
  // connections too (their deadline timers would otherwise keep the worker running).
  for (auto& [socket, idle] : open)
    if (idle) socket->cancel(ignored);
  upstreams.shutdown();
}

Server::Server(const Config& config, Metrics& metrics, Variants* variants) : config_(config), metrics_(metrics) {
  // First: a certificate or key that cannot be used stops the start with a ConfigError.
  std::shared_ptr<ssl::context> tls;
  if (config.tls.enabled()) {
    tls = load_listener_tls(config.tls);
    spdlog::info("tls certificate {}", describe_certificate(*tls));
  }
  int threads = config.threads > 0 ? config.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 0; i < threads; ++i) {
    workers_.push_back(std::make_unique<Worker>(config, metrics, realms_, variants));
    workers_.back()->tls = tls;
  }
  describe_proxy_metrics(metrics);
}

Server::~Server() = default;

uint16_t Server::bind() {
  auto address = net::ip::make_address(config_.listen_host);
  uint16_t port = config_.listen_port;
  // Each worker has its own acceptor on the same port; the kernel spreads connections.
  for (auto& w : workers_) {
    tcp::endpoint endpoint(address, port);
    w->acceptor.open(endpoint.protocol());
    w->acceptor.set_option(tcp::acceptor::reuse_address(true));
    int one = 1;
    if (::setsockopt(w->acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
      throw std::runtime_error("SO_REUSEPORT not supported");
    w->acceptor.bind(endpoint);
    w->acceptor.listen(net::socket_base::max_listen_connections);
    port = w->acceptor.local_endpoint().port();
  }
  return port;
}

void Server::run() {
  for (auto& w : workers_) {
    net::co_spawn(*w->io, w->accept_loop(), net::detached);
    w->thread = std::thread([&io = *w->io] { io.run(); });
  }

  // The main thread waits for signals: SIGHUP reloads the certificate and waits again; SIGTERM
  // or SIGINT drains every worker, then it waits for them.
  net::io_context signals_io(1);
  net::signal_set signals(signals_io, SIGTERM, SIGINT, SIGHUP);
  std::function<void(const boost::system::error_code&, int)> on_signal = [&](const boost::system::error_code& ec,
                                                                              int signal) {
    if (ec) return;
    if (signal == SIGHUP) {
      reload_tls();
      signals.async_wait(on_signal);
      return;
    }
    spdlog::info("signal {} received: finishing in-flight requests", signal);
    for (auto& w : workers_) net::post(*w->io, [worker = w.get()] { worker->drain(); });
  };
  signals.async_wait(on_signal);
  signals_io.run();

  const auto deadline = Clock::now() + config_.timeouts.shutdown;
  for (auto& w : workers_) {
    while (!w->io->stopped() && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!w->io->stopped()) {
      spdlog::warn("shutdown timeout: closing connections still in flight");
      w->io->stop();
    }
    w->thread.join();
  }
  spdlog::info("stopped");
}

void Server::reload_tls() {
  if (!config_.tls.enabled()) {
    spdlog::info("SIGHUP: the listener serves plain HTTP, no certificate to reload");
    return;
  }
  try {
    auto tls = load_listener_tls(config_.tls);
    // Each worker swaps its context on its own thread: no lock on the accept path.
    for (auto& w : workers_) net::post(*w->io, [worker = w.get(), tls] { worker->tls = tls; });
    metrics_.add("accel_proxy_tls_reloads_total", {{"result", "ok"}});
    spdlog::info("tls reloaded: new connections get certificate {}", describe_certificate(*tls));
  } catch (const std::exception& e) {
    metrics_.add("accel_proxy_tls_reloads_total", {{"result", "failed"}});
    spdlog::error("tls reload failed, new connections keep the previous certificate: {}", e.what());
  }
}

}  // namespace accel
