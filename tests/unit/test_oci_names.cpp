#include <catch2/catch.hpp>

#include "proxy/oci_names.hpp"

using namespace accel;

TEST_CASE("repository names follow the distribution grammar") {
  for (auto ok : {"a", "library/ubuntu", "a.b/c_d/e__f/g-h/i---j", "0/1/2", "public/app"}) {
    INFO(ok);
    CHECK(is_valid_repository(ok));
  }
  for (auto bad : {"", "A", "a//b", "/a", "a/", "a..b", "a._b", "-a", "a-", "a/../b", "a/./b", "a b", "a%2fb",
                   "a___b", "a/.b", "a\\b"}) {
    INFO(bad);
    CHECK_FALSE(is_valid_repository(bad));
  }
  CHECK(is_valid_repository(std::string(255, 'a')));
  CHECK_FALSE(is_valid_repository(std::string(256, 'a')));
}

TEST_CASE("tags follow the distribution grammar") {
  CHECK(is_valid_tag("latest"));
  CHECK(is_valid_tag("1.0-estargz"));
  CHECK(is_valid_tag("_x"));
  CHECK(is_valid_tag(std::string(128, 'a')));
  CHECK_FALSE(is_valid_tag(std::string(129, 'a')));
  CHECK_FALSE(is_valid_tag("-bad"));
  CHECK_FALSE(is_valid_tag(".bad"));
  CHECK_FALSE(is_valid_tag(""));
  CHECK_FALSE(is_valid_tag("a/b"));
  CHECK_FALSE(is_valid_tag("a:b"));
}

TEST_CASE("digests: sha256 and sha512 with lowercase hex of the right length") {
  CHECK(is_valid_digest("sha256:" + std::string(64, 'a')));
  CHECK(is_valid_digest("sha512:" + std::string(128, '0')));
  CHECK_FALSE(is_valid_digest("sha256:" + std::string(63, 'a')));
  CHECK_FALSE(is_valid_digest("sha256:" + std::string(64, 'A')));
  CHECK_FALSE(is_valid_digest("sha256:" + std::string(64, 'g')));
  CHECK_FALSE(is_valid_digest("md5:" + std::string(32, 'a')));
  CHECK_FALSE(is_valid_digest("sha256" + std::string(64, 'a')));
  CHECK_FALSE(is_valid_digest("sha256:xyz"));
}
