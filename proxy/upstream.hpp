// HTTP/1.1 client for upstream registries (and the storage they redirect to): keep-alive
// connection pools per endpoint, http and https, timeouts, and responses whose bodies are read
// piece by piece so blobs stream with bounded memory.
//
// One UpstreamClient per worker thread (each worker runs its own io_context), so pools need no
// locks and a connection never changes thread.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "proxy/config.hpp"

namespace accel {

namespace net = boost::asio;
namespace http = boost::beast::http;

// Where a request goes: scheme, host and port (plus the TLS settings of the upstream it belongs
// to, which also apply to the storage it redirects to).
struct Endpoint {
  bool tls = false;
  std::string host;
  uint16_t port = 0;
  const UpstreamConfig* settings = nullptr;

  std::string key() const;          // "https://host:port", the pool key
  std::string host_header() const;  // "host[:port]"
};

Endpoint endpoint_of(const UpstreamConfig& upstream);

// A URL split for requests: the endpoint and the origin-form target ("/path?query").
struct ResolvedUrl {
  Endpoint endpoint;
  std::string target;
};
// Resolves `location` (absolute, or relative to `base`) as a redirect or realm URL.
std::optional<ResolvedUrl> resolve_url(std::string_view location, const Endpoint& base);

// Thrown for every upstream failure: connect, TLS, timeout, malformed or truncated response.
struct UpstreamError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// For loops that move bytes with splice(2) or sendfile(2) on a non-blocking socket: waits until
// `socket` is ready for `type`; false when `timeout` passed first.
net::awaitable<bool> wait_ready(net::ip::tcp::socket& socket, net::ip::tcp::socket::wait_type type, Duration timeout);

class UpstreamConnection;
class UpstreamClient;

// Where UpstreamResponse::tee_to sends its copy of a body: a file, or the write end of a pipe
// that another thread drains into one (then the copy into the page cache is that thread's work).
struct TeeSink {
  int fd = -1;
  bool pipe = false;     // a non-blocking pipe: it may be full for a while
  uint64_t written = 0;  // bytes the sink took
  bool failed = false;   // the sink failed (disk full, its reader gone): it got no more bytes
};

// A request body that is streamed upstream rather than held: a client's push (the session reads
// it piece by piece from the client's connection, see server.cpp).
class BodySource {
 public:
  virtual ~BodySource() = default;
  // The declared length; unset when the client sends it chunked (it goes upstream chunked too).
  virtual std::optional<uint64_t> size() const = 0;
  // The next piece of the body into `buffer`; 0 means the body is complete. Throws when the
  // client fails or stalls mid-body.
  virtual net::awaitable<size_t> read_some(net::mutable_buffer buffer) = 0;
  // The whole body has been read.
  virtual bool done() const = 0;
  // The client sent `Expect: 100-continue` and has not been told to go on yet (its first
  // read_some tells it).
  virtual bool expects_continue() const { return false; }
};

// The upstream's answer: header read, body not yet. Destroying it before the body is fully
// read closes the connection; reading it to the end returns the connection to its pool.
class UpstreamResponse {
 public:
  UpstreamResponse(UpstreamClient& client, std::unique_ptr<UpstreamConnection> connection, bool head_request);
  ~UpstreamResponse();
  UpstreamResponse(const UpstreamResponse&) = delete;
  UpstreamResponse& operator=(const UpstreamResponse&) = delete;

  unsigned status() const;
  const http::fields& headers() const;
  // From Content-Length; unset for chunked or close-delimited bodies.
  std::optional<uint64_t> content_length() const;
  bool body_done() const;
  // Content-Length bodies: the bytes still to come from the socket (those that arrived with the
  // header are not counted). Unset for other framings.
  std::optional<uint64_t> unbuffered_body_bytes() const;
  // Content-Length bodies: the bytes that arrived with the header, still to be read.
  size_t buffered_body_bytes() const;

  // Reads the next piece of the body into `buffer`; 0 means the body is complete. Throws
  // UpstreamError if the upstream closes early or stalls past the read timeout.
  net::awaitable<size_t> read_some(net::mutable_buffer buffer);
  // The whole body, refusing (UpstreamError) more than `limit` bytes.
  net::awaitable<std::string> read_all(uint64_t limit);
  // Moves the rest of the body to `out` with splice(2), without copying it through user space.
  // Only for a plain-TCP upstream and a Content-Length body: returns false, having moved
  // nothing, otherwise. Counts the bytes moved in `moved` (also when it throws, on a short body,
  // an error or a stall). The upstream gets its read timeout to send more, `out` gets
  // `write_timeout` to take more.
  net::awaitable<bool> splice_to(net::ip::tcp::socket& out, Duration write_timeout, uint64_t& moved);
  // splice_to, and every byte also given to `sink`, without copying through user space (tee(2)
  // and splice(2)). A failing sink never stops the transfer; neither does a sink pipe that
  // stays full for `write_timeout` (it is given up).
  net::awaitable<bool> tee_to(net::ip::tcp::socket& out, TeeSink& sink, Duration write_timeout, uint64_t& moved);
  // splice_to and tee_to would move the body (a plain-TCP upstream, a Content-Length body).
  bool can_splice() const;
  // Reads and drops `count` body bytes.
  net::awaitable<void> skip(uint64_t count, net::mutable_buffer scratch);

 private:
  friend class UpstreamClient;
  net::awaitable<void> read_header();

  UpstreamClient& client_;
  std::unique_ptr<UpstreamConnection> connection_;
  bool head_request_;
};

class UpstreamClient {
 public:
  UpstreamClient(net::any_io_executor executor, const Config& config);
  ~UpstreamClient();

  // Sends `request` and reads the response header. Retries once on a fresh connection when a
  // pooled keep-alive connection turns out to be closed (GET and HEAD only).
  net::awaitable<std::unique_ptr<UpstreamResponse>> send(const Endpoint& endpoint,
                                                          http::request<http::string_body>& request);

  // Sends `request`'s header, then `body` piece by piece through `scratch` (bounded memory),
  // and reads the response header. Always on a fresh connection: a pooled one the server closed
  // while idle could only be found out after the body was consumed, too late to retry. An
  // upstream that answers before taking the whole body (e.g. 401) is answered with: the caller
  // sees body.done() false. Counts the body bytes sent in `sent`. A body that expects_continue()
  // is sent only once the upstream said `100 Continue` (or stayed silent for a second): an
  // upstream's refusal reaches the client before it sends any of the body, as it would directly.
  net::awaitable<std::unique_ptr<UpstreamResponse>> send_streaming(const Endpoint& endpoint,
                                                                    const http::request<http::string_body>& request,
                                                                    BodySource& body, net::mutable_buffer scratch,
                                                                    uint64_t& sent);

  struct Fetched {
    std::unique_ptr<UpstreamResponse> response;
    Endpoint endpoint;  // where the final answer came from (after redirects)
  };
  // send(), following redirects for GET and HEAD (up to 5): storage behind a registry (S3...)
  // is often unreachable for our client, and must never be handed to it. Authorization is
  // dropped when a redirect leaves the host. `on_answer` gets each exchange's latency in seconds.
  net::awaitable<Fetched> fetch(Endpoint endpoint, http::request<http::string_body> request,
                                const std::function<void(double)>& on_answer = {});

  // Closes the pooled connections and stops pooling: call when draining (a pooled connection's
  // deadline timer would keep the worker's io_context running) and before the io_context goes
  // away, so no socket outlives the services it is registered with.
  void shutdown();

 private:
  friend class UpstreamResponse;
  net::awaitable<std::unique_ptr<UpstreamConnection>> connect(const Endpoint& endpoint);
  void release(std::unique_ptr<UpstreamConnection> connection);
  // Reads the next answer's header on `connection`: a final one is returned and owns it; an
  // interim one (1xx) is dropped and null returned, `connection` kept. Failures throw
  // UpstreamError, reporting `earlier` (a failed write) when set.
  net::awaitable<std::unique_ptr<UpstreamResponse>> next_answer(std::unique_ptr<UpstreamConnection>& connection,
                                                                const Endpoint& endpoint, bool head_request,
                                                                boost::system::error_code earlier);
  struct TlsContexts;

  net::any_io_executor executor_;
  const Config& config_;
  std::unique_ptr<TlsContexts> tls_;
  std::map<std::string, std::vector<std::unique_ptr<UpstreamConnection>>> idle_;
  bool shut_down_ = false;
};

}  // namespace accel
