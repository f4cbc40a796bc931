#include <catch2/catch.hpp>

#include <vector>

#include "variants/variant_request.hpp"

using namespace accel;

TEST_CASE("variants are asked by tag suffix, header or Accept parameter") {
  VariantsConfig c;
  auto a = variant_asked("1.0-estargz", "", "", c);
  REQUIRE(a);
  CHECK(a->format == "estargz");
  CHECK(a->source_reference == "1.0");
  CHECK(a->how == VariantAsk::How::tag_suffix);

  a = variant_asked("1.0", "estargz", "", c);
  REQUIRE(a);
  CHECK(a->source_reference == "1.0");
  CHECK(a->how == VariantAsk::How::header);

  a = variant_asked("1.0", " eStargz ", "", c);
  REQUIRE(a);
  CHECK(a->format == "estargz");

  // A digest names exact bytes: never answered with a variant.
  std::string digest = "sha256:" + std::string(64, 'a');
  CHECK_FALSE(variant_asked(digest, "estargz", "", c));
  CHECK_FALSE(variant_asked(digest, "", "application/vnd.oci.image.index.v1+json;accel-format=estargz", c));

  a = variant_asked("1.0", "", "application/vnd.oci.image.index.v1+json;accel-format=estargz, */*", c);
  REQUIRE(a);
  CHECK(a->how == VariantAsk::How::accept);
}

TEST_CASE("ordinary requests never turn into variant requests") {
  VariantsConfig c;
  // The fixed broad Accept lists containerd, skopeo and podman send.
  for (auto accept : {"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, "
                      "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*",
                      "application/vnd.oci.image.manifest.v1+json;q=0.5, application/json; charset=utf-8",
                      ""}) {
    INFO(accept);
    CHECK_FALSE(variant_asked("1.0", "", accept, c));
  }
  CHECK_FALSE(variant_asked("estargz", "", "", c));       // a tag that is only the suffix's word
  CHECK_FALSE(variant_asked("-estargz", "", "", c));      // nothing before the suffix
  CHECK_FALSE(variant_asked("1.0", "nydus-unknown", "", c));  // unknown formats are ignored
  CHECK_FALSE(variant_asked("1.0", "", "application/json;accel-format=unknown", c));
  // A reference that is not a valid tag is the upstream's to answer, however the variant is asked.
  for (std::string bad : std::vector<std::string>{".INVALID_MANIFEST_NAME", "-bad", std::string(129, 't'), ".bad-estargz",
                                                  "a!b-estargz"}) {
    INFO(bad);
    CHECK_FALSE(variant_asked(bad, "", "", c));
    CHECK_FALSE(variant_asked(bad, "estargz", "", c));
    CHECK_FALSE(variant_asked(bad, "", "application/vnd.oci.image.index.v1+json;accel-format=estargz", c));
  }
  c.enabled = false;
  CHECK_FALSE(variant_asked("1.0-estargz", "estargz", "", c));
}

TEST_CASE("suffixes are configurable") {
  VariantsConfig c;
  c.suffixes = {{"estargz", "_lazy"}};
  CHECK(variant_asked("v1_lazy", "", "", c)->source_reference == "v1");
  CHECK_FALSE(variant_asked("v1-estargz", "", "", c));
}

TEST_CASE("accel-format is read from any media range") {
  CHECK(accept_format("a/b; accel-format=\"EStargz\"") == "estargz");
  CHECK(accept_format("a/b;q=0.9;accel-format=estargz,c/d") == "estargz");
  CHECK_FALSE(accept_format("a/b;q=0.9"));
  CHECK_FALSE(accept_format("accel-format"));
}
