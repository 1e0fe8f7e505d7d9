"""A real HAProxy (Debian ``haproxy``) on loopback in front of gateway processes, for the
PROXY-protocol and cluster tests: HAProxy cannot report a port 0 it picked, so it gets a
free port, and whether it listens is read from /proc (connecting to find out would go
through HAProxy to a gateway and leave a connection in its log).

:func:`cluster_config` is also the configuration the README shows in "Deployment: several
instances behind HAProxy" (tests/integration/test_cluster_peers.py checks that they match).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.peers import require_peer


def free_port() -> int:
    """A port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, read from /proc/net/tcp."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
            return True
    return False


def single_config(port: int, gateway_port: int) -> str:
    """One gateway behind HAProxy, PROXY v2 on every connection, no health check."""
    return (
        "global\n"
        "    maxconn 64\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 5s\n"
        "    timeout client 60s\n"
        "    timeout server 60s\n"
        "frontend ssh_in\n"
        f"    bind 127.0.0.1:{port}\n"
        "    default_backend gateway\n"
        "backend gateway\n"
        f"    server gw 127.0.0.1:{gateway_port} send-proxy-v2\n"
    )


def cluster_config(bind: str, servers: list[tuple[str, str]], stats_socket: str = "") -> str:
    """Several gateway instances behind HAProxy: ``mode tcp``, round robin, a PROXY v2
    header on every connection (``send-proxy-v2``) and on every health check
    (``check-send-proxy``: the gateway's ``haproxy:`` listener drops a connection without
    one), a dead instance out after one failed check 500 ms apart (``fall 1``), and a
    connection that cannot reach its instance sent to another (``option redispatch``)."""
    return (
        "global\n"
        "    maxconn 4096\n"
        + (f"    stats socket {stats_socket} mode 600\n" if stats_socket else "")
        + "defaults\n"
        "    mode tcp\n"
        "    timeout connect 2s\n"
        "    timeout client 1h\n"
        "    timeout server 1h\n"
        "    retries 2\n"
        "    option redispatch\n"
        "frontend ssh_in\n"
        f"    bind {bind}\n"
        "    default_backend gateways\n"
        "backend gateways\n"
        "    balance roundrobin\n"
        "    default-server send-proxy-v2 check check-send-proxy inter 500ms fall 1 rise 2\n"
        + "".join(f"    server {name} {address}\n" for name, address in servers)
    )


def server_stat(stats_socket: Path, backend: str, server: str, name: str = "stot") -> int:
    """A counter of ``server`` of ``backend`` from ``show stat`` on HAProxy's stats socket:
    ``stot`` the sessions it has sent there in all, ``scur`` the ones it holds now."""
    return int(server_field(stats_socket, backend, server, name) or 0)


def server_field(stats_socket: Path, backend: str, server: str, name: str) -> str:
    """A field of ``server`` of ``backend`` from ``show stat`` as HAProxy prints it
    (``check_status``: ``L4OK`` once its last health check passed)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(stats_socket))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") == server:
            return row[name]
    raise AssertionError(f"no {backend}/{server} in haproxy's stats:\n{data.decode()}")


@contextmanager
def haproxy_running(workdir: Path, config_text: str, port: int) -> Iterator[subprocess.Popen]:
    """HAProxy in the foreground (``-db``) with ``config_text``, which binds 127.0.0.1:port;
    yields the process (its output is a pipe) and stops it."""
    haproxy = require_peer("haproxy")["haproxy"]
    config = workdir / "haproxy.cfg"
    config.write_text(config_text)
    log = open(workdir / "haproxy.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [haproxy, "-f", str(config), "-db"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise AssertionError(
                    f"haproxy did not start:\n{(workdir / 'haproxy.log').read_text()}"
                )
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@contextmanager
def haproxy_in_front(workdir: Path, gateway_port: int) -> Iterator[int]:
    """A real HAProxy in ``mode tcp`` that sends a PROXY v2 header to one gateway; yields
    its port."""
    port = free_port()
    with haproxy_running(workdir, single_config(port, gateway_port), port):
        yield port
