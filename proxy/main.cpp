// accel-proxy: command-line entry point.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/config.hpp"
#include "proxy/convert_command.hpp"
#include "proxy/metrics.hpp"
#include "proxy/server.hpp"
#include "variants/variants.hpp"

namespace {

constexpr const char* kUsage = R"(accel-proxy: an OCI registry mirror that serves accelerated image variants

Usage:
  accel-proxy serve [options]     run the proxy
  accel-proxy convert --format F SRC DST   convert an image (see convert --help)
  accel-proxy convert-layer --format F IN OUT   convert one layer file
  accel-proxy check IMAGE         check a Nydus or eStargz image as its consumer would (see check --help)
  accel-proxy version             print the version
  accel-proxy --help              this text; `accel-proxy serve --help` for the options
)";

constexpr const char* kServeUsage = R"(Usage: accel-proxy serve [--config FILE] [options]

Runs the registry proxy. Settings come from the YAML file given with --config (see
configs/accel-proxy.yaml for every key); each flag below overrides the file.

Options:
  --config FILE        YAML configuration file
  --listen HOST:PORT   address to serve the registry API on (default 127.0.0.1:5000;
                       port 0 picks a free port, printed at start)
  --upstream URL       the default upstream registry, http:// or https:// (replaces the
                       default upstream's url, or is the only upstream without a config)
  --cache-dir DIR      where converted blobs and the cache index are kept
  --log-level LEVEL    trace, debug, info, warn, error or off (info logs one line per request)
  --threads N          worker threads, 0 for one per core
  -h, --help           this text

Endpoints besides the registry API (/v2/...):
  /healthz   200 while the process serves
  /readyz    200 when the default upstream answers its /v2/ ping, else 503
  /metrics   Prometheus metrics
  /auth/token/NAME   token requests forwarded to upstream NAME's token service
                     (for upstreams with token_proxy: true)

SIGTERM or SIGINT stops accepting connections and lets in-flight requests finish.
)";

int serve(const std::vector<std::string_view>& args) {
  std::string config_path;
  accel::ConfigOverrides overrides;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string_view a = args[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kServeUsage, stdout);
      return 0;
    }
    auto value = [&](std::string_view name) -> std::string {
      if (i + 1 >= args.size()) throw accel::ConfigError(std::string(name) + " needs a value");
      return std::string(args[++i]);
    };
    // Accept both "--flag value" and "--flag=value".
    if (auto eq = a.find('='); a.starts_with("--") && eq != std::string_view::npos) {
      std::string_view name = a.substr(0, eq), v = a.substr(eq + 1);
      if (name == "--config") config_path = v;
      else if (name == "--listen") overrides.listen = v;
      else if (name == "--upstream") overrides.upstream_url = v;
      else if (name == "--cache-dir") overrides.cache_dir = v;
      else if (name == "--log-level") overrides.log_level = v;
      else if (name == "--threads") overrides.threads = std::stoi(std::string(v));
      else throw accel::ConfigError("unknown option " + std::string(name));
      continue;
    }
    if (a == "--config") config_path = value(a);
    else if (a == "--listen") overrides.listen = value(a);
    else if (a == "--upstream") overrides.upstream_url = value(a);
    else if (a == "--cache-dir") overrides.cache_dir = value(a);
    else if (a == "--log-level") overrides.log_level = value(a);
    else if (a == "--threads") overrides.threads = std::stoi(value(a));
    else throw accel::ConfigError("unknown option " + std::string(a) + " (see accel-proxy serve --help)");
  }

  accel::Config config = config_path.empty() ? accel::Config{} : accel::load_config_file(config_path);
  accel::apply_overrides(config, overrides);
  accel::finalize_config(config);

  spdlog::set_default_logger(spdlog::stderr_logger_mt("accel-proxy"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
  spdlog::set_level(spdlog::level::from_str(config.log_level));

  // A client that hangs up mid-transfer must cost one connection, not the process: splice(2)
  // and writes report EPIPE instead.
  std::signal(SIGPIPE, SIG_IGN);

  accel::Metrics metrics;
  std::unique_ptr<accel::Variants> variants;
  if (config.variants.enabled || config.caches_originals()) variants = std::make_unique<accel::Variants>(config, metrics);
  accel::Server server(config, metrics, variants.get());
  uint16_t port = server.bind();
  for (const auto& u : config.upstreams)
    spdlog::info("upstream name={} url={}{}", u.name, u.url, u.name == config.default_upstream ? " default=true" : "");
  std::printf("accel-proxy listening on %s://%s:%u\n", config.tls.enabled() ? "https" : "http",
              config.listen_host.c_str(), port);
  std::fflush(stdout);
  server.run();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string_view> args(argv + 1, argv + argc);
  try {
    if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
      std::fputs(kUsage, stdout);
      return args.empty() ? 2 : 0;
    }
    if (args[0] == "version" || args[0] == "--version") {
      std::puts("accel-proxy 0.1.0");
      return 0;
    }
    if (args[0] == "serve") return serve({args.begin() + 1, args.end()});
    if (args[0] == "convert") return accel::run_convert_command({args.begin() + 1, args.end()});
    if (args[0] == "convert-layer") return accel::run_convert_layer_command({args.begin() + 1, args.end()});
    if (args[0] == "check") return accel::run_check_command({args.begin() + 1, args.end()});
    std::fprintf(stderr, "accel-proxy: unknown command '%.*s'\n%s", static_cast<int>(args[0].size()), args[0].data(), kUsage);
    return 2;
  } catch (const accel::ConfigError& e) {
    std::fprintf(stderr, "accel-proxy: configuration error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "accel-proxy: %s\n", e.what());
    return 1;
  }
}
