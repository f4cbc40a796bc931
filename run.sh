#!/usr/bin/env bash
# Sets everything up and runs accel-proxy (Debian 12): installs the packages, builds, and
# serves on 127.0.0.1:5000.
#   ./run.sh                       with no upstream given, a local docker-registry is started on
#                                  127.0.0.1:5001 as the upstream (data in .run/registry)
#   ./run.sh --upstream URL        proxy an existing registry (e.g. https://harbor.example)
#   ./run.sh --config FILE         use a config file (see configs/accel-proxy.yaml)
# Any other accel-proxy serve flags are passed on. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")"

.ci/install-deps
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"

args=("$@")
has_upstream=0
for a in "$@"; do
  case "$a" in --upstream|--upstream=*|--config|--config=*) has_upstream=1 ;; esac
done
listen=127.0.0.1:5000
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in --listen) listen=${args[$((i + 1))]} ;; --listen=*) listen=${args[$i]#--listen=} ;; esac
done

registry_pid=
proxy_pid=
# Whatever stops this script stops what it started.
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null
  true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ $has_upstream -eq 0 ]; then
  mkdir -p .run/registry
  cat > .run/registry.yml <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $PWD/.run/registry}
  delete: {enabled: true}
http: {addr: 127.0.0.1:5001}
YAML
  # A clean environment: REGISTRY_* variables would override the file.
  env -i /usr/bin/docker-registry serve .run/registry.yml >.run/registry.log 2>&1 &
  registry_pid=$!
  for _ in $(seq 50); do curl -fs http://127.0.0.1:5001/v2/ >/dev/null && break; sleep 0.1; done
  args+=(--upstream http://127.0.0.1:5001)
  cat <<TEXT
Local upstream registry: http://127.0.0.1:5001 (docker-registry, data in .run/registry)
Push an image to it, then pull it through the proxy, e.g.:
  skopeo copy --dest-tls-verify=false docker-archive:image.tar docker://127.0.0.1:5001/demo/app:1
  skopeo copy --src-tls-verify=false docker://$listen/demo/app:1 dir:/tmp/app
An eStargz variant of any tag, converted on the first pull (then cached in .run/cache):
  skopeo copy --src-tls-verify=false docker://$listen/demo/app:1-estargz dir:/tmp/app-estargz
Metrics: curl http://$listen/metrics
TEXT
fi
has_cache=0
for a in "$@"; do case "$a" in --cache-dir|--cache-dir=*|--config|--config=*) has_cache=1 ;; esac; done
[ $has_cache -eq 1 ] || args+=(--cache-dir "$PWD/.run/cache")
./build/accel-proxy serve --listen "$listen" "${args[@]}" &
proxy_pid=$!
wait "$proxy_pid"
