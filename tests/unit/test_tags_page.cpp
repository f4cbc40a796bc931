#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "proxy/tags_page.hpp"

using namespace accel;
using nlohmann::json;

static std::vector<std::string> tags_of(const std::string& body) { return json::parse(body)["tags"].get<std::vector<std::string>>(); }

TEST_CASE("the proxy paginates a full upstream list itself") {
  std::string full = R"({"name":"app","tags":["v3","v1","v5","v2","v4"]})";
  auto page = paginate_tags(full, "app", 2, std::nullopt, "");
  REQUIRE(page);
  CHECK(tags_of(page->body) == std::vector<std::string>{"v1", "v2"});
  CHECK(page->link == "</v2/app/tags/list?n=2&last=v2>; rel=\"next\"");

  page = paginate_tags(full, "app", 2, std::string("v2"), "");
  CHECK(tags_of(page->body) == std::vector<std::string>{"v3", "v4"});
  CHECK(page->link == "</v2/app/tags/list?n=2&last=v4>; rel=\"next\"");

  page = paginate_tags(full, "app", 2, std::string("v4"), "");
  CHECK(tags_of(page->body) == std::vector<std::string>{"v5"});
  CHECK(page->link.empty());

  page = paginate_tags(full, "app", std::nullopt, std::string("v3"), "");
  CHECK(tags_of(page->body) == std::vector<std::string>{"v4", "v5"});
  CHECK(page->link.empty());

  page = paginate_tags(full, "app", 0, std::nullopt, "");
  CHECK(tags_of(page->body).empty());
}

TEST_CASE("without n or last the body passes unchanged and upstream links become relative") {
  std::string full = R"({"name":"app","tags":["b","a"]})";
  auto page = paginate_tags(full, "app", std::nullopt, std::nullopt, "<https://up.example/v2/app/tags/list?n=2&last=b>; rel=\"next\"");
  CHECK(page->body == full);
  CHECK(page->link == "</v2/app/tags/list?n=2&last=b>; rel=\"next\"");
}

TEST_CASE("an upstream that paginates keeps its cursor") {
  auto page = paginate_tags(R"({"name":"app","tags":["a","b"]})", "app", 2, std::nullopt, "</v2/app/tags/list?n=2&last=b>; rel=\"next\"");
  CHECK(tags_of(page->body) == std::vector<std::string>{"a", "b"});
  CHECK(page->link == "</v2/app/tags/list?n=2&last=b>; rel=\"next\"");
}

TEST_CASE("non-tag bodies are left alone") {
  CHECK_FALSE(paginate_tags("not json", "a", 1, std::nullopt, ""));
  CHECK_FALSE(paginate_tags(R"({"tags":[1,2]})", "a", 1, std::nullopt, ""));
  CHECK_FALSE(paginate_tags(R"([1])", "a", 1, std::nullopt, ""));
  auto page = paginate_tags(R"({"name":"a","tags":null})", "a", 1, std::nullopt, "");
  REQUIRE(page);
  CHECK(tags_of(page->body).empty());
}
