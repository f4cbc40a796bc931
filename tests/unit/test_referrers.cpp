#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "proxy/referrers.hpp"

using namespace accel;
using nlohmann::json;

TEST_CASE("fallback tag schema") {
  CHECK(referrers_fallback_tag("sha256:abc") == "sha256-abc");
}

TEST_CASE("referrers are filtered by artifactType") {
  std::string index = R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
    {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1","size":1,"artifactType":"a/sbom"},
    {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2","size":1,"artifactType":"a/sig"},
    {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:3","size":1,"artifactType":5}]})";
  auto all = json::parse(*filter_referrers(index, std::nullopt));
  CHECK(all["manifests"].size() == 3);
  auto sbom = json::parse(*filter_referrers(index, std::string("a/sbom")));
  REQUIRE(sbom["manifests"].size() == 1);
  CHECK(sbom["manifests"][0]["digest"] == "sha256:1");
  CHECK(sbom["mediaType"] == kOciIndexMediaType);
  CHECK(json::parse(*filter_referrers(index, std::string("none")))["manifests"].empty());
  CHECK_FALSE(filter_referrers("{}", std::nullopt));
  CHECK_FALSE(filter_referrers("nonsense", std::nullopt));
  CHECK(json::parse(empty_referrers_index())["manifests"].empty());
}

TEST_CASE("variants are added to a referrers index, respecting the artifactType filter") {
  std::string variant = json{{"mediaType", "application/vnd.oci.image.index.v1+json"},
                             {"digest", "sha256:v"},
                             {"size", 10},
                             {"artifactType", "application/vnd.oci.image.config.v1+json"}}
                            .dump();
  auto merged = json::parse(add_referrers(empty_referrers_index(), {variant}, std::nullopt));
  REQUIRE(merged["manifests"].size() == 1);
  CHECK(merged["manifests"][0]["artifactType"] == "application/vnd.oci.image.config.v1+json");
  CHECK(json::parse(add_referrers(empty_referrers_index(), {variant}, std::string("other/type")))["manifests"].empty());
  CHECK(json::parse(add_referrers("garbage", {variant}, std::nullopt))["manifests"].size() == 1);
  // Added descriptors come before the upstream's own (a signature here), in the order given;
  // one the upstream lists too (a written-back variant) appears once.
  std::string upstream_index = R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"sha256:sig","artifactType":"application/vnd.dev.cosign"},{"digest":"sha256:v","size":10},{"digest":7}]})";
  std::string nydus = R"({"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:nydus","size":5})";
  auto ordered = json::parse(add_referrers(upstream_index, {nydus, variant}, std::nullopt));
  REQUIRE(ordered["manifests"].size() == 4);
  CHECK(ordered["manifests"][0]["digest"] == "sha256:nydus");
  CHECK(ordered["manifests"][1]["digest"] == "sha256:v");
  CHECK(ordered["manifests"][2]["digest"] == "sha256:sig");
  CHECK(ordered["manifests"][3]["digest"] == 7);
}

TEST_CASE("a referrer descriptor follows the spec: artifactType from the manifest, else its config") {
  const std::string image = R"({"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c","size":2},"layers":[],"annotations":{"io.accel-proxy.variant.format":"nydus"}})";
  auto d = json::parse(*referrer_descriptor(image, "application/vnd.oci.image.manifest.v1+json", "sha256:m"));
  CHECK(d["artifactType"] == "application/vnd.oci.image.config.v1+json");
  CHECK(d["size"] == image.size());
  CHECK(d["digest"] == "sha256:m");
  CHECK(d["annotations"]["io.accel-proxy.variant.format"] == "nydus");
  const std::string artifact = R"({"artifactType":"application/vnd.example","config":{"mediaType":"application/vnd.oci.empty.v1+json"}})";
  CHECK(json::parse(*referrer_descriptor(artifact, "m", "sha256:a"))["artifactType"] == "application/vnd.example");
  // An index without artifactType gets none, and no annotations key when it has none.
  auto index = json::parse(*referrer_descriptor(R"({"manifests":[]})", "application/vnd.oci.image.index.v1+json", "sha256:i"));
  CHECK_FALSE(index.contains("artifactType"));
  CHECK_FALSE(index.contains("annotations"));
  CHECK_FALSE(referrer_descriptor("[1]", "m", "sha256:x"));
  CHECK_FALSE(referrer_descriptor("not json", "m", "sha256:x"));
}

TEST_CASE("the referrers fallback index gains a descriptor once") {
  const std::string d1 = R"({"mediaType":"m","digest":"sha256:1","size":1})";
  auto first = append_referrer("", d1);
  REQUIRE(first);
  CHECK(json::parse(*first)["manifests"].size() == 1);
  CHECK(json::parse(*first)["mediaType"] == "application/vnd.oci.image.index.v1+json");
  CHECK_FALSE(append_referrer(*first, d1));
  auto second = append_referrer(*first, R"({"mediaType":"m","digest":"sha256:2","size":1})");
  REQUIRE(second);
  CHECK(json::parse(*second)["manifests"].size() == 2);
  CHECK(json::parse(*second)["manifests"][0]["digest"] == "sha256:1");
}
