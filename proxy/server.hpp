// The listening side: worker threads, each with its own io_context, SO_REUSEPORT acceptor and
// upstream connection pools; one coroutine per client connection running a read-handle-write
// loop around handle_request(), over plain TCP or TLS (`tls:` in the config); graceful shutdown
// on SIGTERM/SIGINT; SIGHUP reloads the TLS certificate and key for new connections.
#pragma once

#include <memory>

#include "auth/challenge.hpp"
#include "proxy/config.hpp"
#include "proxy/metrics.hpp"

namespace accel {

class Variants;

class Server {
 public:
  // `variants` may be null (variants off); it must outlive the server. Loads the TLS
  // certificate and key when configured: throws ConfigError when they are unusable.
  Server(const Config& config, Metrics& metrics, Variants* variants = nullptr);
  ~Server();

  // Binds the listeners; returns the port (useful with port 0).
  uint16_t bind();
  // Serves until SIGTERM or SIGINT, then drains in-flight requests (up to timeouts.shutdown).
  void run();

 private:
  struct Worker;
  // SIGHUP: re-reads tls.cert_file and tls.key_file; a bad pair is logged and the old one kept.
  void reload_tls();
  const Config& config_;
  Metrics& metrics_;
  TokenRealms realms_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

// Declares the proxy's metric families (HELP/TYPE lines).
void describe_proxy_metrics(Metrics& metrics);

}  // namespace accel
