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

TEST_CASE("accept_allows: a cached manifest's media type against the client's Accept") {
  const std::string_view oci = "application/vnd.oci.image.manifest.v1+json";
  CHECK(accept_allows("", oci));
  CHECK(accept_allows("  ", oci));
  CHECK(accept_allows(oci, oci));
  CHECK(accept_allows("APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON", oci));
  // containerd's list, skopeo's list
  CHECK(accept_allows("application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, "
                      "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*",
                      "application/vnd.docker.distribution.manifest.v2+json"));
  CHECK(accept_allows("application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json", oci));
  CHECK(accept_allows("text/html, */*;q=0.1", oci));
  CHECK(accept_allows("application/*", oci));
  CHECK(accept_allows("application/vnd.oci.image.manifest.v1+json; q=0.5", oci));
  CHECK_FALSE(accept_allows("application/vnd.oci.image.index.v1+json", oci));
  CHECK_FALSE(accept_allows("application/vnd.docker.distribution.manifest.v2+json", oci));
  CHECK_FALSE(accept_allows("text/*", oci));
  CHECK_FALSE(accept_allows("application/vnd.oci.image.manifest.v1+jsonx", oci));
  CHECK_FALSE(accept_allows("application/vnd.oci.image.manifest.v1+json;q=0", oci));
  CHECK_FALSE(accept_allows("application/vnd.oci.image.manifest.v1+json; Q = 0.00", oci));
  CHECK_FALSE(accept_allows("*/*;q=0", oci));
  CHECK(accept_allows("*/*;q=0, application/vnd.oci.image.manifest.v1+json", oci));
  CHECK(accept_allows("application/vnd.oci.image.manifest.v1+json;q=0.001", oci));
  CHECK_FALSE(accept_allows("application/vnd.oci.image.manifest.v1+json;q=0,application/vnd.oci.image.index.v1+json", oci));
}
