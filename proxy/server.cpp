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
#include <spdlog/spdlog.h>
#include <thread>

#include "proxy/forward.hpp"
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
    http::request_parser<http::string_body> parser;
    parser.header_limit(config.limits.max_header_bytes);
    parser.body_limit(config.limits.max_body_bytes);
    // A request usually arrives whole in one read: parse what is buffered first, and read more
    // (under the header timeout) only when the parser needs it.
    boost::system::error_code ec;
    parser.eager(true);
    while (buffer.size() > 0 && !parser.is_done()) {
      size_t used = parser.put(buffer.data(), ec);
      buffer.consume(used);
      if (ec || used == 0) break;
    }
    if (ec == http::error::need_more) ec = {};
    if (!ec && !parser.is_done()) {
      deadline.expires_after(config.timeouts.header);
      std::tie(ec, std::ignore) =
          co_await std::visit([&](auto& s) { return http::async_read(s, buffer, parser, use_tuple); }, stream);
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

    const auto& request = parser.get();
    const auto started = Clock::now();
    client.begin(request.method() == http::verb::head, request.keep_alive() && !draining, request.version() == 10);
    ExchangeInfo info;
    try {
      co_await handle_request(context, request, client, info);
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
    spdlog::info("request method={} route={} repo={} status={} bytes={} duration_ms={:.2f} upstream={}{}{}",
                 method_label(request.method()), info.route, info.repository.empty() ? "-" : info.repository,
                 client.status(), client.body_bytes(), ms, info.upstream.empty() ? "-" : info.upstream,
                 info.coalesced ? " coalesced=true" : "", broken ? " aborted=true" : "");
    if (broken || !client.keep_alive()) break;
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
