#include <catch2/catch.hpp>
#include <fstream>

#include "proxy/config.hpp"

using namespace accel;
using namespace std::chrono_literals;

TEST_CASE("durations take Go-style units") {
  CHECK(parse_duration("10s") == 10000ms);
  CHECK(parse_duration("1500ms") == 1500ms);
  CHECK(parse_duration("2m") == 120000ms);
  CHECK(parse_duration("1h") == 3600000ms);
  CHECK(parse_duration("1m30s") == 90000ms);
  CHECK(parse_duration("5") == 5000ms);
  CHECK(parse_duration("0.5s") == 500ms);
  CHECK_THROWS_AS(parse_duration(""), ConfigError);
  CHECK_THROWS_AS(parse_duration("10x"), ConfigError);
  CHECK_THROWS_AS(parse_duration("s"), ConfigError);
}

TEST_CASE("a full config file parses") {
  auto c = parse_config_yaml(R"(
listen: 127.0.0.1:7000
threads: 2
cache_dir: /tmp/c
log_level: warn
timeouts: {header: 1s, idle: 2s, upstream_connect: 3s, upstream_read: 4s, shutdown: 5s}
limits: {max_header_bytes: 4096, max_manifest_bytes: 1000, max_body_bytes: 10}
default_upstream: b
upstreams:
  - name: a
    url: https://reg.example:8443
    hosts: [reg.example]
    insecure_skip_verify: true
    token_proxy: true
  - name: b
    url: http://127.0.0.1:5001
    hosts: [docker.io]
)");
  finalize_config(c);
  CHECK(c.listen_port == 7000);
  CHECK(c.threads == 2);
  CHECK(c.timeouts.header == 1000ms);
  CHECK(c.timeouts.shutdown == 5000ms);
  CHECK(c.limits.max_manifest_bytes == 1000);
  REQUIRE(c.upstreams.size() == 2);
  CHECK(c.upstreams[0].tls());
  CHECK(c.upstreams[0].port == 8443);
  CHECK(c.upstreams[0].host_header() == "reg.example:8443");
  CHECK(c.upstreams[0].token_proxy);
  CHECK(c.upstreams[1].host_header() == "127.0.0.1:5001");
  CHECK(c.upstream_for_ns("reg.example").name == "a");
  CHECK(c.upstream_for_ns("docker.io").name == "b");
  CHECK(c.upstream_for_ns("unknown.example").name == "b");
  CHECK(c.upstream_for_ns("").name == "b");
}

TEST_CASE("the shipped example config is valid") {
  auto c = load_config_file(ACCEL_SOURCE_DIR "/configs/accel-proxy.yaml");
  finalize_config(c);
  CHECK(c.default_upstream == "harbor");
  CHECK(c.upstreams.size() == 2);
  CHECK(c.variants.suffixes.at("nydus") == "-nydus");
  CHECK(c.variants.nydus.chunk_size == 1048576);
  REQUIRE(c.variants.prefetch.size() == 1);
  CHECK(c.variants.prefetch[0].files.at(0) == "/usr/local/bin/python3");
  CHECK(c.variants.learn_prefetch.enabled);
  CHECK(c.variants.learn_prefetch.startups == 2);
  CHECK(c.variants.learn_prefetch.window == std::chrono::seconds(10));
}

TEST_CASE("variants.nydus and variants.prefetch: values and refusals") {
  auto base = std::string("upstreams: [{name: u, url: 'http://a:1'}]\n");
  auto c = parse_config_yaml(base + "variants: {nydus: {chunk_size: 4194304, compressor: lz4_block, compression_level: 9},"
                                    " prefetch: [{repositories: ['library/*'], files: [/bin/sh, /etc/passwd]}]}\n");
  finalize_config(c);
  CHECK(c.variants.nydus.chunk_size == 4194304);
  CHECK(c.variants.nydus.compressor == "lz4_block");
  CHECK(c.variants.nydus.compression_level == 9);
  CHECK(c.variants.prefetch.at(0).repositories == std::vector<std::string>{"library/*"});
  // Defaults: 1 MiB zstd level 3, the -nydus suffix beside -estargz.
  auto d = parse_config_yaml(base + "variants: {suffixes: {estargz: -fast}}\n");
  CHECK(d.variants.nydus.chunk_size == (1u << 20));
  CHECK(d.variants.nydus.compressor == "zstd");
  CHECK(d.variants.suffixes.at("nydus") == "-nydus");
  CHECK(d.variants.suffixes.at("estargz") == "-fast");
  CHECK_THROWS_AS(parse_config_yaml(base + "variants: {nydus: {chunk_size: 3000}}\n"), ConfigError);
  CHECK_THROWS_AS(parse_config_yaml(base + "variants: {nydus: {chunk_size: 33554432}}\n"), ConfigError);
  CHECK_THROWS_AS(parse_config_yaml(base + "variants: {nydus: {compressor: gzip}}\n"), ConfigError);
  CHECK_THROWS_AS(parse_config_yaml(base + "variants: {nydus: {compression_level: 30}}\n"), ConfigError);
  CHECK_THROWS_AS(parse_config_yaml(base + "variants: {nydus: {blocks: 1}}\n"), ConfigError);
  CHECK_THROWS_AS(parse_config_yaml(base + "variants: {prefetch: [{repositories: [a], files: [relative/path]}]}\n"),
                  ConfigError);
  CHECK_THROWS_AS(parse_config_yaml(base + "variants: {prefetch: [{repositories: [a]}]}\n"), ConfigError);
}

TEST_CASE("variants.learn_prefetch: on by default, values and refusals") {
  auto base = std::string("upstreams: [{name: u, url: 'http://a:1'}]\n");
  auto d = parse_config_yaml(base);
  CHECK(d.variants.learn_prefetch.enabled);
  CHECK(d.variants.learn_prefetch.startups == 2);
  CHECK(d.variants.learn_prefetch.window == std::chrono::seconds(10));
  auto c = parse_config_yaml(base + "variants: {learn_prefetch: {enabled: false, startups: 3, window: 2500ms}}\n");
  CHECK_FALSE(c.variants.learn_prefetch.enabled);
  CHECK(c.variants.learn_prefetch.startups == 3);
  CHECK(c.variants.learn_prefetch.window == std::chrono::milliseconds(2500));
  CHECK_THROWS_AS(parse_config_yaml(base + "variants: {learn_prefetch: {startups: 0}}\n"), ConfigError);
  CHECK_THROWS_AS(parse_config_yaml(base + "variants: {learn_prefetch: {window: 1h}}\n"), ConfigError);
  CHECK_THROWS_AS(parse_config_yaml(base + "variants: {learn_prefetch: {windows: 1s}}\n"), ConfigError);
}

TEST_CASE("flags override the file; --upstream alone is enough") {
  Config c;
  apply_overrides(c, {.listen = "127.0.0.1:0", .upstream_url = "http://127.0.0.1:5001", .log_level = "debug", .threads = 1});
  finalize_config(c);
  CHECK(c.listen_port == 0);
  CHECK(c.default_upstream == "default");
  CHECK(c.upstreams.at(0).port == 5001);
  CHECK(c.log_level == "debug");

  auto d = parse_config_yaml("upstreams: [{name: x, url: 'http://a:1'}, {name: y, url: 'http://b:2'}]\ndefault_upstream: y\n");
  apply_overrides(d, {.upstream_url = "http://c:3"});
  finalize_config(d);
  CHECK(d.find_upstream("y")->host == "c");
  CHECK(d.find_upstream("x")->host == "a");
}

TEST_CASE("an upstream's writeback section") {
  auto c = parse_config_yaml(
      "upstreams:\n"
      "  - {name: h, url: 'https://harbor', robot: {username: 'robot$p+a', password: s}, writeback: {enabled: true, tag: true}}\n"
      "  - {name: plain, url: 'http://b'}\n");
  finalize_config(c);
  CHECK(c.find_upstream("h")->writeback.enabled);
  CHECK(c.find_upstream("h")->writeback.tag);
  CHECK(c.find_upstream("h")->robot_username == "robot$p+a");
  CHECK_FALSE(c.find_upstream("plain")->writeback.enabled);
  CHECK_FALSE(c.find_upstream("plain")->writeback.tag);
  CHECK_THROWS_WITH(parse_config_yaml("upstreams: [{url: 'http://x', writeback: {enable: true}}]\n"),
                    Catch::Contains("unknown key 'enable'"));
  CHECK_THROWS_WITH(parse_config_yaml("upstreams: [{url: 'http://x', writeback: {enabled: sometimes}}]\n"),
                    Catch::Contains("writeback.enabled"));
}

TEST_CASE("an upstream's cache_originals: off by default, per upstream") {
  auto c = parse_config_yaml(
      "upstreams:\n"
      "  - {name: kept, url: 'http://a', cache_originals: true}\n"
      "  - {name: off, url: 'http://b', cache_originals: false}\n"
      "  - {name: plain, url: 'http://c'}\n");
  finalize_config(c);
  CHECK(c.find_upstream("kept")->cache_originals);
  CHECK_FALSE(c.find_upstream("off")->cache_originals);
  CHECK_FALSE(c.find_upstream("plain")->cache_originals);
  CHECK(c.caches_originals());
  CHECK_FALSE(UpstreamConfig{}.cache_originals);
  auto none = parse_config_yaml("upstreams: [{url: 'http://x'}]\n");
  finalize_config(none);
  CHECK_FALSE(none.caches_originals());
  CHECK_THROWS_WITH(parse_config_yaml("upstreams: [{url: 'http://x', cache_originals: sometimes}]\n"),
                    Catch::Contains("upstreams[0].cache_originals: invalid value"));
  CHECK_THROWS_WITH(parse_config_yaml("upstreams: [{url: 'http://x', cache_original: true}]\n"),
                    Catch::Contains("unknown key 'cache_original'"));
}

TEST_CASE("an upstream's writes: pass by default, refuse on request") {
  auto c = parse_config_yaml(
      "upstreams:\n"
      "  - {name: mirror, url: 'http://a', writes: refuse}\n"
      "  - {name: front, url: 'http://b', writes: pass}\n"
      "  - {name: plain, url: 'http://c'}\n");
  finalize_config(c);
  CHECK(c.find_upstream("mirror")->writes == UpstreamConfig::Writes::refuse);
  CHECK(c.find_upstream("front")->writes == UpstreamConfig::Writes::pass);
  CHECK(c.find_upstream("plain")->writes == UpstreamConfig::Writes::pass);
  CHECK_THROWS_WITH(parse_config_yaml("upstreams: [{url: 'http://x', writes: readonly}]\n"),
                    Catch::Contains("upstreams[0].writes: expected pass or refuse"));
}

TEST_CASE("mistakes in the config are reported clearly") {
  auto fails = [](std::string yaml, std::string fragment) {
    INFO(yaml);
    try {
      auto c = parse_config_yaml(yaml);
      finalize_config(c);
      FAIL("no error");
    } catch (const ConfigError& e) {
      CHECK_THAT(e.what(), Catch::Contains(fragment));
    }
  };
  fails("listen: 1.2.3.4:5000\n", "no upstream");
  fails("lisen: x\n", "unknown key 'lisen'");
  fails("upstreams: [{url: 'ftp://x'}]\n", "scheme");
  fails("upstreams: [{url: 'http://x/path'}]\n", "path");
  fails("upstreams: [{name: a, url: 'http://x'}, {name: a, url: 'http://y'}]\n", "duplicate");
  fails("upstreams: [{name: a, url: 'http://x'}]\ndefault_upstream: b\n", "default_upstream");
  fails("upstreams: [{name: a, url: 'http://x'}]\ntimeouts: {header: soon}\n", "timeouts.header");
  fails("upstreams: [{name: a, url: 'http://x'}]\nlog_level: loud\n", "log_level");
  fails("listen: nope\nupstreams: [{url: 'http://x'}]\n", "listen");
  fails("upstreams: [{url: 'http://x', bogus: 1}]\n", "unknown key 'bogus'");
  fails("[1, 2", "YAML");
}

TEST_CASE("tls: both files serve HTTPS, neither plain HTTP, one alone is refused") {
  auto c = parse_config_yaml(
      "upstreams: [{url: 'http://x'}]\ntls: {cert_file: /etc/accel/cert.pem, key_file: /etc/accel/key.pem}\n");
  finalize_config(c);
  CHECK(c.tls.enabled());
  CHECK(c.tls.cert_file == "/etc/accel/cert.pem");
  CHECK(c.tls.key_file == "/etc/accel/key.pem");

  auto plain = parse_config_yaml("upstreams: [{url: 'http://x'}]\n");
  finalize_config(plain);
  CHECK_FALSE(plain.tls.enabled());

  auto fails = [](std::string yaml, std::string fragment) {
    INFO(yaml);
    try {
      auto bad = parse_config_yaml(yaml);
      finalize_config(bad);
      FAIL("no error");
    } catch (const ConfigError& e) {
      CHECK_THAT(e.what(), Catch::Contains(fragment));
    }
  };
  fails("upstreams: [{url: 'http://x'}]\ntls: {cert_file: /c.pem}\n", "cert_file and key_file go together");
  fails("upstreams: [{url: 'http://x'}]\ntls: {key_file: /k.pem}\n", "cert_file and key_file go together");
  fails("upstreams: [{url: 'http://x'}]\ntls: {cert_file: /c.pem, key_file: /k.pem, ca_file: /ca.pem}\n",
        "tls: unknown key 'ca_file'");
  fails("upstreams: [{url: 'http://x'}]\ntls: /c.pem\n", "tls: expected a mapping");
}

TEST_CASE("the variants section parses and is checked") {
  auto c = parse_config_yaml(R"(
upstreams: [{url: 'http://a:1'}]
variants:
  suffixes: {estargz: _lazy}
  on_miss: wait
  wait: 2s
  workers: 3
  authorization_ttl: 5s
  cache_max_bytes: 1000000
)");
  finalize_config(c);
  CHECK(c.variants.suffixes.at("estargz") == "_lazy");
  CHECK(c.variants.on_miss == VariantsConfig::OnMiss::wait);
  CHECK(c.variants.wait == 2000ms);
  CHECK(c.variants.workers == 3);
  CHECK(c.variants.cache_max_bytes == 1000000);
  CHECK_THROWS_AS(parse_config_yaml("variants: {on_miss: later}\n"), ConfigError);
  CHECK_THROWS_AS(parse_config_yaml("variants: {workers: 0}\n"), ConfigError);
  CHECK_THROWS_AS(parse_config_yaml("variants: {bogus: 1}\n"), ConfigError);
}

TEST_CASE("coordination: a Redis URL and an optional CA file, checked at start") {
  auto base = std::string("upstreams: [{name: u, url: 'http://a:1'}]\n");
  auto none = parse_config_yaml(base);
  finalize_config(none);
  CHECK(none.coordination.redis.empty());  // without it nothing is coordinated

  auto c = parse_config_yaml(base + "coordination: {redis: 'rediss://:pw@redis.internal:6380/2', redis_ca_file: /etc/ca.pem}\n");
  finalize_config(c);
  CHECK(c.coordination.redis == "rediss://:pw@redis.internal:6380/2");
  CHECK(c.coordination.redis_ca_file == "/etc/ca.pem");
  CHECK(c.coordination.lease_ttl == std::chrono::seconds(30));
  auto short_lease = parse_config_yaml(base + "coordination: {redis: 'redis://r', lease_ttl: 4s}\n");
  finalize_config(short_lease);
  CHECK(short_lease.coordination.lease_ttl == std::chrono::seconds(4));

  auto fails = [&](std::string yaml, std::string fragment) {
    INFO(yaml);
    try {
      auto bad = parse_config_yaml(base + yaml);
      finalize_config(bad);
      FAIL("no error");
    } catch (const ConfigError& e) {
      CHECK_THAT(e.what(), Catch::Contains(fragment));
    }
  };
  fails("coordination: {redis: 'http://r:6379'}\n", "coordination.redis: redis URL: the scheme must be");
  fails("coordination: {redis: 'redis://:secret@r/x'}\n", "database number");
  fails("coordination: {redis: 'redis://r', redis_ca_file: /ca.pem}\n", "rediss:// (TLS) only");
  fails("coordination: {redis_ca_file: /ca.pem}\n", "coordination.redis is not");
  fails("coordination: {redis: 'redis://r', lease: 5s}\n", "unknown key 'lease'");
  fails("coordination: {redis: 'redis://r', lease_ttl: 200ms}\n", "at least 1s");
  fails("coordination: {redis: 'redis://r', lease_ttl: soon}\n", "coordination.lease_ttl");
}
