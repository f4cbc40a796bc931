"""nginx in front of a registry, redirecting blob reads to a "storage" server that ignores Range.

This imitates registries whose blobs live in object storage (S3, OSS, ...): the registry
answers a blob GET/HEAD with 307 to a storage URL, and some storage fronts ignore Range and
always send the whole object with 200. One nginx process runs two servers:

  front   (port A): /v2/<name>/blobs/sha256:<hex>  -> 307 http://127.0.0.1:B/blobs/sha256/<hh>/<hex>/data
                    everything else               -> proxied to the registry
  storage (port B): files from the registry's filesystem storage, `max_ranges 0` (no Range)
"""
import os
from pathlib import Path

from ports import free_port
from process import Service, require_program

NGINX_BIN = "/usr/sbin/nginx"

_CONF = """\
{user_line}
worker_processes 1;
error_log {tmp}/nginx.log error;
events {{ worker_connections 512; }}
http {{
    # The port says which of the two servers answered.
    log_format withport '$server_port $remote_addr "$request" $status $body_bytes_sent "$http_range"';
    access_log {tmp}/nginx.log withport;  # same file as the error log: one log to read
    # Temp paths inside the test dir: the packaged defaults need root and /var/lib/nginx.
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    scgi_temp_path {tmp}/scgi_temp;
    types {{ }}
    default_type application/octet-stream;

    server {{
        listen 127.0.0.1:{front_port};
        client_max_body_size 0;
        location ~ "^/v2/.+/blobs/sha256:([0-9a-f]{{2}})([0-9a-f]{{62}})$" {{
            return 307 http://127.0.0.1:{storage_port}/blobs/sha256/$1/$1$2/data;
        }}
        location / {{
            proxy_pass http://127.0.0.1:{registry_port};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}

    server {{
        listen 127.0.0.1:{storage_port};
        location /blobs/ {{
            root {registry_v2_dir};
            max_ranges 0;
        }}
    }}
}}
"""


class NginxRedirect:
    def __init__(self, workdir, registry):
        self.tmp = Path(workdir)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.front_port = free_port()
        self.storage_port = free_port()
        self.url = f"http://127.0.0.1:{self.front_port}"
        self.storage_url = f"http://127.0.0.1:{self.storage_port}"
        self.service = None

    def write_config(self) -> Path:
        # As root, nginx workers would switch to "nobody", who cannot read the registry's
        # files in the test's private temp dir; keep them root then.
        user_line = "user root;" if os.geteuid() == 0 else ""
        conf = _CONF.format(user_line=user_line, tmp=self.tmp, front_port=self.front_port,
                            storage_port=self.storage_port, registry_port=self.registry.port,
                            registry_v2_dir=self.registry.blob_dir.parent)
        path = self.tmp / "nginx.conf"
        path.write_text(conf)
        return path

    def start(self):
        require_program(NGINX_BIN, "nginx-light")
        conf = self.write_config()
        self.service = Service("nginx", [
            NGINX_BIN, "-p", f"{self.tmp}/", "-c", conf,
            "-g", f"daemon off; pid {self.tmp}/nginx.pid;"], self.tmp / "nginx.log")
        self.service.start()
        try:
            self.service.wait_http(self.url + "/v2/", ready=lambda r: r.status_code in (200, 401))
        except Exception:
            self.service.stop()
            raise
        return self

    def stop(self):
        # SIGQUIT is nginx's graceful stop; SIGTERM is its fast stop, good enough for tests.
        return self.service.stop() if self.service else None
