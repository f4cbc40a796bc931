#include <catch2/catch.hpp>

#include "proxy/route.hpp"

using namespace accel;

static const std::string kDigest = "sha256:" + std::string(64, 'b');

TEST_CASE("registry routes are classified with their repository and reference") {
  auto r = parse_route("/v2/library/app/manifests/1.0");
  CHECK(r.kind == RouteKind::manifest);
  CHECK(r.repository == "library/app");
  CHECK(r.reference == "1.0");
  CHECK_FALSE(r.reference_is_digest());

  r = parse_route("/v2/a/blobs/" + kDigest);
  CHECK(r.kind == RouteKind::blob);
  CHECK(r.reference == kDigest);

  r = parse_route("/v2/a/b/tags/list?n=3&last=x");
  CHECK(r.kind == RouteKind::tags);
  CHECK(r.repository == "a/b");
  CHECK(r.query_value("n") == "3");
  CHECK(r.query_value("last") == "x");

  CHECK(parse_route("/v2/").kind == RouteKind::ping);
  CHECK(parse_route("/v2").kind == RouteKind::ping);
  CHECK(parse_route("/v2/_catalog?n=10").kind == RouteKind::catalog);
  CHECK(parse_route("/v2/a/referrers/" + kDigest + "?artifactType=x").kind == RouteKind::referrers);
  CHECK(parse_route("/v2/a/blobs/uploads/").kind == RouteKind::blob_upload);
  CHECK(parse_route("/v2/a/blobs/uploads/some-uuid").kind == RouteKind::blob_upload);
  CHECK(parse_route("/healthz").kind == RouteKind::healthz);
  CHECK(parse_route("/metrics").kind == RouteKind::metrics);
  CHECK(parse_route("/nope").kind == RouteKind::not_found);
  CHECK(parse_route("/v2/a").kind == RouteKind::not_found);

  r = parse_route("/auth/token/harbor?service=x&scope=repository:a:pull");
  CHECK(r.kind == RouteKind::token);
  CHECK(r.upstream == "harbor");
  CHECK(r.query_value("scope") == "repository:a:pull");
}

TEST_CASE("a repository may contain components named like route words") {
  auto r = parse_route("/v2/a/manifests/b/manifests/latest");
  CHECK(r.kind == RouteKind::manifest);
  CHECK(r.repository == "a/manifests/b");
  CHECK(r.reference == "latest");
}

TEST_CASE("bad names, references and traversal are refused before going upstream") {
  auto check = [](std::string target, std::string code) {
    INFO(target);
    auto r = parse_route(target);
    CHECK(r.kind == RouteKind::invalid);
    CHECK(r.error_code == code);
    CHECK(r.error_status == 400);
  };
  check("/v2/../../etc/passwd/manifests/x", "NAME_INVALID");
  check("/v2/a/%2e%2e/b/manifests/x", "NAME_INVALID");
  check("/v2/a/%2Fb/manifests/x", "NAME_INVALID");
  check("/v2/Upper/manifests/x", "NAME_INVALID");
  check("/v2/a//b/manifests/x", "NAME_INVALID");
  check("/v2/a/manifests/sha256:xyz", "DIGEST_INVALID");
  check("/v2/a/manifests/-bad", "MANIFEST_INVALID");
  check("/v2/a/manifests/" + std::string(129, 't'), "MANIFEST_INVALID");
  check("/v2/a/blobs/latest", "DIGEST_INVALID");
  check("/v2/a/referrers/sha256:abc", "DIGEST_INVALID");
}

TEST_CASE("the upstream request drops containerd's ns parameter and keeps the rest") {
  auto r = parse_route("/v2/a/tags/list?ns=docker.io&n=2&last=v%201");
  CHECK(r.query_value("ns") == "docker.io");
  CHECK(upstream_path(r) == "/v2/a/tags/list");
  CHECK(upstream_query(r) == "?n=2&last=v%201");
  CHECK(upstream_query(parse_route("/v2/a/manifests/x?ns=docker.io")).empty());
}
