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
                             {"artifactType", variant_artifact_type("estargz")}}
                            .dump();
  auto merged = json::parse(add_referrers(empty_referrers_index(), {variant}, std::nullopt));
  REQUIRE(merged["manifests"].size() == 1);
  CHECK(merged["manifests"][0]["artifactType"] == "application/vnd.accel-proxy.variant.estargz");
  CHECK(json::parse(add_referrers(empty_referrers_index(), {variant}, std::string("other/type")))["manifests"].empty());
  CHECK(json::parse(add_referrers("garbage", {variant}, std::nullopt))["manifests"].size() == 1);
  // Added descriptors come before the upstream's own (a signature here), in the order given.
  std::string upstream_index = R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"sha256:sig","artifactType":"application/vnd.dev.cosign"}]})";
  std::string nydus = R"({"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:nydus","size":5,"artifactType":"application/vnd.accel-proxy.variant.nydus"})";
  auto ordered = json::parse(add_referrers(upstream_index, {nydus, variant}, std::nullopt));
  REQUIRE(ordered["manifests"].size() == 3);
  CHECK(ordered["manifests"][0]["digest"] == "sha256:nydus");
  CHECK(ordered["manifests"][1]["artifactType"] == "application/vnd.accel-proxy.variant.estargz");
  CHECK(ordered["manifests"][2]["digest"] == "sha256:sig");
}
