#include <catch2/catch.hpp>

#include <boost/url/parse.hpp>
#include <random>

#include "proxy/request_target.hpp"

using namespace accel;

// Boost.URL's reading of the same target: the reference the hand-written parser must match.
static std::optional<RequestTarget> boost_reading(std::string_view target) {
  auto url = boost::urls::parse_origin_form(target);
  if (!url) return std::nullopt;
  RequestTarget r;
  r.path = url->encoded_path();
  if (url->has_query())
    for (auto p : url->params()) r.query.push_back({std::string(p.key), std::string(p.value)});
  return r;
}

static void check_same(std::string_view target) {
  INFO("target: " << target);
  auto ours = parse_request_target(target);
  auto theirs = boost_reading(target);
  REQUIRE(ours.has_value() == theirs.has_value());
  if (!ours) return;
  CHECK(ours->path == theirs->path);
  REQUIRE(ours->query.size() == theirs->query.size());
  for (size_t i = 0; i < ours->query.size(); ++i) {
    CHECK(ours->query[i].key == theirs->query[i].key);
    CHECK(ours->query[i].value == theirs->query[i].value);
  }
}

TEST_CASE("request targets split into path and decoded query parameters") {
  auto t = parse_request_target("/v2/a/tags/list?n=3&last=v%201&flag&x=a=b&sp=a+b");
  REQUIRE(t);
  CHECK(t->path == "/v2/a/tags/list");
  REQUIRE(t->query.size() == 5);
  CHECK(t->query[1].key == "last");
  CHECK(t->query[1].value == "v 1");
  CHECK(t->query[2].key == "flag");
  CHECK(t->query[2].value.empty());
  CHECK(t->query[3].value == "a=b");
  CHECK(t->query[4].value == "a b");

  CHECK_FALSE(parse_request_target(""));
  CHECK_FALSE(parse_request_target("v2/"));
  CHECK_FALSE(parse_request_target("http://host/v2/"));  // absolute-form is not origin-form
  CHECK_FALSE(parse_request_target("/v2/a b"));
  CHECK_FALSE(parse_request_target("/v2/a#frag"));
  CHECK_FALSE(parse_request_target("/v2/%zz"));
  CHECK_FALSE(parse_request_target("/v2/%4"));
  CHECK_FALSE(parse_request_target("/v2/?a=%"));
  CHECK_FALSE(parse_request_target(std::string_view("/v2/\0", 5)));
}

TEST_CASE("request targets are read exactly as Boost.URL reads them") {
  for (std::string_view t : {"/", "/v2/", "/v2/?", "/v2/?&", "/v2/?=", "/v2/?a", "/v2/?a=", "/v2/?=b", "/v2/??a=b",
                             "/v2/?a=b?c", "/v2/a%2Fb", "/v2/%41", "/v2/a?ns=docker.io", "//x", "/v2/~!$'()*+,;=:@",
                             "/v2/?%2B=%2b+", "/v2/?a=%E2%82%AC", "/v2/[x]", "/v2/?[", "/v2/\\", "/v2/\"", "/v2/^"})
    check_same(t);

  // Random targets over an alphabet rich in the characters that matter to the grammar.
  const std::string alphabet = "/?&=%+aZ09-._~!$'()*,;:@#[]{} \"\\^`|<>\x7f\x80\xff" "ABCDEFabcdef";
  std::mt19937 rng(20261130);
  for (int i = 0; i < 100000; ++i) {
    std::string t = (rng() % 8 == 0) ? "" : "/";
    size_t n = rng() % 24;
    for (size_t k = 0; k < n; ++k) t += alphabet[rng() % alphabet.size()];
    check_same(t);
  }
}
