#include <catch2/catch.hpp>

#include <vector>

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
  CHECK(parse_route("/v2/a").kind == RouteKind::unrecognized);
  CHECK(parse_route("/v2/_catalogx").kind == RouteKind::unrecognized);
  CHECK(parse_route("/v2/a/b/unknown").kind == RouteKind::unrecognized);

  CHECK(parse_route("/api/prefetch").kind == RouteKind::prefetch_api);
  CHECK(parse_route("/api/prefetch").reference.empty());
  r = parse_route("/api/prefetch/harbor/library/app@" + kDigest);
  CHECK(r.kind == RouteKind::prefetch_api);
  CHECK(r.reference == "harbor/library/app@" + kDigest);
  CHECK(parse_route("/api/prefetchx").kind == RouteKind::not_found);

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

TEST_CASE("targets that are unsafe to forward are refused") {
  auto check = [](std::string target) {
    INFO(target);
    auto r = parse_route(target);
    CHECK(r.kind == RouteKind::invalid);
    CHECK(r.error_code == "NAME_INVALID");
    CHECK(r.error_status == 400);
  };
  check("/v2/../../etc/passwd/manifests/x");
  check("/v2/a/%2e%2e/b/manifests/x");
  check("/v2/a/%2Fb/manifests/x");
  check("/v2/a/%41/manifests/x");        // any percent-encoding, even of a harmless byte
  check("/v2/a//b/manifests/x");         // an upstream's router cleans this to another name
  check("/v2/a/./manifests/x");
  check("/v2/a/manifests/x/");           // a trailing empty segment
  check("/v2/a/manifests/x\\y");
  check("/v2/a/manifests/x\x01y");       // control characters are not in any URL
  check("/v2/a/manifests/caf\xc3\xa9");  // nor are raw non-ASCII bytes
  check("/v2/a/manifests/x y");
  check("v2/a/manifests/x");             // not origin-form
}

TEST_CASE("bad names, tags and digests are forwarded as written, marked not well-formed") {
  auto check = [](std::string target, RouteKind kind) {
    INFO(target);
    auto r = parse_route(target);
    CHECK(r.kind == kind);
    CHECK_FALSE(r.well_formed);
    CHECK_FALSE(r.reference_is_digest());
    CHECK(upstream_path(r) == target);  // the upstream is asked exactly what the client asked
  };
  check("/v2/Upper/manifests/x", RouteKind::manifest);
  check("/v2/a/b-/manifests/x", RouteKind::manifest);
  check("/v2/-a/tags/list", RouteKind::tags);
  check("/v2/a/manifests/.INVALID_MANIFEST_NAME", RouteKind::manifest);
  check("/v2/a/manifests/-bad", RouteKind::manifest);
  check("/v2/a/manifests/" + std::string(129, 't'), RouteKind::manifest);
  check("/v2/a/manifests/sha256:xyz", RouteKind::manifest);
  check("/v2/a/manifests/sha256:" + std::string(63, 'b'), RouteKind::manifest);
  check("/v2/a/manifests/sha256:" + std::string(64, 'B'), RouteKind::manifest);
  check("/v2/a/manifests/md5:d41d8cd98f00b204e9800998ecf8427e", RouteKind::manifest);
  check("/v2/a/blobs/latest", RouteKind::blob);
  check("/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", RouteKind::blob);
  check("/v2/a/referrers/sha256:abc", RouteKind::referrers);
  auto r = parse_route("/v2/Upper/blobs/" + kDigest);  // a good digest does not make a bad name good
  CHECK(r.kind == RouteKind::blob);
  CHECK_FALSE(r.well_formed);
}

TEST_CASE("well-formed names, tags and digests are marked so") {
  for (std::string target : std::vector<std::string>{"/v2/a/manifests/" + std::string(128, 't'), "/v2/a/manifests/" + kDigest,
                                                      "/v2/a/manifests/sha512:" + std::string(128, 'c'),
                                                      "/v2/a.b/c__d/manifests/A_b-1.x", "/v2/a/blobs/" + kDigest,
                                                      "/v2/a/referrers/" + kDigest, "/v2/a/tags/list"}) {
    INFO(target);
    auto r = parse_route(target);
    CHECK(r.well_formed);
    CHECK(upstream_path(r) == target);
  }
  CHECK(parse_route("/v2/a/manifests/" + kDigest).reference_is_digest());
}

TEST_CASE("uploads and unrecognized /v2/ paths go upstream as the client wrote them") {
  CHECK(upstream_path(parse_route("/v2/a/blobs/uploads/")) == "/v2/a/blobs/uploads/");
  CHECK(upstream_path(parse_route("/v2/a/blobs/uploads/some-uuid?x=1")) == "/v2/a/blobs/uploads/some-uuid");
  CHECK(upstream_path(parse_route("/v2/a~b/c!d")) == "/v2/a~b/c!d");
  CHECK(upstream_path(parse_route("/v2/_catalogx")) == "/v2/_catalogx");
}

TEST_CASE("the upstream request drops containerd's ns parameter and keeps the rest") {
  auto r = parse_route("/v2/a/tags/list?ns=docker.io&n=2&last=v%201");
  CHECK(r.query_value("ns") == "docker.io");
  CHECK(upstream_path(r) == "/v2/a/tags/list");
  CHECK(upstream_query(r) == "?n=2&last=v%201");
  CHECK(upstream_query(parse_route("/v2/a/manifests/x?ns=docker.io")).empty());
}
