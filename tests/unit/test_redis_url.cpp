#include <catch2/catch.hpp>

#include "proxy/config.hpp"
#include "coordination/redis_url.hpp"

using namespace accel;

TEST_CASE("redis URLs name host, port, database and credentials") {
  auto plain = parse_redis_url("redis://redis.example");
  CHECK_FALSE(plain.tls);
  CHECK(plain.host == "redis.example");
  CHECK(plain.port == 6379);
  CHECK(plain.database == 0);
  CHECK(plain.username.empty());
  CHECK(plain.password.empty());

  auto full = parse_redis_url("rediss://:s%40cret@10.0.0.5:6380/3");
  CHECK(full.tls);
  CHECK(full.host == "10.0.0.5");
  CHECK(full.port == 6380);
  CHECK(full.database == 3);
  CHECK(full.username.empty());
  CHECK(full.password == "s@cret");  // percent-decoded

  auto acl = parse_redis_url("redis://proxy:pw@[::1]:7000/");
  CHECK(acl.host == "::1");
  CHECK(acl.username == "proxy");
  CHECK(acl.password == "pw");
  CHECK(acl.database == 0);
  CHECK(acl.display() == "redis://[::1]:7000/0");
}

TEST_CASE("what a redis URL displays never holds its password") {
  auto e = parse_redis_url("rediss://user:topsecret@cache:6390/2");
  CHECK(e.display() == "rediss://cache:6390/2");
}

TEST_CASE("bad redis URLs are a ConfigError naming the problem, without the URL's password") {
  auto problem = [](const char* url) {
    try {
      parse_redis_url(url);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK_THAT(problem("http://host:6379"), Catch::Contains("scheme must be redis:// or rediss://"));
  CHECK_THAT(problem("host:6379"), Catch::Contains("scheme must be"));
  CHECK_THAT(problem("redis://"), Catch::Contains("no host"));
  CHECK_THAT(problem("redis://host:0"), Catch::Contains("invalid port"));
  CHECK_THAT(problem("redis://host:99999"), Catch::Contains("invalid port"));
  CHECK_THAT(problem("redis://host:abc"), Catch::Contains("invalid port"));
  CHECK_THAT(problem("redis://host/db1"), Catch::Contains("database number"));
  CHECK_THAT(problem("redis://host/1/2"), Catch::Contains("database number"));
  CHECK_THAT(problem("redis://host/-1"), Catch::Contains("database number"));
  CHECK_THAT(problem("redis://host?timeout=1"), Catch::Contains("query"));
  CHECK_THAT(problem("redis://someuser@host"), Catch::Contains("needs a password"));
  CHECK_THAT(problem("redis://:@host"), Catch::Contains("empty password"));
  CHECK_THAT(problem("redis:// bad host"), Catch::Contains("not a valid URL"));
  std::string with_secret = problem("redis://:hunter2@host/x");
  CHECK_THAT(with_secret, Catch::Contains("database number"));
  CHECK(with_secret.find("hunter2") == std::string::npos);
}
