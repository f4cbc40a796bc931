#include <catch2/catch.hpp>

#include "proxy/http_headers.hpp"

using namespace accel;

TEST_CASE("hop-by-hop headers are recognised in any case") {
  CHECK(is_hop_by_hop("Connection"));
  CHECK(is_hop_by_hop("transfer-encoding"));
  CHECK(is_hop_by_hop("Keep-Alive"));
  CHECK_FALSE(is_hop_by_hop("Authorization"));
  CHECK_FALSE(is_hop_by_hop("Range"));
  // Every hop-by-hop field of RFC 9110 §7.6.1 (and the Proxy-* ones), and names of the same
  // lengths that are end-to-end.
  for (auto name : {"TE", "Trailer", "Upgrade", "CONNECTION", "keep-alive", "Proxy-Connection", "Transfer-Encoding",
                    "Proxy-Authenticate", "proxy-authorization"})
    CHECK(is_hop_by_hop(name));
  for (auto name : {"", "T", "TF", "Trailed", "Upgrades", "Connectio", "keep_alive", "Content-Location",
                    "Transfer-Encodinh", "WWW-Authenticate1", "X-Proxy-Authorized", "Authorization"})
    CHECK_FALSE(is_hop_by_hop(name));
  CHECK(connection_lists("keep-alive, X-Private", "x-private"));
  CHECK_FALSE(connection_lists("close", "x-private"));
  CHECK(iequals("Docker-Content-Digest", "docker-content-digest"));
}
