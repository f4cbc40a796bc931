"""A private, rootful podman for the tests: its own containers.conf, storage.conf, storage root
and CNI network directory, handed to podman and podman-compose through CONTAINERS_CONF and
CONTAINERS_STORAGE_CONF, so the machine's own container configuration is neither read nor
changed. docs/CONTAINERS.md explains each setting.

The storage root lives under ACCEL_CONTAINER_CACHE (default /var/tmp/accel-proxy-container/
<hash of the checkout>), outside the build context, and is kept between runs: podman's layer
cache is what makes a warm run fast. The debootstrap tarball is kept under ACCEL_BASE_CACHE
(default <cache>/../base-image, shared by checkouts).
"""
import fcntl
import hashlib
import os
import resource
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]
PODMAN = "/usr/bin/podman"
PODMAN_COMPOSE = "/usr/bin/podman-compose"
BASE_IMAGE = "localhost/debian:bookworm-base"
CACHE_ROOT = Path(os.environ.get("ACCEL_CONTAINER_CACHE") or
                  Path("/var/tmp/accel-proxy-container") / CHECKOUT)
BASE_CACHE = Path(os.environ.get("ACCEL_BASE_CACHE") or CACHE_ROOT.parent / "base-image")
# One stack at a time on a machine: the stacks' bridge networks come from each private CNI
# directory's own allocation, which does not see another checkout's.
LOCK_PATH = Path("/tmp/accel-proxy-container-test.lock")


class PodmanError(RuntimeError):
    pass


def _tail(text, limit=4000):
    return text if len(text) <= limit else "...\n" + text[-limit:]


def bounded_run(argv, env, timeout, cwd=None, stdout=subprocess.PIPE, input=None):
    """Run argv in its own process group; past timeout, SIGTERM the group (podman passes it on
    to the builds and containers it started), then SIGKILL it. Returns (returncode, stdout,
    stderr); returncode None when it timed out."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=stdout,
                            stderr=subprocess.PIPE if stdout == subprocess.PIPE else subprocess.STDOUT,
                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
        return proc.returncode, out or "", err or ""
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                out, err = proc.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                out, err = "", ""
        return None, out or "", err or ""


class Podman:
    def __init__(self, driver):
        self.driver = driver
        self.root = CACHE_ROOT / driver
        self.root.mkdir(parents=True, exist_ok=True)
        self.conf = self.root / "containers.conf"
        self.storage_conf = self.root / "storage.conf"
        self._write_config()
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.root / "home"),
            "CONTAINERS_CONF": str(self.conf),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
            "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(self.root / "auth.json"),
            "ACCEL_BASE_CACHE": str(BASE_CACHE),
        }

    def _write_config(self):
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = 1048576 if nofile == resource.RLIM_INFINITY else min(nofile, 1048576)
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        # podman caps its own RLIMIT_NPROC at 32768 before starting the runtime.
        nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
        for d in ("storage", "tmp", "cni", "home"):
            (self.root / d).mkdir(exist_ok=True)
        # podman passes runroot to the cleanup process it starts when a container exits, which
        # refuses one longer than 50 characters; `podman run` then waits 20s for an exit code.
        self.runroot = Path("/run/accel-proxy-container") / f"{CHECKOUT}-{self.driver}"
        assert len(str(self.runroot)) <= 50, self.runroot
        self.runroot.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""\
# Written by tests/container/podman_env.py; see docs/CONTAINERS.md.
[containers]
# Without CAP_SYS_RESOURCE podman's defaults for root (nofile 1048576) cannot be set.
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
# crun 1.8 refuses hosts with cgroups in hybrid (v1 + v2) mode; runc runs on v1, hybrid and v2.
runtime = "runc"
tmp_dir = "{self.root}/tmp"
[network]
network_config_dir = "{self.root}/cni"
""")
        self.storage_conf.write_text(f"""\
[storage]
driver = "{self.driver}"
graphroot = "{self.root}/storage"
runroot = "{self.runroot}"
""")
        # Short names never resolve to a remote registry: every image here is localhost/.
        (self.root / "registries.conf").write_text('unqualified-search-registries = []\n')
        # No credentials saved on this machine are read (podman wants the file to exist).
        (self.root / "auth.json").write_text('{"auths": {}}\n')

    def run(self, *args, timeout=120, check=True, input=None):
        argv = [PODMAN, *map(str, args)]
        code, out, err = bounded_run(argv, self.env, timeout, input=input)
        if code is None:
            raise PodmanError(f"{' '.join(argv)} did not finish within {timeout}s:\n"
                              f"{_tail(out + err)}")
        done = subprocess.CompletedProcess(argv, code, out, err)
        if check and done.returncode != 0:
            raise PodmanError(f"{' '.join(argv)} exited with {done.returncode}:\n"
                              f"{_tail(done.stdout + done.stderr)}")
        return done

    def compose(self, project, *args, extra_env=None, timeout=120, log=None):
        """podman-compose -p PROJECT -f docker/compose.yaml ARGS; its output goes to log.

        podman-compose 1.0.3 does not report a failing podman command in its own exit status,
        so callers check the result (images present, containers running) themselves.
        """
        argv = [PODMAN_COMPOSE, "-p", project, "-f", str(REPO_ROOT / "docker" / "compose.yaml"),
                *map(str, args)]
        env = dict(self.env, **(extra_env or {}))
        with open(log, "a") if log else open(os.devnull, "w") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            code, _, _ = bounded_run(argv, env, timeout, cwd=REPO_ROOT, stdout=out)
        if code is None:
            raise PodmanError(f"{' '.join(argv)} did not finish within {timeout}s"
                              + (f"; see {log}" if log else ""))
        if code != 0:
            raise PodmanError(f"{' '.join(argv)} exited with {code}"
                              + (f"; see {log}" if log else ""))

    @staticmethod
    def failed_commands(log):
        """The podman commands podman-compose logged as failing (it prints `exit code: N`
        after each one it waits for) in log's text."""
        failed, last = [], None
        for line in Path(log).read_text().splitlines():
            if line.startswith("podman ") or line.startswith("['podman'"):
                last = line
            elif line.startswith("exit code: ") and line.split()[-1] != "0":
                failed.append(f"{last} -> {line}")
        return failed

    def image_exists(self, name):
        return self.run("image", "exists", name, check=False).returncode == 0

    def make_base_image(self, timeout=1200):
        """docker/make-base-image into this storage (the tarball is cached across runs)."""
        argv = [str(REPO_ROOT / "docker" / "make-base-image"), BASE_IMAGE]
        code, out, err = bounded_run(argv, self.env, timeout)
        if code is None:
            raise PodmanError(f"docker/make-base-image did not finish within {timeout}s:\n"
                              f"{_tail(out + err)}")
        if code != 0:
            raise PodmanError(f"docker/make-base-image exited with {code}:\n{_tail(out + err)}")


def _first_line_of_error(text):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    errors = [l for l in lines if l.lower().startswith("error")]
    return (errors or lines or ["(no output)"])[-1]


def why_no_containers():
    """None if this machine can run rootful podman containers here, else the reason.

    Returns (Podman or None, reason or None). Tries the overlay storage driver first, then vfs
    (overlay cannot be used e.g. on an overlay root filesystem without native support). The
    probe runs a container of the local base image on the default bridge network with a port
    published on 127.0.0.1: what the compose stack needs.
    """
    if os.geteuid() != 0:
        return None, f"rootful podman needs root; this runs as uid {os.geteuid()}"
    for program, package in ((PODMAN, "podman"), (PODMAN_COMPOSE, "podman-compose"),
                             ("/usr/sbin/debootstrap", "debootstrap"), ("/usr/sbin/runc", "runc")):
        if not os.access(program, os.X_OK):
            return None, f"{program} not found (apt-get install {package}; .ci/install-deps does)"
    drivers = [os.environ.get("ACCEL_CONTAINER_STORAGE_DRIVER", "overlay"), "vfs"]
    reasons = []
    for driver in dict.fromkeys(drivers):
        podman = Podman(driver)
        info = podman.run("info", check=False)
        if info.returncode != 0:
            reasons.append(f"{driver}: podman info: {_first_line_of_error(info.stderr)}")
            continue
        podman.make_base_image()   # a failure here is an error, not a reason to skip
        from ports import free_port
        port = free_port()
        probe = podman.run("run", "--rm", "-p", f"127.0.0.1:{port}:{port}", BASE_IMAGE,
                           "/bin/true", check=False, timeout=120)
        if probe.returncode == 0:
            return podman, None
        reasons.append(f"{driver}: podman run: {_first_line_of_error(probe.stdout + probe.stderr)}")
    return None, "; ".join(reasons)


@contextmanager
def machine_lock(timeout=2400):
    """Hold the machine-wide stack lock (waiting at most timeout seconds for it)."""
    with open(LOCK_PATH, "a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PodmanError(f"another run held {LOCK_PATH} for over {timeout}s")
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
