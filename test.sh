#!/usr/bin/env bash
# Runs the whole test suite: unit tests and integration tests against real registries and
# clients (ctest), then the unit tests, the pass-through integration tests and the Nydus suites
# under AddressSanitizer + UndefinedBehaviorSanitizer, then a short libFuzzer run of every fuzz
# target (also under the sanitizers), then the container image and the compose stack with podman.
# Installs what it needs first (Debian 12).
#   ./test.sh            everything
#   ./test.sh --quick    skip the sanitizer build, the fuzz run and the container image
set -euo pipefail
cd "$(dirname "$0")"
quick=0
[ "${1:-}" = "--quick" ] && quick=1
jobs=$(nproc)

.ci/install-deps

echo "== build (build/)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"

echo "== unit and integration tests"
(cd build && ctest --output-on-failure)

if [ $quick -eq 1 ]; then exit 0; fi

echo "== unit tests under ASan + UBSan (build-asan/)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DACCEL_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs" --target unit-tests
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ./build-asan/unit-tests

echo "== pass-through integration tests against the ASan + UBSan proxy"
# The network paths (sockets, splice, parsing, pools) under real clients; the conversion code
# runs under the sanitizers in the unit tests and the fuzzers.
cmake --build build-asan -j"$jobs" --target accel-proxy
(cd tests/integration &&
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ACCEL_PROXY_BIN="$PWD/../../build-asan/accel-proxy" /usr/bin/python3 -m pytest -q -p no:cacheprovider \
    test_passthrough.py test_range.py test_bad_input.py test_tags_referrers.py test_routing.py \
    test_auth.py test_operations.py test_tls.py test_listen_tls.py test_coalescing.py test_transparent.py \
    test_writeback.py test_replicas.py test_writes.py test_conformance_writes.py test_cache_originals.py)

echo "== Nydus conversion, check and convert-on-pull against the ASan + UBSan binary"
# The conversion threads end to end (tar, blob writer, bootstrap, merge, check) under the
# sanitizers, with the kernel mounting what they wrote.
(cd tests/nydus &&
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ACCEL_PROXY_BIN="$PWD/../../build-asan/accel-proxy" /usr/bin/python3 -m pytest -q -p no:cacheprovider .)
(cd tests/integration &&
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ACCEL_PROXY_BIN="$PWD/../../build-asan/accel-proxy" /usr/bin/python3 -m pytest -q -p no:cacheprovider \
    test_nydus_variants.py test_nydus_convert.py)

echo "== fuzz targets, ${FUZZ_SECONDS:-20}s each (build-fuzz/)"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DACCEL_FUZZ=ON >/dev/null
fuzz_targets=(range route upstream_json tar estargz rafs nydus_blob nydus)
cmake --build build-fuzz -j"$jobs" --target "${fuzz_targets[@]/#/fuzz-}"
for target in "${fuzz_targets[@]}"; do
  work=$(mktemp -d)
  ./build-fuzz/fuzz-$target -max_total_time="${FUZZ_SECONDS:-20}" -max_len=65536 -artifact_prefix="$work/" \
    "$work" tests/fuzz/corpus/$target 2>&1 | grep -E '^(Done|==.*ERROR)' || true
  # Any one kind of artifact is a failure (ls of all four patterns at once failed whenever one
  # kind was missing, so it never reported anything).
  if compgen -G "$work/crash-*" >/dev/null || compgen -G "$work/leak-*" >/dev/null ||
     compgen -G "$work/timeout-*" >/dev/null || compgen -G "$work/oom-*" >/dev/null; then
    echo "fuzz-$target found a failing input:"; ls "$work"; exit 1
  fi
  rm -rf "$work"
done
echo "fuzz: ${#fuzz_targets[@]} passed, 0 failed"

echo "== container image and compose stack"
# docker/Dockerfile built with podman from a debootstrap base, the compose stack serving an
# eStargz pull (skipped, with the reason, where containers cannot run), and the same steps with
# build/accel-proxy. Cold (no cached base or layers) the image build compiles the proxy again.
(cd tests/container && /usr/bin/python3 -m pytest -q -p no:cacheprovider -rs .)
