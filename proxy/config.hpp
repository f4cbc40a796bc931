// The proxy's configuration: loaded from a YAML file, overridden by command-line flags, and
// validated once at start so the rest of the program can trust it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace accel {

using Duration = std::chrono::milliseconds;

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct UpstreamConfig {
  std::string name;
  std::string url;     // as written: scheme://host[:port]
  std::string scheme;  // "http" or "https"
  std::string host;
  uint16_t port = 0;
  std::vector<std::string> hosts;  // ?ns= values routed here
  std::string ca_file;
  bool insecure_skip_verify = false;
  bool token_proxy = false;
  int max_idle_connections = 64;
  // A robot account for conversions no client asked for (webhooks).
  std::string robot_username, robot_password;
  // Write-back: each variant converted from this upstream is pushed back to it with the robot
  // account, linked to its source (`subject`, or the referrers fallback tag), and with `tag`
  // also under the source tag plus the format's suffix.
  struct WriteBack {
    bool enabled = false;
    bool tag = false;
  } writeback;
  // Pushes (PUT/POST/PATCH/DELETE under /v2/) through the proxy: `pass` forwards them with their
  // bodies streamed (a transparent front end), `refuse` answers 405 UNSUPPORTED (a pure mirror).
  enum class Writes { pass, refuse } writes = Writes::pass;
  // Original blobs and manifests a client fetched by digest are kept in the cache (written while
  // they stream, committed once their digest checks out) and served from it to clients the
  // upstream lets read the repository. Tags and everything else still go upstream.
  bool cache_originals = false;

  bool tls() const { return scheme == "https"; }
  // "host" or "host:port" when the port is not the scheme's default: the Host header to send.
  std::string host_header() const;
};

struct Timeouts {
  Duration header{std::chrono::seconds(10)};
  Duration idle{std::chrono::seconds(60)};
  Duration upstream_connect{std::chrono::seconds(10)};
  Duration upstream_read{std::chrono::seconds(60)};
  Duration shutdown{std::chrono::seconds(30)};
};

struct Limits {
  uint32_t max_header_bytes = 16 * 1024;
  uint64_t max_manifest_bytes = 4 * 1024 * 1024;
  uint64_t max_body_bytes = 1024 * 1024;
};

// Paths an image loads first (eStargz: placed before the prefetch landmark; Nydus: the
// bootstrap's prefetch table), for the repositories matching any of the globs.
struct PrefetchRule {
  std::vector<std::string> repositories;  // globs: * within a segment, ** across
  std::vector<std::string> files;         // absolute paths in the image
};

// Nydus blob settings (docs/formats/nydus.md).
struct NydusSettings {
  uint32_t chunk_size = 1 << 20;
  std::string compressor = "zstd";  // zstd, lz4_block or none
  int compression_level = 3;        // zstd's level
};

// Learned prefetch (variants/learned_prefetch.*): the files lazy pullers read in the first
// `window` of a start-up are recorded, and once `startups` clients' start-ups agree the variant
// is converted again with those files first.
struct LearnPrefetch {
  bool enabled = true;
  int startups = 2;
  Duration window{std::chrono::seconds(10)};
};

// Serving accelerated variants: how clients ask, what a miss does, and the cache's size.
struct VariantsConfig {
  bool enabled = true;
  std::map<std::string, std::string> suffixes{{"estargz", "-estargz"}, {"nydus", "-nydus"}};  // format -> tag suffix
  std::string header = "X-Accel-Format";   // a mirror header naming the format for every tag
  enum class OnMiss { fallback, wait, reject } on_miss = OnMiss::fallback;
  Duration wait{std::chrono::seconds(30)};              // fallback: how long a pull waits
  Duration wait_limit{std::chrono::minutes(30)};        // wait: the longest any pull waits
  int workers = 2;                                      // conversions at once
  int queue = 64;                                       // conversions waiting for a worker
  Duration authorization_ttl{std::chrono::seconds(60)}; // a positive upstream check is reused this long
  Duration tag_ttl{std::chrono::seconds(30)};
  Duration retry_backoff{std::chrono::seconds(60)};     // after a failed conversion, first retry
  uint64_t cache_max_bytes = uint64_t{50} << 30;
  uint64_t max_image_bytes = uint64_t{64} << 30;  // compressed layers to convert, per image manifest
  int compression_level = 6;
  unsigned threads = 0;  // compression threads per conversion, 0: one per core
  NydusSettings nydus;
  std::vector<PrefetchRule> prefetch;  // the first rule matching a repository applies
  LearnPrefetch learn_prefetch;
};

// Pre-conversion on push (Harbor webhooks, distribution notifications).
struct WebhookRule {
  std::vector<std::string> repositories;  // globs: * within a segment, ** across
  std::vector<std::string> formats;
};
struct WebhooksConfig {
  std::string secret;    // the exact Authorization header every webhook must carry; empty: webhooks off
  std::string upstream;  // the upstream the events come from (default: default_upstream)
  std::vector<WebhookRule> rules;
};

// Replicas behind a load balancer converting each image once (coordination/coordination.hpp).
struct CoordinationConfig {
  std::string redis;          // redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss://; empty: no coordination
  std::string redis_ca_file;  // rediss://: the CA to trust instead of the system's
  Duration lease_ttl{std::chrono::seconds(30)};  // a dead replica's conversion is taken over after this
};

// HTTPS on the listening side: both set, the listener serves TLS only (one listener, TLS or
// not). The files are read at start and again on SIGHUP (proxy/listener_tls.*).
struct ListenTls {
  std::string cert_file;  // PEM: the certificate, then any intermediates
  std::string key_file;   // PEM: its private key, unencrypted

  bool enabled() const { return !cert_file.empty(); }
};

struct Config {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 5000;
  int threads = 0;  // 0: one per core
  std::string cache_dir = "/var/lib/accel-proxy";
  std::string log_level = "info";
  // Identical manifest requests (same upstream, method, target and headers, credentials
  // included) in flight at the same time share one upstream exchange.
  bool coalesce_manifests = true;
  ListenTls tls;
  Timeouts timeouts;
  Limits limits;
  std::string default_upstream;
  std::vector<UpstreamConfig> upstreams;
  VariantsConfig variants;
  WebhooksConfig webhooks;
  CoordinationConfig coordination;

  const UpstreamConfig* find_upstream(std::string_view name) const;
  // Some upstream has `cache_originals`: the cache is needed even with variants off.
  bool caches_originals() const;
  // The upstream for a request: the one listing `ns` among its hosts, else the default.
  const UpstreamConfig& upstream_for_ns(std::string_view ns) const;
};

// Flags given on the command line; each set one replaces the file's value.
struct ConfigOverrides {
  std::string listen;
  std::string upstream_url;
  std::string cache_dir;
  std::string log_level;
  int threads = -1;
};

// "1500ms", "10s", "2m", "1h", "1m30s"; a bare number means seconds.
Duration parse_duration(std::string_view text);

// Parses "scheme://host[:port]" into the upstream's scheme, host and port.
void parse_upstream_url(UpstreamConfig& upstream);

Config parse_config_yaml(std::string_view yaml_text);
Config load_config_file(const std::string& path);
void apply_overrides(Config& config, const ConfigOverrides& overrides);
// Fills defaults that depend on other values and checks consistency; throws ConfigError.
void finalize_config(Config& config);

}  // namespace accel
