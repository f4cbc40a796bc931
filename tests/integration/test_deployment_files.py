"""The Kubernetes manifests and the systemd unit in docker/ fit together and carry a
configuration the proxy accepts.

Parsed, not applied (no cluster runs here): every workload mounts the ConfigMap that exists at
the path its --config names, exposes the port its probes and the Service use, probes /healthz
(liveness) and /readyz (readiness), and selects what its labels say; the ConfigMap's
configuration starts the real proxy (on 127.0.0.1, with --listen and --cache-dir overridden),
which then answers /healthz. The systemd unit starts the binary on the config path the
Dockerfile installs to.
"""
import configparser
import os
import signal
import subprocess
import time

import pytest
import requests
import yaml

from ports import free_port
from proxy import require_binary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(ROOT, "docker", "kubernetes")


def documents():
    docs = []
    for name in sorted(os.listdir(K8S)):
        with open(os.path.join(K8S, name)) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def by_kind(kind):
    return [d for d in documents() if d["kind"] == kind]


def config_flag(args):
    return args[args.index("--config") + 1]


WORKLOADS = [d["metadata"]["name"] for d in documents() if d["kind"] in ("Deployment", "DaemonSet")]


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_fits_its_configmap_ports_and_probes(name):
    workload, = [d for d in documents()
                 if d["kind"] in ("Deployment", "DaemonSet") and d["metadata"]["name"] == name]
    spec = workload["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    container, = pod["containers"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}

    # --config names a file of the mounted ConfigMap.
    config_path = config_flag(container["args"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount_name = next(n for n, path in mounts.items() if config_path.startswith(path + "/"))
    configmap_name = volumes[mount_name]["configMap"]["name"]
    configmap, = [c for c in by_kind("ConfigMap") if c["metadata"]["name"] == configmap_name]
    key = config_path[len(mounts[mount_name]) + 1:]
    assert key in configmap["data"], f"{name}: ConfigMap {configmap_name} has no key {key}"

    # The container listens where its port says: the config's listen, or --listen.
    config = yaml.safe_load(configmap["data"][key])
    args = container["args"]
    listen = args[args.index("--listen") + 1] if "--listen" in args else config["listen"]
    assert int(listen.rsplit(":", 1)[1]) in port_names.values()

    # Probes: liveness on /healthz, readiness on /readyz, on a declared port.
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in port_names
    # The cache lives where the config puts it.
    assert config["cache_dir"] in mounts.values()
    # A process listening on 127.0.0.1 is only reachable on the host network, probed there.
    if listen.startswith("127.0.0.1:"):
        assert pod.get("hostNetwork") is True
        assert container["livenessProbe"]["httpGet"]["host"] == "127.0.0.1"


def test_service_reaches_the_deployment():
    service, = by_kind("Service")
    deployment, = by_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in names


def test_configmap_configuration_starts_the_proxy(tmp_path):
    configmap, = by_kind("ConfigMap")
    config = tmp_path / "accel-proxy.yaml"
    config.write_text(configmap["data"]["accel-proxy.yaml"])
    port = free_port()
    log = open(tmp_path / "proxy.log", "w")
    p = subprocess.Popen([str(require_binary()), "serve", "--config", str(config),
                          "--listen", f"127.0.0.1:{port}", "--cache-dir", str(tmp_path / "cache")],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert p.poll() is None, (tmp_path / "proxy.log").read_text()
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the proxy did not answer /healthz"
            time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0


def test_systemd_unit_runs_the_installed_binary_on_the_installed_config():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(os.path.join(ROOT, "docker", "systemd", "accel-proxy.service"))
    exec_start = unit["Service"]["ExecStart"].split()
    assert exec_start[:2] == ["/usr/local/bin/accel-proxy", "serve"]
    with open(os.path.join(ROOT, "docker", "Dockerfile")) as f:
        dockerfile = f.read()
    assert config_flag(exec_start) in dockerfile  # the same installed path as the image
    assert "StateDirectory" in unit["Service"]  # /var/lib/accel-proxy: the default cache_dir
    assert unit["Install"]["WantedBy"] == "multi-user.target"
