#include <catch2/catch.hpp>

#include <string>
#include <thread>
#include <vector>

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
  CHECK(format_labels({{"a", "\"\n"}, {"b", ""}, {"c", "plain"}}) == "a=\"\\\"\\n\",b=\"\",c=\"plain\"");
}

TEST_CASE("samples recorded from several threads land in their own series") {
  // Each thread builds its label key in a buffer of its own (metrics.cpp): keys never mix.
  Metrics m;
  constexpr int kThreads = 4, kEach = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&m, t] {
      const std::string route = "route" + std::to_string(t);
      for (int i = 0; i < kEach; ++i) {
        m.add("req_total", {{"route", route}});
        m.observe("lat_seconds", {{"route", route}}, 0.001);
        m.set("last", {{"route", route}}, i);
      }
    });
  for (auto& th : threads) th.join();
  const std::string text = m.render();
  for (int t = 0; t < kThreads; ++t) {
    const std::string labels = "{route=\"route" + std::to_string(t) + "\"}";
    CHECK_THAT(text, Catch::Contains("req_total" + labels + " " + std::to_string(kEach) + "\n"));
    CHECK_THAT(text, Catch::Contains("lat_seconds_count" + labels + " " + std::to_string(kEach) + "\n"));
    CHECK_THAT(text, Catch::Contains("last" + labels + " " + std::to_string(kEach - 1) + "\n"));
  }
  CHECK(text.find("route4") == std::string::npos);
}
