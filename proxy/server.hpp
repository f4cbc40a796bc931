// The listening side: worker threads, each with its own io_context, SO_REUSEPORT acceptor and
// upstream connection pools; one coroutine per client connection running a read-handle-write
// loop around handle_request(); graceful shutdown on SIGTERM/SIGINT.
#pragma once

#include <memory>

#include "auth/challenge.hpp"
#include "proxy/config.hpp"
#include "proxy/metrics.hpp"

namespace accel {

class Variants;

class Server {
 public:
  // `variants` may be null (variants off); it must outlive the server.
  Server(const Config& config, Metrics& metrics, Variants* variants = nullptr);
  ~Server();

  // Binds the listeners; returns the port (useful with port 0).
  uint16_t bind();
  // Serves until SIGTERM or SIGINT, then drains in-flight requests (up to timeouts.shutdown).
  void run();

 private:
  struct Worker;
  const Config& config_;
  Metrics& metrics_;
  TokenRealms realms_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

// Declares the proxy's metric families (HELP/TYPE lines).
void describe_proxy_metrics(Metrics& metrics);

}  // namespace accel
