#include <catch2/catch.hpp>

#include "auth/challenge.hpp"

using namespace accel;

TEST_CASE("Bearer challenges parse and their realm is rewritten") {
  std::string header = R"(Bearer realm="https://harbor.internal/service/token",service="harbor-registry",scope="repository:a/b:pull")";
  auto c = parse_challenge(header);
  REQUIRE(c);
  CHECK(c->scheme == "Bearer");
  CHECK(c->param("realm") == "https://harbor.internal/service/token");
  CHECK(c->param("SERVICE") == "harbor-registry");
  CHECK(c->param("scope") == "repository:a/b:pull");

  auto r = rewrite_bearer_realm(header, "http://127.0.0.1:5000/auth/token/harbor");
  CHECK(r.original_realm == "https://harbor.internal/service/token");
  CHECK(r.header == R"(Bearer realm="http://127.0.0.1:5000/auth/token/harbor",service="harbor-registry",scope="repository:a/b:pull")");
}

TEST_CASE("Basic challenges and garbage are left alone") {
  auto r = rewrite_bearer_realm(R"(Basic realm="Registry Realm")", "http://x");
  CHECK(r.header == R"(Basic realm="Registry Realm")");
  CHECK_FALSE(r.original_realm);
  CHECK_FALSE(parse_challenge(""));
  CHECK_FALSE(parse_challenge(R"(Bearer realm="unterminated)"));
  auto garbage = rewrite_bearer_realm("\x01\x02", "http://x");
  CHECK(garbage.header == "\x01\x02");
}

TEST_CASE("quoted values with escapes round-trip") {
  auto c = parse_challenge(R"(Bearer realm="a\"b",x=token)");
  REQUIRE(c);
  CHECK(c->param("realm") == "a\"b");
  CHECK(c->param("x") == "token");
  CHECK(format_challenge(*c) == R"(Bearer realm="a\"b",x="token")");
}

TEST_CASE("token realms are remembered per upstream") {
  TokenRealms realms;
  CHECK_FALSE(realms.lookup("a"));
  realms.remember("a", "https://r/token");
  CHECK(realms.lookup("a") == "https://r/token");
}
