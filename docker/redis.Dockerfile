# Debian's redis-server as an image, for docker/compose.yaml: port 6379, no persistence (the
# proxies' coordination state is short-lived), reachable only on the stack's network.
#   podman build --network host --build-arg BASE_IMAGE=localhost/debian:bookworm-base \
#     -f docker/redis.Dockerfile -t accel-proxy-redis .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      redis-server && rm -rf /var/lib/apt/lists/*
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/bin/redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", \
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""]
