"""Two proxy replicas coordinated through a real redis-server on 127.0.0.1.

Both have their own cache, write back to the same docker-registry, and share `coordination:
{redis: ...}`. A conversion runs once across replicas: the lease holder converts and writes
back, the other waits for its announcement and then serves the written-back variant. A replica
killed mid-conversion loses its lease at expiry and the other takes over. With Redis stopped,
every pull still succeeds (each replica converts alone) and /metrics says Redis is down.
"""
import json
import socket
import subprocess
import threading
import time

import pytest
import requests

import images
import variant_env as ve
from hook_front import HookFront
from ports import free_port
from process import Service, require_program
from proxy import upstream
from registry import Registry

LEASE_TTL = 3  # seconds: how soon a dead replica's conversion is taken over


class RedisServer:
    def __init__(self, workdir):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.service = None

    def start(self):
        binary = "/usr/bin/redis-server"
        require_program(binary, "redis-server")
        self.service = Service("redis-server", [binary, "--bind", "127.0.0.1", "--port", str(self.port),
                                                "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
                               self.workdir / "redis.log")
        self.service.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self):
        if self.service and self.service.alive():
            self.service.stop()


@pytest.fixture
def redis(tmp_path):
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def registry(tmp_path):
    reg = Registry(tmp_path / "registry", name="registry-replicas").start()
    yield reg
    reg.stop()


def replica(tmp_path, name, upstream_url, redis_url):
    up = upstream("up", upstream_url, writeback={"enabled": True, "tag": False})
    return ve.running_variant_proxy(tmp_path / name, [up], ve.variants_config(on_miss="wait", wait_limit="120s"),
                                    extra_config={"coordination": {"redis": redis_url, "lease_ttl": f"{LEASE_TTL}s"}})


def push(registry, tmp_path_factory, repo, seed):
    layers = [ve.layer_files(tmp_path_factory, f"small-{seed}-a"), ve.layer_files(tmp_path_factory, f"small-{seed}-b")]
    return ve.push_layers_image(registry.url, requests.Session(), repo, "1", layers, seed=seed)


def pull_many(proxies, repo, count):
    """`count` concurrent pulls of repo:1-estargz spread over `proxies`; their answers."""
    answers = [None] * count

    def pull(i):
        answers[i] = ve.get_manifest(proxies[i % len(proxies)], repo, "1-estargz", timeout=180)

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
    return answers


def converted(proxy):
    return ve.conversions(proxy, outcome="done")


def test_twenty_pulls_over_two_replicas_convert_once(tmp_path, tmp_path_factory, registry, redis):
    source = push(registry, tmp_path_factory, "rep/app", "replicas")
    front = HookFront(registry.url, delay=0.3).start()  # a conversion long enough for the pulls to pile up
    try:
        with replica(tmp_path, "a", front.url, redis.url) as a, replica(tmp_path, "b", front.url, redis.url) as b:
            answers = pull_many([a, b], "rep/app", 20)
            assert all(r is not None and r.status_code == 200 for r in answers), \
                [r.status_code if r is not None else None for r in answers]
            digests = {ve.sha256(r.content) for r in answers}
            assert len(digests) == 1, digests
            assert json.loads(answers[0].content)["subject"]["digest"] == source.digest
            assert converted(a) + converted(b) == 1
            # The replica that did not convert waited for the other and served the written-back variant.
            waiter = b if converted(a) == 1 else a
            assert ve.metric(waiter, "accel_proxy_variants_found_upstream_total", format="estargz") == 1
            assert ve.metric(waiter, "accel_coordination_leases_held_elsewhere_total") >= 1
            assert ve.metric(a, "accel_coordination_redis_up") == 1 and ve.metric(b, "accel_coordination_redis_up") == 1
    finally:
        front.stop()


def test_a_killed_lease_holder_is_taken_over(tmp_path, tmp_path_factory, registry, redis):
    source = push(registry, tmp_path_factory, "rep/killed", "killed")
    front = HookFront(registry.url, delay=1.5).start()  # blob reads held back: the holder dies mid-conversion
    try:
        with replica(tmp_path, "a", front.url, redis.url) as a, replica(tmp_path, "b", front.url, redis.url) as b:
            def doomed_pull():  # its proxy is killed under it
                try:
                    ve.get_manifest(a, "rep/killed", "1-estargz", timeout=30)
                except requests.RequestException:
                    pass
            threading.Thread(target=doomed_pull, daemon=True).start()
            ve.wait_until(lambda: ve.metric(a, "accel_coordination_leases_acquired_total") >= 1, 30, "a to take the lease")
            result = {}
            pull = threading.Thread(target=lambda: result.update(r=ve.get_manifest(b, "rep/killed", "1-estargz", timeout=120)))
            pull.start()
            ve.wait_until(lambda: ve.metric(b, "accel_coordination_leases_held_elsewhere_total") >= 1, 30,
                          "b to find the conversion held by a")
            killed_at = time.monotonic()
            assert "conversion done" not in a.service.log_text()
            ve.kill(a)
            pull.join(timeout=120)
            took = time.monotonic() - killed_at
            assert result["r"].status_code == 200, result["r"].text[:300]
            assert json.loads(result["r"].content)["subject"]["digest"] == source.digest
            assert converted(b) == 1
            assert ve.metric(b, "accel_coordination_takeovers_total") >= 1
            assert ve.metric(b, "accel_coordination_leases_acquired_total") == 1
            # Not before the dead holder's lease could expire.
            assert took >= LEASE_TTL * 0.8, took
    finally:
        front.stop()


def test_pulls_succeed_when_redis_stops(tmp_path, tmp_path_factory, registry, redis):
    first = push(registry, tmp_path_factory, "rep/first", "redis-up")
    second = push(registry, tmp_path_factory, "rep/second", "redis-down")
    with replica(tmp_path, "a", registry.url, redis.url) as a, replica(tmp_path, "b", registry.url, redis.url) as b:
        answers = pull_many([a, b], "rep/first", 4)
        assert all(r.status_code == 200 for r in answers)
        assert converted(a) + converted(b) == 1
        redis.stop()
        answers = pull_many([a, b], "rep/second", 6)
        assert all(r.status_code == 200 for r in answers), [r.status_code for r in answers]
        assert len({ve.sha256(r.content) for r in answers}) == 1  # conversions are deterministic
        assert json.loads(answers[0].content)["subject"]["digest"] == second.digest
        for p in (a, b):
            ve.wait_until(lambda: ve.metric(p, "accel_coordination_redis_up") == 0, 10, "the gauge to drop")
        assert any("Redis unreachable" in p.service.log_text() for p in (a, b))


def test_a_push_through_one_replica_makes_every_replica_forget_the_tag(tmp_path, tmp_path_factory, registry, redis):
    """Replica b keeps tag resolutions for an hour; a re-push of the tag through replica a tells it
    (through Redis) to forget, so b's next variant request serves the new image's variant."""
    variants = ve.variants_config(on_miss="wait", wait_limit="120s", tag_ttl="1h", authorization_ttl="1h")
    coordination = {"coordination": {"redis": redis.url, "lease_ttl": f"{LEASE_TTL}s"}}
    up = upstream("up", registry.url)
    repo = "rep/repush"
    with ve.running_variant_proxy(tmp_path / "a", [up], variants, extra_config=coordination) as a, \
            ve.running_variant_proxy(tmp_path / "b", [up], variants, extra_config=coordination) as b:

        def source_of_variant(proxy):
            resp = ve.get_manifest(proxy, repo, "1-estargz", timeout=180)
            assert resp.status_code == 200, resp.text[:300]
            return json.loads(resp.content)["subject"]["digest"]

        first = images.Pusher(a.url, requests.Session()).push_image(repo, "1", *oci_image("repush-1"))
        assert source_of_variant(b) == first.digest  # b now holds the resolution 1 -> first

        second = images.Pusher(a.url, requests.Session()).push_image(repo, "1", *oci_image("repush-2"))
        assert second.digest != first.digest
        ve.wait_until(lambda: ve.metric(b, "accel_proxy_tag_invalidations_total", origin="replica") >= 1, 10,
                      "replica b to hear of the push")
        assert source_of_variant(b) == second.digest
        assert ve.metric(a, "accel_proxy_tag_invalidations_total", origin="push") >= 1

        # The control: a push that passes neither replica is not heard of (b keeps its resolution).
        third = images.Pusher(registry.url, requests.Session()).push_image(repo, "1", *oci_image("repush-3"))
        assert third.digest != second.digest
        assert source_of_variant(b) == second.digest


def oci_image(seed):
    body, blobs = images.build_oci_image(seed)
    return body, blobs, images.OCI_MANIFEST
