// The pieces request handlers share (forward.cpp, variants.cpp): answering locally, building an
// upstream request from a client's, fetching it, and relaying the answer.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "proxy/forward.hpp"

namespace accel {

net::awaitable<void> send_local(ClientConnection& client, unsigned status, std::string_view content_type,
                                std::string_view body, ResponseHead head = {});
// The headers every registry answer carries.
ResponseHead registry_head();

// Sends upstream (following redirects), recording the latency in the metrics.
net::awaitable<UpstreamClient::Fetched> fetch(ProxyContext& ctx, std::string_view upstream_name, Endpoint endpoint,
                                              Request request);
// The client's end-to-end headers (Authorization, Accept, Range...) on a request for `target`.
Request upstream_request(const Request& client_request, http::verb method, std::string target, const Endpoint& endpoint);
// The upstream answer's end-to-end headers, to pass on.
ResponseHead head_from(const UpstreamResponse& response);
class OriginalCapture;  // variants/originals.hpp
// Streams the rest of the body to the client: splice(2) between plain sockets, else copied. With
// `capture`, every byte is also given to it (tee(2) on the splice path).
net::awaitable<void> stream_body(UpstreamResponse& response, ClientConnection& client, uint64_t limit = UINT64_MAX,
                                 OriginalCapture* capture = nullptr);
net::awaitable<void> relay(UpstreamResponse& response, ClientConnection& client, ResponseHead head);
// With token_proxy: points Bearer challenges at our /auth/token/<upstream>.
void rewrite_challenge(ProxyContext& ctx, const UpstreamConfig& upstream, const Request& request, ResponseHead& head);

}  // namespace accel
