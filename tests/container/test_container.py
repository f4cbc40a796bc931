"""The container image and the compose stack (docker/), with Debian's podman and podman-compose.

In containers (root, podman able to run containers here): make the Debian 12 base with
docker/make-base-image (debootstrap; the tarball is cached), build the three images of
docker/compose.yaml with podman-compose (`--network host`, BASE_IMAGE the local base), run
`accel-proxy --help` in the proxy image, bring the stack up, push a small image into the
stack's registry with skopeo, pull REPO:TAG-estargz through the proxy container with skopeo and
check it is an eStargz image, then take the stack down (also when a step fails).

Outside containers (always; the only check when containers cannot run here, and the container
tests then skip saying why): the same steps with the native build/accel-proxy and the same
docker/compose-config.yaml, each compose service's host name mapped to a 127.0.0.1 port of a
local docker-registry and redis-server.
"""
import json
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
import yaml

import estargz_tools as et
import images
import prom
from podman_env import BASE_IMAGE, REPO_ROOT, machine_lock, why_no_containers
from ports import free_port
from process import Service, require_program
from proxy import require_binary
from registry import Registry

DOCKER = REPO_ROOT / "docker"
PROJECT = "accelproxytest"
PROXY_IMAGE = "localhost/accel-proxy:latest"
BUILD_STAGE = "localhost/accel-proxy-build-stage:latest"
STACK_IMAGES = [PROXY_IMAGE, "localhost/accel-proxy-registry:latest",
                "localhost/accel-proxy-redis:latest"]
SKOPEO = "/usr/bin/skopeo"
REDIS = "/usr/bin/redis-server"
REPO, TAG = "lib/compose-app", "v1"
# Cold, a build compiles the proxy on the CI machine's 2 cores.
BUILD_TIMEOUT = 2700
UP_TIMEOUT = 120


def compose_services():
    with open(DOCKER / "compose.yaml") as f:
        return yaml.safe_load(f)["services"]


def compose_config():
    with open(DOCKER / "compose-config.yaml") as f:
        return yaml.safe_load(f)


# ---- the image both ways push and pull ------------------------------------------------------

def skopeo(*args, timeout=180, workdir):
    require_program(SKOPEO, "skopeo")
    argv = [SKOPEO, "--insecure-policy", *map(str, args)]
    # A private auth file, so credentials saved on this machine never leak in.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir),
           "REGISTRY_AUTH_FILE": str(Path(workdir) / "auth.json")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(argv)} exited with {done.returncode}:\n{done.stderr}"
    return done


def push_with_skopeo(registry_address, workdir) -> images.PushedImage:
    """Push the small OCI test image from an OCI layout to REGISTRY/REPO:TAG with skopeo."""
    manifest, blobs = images.build_oci_image("compose-stack")
    layout = et.write_oci_layout(Path(workdir) / "layout", TAG, manifest, blobs,
                                 images.OCI_MANIFEST)
    digest_file = Path(workdir) / "pushed.digest"
    skopeo("copy", "--dest-tls-verify=false", "--digestfile", digest_file, f"oci:{layout}:{TAG}",
           f"docker://{registry_address}/{REPO}:{TAG}", workdir=workdir)
    pushed = images.PushedImage(REPO, TAG, images.OCI_MANIFEST, manifest,
                                {b.digest: b.data for b in blobs})
    assert digest_file.read_text().strip() == pushed.digest, "skopeo changed the image on push"
    return pushed


def pull_and_check_estargz(proxy_address, source: images.PushedImage, workdir):
    """skopeo-pull REPO:TAG-estargz through the proxy; assert it is source as eStargz."""
    dest = Path(workdir) / "pulled-estargz"
    skopeo("copy", "--src-tls-verify=false", f"docker://{proxy_address}/{REPO}:{TAG}-estargz",
           f"dir:{dest}", workdir=workdir)
    manifest = json.loads((dest / "manifest.json").read_bytes())
    src_manifest = json.loads(source.manifest)
    assert manifest["mediaType"] == images.OCI_MANIFEST, manifest
    assert len(manifest["layers"]) == len(src_manifest["layers"])
    config = json.loads((dest / manifest["config"]["digest"][7:]).read_bytes())
    for i, (layer, src_layer) in enumerate(zip(manifest["layers"], src_manifest["layers"])):
        ann = layer.get("annotations") or {}
        assert et.TOC_DIGEST in ann, f"layer {i} is not eStargz (no {et.TOC_DIGEST}): {ann}"
        assert layer["digest"] != src_layer["digest"], f"layer {i} was not converted"
        blob = dest / layer["digest"][7:]
        assert et.sha256_file(blob) == layer["digest"]
        _, toc = et.read_toc(blob)
        assert images.sha256_digest(toc) == ann[et.TOC_DIGEST], f"layer {i}: TOC digest differs"
        diff_id, size = et.gunzip_digest(blob)
        assert diff_id == config["rootfs"]["diff_ids"][i], f"layer {i}: diff_id differs"
        assert str(size) == ann[et.UNCOMPRESSED_SIZE]
    # The files are the source's: the eStargz TOC lists every regular file of each layer (and
    # the prefetch landmark eStargz adds).
    landmarks = {".prefetch.landmark", ".no.prefetch.landmark"}
    for i, src_layer in enumerate(src_manifest["layers"]):
        _, toc = et.read_toc(dest / manifest["layers"][i]["digest"][7:])
        names = {e["name"] for e in json.loads(toc)["entries"] if e["type"] == "reg"}
        assert len(names & landmarks) == 1, f"layer {i}: no single landmark in {sorted(names)}"
        names -= landmarks
        wanted = set(images.generated_files(f"compose-stack-amd64-{i}"))
        assert names == wanted, f"layer {i}: files {sorted(names ^ wanted)} differ"


def estargz_conversions(proxy_address) -> float:
    """The proxy's count of finished eStargz conversions (its /metrics); also checks that the
    conversion was coordinated through the stack's Redis (it holds the lease it converted under)."""
    resp = requests.get(f"http://{proxy_address}/metrics", timeout=10)
    assert resp.status_code == 200
    metrics = prom.parse(resp.text)
    done = prom.total(metrics, "accel_proxy_conversions_total", format="estargz", outcome="done")
    if done:
        assert prom.total(metrics, "accel_coordination_redis_up") == 1, "the proxy does not reach the stack's Redis"
        assert prom.total(metrics, "accel_coordination_leases_acquired_total") >= done
    return done


# ---- in containers -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def podman():
    found, reason = why_no_containers()
    if found is None:
        pytest.skip(f"containers cannot run on this machine: {reason} "
                    "(test_compose_config_outside_a_container checks the same steps natively)")
    return found


@pytest.fixture(scope="module")
def stack_images(podman, tmp_path_factory):
    """The three images of docker/compose.yaml, built from the local base with podman-compose."""
    log = tmp_path_factory.mktemp("build") / "build.log"
    started = time.monotonic()
    with machine_lock():
        # The build stage, tagged, so the prune below keeps its layers (apt, the compile) as
        # the cache of the next run; compose's build then finds every step cached.
        build_stage = podman.run("build", "--network", "host", "--target", "build",
                                 "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", BUILD_STAGE,
                                 "-f", DOCKER / "Dockerfile", REPO_ROOT, timeout=BUILD_TIMEOUT,
                                 check=False)
        log.write_text(build_stage.stdout + build_stage.stderr)
        assert build_stage.returncode == 0, \
            f"podman build --target build failed:\n{log.read_text()[-6000:]}"
        podman.compose(PROJECT, "--podman-build-args=--network host", "build",
                       extra_env={"BASE_IMAGE": BASE_IMAGE}, timeout=BUILD_TIMEOUT, log=log)
        failed = podman.failed_commands(log)
        missing = [i for i in STACK_IMAGES if not podman.image_exists(i)]
        # Earlier builds' layers that no tag uses any more.
        podman.run("image", "prune", "-f", check=False)
    assert not failed and not missing, \
        f"podman-compose build: {failed}, no {missing}:\n{log.read_text()[-6000:]}"
    print(f"images built in {time.monotonic() - started:.0f}s")
    return STACK_IMAGES


def test_image_runs_help(podman, stack_images):
    # The image's entrypoint is the proxy; its runtime stage has every library it links.
    done = podman.run("run", "--rm", "--network", "none", PROXY_IMAGE, "--help", timeout=120)
    assert "accel-proxy serve" in done.stdout, done.stdout + done.stderr
    # It runs as the unprivileged user the Dockerfile names, owning its cache directory, and
    # the config the image's default command names is one the proxy accepts (`serve` with it
    # fails at once on a config error; --listen on a port nobody uses, stopped after 2s).
    done = podman.run("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", PROXY_IMAGE,
                      "-c", "id -u; stat -c %u /var/lib/accel-proxy; "
                      "timeout --preserve-status -s TERM 2 accel-proxy serve --config "
                      "/etc/accel-proxy/accel-proxy.yaml --listen 127.0.0.1:5999; echo exit=$?",
                      timeout=120)
    lines = done.stdout.split()
    assert lines[:2] == ["65532", "65532"], done.stdout
    assert lines[-1] == "exit=0", done.stdout + done.stderr


def wait_http(url, timeout, ready=lambda r: r.status_code == 200, why=lambda: ""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, timeout=3)
            if ready(r):
                return r
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"{url} not ready after {timeout}s ({last})\n{why()}", pytrace=False)


@pytest.fixture
def stack(podman, stack_images, tmp_path):
    """The compose stack, up; taken down with its volumes and network afterwards."""
    ports = {"PROXY_PORT": str(free_port()), "REGISTRY_PORT": str(free_port())}
    env = dict(ports, BASE_IMAGE=BASE_IMAGE)
    log = tmp_path / "compose.log"

    def logs():
        out = [f"--- {log}:\n{log.read_text()[-3000:] if log.exists() else ''}"]
        for service in compose_services():
            name = f"{PROJECT}_{service}_1"
            done = podman.run("logs", "--tail", "40", name, check=False)
            out.append(f"--- podman logs {name}:\n{done.stdout}{done.stderr}")
        return "\n".join(out)

    def down():
        podman.compose(PROJECT, "down", "-v", extra_env=env, timeout=180, log=log)
        podman.run("network", "rm", "-f", f"{PROJECT}_default", check=False)

    with machine_lock():
        down()   # what an interrupted earlier run left behind
        try:
            up_log = tmp_path / "compose-up.log"
            podman.compose(PROJECT, "up", "-d", "--no-build", extra_env=env, timeout=UP_TIMEOUT,
                           log=up_log)
            log.write_text(log.read_text() + up_log.read_text())
            failed = podman.failed_commands(up_log)
            assert not failed, f"podman-compose up: {failed}\n{logs()}"
            running = podman.run("ps", "--filter", f"label=io.podman.compose.project={PROJECT}",
                                 "--format", "{{.Names}}").stdout.split()
            assert sorted(running) == sorted(f"{PROJECT}_{s}_1" for s in compose_services()), \
                f"running: {running}\n{logs()}"
            address = {k: f"127.0.0.1:{v}" for k, v in ports.items()}
            wait_http(f"http://{address['REGISTRY_PORT']}/v2/", 60, why=logs)
            # /readyz asks the upstream (the registry service, by its name on the network).
            wait_http(f"http://{address['PROXY_PORT']}/readyz", 60, why=logs)
            yield address, logs
        finally:
            down()
    label = f"label=io.podman.compose.project={PROJECT}"
    leftover = podman.run("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout.split()
    leftover += podman.run("volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split()
    assert not leftover, f"compose down left {leftover}"


def test_compose_stack_serves_an_estargz_variant(stack, tmp_path):
    address, logs = stack
    pushed = push_with_skopeo(address["REGISTRY_PORT"], tmp_path)
    try:
        pull_and_check_estargz(address["PROXY_PORT"], pushed, tmp_path)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs()}") from exc
    assert estargz_conversions(address["PROXY_PORT"]) == 1


def test_compose_publishes_on_loopback_only():
    published = {name: svc.get("ports", []) for name, svc in compose_services().items()}
    assert published["proxy"] and published["registry"], published
    assert not published["redis"], "Redis is for the stack's network only"
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


# ---- outside containers --------------------------------------------------------------------

def map_service_url(url, addresses):
    """http://SERVICE:PORT/... -> http://127.0.0.1:MAPPED/... for a compose service's name."""
    parts = urlsplit(url)
    assert parts.hostname in addresses, \
        f"{url} names no compose service (services: {sorted(addresses)})"
    return urlunsplit(parts._replace(netloc=addresses[parts.hostname]))


def test_compose_config_outside_a_container(tmp_path):
    """The stack's steps with the native binary: each service's name mapped to a local peer."""
    binary = require_binary()
    services = compose_services()
    assert set(services) == {"proxy", "registry", "redis"}, \
        f"compose.yaml's services changed ({sorted(services)}): map the new ones here"
    require_program(REDIS, "redis-server")
    registry = Registry(tmp_path / "registry", name="registry").start()
    redis_port = free_port()
    redis = Service("redis", [REDIS, "--port", redis_port, "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--daemonize", "no"],
                    tmp_path / "redis.log").start()
    proxy = None
    try:
        addresses = {"registry": f"127.0.0.1:{registry.port}", "redis": f"127.0.0.1:{redis_port}"}
        config = compose_config()
        port = free_port()
        config["listen"] = f"127.0.0.1:{port}"
        config["cache_dir"] = str(tmp_path / "cache")
        for u in config["upstreams"]:
            u["url"] = map_service_url(u["url"], addresses)
        if "coordination" in config:
            config["coordination"]["redis"] = map_service_url(config["coordination"]["redis"],
                                                              addresses)
        config_path = tmp_path / "compose-config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        proxy = Service("accel-proxy", [binary, "serve", "--config", config_path],
                        tmp_path / "proxy.log").start()
        proxy.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30,
                        ready=lambda r: r.status_code == 200)
        pushed = push_with_skopeo(f"127.0.0.1:{registry.port}", tmp_path)
        pull_and_check_estargz(f"127.0.0.1:{port}", pushed, tmp_path)
        assert estargz_conversions(f"127.0.0.1:{port}") == 1
        assert redis.alive(), f"redis-server exited:\n{redis.log_tail()}"
    finally:
        if proxy is not None:
            status = proxy.stop()
            assert status == 0, f"accel-proxy exited with {status}:\n{proxy.log_tail()}"
        redis.stop()
        registry.stop()
