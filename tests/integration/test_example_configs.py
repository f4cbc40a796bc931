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
