// A client connection's byte stream: plain TCP, or TLS over TCP when the listener serves HTTPS
// (`tls:` in the config). The session and ClientConnection work on either through std::visit,
// so the request handling stays one code path; only the zero-copy paths (splice, sendfile) need
// the bare socket and fall back to the buffered copy over TLS.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <variant>

namespace accel {

namespace net = boost::asio;

// beast::ssl_stream rather than asio's: it gathers a write's buffers (head + body) into one
// TLS record instead of one record per buffer.
using ClientTls = boost::beast::ssl_stream<net::ip::tcp::socket>;
using ClientStream = std::variant<net::ip::tcp::socket, ClientTls>;

// The TCP socket under either kind: deadlines, cancellation and shutdown act on it.
inline net::ip::tcp::socket& tcp_socket_of(ClientStream& stream) {
  return std::visit([](auto& s) -> net::ip::tcp::socket& { return boost::beast::get_lowest_layer(s); }, stream);
}

}  // namespace accel
