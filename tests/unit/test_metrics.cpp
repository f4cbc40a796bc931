#include <catch2/catch.hpp>

#include "proxy/metrics.hpp"

using namespace accel;

TEST_CASE("metrics render in the Prometheus text format") {
  Metrics m;
  m.describe("req_total", Metrics::Type::counter, "Requests.");
  m.describe("open", Metrics::Type::gauge, "Open things.");
  m.add("req_total", {{"route", "blob"}, {"code", "200"}});
  m.add("req_total", {{"route", "blob"}, {"code", "200"}}, 2);
  m.add("open", {}, 3);
  m.add("open", {}, -1);
  m.observe("lat_seconds", {{"upstream", "a"}}, 0.003);
  m.observe("lat_seconds", {{"upstream", "a"}}, 20);
  std::string text = m.render();
  CHECK_THAT(text, Catch::Contains("# HELP req_total Requests.\n# TYPE req_total counter\n"));
  CHECK_THAT(text, Catch::Contains("req_total{route=\"blob\",code=\"200\"} 3\n"));
  CHECK_THAT(text, Catch::Contains("open 2\n"));
  CHECK_THAT(text, Catch::Contains("# TYPE lat_seconds histogram\n"));
  CHECK_THAT(text, Catch::Contains("lat_seconds_bucket{upstream=\"a\",le=\"0.0025\"} 0\n"));
  CHECK_THAT(text, Catch::Contains("lat_seconds_bucket{upstream=\"a\",le=\"0.005\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("lat_seconds_bucket{upstream=\"a\",le=\"10\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("lat_seconds_bucket{upstream=\"a\",le=\"+Inf\"} 2\n"));
  CHECK_THAT(text, Catch::Contains("lat_seconds_count{upstream=\"a\"} 2\n"));
}

TEST_CASE("label values are escaped") {
  CHECK(format_labels({{"a", "x\"y\\z\nw"}}) == "a=\"x\\\"y\\\\z\\nw\"");
}
