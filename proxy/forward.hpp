// Answers one client request: local endpoints (health, metrics, errors) directly, registry
// routes by forwarding to the chosen upstream and streaming its answer back, with the fixes a
// mirror owes its clients (Range when the upstream ignores it, redirects followed, tags
// pagination, referrers fallback, token realm rewriting).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "auth/challenge.hpp"
#include "proxy/client_stream.hpp"
#include "proxy/config.hpp"
#include "proxy/deadline.hpp"
#include "proxy/metrics.hpp"
#include "proxy/upstream.hpp"

namespace accel {

using Request = http::request<http::string_body>;

// Manifest requests in flight upstream on one worker, keyed by everything that shapes the
// answer: an identical request arriving meanwhile waits for that answer instead of asking the
// upstream again (see forward.cpp, "Identical manifest requests share one upstream exchange").
struct ManifestFlight;
struct ManifestFlights {
  std::unordered_map<std::string, std::shared_ptr<ManifestFlight>> by_key;
};

// Everything a request handler may use; one per worker thread except the shared parts.
class Variants;  // variants/variants.hpp

struct ProxyContext {
  const Config& config;
  Metrics& metrics;
  TokenRealms& realms;
  UpstreamClient& upstreams;
  Variants* variants = nullptr;         // null when variants are off
  ManifestFlights* flights = nullptr;   // null: every request asks the upstream itself
};

// Status line and fields of an answer. Without a content length the body is sent chunked.
struct ResponseHead {
  unsigned status = 200;
  std::vector<std::pair<std::string, std::string>> fields;
  std::optional<uint64_t> content_length;

  void set(std::string name, std::string value);
};

// The client's side of one connection: writes answers, counts bytes, remembers whether the
// connection can be kept open.
class ClientConnection {
 public:
  // `write_timeout`: longest a client may take to accept more of an answer, kept by `deadline`
  // (the stream's TCP socket's).
  ClientConnection(ClientStream& stream, Deadline& deadline, Duration write_timeout);

  // Starts a new exchange: `head_request` answers carry no body; `keep_alive` is the client's
  // wish; an HTTP/1.0 client (`http10`) must be told explicitly that the connection stays open.
  void begin(bool head_request, bool keep_alive, bool http10 = false);

  net::awaitable<void> write_head(const ResponseHead& head);
  net::awaitable<void> write_body(net::const_buffer data);
  net::awaitable<void> finish();  // ends a chunked body and flushes
  net::awaitable<void> flush();   // sends the head if it is still pending

  // Body bytes may go straight to the socket (not chunked, not a HEAD answer).
  bool raw_body() const { return !chunked_ && !head_request_; }
  // The bare socket for the zero-copy paths (splice, sendfile); null over TLS, where the bytes
  // must pass through the encryption: those paths then copy through scratch() and write_body().
  net::ip::tcp::socket* plain_socket() { return std::get_if<net::ip::tcp::socket>(&stream_); }
  void count_body(uint64_t n) { body_bytes_ += n; }
  Duration write_timeout() const { return write_timeout_; }
  // The client's IP address ("" once the socket has none).
  std::string peer_address() {
    boost::system::error_code ec;
    auto endpoint = tcp_socket_of(stream_).remote_endpoint(ec);
    return ec ? std::string() : endpoint.address().to_string();
  }

  bool head_sent() const { return head_sent_; }
  bool keep_alive() const { return keep_alive_; }
  void close_after() { keep_alive_ = false; }
  uint64_t body_bytes() const { return body_bytes_; }
  unsigned status() const { return status_; }
  net::mutable_buffer scratch() { return net::buffer(scratch_.get(), kScratchSize); }

  static constexpr size_t kScratchSize = 256 * 1024;

 private:
  template <class Buffers>
  net::awaitable<void> write(const Buffers& buffers);

  ClientStream& stream_;
  Deadline& deadline_;
  Duration write_timeout_;
  std::unique_ptr<char[]> scratch_;
  std::string pending_head_;  // sent together with the first body bytes
  bool head_request_ = false;
  bool keep_alive_ = true;
  bool http10_ = false;
  bool head_sent_ = false;
  bool chunked_ = false;
  unsigned status_ = 0;
  uint64_t body_bytes_ = 0;
};

// What the access log and metrics need to know about an exchange.
struct ExchangeInfo {
  std::string route = "other";
  std::string repository;
  std::string upstream;
  bool coalesced = false;  // answered with the answer of an identical request in flight
  uint64_t request_bytes = 0;  // a push's body bytes passed upstream
};

// Handles one request. Throws only after the answer's head was sent (the caller then closes
// the connection so the client sees a broken transfer, never a short body taken as complete).
// `body`: a push's body still on the connection, to be streamed upstream (null: the request's
// body, if any, was read whole into `request`).
net::awaitable<void> handle_request(ProxyContext& ctx, const Request& request, ClientConnection& client,
                                    ExchangeInfo& info, BodySource* body = nullptr);

// Answers with an OCI error body; for clients whose request could not even be parsed too.
net::awaitable<void> send_error(ClientConnection& client, unsigned status, std::string_view code,
                                std::string_view message);

}  // namespace accel
