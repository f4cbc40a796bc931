#include "proxy/upstream.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <fcntl.h>
#include <unistd.h>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/url/parse.hpp>
#include <array>
#include <charconv>
#include <cstdio>
#include <chrono>
#include <cstring>
#include <variant>

#include "proxy/deadline.hpp"

namespace accel {

namespace beast = boost::beast;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;
constexpr auto use_tuple = net::as_tuple(net::use_awaitable);

// --- Endpoint ---------------------------------------------------------------------------------

std::string Endpoint::key() const {
  return (tls ? "https://" : "http://") + host + ":" + std::to_string(port);
}

std::string Endpoint::host_header() const {
  bool default_port = (tls && port == 443) || (!tls && port == 80);
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return default_port ? h : h + ":" + std::to_string(port);
}

Endpoint endpoint_of(const UpstreamConfig& u) { return Endpoint{u.tls(), u.host, u.port, &u}; }

std::optional<ResolvedUrl> resolve_url(std::string_view location, const Endpoint& base) {
  if (!location.empty() && location.front() == '/' && !(location.size() > 1 && location[1] == '/'))
    return ResolvedUrl{base, std::string(location)};
  auto url = boost::urls::parse_absolute_uri(location);
  if (!url) return std::nullopt;
  std::string scheme(url->scheme());
  if (scheme != "http" && scheme != "https") return std::nullopt;
  ResolvedUrl r;
  r.endpoint.tls = scheme == "https";
  r.endpoint.host = std::string(url->host_address());
  r.endpoint.port = url->has_port() ? url->port_number() : (r.endpoint.tls ? 443 : 80);
  r.endpoint.settings = base.settings;
  if (r.endpoint.host.empty() || r.endpoint.port == 0) return std::nullopt;
  r.target = url->encoded_path().empty() ? "/" : std::string(url->encoded_path());
  if (url->has_query()) r.target += "?" + std::string(url->encoded_query());
  return r;
}

// --- Connection -------------------------------------------------------------------------------

class UpstreamConnection {
 public:
  using Plain = tcp::socket;
  using Secure = beast::ssl_stream<tcp::socket>;

  std::variant<Plain, Secure> stream;
  Deadline deadline{lowest()};  // for each read and write; idle in the pool: none
  std::string key;
  int max_idle = 64;  // pooled connections kept for `key` (the upstream's setting, 64 for others)
  beast::flat_buffer buffer;
  std::optional<http::response_parser<http::buffer_body>> parser;
  Duration read_timeout{};
  bool reused = false;

  // Body state of the current response.
  bool raw_body = false;   // Content-Length framing: read straight from the socket
  uint64_t remaining = 0;  // raw_body: bytes still to come
  bool done = false;
  bool keep_alive = false;

  // A pipe for splice(2), made on first use and kept with the connection.
  int pipe_read = -1;
  int pipe_write = -1;
  size_t pipe_capacity = 0;
  // A second one for tee_to: the bytes on their way to the file.
  int tee_read = -1;
  int tee_write = -1;
  size_t tee_capacity = 0;

  template <class... Args>
  explicit UpstreamConnection(Args&&... args) : stream(std::forward<Args>(args)...) {
    // Beast sizes each read by the buffer's free space, starting at 512 bytes: room for a whole
    // header and a small body (a manifest) makes that one read instead of three.
    buffer.reserve(16 * 1024);
  }
  ~UpstreamConnection() {
    for (int fd : {pipe_read, pipe_write, tee_read, tee_write})
      if (fd >= 0) ::close(fd);
  }

  tcp::socket& lowest() {
    return std::visit([](auto& s) -> tcp::socket& { return beast::get_lowest_layer(s); }, stream);
  }
  void arm_timer() { deadline.expires_after(read_timeout); }
  // An operation cancelled by the deadline reports a timeout.
  error_code why(error_code ec) const {
    return ec == net::error::operation_aborted && deadline.expired() ? error_code(beast::error::timeout) : ec;
  }
};

// --- Response ---------------------------------------------------------------------------------

UpstreamResponse::UpstreamResponse(UpstreamClient& client, std::unique_ptr<UpstreamConnection> connection,
                                   bool head_request)
    : client_(client), connection_(std::move(connection)), head_request_(head_request) {}

UpstreamResponse::~UpstreamResponse() {
  if (connection_ && connection_->done && connection_->keep_alive) client_.release(std::move(connection_));
}

unsigned UpstreamResponse::status() const { return connection_->parser->get().result_int(); }
const http::fields& UpstreamResponse::headers() const { return connection_->parser->get().base(); }
bool UpstreamResponse::body_done() const { return connection_->done; }

std::optional<uint64_t> UpstreamResponse::content_length() const {
  auto& p = *connection_->parser;
  if (p.chunked()) return std::nullopt;
  if (auto n = p.content_length()) return *n;
  // A HEAD answer's parser skips the body, so read the header ourselves.
  auto it = p.get().find(http::field::content_length);
  if (it == p.get().end()) return std::nullopt;
  uint64_t n = 0;
  auto v = it->value();
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || ptr != v.data() + v.size()) return std::nullopt;
  return n;
}

net::awaitable<void> UpstreamResponse::read_header() {
  auto& c = *connection_;
  c.parser.emplace();
  c.parser->body_limit(boost::none);  // bodies are streamed, never buffered whole
  c.parser->header_limit(64 * 1024);
  if (head_request_) c.parser->skip(true);
  c.arm_timer();
  auto [ec, n] = co_await std::visit(
      [&](auto& s) { return http::async_read_header(s, c.buffer, *c.parser, use_tuple); }, c.stream);
  if (ec) throw boost::system::system_error(c.why(ec));
  c.keep_alive = c.parser->keep_alive();
  unsigned status = c.parser->get().result_int();
  if (c.parser->is_done() || head_request_ || status == 204 || status == 304 || status / 100 == 1) {
    c.done = true;
  } else if (!c.parser->chunked() && c.parser->content_length()) {
    c.raw_body = true;
    c.remaining = *c.parser->content_length();
    c.done = c.remaining == 0;
  }
}

std::optional<uint64_t> UpstreamResponse::unbuffered_body_bytes() const {
  const auto& c = *connection_;
  if (c.done) return 0;
  if (!c.raw_body) return std::nullopt;
  return c.remaining - std::min<uint64_t>(c.remaining, c.buffer.size());
}

size_t UpstreamResponse::buffered_body_bytes() const {
  const auto& c = *connection_;
  if (c.done || !c.raw_body) return 0;
  return static_cast<size_t>(std::min<uint64_t>(c.remaining, c.buffer.size()));
}

net::awaitable<size_t> UpstreamResponse::read_some(net::mutable_buffer buffer) {
  auto& c = *connection_;
  if (c.done || buffer.size() == 0) co_return 0;
  if (c.raw_body) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(buffer.size(), c.remaining));
    size_t got = 0;
    if (c.buffer.size() > 0) {  // body bytes that arrived together with the header
      got = net::buffer_copy(net::buffer(buffer.data(), want), c.buffer.data());
      c.buffer.consume(got);
    } else {
      c.arm_timer();
      auto [ec, n] = co_await std::visit(
          [&](auto& s) { return s.async_read_some(net::buffer(buffer.data(), want), use_tuple); }, c.stream);
      if (ec || n == 0) {
        c.keep_alive = false;
        throw UpstreamError(c.why(ec) == beast::error::timeout ? "upstream stalled while sending the body"
                                                        : "upstream closed the connection before the end of the body");
      }
      got = n;
    }
    c.remaining -= got;
    c.done = c.remaining == 0;
    co_return got;
  }
  // Chunked or close-delimited: let Beast's parser decode the framing.
  auto& body = c.parser->get().body();
  while (true) {
    body.data = buffer.data();
    body.size = buffer.size();
    body.more = true;
    c.arm_timer();
    auto [ec, n] = co_await std::visit(
        [&](auto& s) { return http::async_read_some(s, c.buffer, *c.parser, use_tuple); }, c.stream);
    if (ec == http::error::need_buffer) ec = {};
    size_t got = buffer.size() - body.size;
    if (c.parser->is_done()) {
      c.done = true;
      if (!c.parser->keep_alive()) c.keep_alive = false;
      co_return got;
    }
    if (ec) {
      c.keep_alive = false;
      throw UpstreamError("upstream body ended early: " + c.why(ec).message());
    }
    if (got > 0) co_return got;
  }
}

net::awaitable<std::string> UpstreamResponse::read_all(uint64_t limit) {
  if (auto n = content_length(); n && *n > limit) throw UpstreamError("upstream body exceeds the size limit");
  std::string out;
  char chunk[16 * 1024];
  while (true) {
    size_t n = co_await read_some(net::buffer(chunk));
    if (n == 0) break;
    if (out.size() + n > limit) throw UpstreamError("upstream body exceeds the size limit");
    out.append(chunk, n);
  }
  co_return out;
}

net::awaitable<void> UpstreamResponse::skip(uint64_t count, net::mutable_buffer scratch) {
  while (count > 0) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(count, scratch.size()));
    size_t n = co_await read_some(net::buffer(scratch.data(), want));
    if (n == 0) throw UpstreamError("upstream body shorter than its declared length");
    count -= n;
  }
}

net::awaitable<bool> wait_ready(tcp::socket& socket, tcp::socket::wait_type type, Duration timeout) {
  using namespace net::experimental::awaitable_operators;
  net::steady_timer timer(socket.get_executor(), timeout);
  auto result = co_await (socket.async_wait(type, use_tuple) || timer.async_wait(use_tuple));
  if (result.index() == 1) co_return false;
  if (auto [ec] = std::get<0>(result); ec) throw UpstreamError("socket wait failed: " + ec.message());
  co_return true;
}

namespace {

// A non-blocking pipe of 1 MiB (the size measured best for splice; DECISIONS.md), made once per
// connection. False if the system refuses one (the caller then copies).
bool ensure_pipe(int& read_end, int& write_end, size_t& capacity) {
  if (read_end >= 0) return true;
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return false;
  read_end = fds[0];
  write_end = fds[1];
  int size = ::fcntl(write_end, F_SETPIPE_SZ, 1 << 20);
  capacity = size > 0 ? static_cast<size_t>(size) : 65536;
  return true;
}

// Reads and drops `count` bytes from the pipe (they are in it): a failed sink's share.
void drop_from_pipe(int pipe, size_t count) {
  char sink[16 * 1024];
  while (count > 0) {
    ssize_t n = ::read(pipe, sink, std::min(count, sizeof sink));
    if (n > 0) count -= static_cast<size_t>(n);
    else if (n < 0 && errno == EINTR) continue;
    else break;
  }
}

// Waits until the pipe `fd` can take bytes; false when `timeout` passed first.
net::awaitable<bool> wait_pipe_writable(int fd, Duration timeout) {
  using namespace net::experimental::awaitable_operators;
  auto executor = co_await net::this_coro::executor;
  net::posix::stream_descriptor pipe(executor, fd);
  struct Release {  // the descriptor is borrowed: never closed here
    net::posix::stream_descriptor& d;
    ~Release() { d.release(); }
  } release{pipe};
  net::steady_timer timer(executor, timeout);
  auto result = co_await (pipe.async_wait(net::posix::descriptor_base::wait_write, use_tuple) || timer.async_wait(use_tuple));
  co_return result.index() == 0 && !std::get<0>(std::get<0>(result));
}

}  // namespace

net::awaitable<bool> UpstreamResponse::splice_to(tcp::socket& out, Duration write_timeout, uint64_t& moved) {
  auto& c = *connection_;
  auto* plain = std::get_if<UpstreamConnection::Plain>(&c.stream);
  if (!plain || !c.raw_body || c.done) co_return false;
  if (!ensure_pipe(c.pipe_read, c.pipe_write, c.pipe_capacity)) co_return false;
  if (c.buffer.size() > 0) {  // body bytes that arrived with the header
    size_t n = static_cast<size_t>(std::min<uint64_t>(c.buffer.size(), c.remaining));
    co_await net::async_write(out, net::buffer(c.buffer.data().data(), n), net::use_awaitable);
    c.buffer.consume(n);
    c.remaining -= n;
    moved += n;
  }
  tcp::socket& in = *plain;
  c.deadline.expires_never();  // the waits below keep their own timeout
  if (!in.non_blocking()) in.non_blocking(true);  // each call is an ioctl
  if (!out.non_blocking()) out.non_blocking(true);
  size_t in_pipe = 0;
  // Any bytes left in the pipe on an error are dropped with the connection (it is not reused).
  while (c.remaining > 0 || in_pipe > 0) {
    if (c.remaining > 0 && in_pipe < c.pipe_capacity) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(c.remaining, c.pipe_capacity - in_pipe));
      ssize_t n = ::splice(in.native_handle(), nullptr, c.pipe_write, nullptr, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        in_pipe += static_cast<size_t>(n);
        c.remaining -= static_cast<uint64_t>(n);
      } else if (n == 0) {
        c.keep_alive = false;
        throw UpstreamError("upstream closed the connection before the end of the body");
      } else if (errno == EAGAIN && in_pipe == 0) {
        if (!co_await wait_ready(in, tcp::socket::wait_read, c.read_timeout))
          throw UpstreamError("upstream stalled while sending the body");
        continue;
      } else if (errno != EAGAIN && errno != EINTR) {
        c.keep_alive = false;
        throw UpstreamError(std::string("splice from upstream failed: ") + std::strerror(errno));
      }
    }
    if (in_pipe > 0) {
      ssize_t n = ::splice(c.pipe_read, nullptr, out.native_handle(), nullptr, in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        in_pipe -= static_cast<size_t>(n);
        moved += static_cast<uint64_t>(n);
      } else if (n < 0 && errno == EAGAIN) {
        if (!co_await wait_ready(out, tcp::socket::wait_write, write_timeout))
          throw UpstreamError("client stopped taking the body past the write timeout");
      } else if (n == 0 || errno != EINTR) {
        c.keep_alive = false;
        throw UpstreamError("client connection failed during the transfer");
      }
    }
  }
  c.done = true;
  co_return true;
}

bool UpstreamResponse::can_splice() const {
  const auto& c = *connection_;
  return std::holds_alternative<UpstreamConnection::Plain>(c.stream) && c.raw_body && !c.done;
}

// splice_to with a copy of every byte for `sink`. The body flows upstream -> pipe C (splice),
// C -> pipe A (tee: the pages are shared, not copied), the same bytes C -> sink (splice: into a
// file the kernel copies them to the page cache; into a sink pipe it moves the pages), and A ->
// `out` (splice). tee(2) always duplicates from the head of C, so C is teed again only once the
// sink took everything teed before: C holds teed bytes waiting for the sink, then fresh ones.
// When the sink fails (disk full, its reader gone, full past the write timeout) the body goes
// on upstream -> A -> `out` alone: the client's transfer never depends on the cache.
net::awaitable<bool> UpstreamResponse::tee_to(tcp::socket& out, TeeSink& sink, Duration write_timeout, uint64_t& moved) {
  auto& c = *connection_;
  if (!can_splice()) co_return false;
  if (!ensure_pipe(c.pipe_read, c.pipe_write, c.pipe_capacity) || !ensure_pipe(c.tee_read, c.tee_write, c.tee_capacity))
    co_return false;
  if (c.buffer.size() > 0) {  // body bytes that arrived with the header
    size_t n = static_cast<size_t>(std::min<uint64_t>(c.buffer.size(), c.remaining));
    const char* data = static_cast<const char*>(c.buffer.data().data());
    for (size_t done = 0; done < n && !sink.failed;) {  // an empty sink pipe takes these at once
      ssize_t w = ::write(sink.fd, data + done, n - done);
      if (w > 0) done += static_cast<size_t>(w), sink.written += static_cast<uint64_t>(w);
      else if (w < 0 && errno == EINTR) continue;
      else sink.failed = true;
    }
    co_await net::async_write(out, net::buffer(data, n), net::use_awaitable);
    c.buffer.consume(n);
    c.remaining -= n;
    moved += n;
  }
  tcp::socket& in = std::get<UpstreamConnection::Plain>(c.stream);
  c.deadline.expires_never();  // the waits below keep their own timeout
  if (!in.non_blocking()) in.non_blocking(true);
  if (!out.non_blocking()) out.non_blocking(true);
  size_t in_a = 0;     // A: for the client
  size_t fresh = 0;    // C: not yet teed
  size_t pending = 0;  // C's head: teed (so in A too), not yet taken by the sink
  const unsigned sink_flags = SPLICE_F_MOVE | (sink.pipe ? SPLICE_F_NONBLOCK : 0);
  // Any bytes left in the pipes on an error are dropped with the connection (it is not reused).
  while (c.remaining > 0 || in_a > 0 || fresh > 0 || pending > 0) {
    bool progress = false;
    bool sink_full = false;
    if (c.remaining > 0) {
      // Through C while it holds anything: bytes must reach A in order.
      const bool via_c = !sink.failed || fresh > 0 || pending > 0;
      const size_t used = via_c ? fresh + pending : in_a;
      const size_t capacity = via_c ? c.tee_capacity : c.pipe_capacity;
      if (used < capacity) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(c.remaining, capacity - used));
        ssize_t n = ::splice(in.native_handle(), nullptr, via_c ? c.tee_write : c.pipe_write, nullptr, want,
                             SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
          (via_c ? fresh : in_a) += static_cast<size_t>(n);
          c.remaining -= static_cast<uint64_t>(n);
          progress = true;
        } else if (n == 0) {
          c.keep_alive = false;
          throw UpstreamError("upstream closed the connection before the end of the body");
        } else if (errno != EAGAIN && errno != EINTR) {
          c.keep_alive = false;
          throw UpstreamError(std::string("splice from upstream failed: ") + std::strerror(errno));
        }
      }
    }
    if (pending > 0 && !sink.failed) {
      ssize_t n = ::splice(c.tee_read, nullptr, sink.fd, nullptr, pending, sink_flags);
      if (n > 0) {
        pending -= static_cast<size_t>(n);
        sink.written += static_cast<uint64_t>(n);
        progress = true;
      } else if (n < 0 && errno == EAGAIN) {
        sink_full = true;
      } else if (!(n < 0 && errno == EINTR)) {
        sink.failed = true;
      }
    }
    if (pending > 0 && sink.failed) {
      drop_from_pipe(c.tee_read, pending);
      pending = 0;
      progress = true;
    }
    if (pending == 0 && fresh > 0) {
      ssize_t t = ::tee(c.tee_read, c.pipe_write, fresh, SPLICE_F_NONBLOCK);
      if (t > 0) {
        fresh -= static_cast<size_t>(t);
        pending += static_cast<size_t>(t);
        in_a += static_cast<size_t>(t);
        progress = true;
      } else if (t < 0 && errno != EAGAIN && errno != EINTR) {
        c.keep_alive = false;
        throw UpstreamError(std::string("tee failed: ") + std::strerror(errno));
      }  // EAGAIN: A is full, the client must take some first
    }
    if (in_a > 0) {
      ssize_t n = ::splice(c.pipe_read, nullptr, out.native_handle(), nullptr, in_a, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        in_a -= static_cast<size_t>(n);
        moved += static_cast<uint64_t>(n);
        progress = true;
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        c.keep_alive = false;
        throw UpstreamError("client connection failed during the transfer");
      }
    }
    if (progress) continue;
    if (in_a > 0) {
      if (!co_await wait_ready(out, tcp::socket::wait_write, write_timeout))
        throw UpstreamError("client stopped taking the body past the write timeout");
    } else if (sink_full) {
      if (!co_await wait_pipe_writable(sink.fd, write_timeout)) sink.failed = true;  // the cache's disk is stuck
    } else if (!co_await wait_ready(in, tcp::socket::wait_read, c.read_timeout)) {
      throw UpstreamError("upstream stalled while sending the body");
    }
  }
  c.done = true;
  co_return true;
}

// --- Client -----------------------------------------------------------------------------------

struct UpstreamClient::TlsContexts {
  std::map<const UpstreamConfig*, ssl::context> by_upstream;

  ssl::context& for_settings(const UpstreamConfig* settings) {
    auto it = by_upstream.find(settings);
    if (it != by_upstream.end()) return it->second;
    ssl::context ctx(ssl::context::tls_client);
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3);
    ctx.set_default_verify_paths();
    if (settings && !settings->ca_file.empty()) ctx.load_verify_file(settings->ca_file);
    ctx.set_verify_mode(settings && settings->insecure_skip_verify ? ssl::verify_none : ssl::verify_peer);
    return by_upstream.emplace(settings, std::move(ctx)).first->second;
  }
};

UpstreamClient::UpstreamClient(net::any_io_executor executor, const Config& config)
    : executor_(std::move(executor)), config_(config), tls_(std::make_unique<TlsContexts>()) {}

UpstreamClient::~UpstreamClient() = default;

net::awaitable<std::unique_ptr<UpstreamConnection>> UpstreamClient::connect(const Endpoint& endpoint) {
  tcp::resolver resolver(executor_);
  auto [rec, results] = co_await resolver.async_resolve(endpoint.host, std::to_string(endpoint.port), use_tuple);
  if (rec) throw UpstreamError("cannot resolve " + endpoint.host + ": " + rec.message());

  std::unique_ptr<UpstreamConnection> c;
  if (endpoint.tls) {
    auto& ctx = tls_->for_settings(endpoint.settings);
    c = std::make_unique<UpstreamConnection>(std::in_place_type<UpstreamConnection::Secure>, executor_, ctx);
  } else {
    c = std::make_unique<UpstreamConnection>(std::in_place_type<UpstreamConnection::Plain>, executor_);
  }
  c->key = endpoint.key();
  if (endpoint.settings && endpoint_of(*endpoint.settings).key() == c->key) c->max_idle = endpoint.settings->max_idle_connections;
  c->read_timeout = config_.timeouts.upstream_read;
  // One deadline for all the addresses and the TLS handshake. The addresses are tried here
  // rather than by net::async_connect, which would go on to the next one after a timeout
  // (the deadline cancels; it does not close).
  c->deadline.expires_after(config_.timeouts.upstream_connect);
  error_code cec = net::error::host_not_found;
  for (const auto& entry : results) {
    error_code ignored;
    c->lowest().close(ignored);
    std::tie(cec) = co_await c->lowest().async_connect(entry.endpoint(), use_tuple);
    if (!cec || c->deadline.expired()) break;
  }
  if (cec) throw UpstreamError("cannot connect to " + endpoint.key() + ": " + c->why(cec).message());
  c->lowest().set_option(tcp::no_delay(true));

  if (auto* secure = std::get_if<UpstreamConnection::Secure>(&c->stream)) {
    if (!SSL_set_tlsext_host_name(secure->native_handle(), endpoint.host.c_str()))
      throw UpstreamError("cannot set TLS server name for " + endpoint.host);
    if (!(endpoint.settings && endpoint.settings->insecure_skip_verify))
      secure->set_verify_callback(ssl::host_name_verification(endpoint.host));
    auto [hec] = co_await secure->async_handshake(ssl::stream_base::client, use_tuple);
    if (hec) throw UpstreamError("TLS handshake with " + endpoint.key() + " failed: " + c->why(hec).message());
  }
  co_return c;
}

void UpstreamClient::shutdown() {
  shut_down_ = true;
  idle_.clear();
}

void UpstreamClient::release(std::unique_ptr<UpstreamConnection> connection) {
  if (shut_down_) return;  // closes it
  auto& idle = idle_[connection->key];
  if (static_cast<int>(idle.size()) >= connection->max_idle) return;  // closes it
  connection->parser.reset();
  connection->raw_body = false;
  connection->done = false;
  connection->reused = true;
  connection->deadline.expires_never();
  idle.push_back(std::move(connection));
}

net::awaitable<std::unique_ptr<UpstreamResponse>> UpstreamClient::send(const Endpoint& endpoint,
                                                                      http::request<http::string_body>& request) {
  const bool head = request.method() == http::verb::head;
  const bool idempotent = head || request.method() == http::verb::get;
  request.prepare_payload();
  // Serialized once, by hand: one buffer to write (and to write again on a retry) costs less
  // than Beast's general serializer on this per-request path.
  std::string wire;
  wire.reserve(512 + request.body().size());
  wire.append(request.method_string()).append(" ").append(request.target()).append(" HTTP/1.1\r\n");
  for (const auto& f : request) wire.append(f.name_string()).append(": ").append(f.value()).append("\r\n");
  wire.append("\r\n").append(request.body());
  for (int attempt = 0;; ++attempt) {
    std::unique_ptr<UpstreamConnection> c;
    if (auto it = idle_.find(endpoint.key()); it != idle_.end() && !it->second.empty()) {
      c = std::move(it->second.back());
      it->second.pop_back();
    } else {
      c = co_await connect(endpoint);
    }
    const bool reused = c->reused;
    c->arm_timer();
    auto [wec, wn] = co_await std::visit(
        [&](auto& s) { return net::async_write(s, net::buffer(wire), use_tuple); }, c->stream);
    error_code failure = c->why(wec);
    std::unique_ptr<UpstreamResponse> response;
    if (!failure) {
      response = std::make_unique<UpstreamResponse>(*this, std::move(c), head);
      try {
        co_await response->read_header();
      } catch (const boost::system::system_error& e) {
        failure = e.code();
        response.reset();
      }
    }
    if (!failure) co_return response;
    // A pooled connection the server closed while idle fails at once: try a fresh one.
    if (reused && idempotent && attempt == 0) continue;
    if (failure == beast::error::timeout) throw UpstreamError("upstream " + endpoint.key() + " timed out");
    throw UpstreamError("upstream " + endpoint.key() + ": " + failure.message());
  }
}

namespace {

// Writes all of `buffers` to the connection under its read timeout (an upstream that stops
// taking a body is as stuck as one that stops sending one).
template <class Buffers>
net::awaitable<error_code> write_all(UpstreamConnection& c, const Buffers& buffers) {
  c.arm_timer();
  auto [ec, n] = co_await std::visit([&](auto& s) { return net::async_write(s, buffers, use_tuple); }, c.stream);
  if (!ec && n != net::buffer_size(buffers)) ec = net::error::broken_pipe;  // a short write is a failure
  co_return c.why(ec);
}

}  // namespace

net::awaitable<std::unique_ptr<UpstreamResponse>> UpstreamClient::next_answer(
    std::unique_ptr<UpstreamConnection>& connection, const Endpoint& endpoint, bool head_request, error_code earlier) {
  auto response = std::make_unique<UpstreamResponse>(*this, std::move(connection), head_request);
  try {
    co_await response->read_header();
  } catch (const boost::system::system_error& e) {
    const error_code ec = earlier ? earlier : e.code();
    if (ec == beast::error::timeout) throw UpstreamError("upstream " + endpoint.key() + " timed out");
    throw UpstreamError("upstream " + endpoint.key() + ": " + ec.message());
  }
  if (response->status() / 100 != 1) co_return response;
  connection = std::move(response->connection_);
  connection->done = false;  // read_header took the interim answer for a whole one
  co_return nullptr;
}

net::awaitable<std::unique_ptr<UpstreamResponse>> UpstreamClient::send_streaming(
    const Endpoint& endpoint, const http::request<http::string_body>& request, BodySource& body,
    net::mutable_buffer scratch, uint64_t& sent) {
  const bool head_request = request.method() == http::verb::head;
  const auto length = body.size();
  const bool ask_first = body.expects_continue();
  std::string head;
  head.append(request.method_string()).append(" ").append(request.target()).append(" HTTP/1.1\r\n");
  for (const auto& f : request) head.append(f.name_string()).append(": ").append(f.value()).append("\r\n");
  // The body's framing is ours to choose: the client's length when it gave one, else chunked.
  if (length) head.append("Content-Length: ").append(std::to_string(*length)).append("\r\n");
  else head.append("Transfer-Encoding: chunked\r\n");
  // The client's expectation goes upstream: the upstream decides whether the body is wanted.
  if (ask_first) head.append("Expect: 100-continue\r\n");
  head.append("\r\n");

  std::unique_ptr<UpstreamConnection> c = co_await connect(endpoint);
  error_code failure = co_await write_all(*c, net::buffer(head));
  std::unique_ptr<UpstreamResponse> response;
  // An HTTP/1.1 server answers an expectation with 100 Continue or its final answer (a refusal:
  // returned, the body untouched, the client never told to send it). One silent for a second
  // (HTTP/1.0, or ignoring the expectation) gets the body anyway, as curl does; its 100 may then
  // come late, during the body, and is dropped there.
  if (!failure && ask_first && co_await wait_ready(c->lowest(), tcp::socket::wait_read, std::chrono::seconds(1)))
    response = co_await next_answer(c, endpoint, head_request, {});
  // Pump: one client read, one upstream write, through `scratch`. An upstream that has answered
  // already (it refused the request without reading the body) gets no more: its answer is read.
  auto answered = [&c] {
    error_code ignored;
    return c->buffer.size() > 0 || c->lowest().available(ignored) > 0;
  };
  while (!failure && !response) {
    if (answered()) {
      response = co_await next_answer(c, endpoint, head_request, {});
      continue;  // a final answer ends the pump, an interim one (a late 100) does not
    }
    const size_t n = co_await body.read_some(scratch);
    if (n == 0) break;
    const net::const_buffer piece(scratch.data(), n);
    if (length) {
      failure = co_await write_all(*c, piece);
    } else {
      char size_line[24];
      const int k = std::snprintf(size_line, sizeof size_line, "%zx\r\n", n);
      const std::array<net::const_buffer, 3> parts{net::buffer(size_line, k), piece, net::buffer("\r\n", 2)};
      failure = co_await write_all(*c, parts);
    }
    if (!failure) sent += n;
  }
  if (!response) {
    if (!failure && !length && body.done()) failure = co_await write_all(*c, net::buffer("0\r\n\r\n", 5));
    // The answer: after the whole body, or after a failed write (an upstream that refused the
    // body may have answered before closing). Interim answers before it are dropped.
    while (!response) response = co_await next_answer(c, endpoint, head_request, failure);
  }
  // A connection whose request body was cut short cannot carry another request.
  if (failure || !body.done()) response->connection_->keep_alive = false;
  co_return response;
}

}  // namespace accel

namespace accel {

net::awaitable<UpstreamClient::Fetched> UpstreamClient::fetch(Endpoint endpoint, http::request<http::string_body> request,
                                                              const std::function<void(double)>& on_answer) {
  for (int hop = 0;; ++hop) {
    auto started = std::chrono::steady_clock::now();
    auto response = co_await send(endpoint, request);
    if (on_answer) on_answer(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    const unsigned status = response->status();
    const bool redirect = status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
    const auto method = request.method();
    if (!redirect || hop == 5 || (method != http::verb::get && method != http::verb::head))
      co_return Fetched{std::move(response), endpoint};
    auto next = resolve_url(response->headers()[http::field::location], endpoint);
    if (!next) co_return Fetched{std::move(response), endpoint};
    if (next->endpoint.key() != endpoint.key()) request.erase(http::field::authorization);
    endpoint = next->endpoint;
    request.target(next->target);
    request.set(http::field::host, endpoint.host_header());
    response.reset();  // a redirect's short body goes with its connection
  }
}

}  // namespace accel
