# Debian's docker-registry (distribution 2.8) as an image, for docker/compose.yaml: an open
# (no auth) registry on port 5000 with its storage in /var/lib/docker-registry.
#   podman build --network host --build-arg BASE_IMAGE=localhost/debian:bookworm-base \
#     -f docker/registry.Dockerfile -t accel-proxy-registry .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      docker-registry && rm -rf /var/lib/apt/lists/*
COPY docker/registry-config.yml /etc/docker/registry/config.yml
USER docker-registry
EXPOSE 5000
VOLUME /var/lib/docker-registry
ENTRYPOINT ["/usr/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]
