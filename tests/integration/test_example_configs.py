"""The copy-paste configurations in configs/ say what their README promises.

configs/nydus/: the nydus-snapshotter TOML files parse, one with referrer detection on and one
with it off, both pointing nydusd at the mirrors directory and the nydusd config file the
README names; the nydusd JSON uses the registry backend; the containerd hosts.toml adds the
X-Accel-Format header that asks the proxy for Nydus, and the nydus mirror file names the same
proxy host. (configs/accel-proxy.yaml is loaded by the unit tests, tests/unit/test_config.cpp.)
"""
import json
import os
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NYDUS = os.path.join(ROOT, "configs", "nydus")


def load_toml(name):
    with open(os.path.join(NYDUS, name), "rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize("name, referrers", [("nydus-snapshotter.toml", False),
                                             ("nydus-snapshotter-referrers.toml", True)])
def test_snapshotter_configs(name, referrers):
    c = load_toml(name)
    assert c["version"] == 1
    assert c["experimental"]["enable_referrer_detect"] is referrers
    assert c["daemon"]["nydusd_config"] == "/etc/nydus/nydusd-config.fusedev.json"
    assert c["daemon"]["fs_driver"] in ("fusedev", "fscache")
    assert c["remote"]["mirrors_config"]["dir"] == "/etc/nydus/certs.d"


def test_nydusd_config_uses_the_registry_backend():
    with open(os.path.join(NYDUS, "nydusd-config.fusedev.json")) as f:
        c = json.load(f)
    assert c["device"]["backend"]["type"] == "registry"
    assert c["device"]["backend"]["config"]["scheme"] in ("http", "https")


def test_hosts_files_name_the_proxy():
    containerd = load_toml("containerd-hosts.toml")
    mirror = load_toml("nydus-mirror-hosts.toml")
    (host, settings), = containerd["host"].items()
    assert settings["header"]["X-Accel-Format"] == ["nydus"]
    assert "resolve" in settings["capabilities"]
    assert list(mirror["host"]) == [host]
    assert mirror["host"][host]["ping_url"] == host + "/v2/"



# ---- configs/stargz/ -----------------------------------------------------------------------

STARGZ = os.path.join(ROOT, "configs", "stargz")


def test_stargz_configs_point_at_the_proxy():
    def load(name):
        with open(os.path.join(STARGZ, name), "rb") as f:
            return tomllib.load(f)
    hosts = load("hosts.toml")
    (proxy_url, settings), = hosts["host"].items()
    assert settings["header"]["X-Accel-Format"] == ["estargz"]
    assert set(settings["capabilities"]) == {"pull", "resolve"}
    snapshotter = load("config.toml")
    (registry, host_config), = snapshotter["resolver"]["host"].items()
    assert hosts["server"] == "https://" + registry
    (mirror,) = host_config["mirrors"]
    assert "http://" + mirror["host"] == proxy_url and mirror["insecure"] is True
    containerd = load("containerd-config.toml")
    assert containerd["proxy_plugins"]["stargz"]["type"] == "snapshot"
    assert containerd["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"] == "/etc/containerd/certs.d"


# ---- docs/HARBOR.md: what it tells a reader to paste ---------------------------------------

HARBOR_GUIDE = os.path.join(ROOT, "docs", "HARBOR.md")


def guide_heredoc(marker):
    """The text of the guide's `<<'MARKER'` here-document."""
    text = open(HARBOR_GUIDE).read()
    start = text.index(f"<<'{marker}'\n") + len(f"<<'{marker}'\n")
    return text[start:text.index(f"\n{marker}\n", start)]


def guide_json_bodies():
    """The JSON bodies of the guide's curl commands (-d '...')."""
    text = open(HARBOR_GUIDE).read()
    bodies = []
    for part in text.split(" -d '")[1:]:
        bodies.append(json.loads(part[:part.index("'")]))
    return bodies


def test_harbor_guide_proxy_config_starts_the_proxy(tmp_path):
    import yaml
    from proxy import require_binary
    from ports import free_port
    from process import Service
    config = yaml.safe_load(guide_heredoc("YAML"))
    assert config["upstreams"][0]["writeback"] == {"enabled": True, "tag": True}
    port = free_port()
    config.update(listen=f"127.0.0.1:{port}", cache_dir=str(tmp_path / "cache"))
    path = tmp_path / "guide.yaml"
    path.write_text(yaml.safe_dump(config))
    service = Service("accel-proxy", [require_binary(), "serve", "--config", path], tmp_path / "proxy.log")
    service.start()
    try:
        service.wait_http(f"http://127.0.0.1:{port}/healthz", ready=lambda r: r.status_code == 200)
    finally:
        assert service.stop() == 0


def test_harbor_guide_hosts_toml_and_api_bodies():
    hosts = tomllib.loads(guide_heredoc("TOML"))
    (proxy_url, settings), = hosts["host"].items()
    assert settings["header"]["X-Accel-Format"] == ["nydus"]
    robot, policy = guide_json_bodies()
    actions = {(a["resource"], a["action"]) for a in robot["permissions"][0]["access"]}
    assert {("repository", "pull"), ("repository", "push"), ("tag", "create")} <= actions
    assert policy["event_types"] == ["PUSH_ARTIFACT"]
    (target,) = policy["targets"]
    assert target["address"] == proxy_url + "/hooks/harbor"
    config = __import__("yaml").safe_load(guide_heredoc("YAML"))
    assert target["auth_header"] == config["webhooks"]["secret"]


CONTAINERD = os.path.join(ROOT, "configs", "containerd")


def load_containerd_toml(name):
    with open(os.path.join(CONTAINERD, name), "rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize("name, scheme", [("mirror-http.toml", "http"), ("mirror-https.toml", "https"),
                                          ("proxy-https.toml", "https")])
def test_containerd_hosts_files(name, scheme):
    """configs/containerd/: one proxy host each, pull and resolve, https ones naming a CA file.
    (proxy-https.toml is also used as it is by test_listen_tls.py's ctr pull.)"""
    c = load_containerd_toml(name)
    (host, settings), = c["host"].items()
    assert host.startswith(scheme + "://")
    assert set(settings["capabilities"]) == {"pull", "resolve"}
    if scheme == "https":
        assert settings["ca"].startswith("/")
    else:
        assert "ca" not in settings
