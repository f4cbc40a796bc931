#include "proxy/config.hpp"

#include <boost/url/parse.hpp>
#include <charconv>
#include <fstream>
#include <set>
#include <sstream>
#include <yaml-cpp/yaml.h>

#include "coordination/redis_url.hpp"

namespace accel {
namespace {

[[noreturn]] void fail(const std::string& message) { throw ConfigError(message); }

// Unknown keys are errors: a misspelt key silently ignored is a misconfiguration found late.
void check_keys(const YAML::Node& node, const std::string& where, const std::set<std::string>& allowed) {
  if (!node.IsMap()) fail(where + ": expected a mapping");
  for (const auto& kv : node) {
    auto key = kv.first.as<std::string>();
    if (!allowed.count(key)) fail(where + ": unknown key '" + key + "'");
  }
}

template <class T>
T scalar(const YAML::Node& node, const std::string& where) {
  try {
    return node.as<T>();
  } catch (const YAML::Exception&) {
    fail(where + ": invalid value");
  }
}

Duration duration_at(const YAML::Node& node, const std::string& where) {
  try {
    return parse_duration(scalar<std::string>(node, where));
  } catch (const ConfigError& e) {
    fail(where + ": " + e.what());
  }
}

void parse_listen(const std::string& listen, Config& config) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) fail("listen: expected HOST:PORT, got '" + listen + "'");
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned port = 0;
  auto digits = std::string_view(listen).substr(colon + 1);
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  if (ec != std::errc() || p != digits.data() + digits.size() || port > 65535)
    fail("listen: invalid port in '" + listen + "'");
  config.listen_host = host.empty() ? "0.0.0.0" : host;
  config.listen_port = static_cast<uint16_t>(port);
}

UpstreamConfig parse_upstream(const YAML::Node& node, size_t index) {
  std::string where = "upstreams[" + std::to_string(index) + "]";
  check_keys(node, where, {"name", "url", "hosts", "ca_file", "insecure_skip_verify", "token_proxy",
                           "max_idle_connections", "robot", "writeback", "writes", "cache_originals"});
  UpstreamConfig u;
  if (!node["url"]) fail(where + ": 'url' is required");
  u.url = scalar<std::string>(node["url"], where + ".url");
  u.name = node["name"] ? scalar<std::string>(node["name"], where + ".name") : "upstream" + std::to_string(index);
  if (node["hosts"]) {
    if (!node["hosts"].IsSequence()) fail(where + ".hosts: expected a list");
    for (const auto& h : node["hosts"]) u.hosts.push_back(scalar<std::string>(h, where + ".hosts"));
  }
  if (node["ca_file"]) u.ca_file = scalar<std::string>(node["ca_file"], where + ".ca_file");
  if (node["insecure_skip_verify"])
    u.insecure_skip_verify = scalar<bool>(node["insecure_skip_verify"], where + ".insecure_skip_verify");
  if (node["token_proxy"]) u.token_proxy = scalar<bool>(node["token_proxy"], where + ".token_proxy");
  if (node["max_idle_connections"])
    u.max_idle_connections = scalar<int>(node["max_idle_connections"], where + ".max_idle_connections");
  if (auto writeback = node["writeback"]) {
    check_keys(writeback, where + ".writeback", {"enabled", "tag"});
    if (writeback["enabled"]) u.writeback.enabled = scalar<bool>(writeback["enabled"], where + ".writeback.enabled");
    if (writeback["tag"]) u.writeback.tag = scalar<bool>(writeback["tag"], where + ".writeback.tag");
  }
  if (node["writes"]) {
    auto w = scalar<std::string>(node["writes"], where + ".writes");
    if (w == "pass") u.writes = UpstreamConfig::Writes::pass;
    else if (w == "refuse") u.writes = UpstreamConfig::Writes::refuse;
    else fail(where + ".writes: expected pass or refuse, got '" + w + "'");
  }
  if (node["cache_originals"]) u.cache_originals = scalar<bool>(node["cache_originals"], where + ".cache_originals");
  if (auto robot = node["robot"]) {
    check_keys(robot, where + ".robot", {"username", "password"});
    if (robot["username"]) u.robot_username = scalar<std::string>(robot["username"], where + ".robot.username");
    if (robot["password"]) u.robot_password = scalar<std::string>(robot["password"], where + ".robot.password");
  }
  return u;
}

void parse_variants(const YAML::Node& v, VariantsConfig& out) {
  check_keys(v, "variants", {"enabled", "suffixes", "header", "on_miss", "wait", "wait_limit", "workers", "queue",
                             "authorization_ttl", "tag_ttl", "retry_backoff", "cache_max_bytes", "compression_level",
                             "threads", "nydus", "prefetch", "max_image_bytes", "learn_prefetch"});
  if (v["enabled"]) out.enabled = scalar<bool>(v["enabled"], "variants.enabled");
  if (auto s = v["suffixes"]) {
    if (!s.IsMap()) fail("variants.suffixes: expected a mapping of format to tag suffix");
    for (const auto& kv : s) out.suffixes[kv.first.as<std::string>()] = scalar<std::string>(kv.second, "variants.suffixes");
  }
  if (v["header"]) out.header = scalar<std::string>(v["header"], "variants.header");
  if (v["on_miss"]) {
    auto m = scalar<std::string>(v["on_miss"], "variants.on_miss");
    if (m == "fallback") out.on_miss = VariantsConfig::OnMiss::fallback;
    else if (m == "wait") out.on_miss = VariantsConfig::OnMiss::wait;
    else if (m == "reject") out.on_miss = VariantsConfig::OnMiss::reject;
    else fail("variants.on_miss must be fallback, wait or reject");
  }
  if (v["wait"]) out.wait = duration_at(v["wait"], "variants.wait");
  if (v["wait_limit"]) out.wait_limit = duration_at(v["wait_limit"], "variants.wait_limit");
  if (v["workers"]) out.workers = scalar<int>(v["workers"], "variants.workers");
  if (v["queue"]) out.queue = scalar<int>(v["queue"], "variants.queue");
  if (v["authorization_ttl"]) out.authorization_ttl = duration_at(v["authorization_ttl"], "variants.authorization_ttl");
  if (v["tag_ttl"]) out.tag_ttl = duration_at(v["tag_ttl"], "variants.tag_ttl");
  if (v["retry_backoff"]) out.retry_backoff = duration_at(v["retry_backoff"], "variants.retry_backoff");
  if (v["cache_max_bytes"]) out.cache_max_bytes = scalar<uint64_t>(v["cache_max_bytes"], "variants.cache_max_bytes");
  if (v["compression_level"]) out.compression_level = scalar<int>(v["compression_level"], "variants.compression_level");
  if (v["threads"]) out.threads = scalar<unsigned>(v["threads"], "variants.threads");
  if (v["max_image_bytes"]) out.max_image_bytes = scalar<uint64_t>(v["max_image_bytes"], "variants.max_image_bytes");
  if (out.workers < 1 || out.queue < 0) fail("variants.workers must be at least 1 and variants.queue not negative");
  if (auto n = v["nydus"]) {
    check_keys(n, "variants.nydus", {"chunk_size", "compressor", "compression_level"});
    if (n["chunk_size"]) out.nydus.chunk_size = scalar<uint32_t>(n["chunk_size"], "variants.nydus.chunk_size");
    if (n["compressor"]) out.nydus.compressor = scalar<std::string>(n["compressor"], "variants.nydus.compressor");
    if (n["compression_level"])
      out.nydus.compression_level = scalar<int>(n["compression_level"], "variants.nydus.compression_level");
    const uint32_t size = out.nydus.chunk_size;
    if (size < 4096 || size > (16u << 20) || (size & (size - 1)) != 0)
      fail("variants.nydus.chunk_size must be a power of two from 4096 to 16777216");
    if (out.nydus.compressor != "zstd" && out.nydus.compressor != "lz4_block" && out.nydus.compressor != "none")
      fail("variants.nydus.compressor must be zstd, lz4_block or none");
    if (out.nydus.compression_level < 1 || out.nydus.compression_level > 19)
      fail("variants.nydus.compression_level must be 1 to 19");
  }
  if (auto rules = v["prefetch"]) {
    if (!rules.IsSequence()) fail("variants.prefetch: expected a list");
    for (size_t i = 0; i < rules.size(); ++i) {
      std::string where = "variants.prefetch[" + std::to_string(i) + "]";
      check_keys(rules[i], where, {"repositories", "files"});
      PrefetchRule rule;
      for (const auto& r : rules[i]["repositories"]) rule.repositories.push_back(scalar<std::string>(r, where + ".repositories"));
      for (const auto& f : rules[i]["files"]) {
        auto path = scalar<std::string>(f, where + ".files");
        if (!path.starts_with("/")) fail(where + ".files: '" + path + "' is not an absolute path");
        rule.files.push_back(std::move(path));
      }
      if (rule.repositories.empty() || rule.files.empty()) fail(where + ": needs repositories and files");
      out.prefetch.push_back(std::move(rule));
    }
  }
  if (auto l = v["learn_prefetch"]) {
    check_keys(l, "variants.learn_prefetch", {"enabled", "startups", "window"});
    if (l["enabled"]) out.learn_prefetch.enabled = scalar<bool>(l["enabled"], "variants.learn_prefetch.enabled");
    if (l["startups"]) out.learn_prefetch.startups = scalar<int>(l["startups"], "variants.learn_prefetch.startups");
    if (l["window"]) out.learn_prefetch.window = duration_at(l["window"], "variants.learn_prefetch.window");
    if (out.learn_prefetch.startups < 1 || out.learn_prefetch.startups > 64)
      fail("variants.learn_prefetch.startups must be 1 to 64");
    if (out.learn_prefetch.window < std::chrono::milliseconds(100) || out.learn_prefetch.window > std::chrono::minutes(10))
      fail("variants.learn_prefetch.window must be 100ms to 10m");
  }
}

void parse_webhooks(const YAML::Node& w, WebhooksConfig& out) {
  check_keys(w, "webhooks", {"secret", "upstream", "rules"});
  if (w["secret"]) out.secret = scalar<std::string>(w["secret"], "webhooks.secret");
  if (w["upstream"]) out.upstream = scalar<std::string>(w["upstream"], "webhooks.upstream");
  if (auto rules = w["rules"]) {
    if (!rules.IsSequence()) fail("webhooks.rules: expected a list");
    for (size_t i = 0; i < rules.size(); ++i) {
      std::string where = "webhooks.rules[" + std::to_string(i) + "]";
      check_keys(rules[i], where, {"repositories", "formats"});
      WebhookRule rule;
      for (const auto& r : rules[i]["repositories"]) rule.repositories.push_back(scalar<std::string>(r, where + ".repositories"));
      for (const auto& f : rules[i]["formats"]) rule.formats.push_back(scalar<std::string>(f, where + ".formats"));
      out.rules.push_back(std::move(rule));
    }
  }
}

void parse_coordination(const YAML::Node& c, CoordinationConfig& out) {
  check_keys(c, "coordination", {"redis", "redis_ca_file", "lease_ttl"});
  if (c["lease_ttl"]) out.lease_ttl = duration_at(c["lease_ttl"], "coordination.lease_ttl");
  if (c["redis"]) out.redis = scalar<std::string>(c["redis"], "coordination.redis");
  if (c["redis_ca_file"]) out.redis_ca_file = scalar<std::string>(c["redis_ca_file"], "coordination.redis_ca_file");
}

void check_coordination(const CoordinationConfig& c) {
  if (c.redis.empty()) {
    if (!c.redis_ca_file.empty()) fail("coordination.redis_ca_file is set but coordination.redis is not");
    return;
  }
  RedisEndpoint endpoint;
  try {
    endpoint = parse_redis_url(c.redis);
  } catch (const ConfigError& e) {
    fail(std::string("coordination.redis: ") + e.what());
  }
  if (c.lease_ttl < std::chrono::seconds(1)) fail("coordination.lease_ttl must be at least 1s");
  if (!c.redis_ca_file.empty() && !endpoint.tls)
    fail("coordination.redis_ca_file applies to rediss:// (TLS) only");
}

}  // namespace

std::string UpstreamConfig::host_header() const {
  bool default_port = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return default_port ? h : h + ":" + std::to_string(port);
}

const UpstreamConfig* Config::find_upstream(std::string_view name) const {
  for (const auto& u : upstreams)
    if (u.name == name) return &u;
  return nullptr;
}

bool Config::caches_originals() const {
  for (const auto& u : upstreams)
    if (u.cache_originals) return true;
  return false;
}

const UpstreamConfig& Config::upstream_for_ns(std::string_view ns) const {
  if (!ns.empty())
    for (const auto& u : upstreams)
      for (const auto& h : u.hosts)
        if (h == ns) return u;
  return *find_upstream(default_upstream);
}

Duration parse_duration(std::string_view text) {
  if (text.empty()) throw ConfigError("empty duration");
  double total_ms = 0;
  size_t i = 0;
  bool any = false;
  while (i < text.size()) {
    size_t start = i;
    while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
    if (start == i) throw ConfigError("invalid duration '" + std::string(text) + "'");
    double value = std::stod(std::string(text.substr(start, i - start)));
    size_t unit_start = i;
    while (i < text.size() && std::isalpha(static_cast<unsigned char>(text[i]))) ++i;
    std::string_view unit = text.substr(unit_start, i - unit_start);
    double scale = unit == "ms" ? 1 : unit == "s" || unit.empty() ? 1000 : unit == "m" ? 60000 : unit == "h" ? 3600000 : -1;
    if (scale < 0) throw ConfigError("unknown unit '" + std::string(unit) + "' in duration '" + std::string(text) + "'");
    total_ms += value * scale;
    any = true;
  }
  if (!any) throw ConfigError("invalid duration");
  return Duration(static_cast<int64_t>(total_ms));
}

void parse_upstream_url(UpstreamConfig& u) {
  auto url = boost::urls::parse_absolute_uri(u.url);
  if (!url) throw ConfigError("upstream '" + u.name + "': invalid url '" + u.url + "'");
  u.scheme = std::string(url->scheme());
  if (u.scheme != "http" && u.scheme != "https")
    throw ConfigError("upstream '" + u.name + "': scheme must be http or https");
  u.host = std::string(url->host_address());
  if (u.host.empty()) throw ConfigError("upstream '" + u.name + "': url has no host");
  if (!url->encoded_path().empty() && url->encoded_path() != "/")
    throw ConfigError("upstream '" + u.name + "': url must not have a path (the registry API lives at /v2/)");
  u.port = url->has_port() ? url->port_number() : (u.scheme == "https" ? 443 : 80);
  if (u.port == 0) throw ConfigError("upstream '" + u.name + "': invalid port");
}

Config parse_config_yaml(std::string_view yaml_text) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    fail(std::string("YAML: ") + e.what());
  }
  Config c;
  if (root.IsNull()) return c;
  check_keys(root, "config", {"listen", "threads", "cache_dir", "log_level", "coalesce_manifests", "tls", "timeouts",
                              "limits", "default_upstream", "upstreams", "variants", "webhooks", "coordination"});
  if (root["listen"]) parse_listen(scalar<std::string>(root["listen"], "listen"), c);
  if (root["threads"]) c.threads = scalar<int>(root["threads"], "threads");
  if (root["cache_dir"]) c.cache_dir = scalar<std::string>(root["cache_dir"], "cache_dir");
  if (root["log_level"]) c.log_level = scalar<std::string>(root["log_level"], "log_level");
  if (root["coalesce_manifests"]) c.coalesce_manifests = scalar<bool>(root["coalesce_manifests"], "coalesce_manifests");
  if (auto t = root["tls"]) {
    check_keys(t, "tls", {"cert_file", "key_file"});
    if (t["cert_file"]) c.tls.cert_file = scalar<std::string>(t["cert_file"], "tls.cert_file");
    if (t["key_file"]) c.tls.key_file = scalar<std::string>(t["key_file"], "tls.key_file");
  }
  if (auto t = root["timeouts"]) {
    check_keys(t, "timeouts", {"header", "idle", "upstream_connect", "upstream_read", "shutdown"});
    if (t["header"]) c.timeouts.header = duration_at(t["header"], "timeouts.header");
    if (t["idle"]) c.timeouts.idle = duration_at(t["idle"], "timeouts.idle");
    if (t["upstream_connect"]) c.timeouts.upstream_connect = duration_at(t["upstream_connect"], "timeouts.upstream_connect");
    if (t["upstream_read"]) c.timeouts.upstream_read = duration_at(t["upstream_read"], "timeouts.upstream_read");
    if (t["shutdown"]) c.timeouts.shutdown = duration_at(t["shutdown"], "timeouts.shutdown");
  }
  if (auto l = root["limits"]) {
    check_keys(l, "limits", {"max_header_bytes", "max_manifest_bytes", "max_body_bytes"});
    if (l["max_header_bytes"]) c.limits.max_header_bytes = scalar<uint32_t>(l["max_header_bytes"], "limits.max_header_bytes");
    if (l["max_manifest_bytes"]) c.limits.max_manifest_bytes = scalar<uint64_t>(l["max_manifest_bytes"], "limits.max_manifest_bytes");
    if (l["max_body_bytes"]) c.limits.max_body_bytes = scalar<uint64_t>(l["max_body_bytes"], "limits.max_body_bytes");
  }
  if (auto v = root["variants"]) parse_variants(v, c.variants);
  if (auto w = root["webhooks"]) parse_webhooks(w, c.webhooks);
  if (auto co = root["coordination"]) parse_coordination(co, c.coordination);
  if (root["default_upstream"]) c.default_upstream = scalar<std::string>(root["default_upstream"], "default_upstream");
  if (auto ups = root["upstreams"]) {
    if (!ups.IsSequence()) fail("upstreams: expected a list");
    for (size_t i = 0; i < ups.size(); ++i) c.upstreams.push_back(parse_upstream(ups[i], i));
  }
  return c;
}

Config load_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot read config file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config_yaml(ss.str());
}

void apply_overrides(Config& c, const ConfigOverrides& o) {
  if (!o.listen.empty()) parse_listen(o.listen, c);
  if (!o.cache_dir.empty()) c.cache_dir = o.cache_dir;
  if (!o.log_level.empty()) c.log_level = o.log_level;
  if (o.threads >= 0) c.threads = o.threads;
  if (!o.upstream_url.empty()) {
    // --upstream replaces the default upstream's URL, or creates the only upstream.
    UpstreamConfig* target = nullptr;
    for (auto& u : c.upstreams)
      if (u.name == c.default_upstream || (c.default_upstream.empty() && &u == &c.upstreams.front())) target = &u;
    if (!target) {
      c.upstreams.emplace_back();
      c.upstreams.back().name = "default";
      target = &c.upstreams.back();
      if (c.default_upstream.empty()) c.default_upstream = "default";
    }
    target->url = o.upstream_url;
  }
}

void finalize_config(Config& c) {
  if (c.upstreams.empty()) fail("no upstream configured: give --upstream URL or 'upstreams' in the config file");
  std::set<std::string> names;
  for (auto& u : c.upstreams) {
    if (u.name.empty() || u.name.find('/') != std::string::npos)
      fail("upstream name '" + u.name + "' must be non-empty and contain no '/'");
    if (!names.insert(u.name).second) fail("duplicate upstream name '" + u.name + "'");
    parse_upstream_url(u);
    if (u.max_idle_connections < 0) fail("upstream '" + u.name + "': max_idle_connections must be >= 0");
  }
  if (c.default_upstream.empty()) c.default_upstream = c.upstreams.front().name;
  if (!c.find_upstream(c.default_upstream)) fail("default_upstream '" + c.default_upstream + "' is not a configured upstream");
  if (c.webhooks.upstream.empty()) c.webhooks.upstream = c.default_upstream;
  if (!c.find_upstream(c.webhooks.upstream)) fail("webhooks.upstream '" + c.webhooks.upstream + "' is not a configured upstream");
  for (const auto& rule : c.webhooks.rules)
    for (const auto& f : rule.formats)
      if (!c.variants.suffixes.count(f)) fail("webhooks.rules: unknown format '" + f + "'");
  static const std::set<std::string> levels{"trace", "debug", "info", "warn", "error", "critical", "off"};
  if (!levels.count(c.log_level)) fail("log_level must be one of trace, debug, info, warn, error, off");
  if (c.threads < 0 || c.threads > 256) fail("threads must be between 0 and 256");
  if (c.limits.max_header_bytes < 1024) fail("limits.max_header_bytes must be at least 1024");
  check_coordination(c.coordination);
  // The files themselves are checked when the server loads them (load_listener_tls).
  if (c.tls.cert_file.empty() != c.tls.key_file.empty())
    fail("tls: cert_file and key_file go together (both set: the listener serves HTTPS; neither: HTTP)");
}

}  // namespace accel
