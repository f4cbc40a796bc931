#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

#include "variants/webhooks.hpp"

using namespace accel;

static std::string payload(const char* name) {
  std::ifstream in(std::string(ACCEL_SOURCE_DIR) + "/tests/unit/data/webhooks/" + name);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST_CASE("Harbor's default PUSH_ARTIFACT payload") {
  auto events = parse_harbor_webhook(payload("harbor_push_artifact.json"));
  REQUIRE(events.size() == 1);
  CHECK(events[0].repository == "library/app");
  CHECK(events[0].tag == "1.0");
  CHECK(events[0].digest == "sha256:9b2a3f8e1c7d6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a");
}

TEST_CASE("Harbor's CloudEvents payload, structured and binary") {
  auto events = parse_harbor_webhook(payload("harbor_cloudevents.json"));
  REQUIRE(events.size() == 1);
  CHECK(events[0].repository == "apps/web/frontend");
  CHECK(events[0].tag == "2.1");

  // Binary mode: the type comes in the Ce-Type header, the body is the event data.
  auto doc = payload("harbor_cloudevents.json");
  auto data_start = doc.find("\"data\": ") + 8;
  std::string data = doc.substr(data_start, doc.rfind('}') - data_start);
  auto binary = parse_harbor_webhook(data, "harbor.artifact.pushed");
  REQUIRE(binary.size() == 1);
  CHECK(binary[0].repository == "apps/web/frontend");
  CHECK(parse_harbor_webhook(data, "harbor.artifact.deleted").empty());
}

TEST_CASE("other Harbor events and malformed payloads") {
  CHECK(parse_harbor_webhook(R"({"type":"DELETE_ARTIFACT","event_data":{"resources":[{"digest":"sha256:1"}]}})").empty());
  CHECK(parse_harbor_webhook(R"({"type":"PUSH_ARTIFACT"})").empty());
  CHECK_THROWS_AS(parse_harbor_webhook("not json"), std::invalid_argument);
  CHECK_THROWS_AS(parse_harbor_webhook("[1,2]"), std::invalid_argument);
  // resource_url names the repository when the repository object is missing
  auto e = parse_harbor_webhook(R"({"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"sha256:ab","resource_url":"h.example/p/app@sha256:ab"}]}})");
  REQUIRE(e.size() == 1);
  CHECK(e[0].repository == "p/app");
}

TEST_CASE("distribution notifications: tagged manifest pushes only") {
  auto events = parse_registry_notification(payload("registry_notification.json"));
  REQUIRE(events.size() == 1);
  CHECK(events[0].repository == "lib/multi");
  CHECK(events[0].tag == "v1");
  CHECK(events[0].digest.starts_with("sha256:aaaa"));
  CHECK(parse_registry_notification(R"({"events":[]})").empty());
  CHECK_THROWS_AS(parse_registry_notification("{"), std::invalid_argument);
}

TEST_CASE("repository globs") {
  CHECK(repository_matches("library/*", "library/app"));
  CHECK_FALSE(repository_matches("library/*", "library/a/b"));
  CHECK(repository_matches("library/**", "library/a/b"));
  CHECK(repository_matches("**", "anything/at/all"));
  CHECK(repository_matches("*/app", "team/app"));
  CHECK_FALSE(repository_matches("*/app", "team/x/app"));
  CHECK(repository_matches("exact/name", "exact/name"));
  CHECK_FALSE(repository_matches("exact/name", "exact/names"));
  CHECK_FALSE(repository_matches("", "x"));
}
