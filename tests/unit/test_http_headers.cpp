#include <catch2/catch.hpp>

#include "proxy/http_headers.hpp"

using namespace accel;

TEST_CASE("hop-by-hop headers are recognised in any case") {
  CHECK(is_hop_by_hop("Connection"));
  CHECK(is_hop_by_hop("transfer-encoding"));
  CHECK(is_hop_by_hop("Keep-Alive"));
  CHECK_FALSE(is_hop_by_hop("Authorization"));
  CHECK_FALSE(is_hop_by_hop("Range"));
  CHECK(connection_lists("keep-alive, X-Private", "x-private"));
  CHECK_FALSE(connection_lists("close", "x-private"));
  CHECK(iequals("Docker-Content-Digest", "docker-content-digest"));
}
