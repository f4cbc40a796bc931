#!/bin/sh
# Builds the eStargz reference tools into OUTDIR (default build/go, relative to the
# repository root):
#   estargz-check      checker of a converted blob against the source layer
#   estargz-ref-build  the reference converter (estargz.Build) with timing
# Offline, GOPATH mode against Debian's Go sources in /usr/share/gocode.
# Debian packages: golang-go (1.19) golang-github-containerd-stargz-snapshotter-dev
# (pulls in klauspost-compress, opencontainers-go-digest, vbatts-tar-split, x-sync).
# Prints nothing on success; skips binaries that are newer than their sources.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/build/go}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac

die() { echo "tests/estargz/build.sh: $*" >&2; exit 1; }

GO=${GO:-go}
command -v "$GO" >/dev/null 2>&1 || die "Go not found (apt-get install golang-go)"
gocode=/usr/share/gocode
for pkg in github.com/containerd/stargz-snapshotter/estargz \
           github.com/opencontainers/go-digest \
           github.com/klauspost/compress/zstd \
           github.com/vbatts/tar-split/archive/tar \
           golang.org/x/sync/errgroup; do
    [ -d "$gocode/src/$pkg" ] || die "missing Go sources $gocode/src/$pkg (apt-get install golang-github-containerd-stargz-snapshotter-dev)"
done

mkdir -p "$out"

build() { # build SRCDIR BINARY
    src=$here/$1 bin=$out/$2
    if [ -x "$bin" ] && [ -z "$(find "$src" "$here/build.sh" -newer "$bin" -print 2>/dev/null | head -n1)" ]; then
        return 0
    fi
    # GOPATH mode: no go.mod, every import resolves from /usr/share/gocode; no network.
    if ! log=$(cd "$src" && env GO111MODULE=off GOPATH="$gocode" GOFLAGS= GOPROXY=off \
            GOTOOLCHAIN=local GOCACHE="$out/.gocache" CGO_ENABLED=0 \
            "$GO" build -trimpath -o "$bin.tmp" . 2>&1); then
        rm -f "$bin.tmp"
        printf '%s\n' "$log" >&2
        die "go build of $1 failed"
    fi
    mv -f "$bin.tmp" "$bin"
}

build checker estargz-check
build reference estargz-ref-build
