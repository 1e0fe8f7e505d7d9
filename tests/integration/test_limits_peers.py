"""Limits on abuse (issue 11, acceptance 6), on a real gateway process with real clients:
a flood of idle and one-byte-a-second connections does not delay an OpenSSH login; with
max_startups set the excess is refused before any key exchange (OpenSSH and PuTTY's SSH-1
both turned away, raw sockets get no version line); stalled connections are timed out; a
source that failed is refused while an allow-listed one is not.

Every flood is bounded in count and time and stays on loopback; the sources are
127.0.0.0/8 addresses (binding a client socket to 127.0.0.2 works on Linux loopback).
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gateway.limits import BUSY_LINE, PENALTY_LINE
from tests.support.clients import PASSWORD, keyed_config, plink1_argv, ssh1_fingerprint, ssh_argv
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_module, require_peer
from tests.support.python_clients import bound_socket, gateway_fingerprints, paramiko_client

pytestmark = pytest.mark.peer

IDLE, TRICKLING = 200, 200
LOGINS_TIMED = 3
DELAY_BOUND = 1.0  # seconds a login may take longer under the flood than without it


def ssh_login(
    gw: GatewayProcess, key: Path, source: str = "127.0.0.1"
) -> subprocess.CompletedProcess:
    argv = ssh_argv(gw, key, "echo", "in")
    argv[-3:-3] = ["-b", source]  # before the destination
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def timed_logins(gw: GatewayProcess, key: Path, count: int) -> list[float]:
    took = []
    for _ in range(count):
        started = time.monotonic()
        result = ssh_login(gw, key)
        took.append(round(time.monotonic() - started, 3))
        assert result.returncode == 0 and result.stdout == "in\n", (
            result.stderr + gw.log_text()[-3000:]
        )
    return took


class Flood:
    """``idle`` connections from ``source`` that never send, and ``trickling`` ones that
    send one byte a second (a version line that never ends), for at most ``seconds``."""

    def __init__(self, gw: GatewayProcess, source: str, idle: int, trickling: int, seconds: float):
        self.idle = [bound_socket(gw, source) for _ in range(idle)]
        self.trickling = [bound_socket(gw, source) for _ in range(trickling)]
        self.seconds = seconds
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def banners(self) -> int:
        """How many connections got the gateway's version line (all were accepted)."""
        got = 0
        for sock in self.idle + self.trickling:
            try:
                got += sock.recv(100).startswith(b"SSH-")
            except OSError:
                pass
        return got

    def _trickle(self) -> None:
        line = b"SSH-2.0-" + b"x" * 200
        deadline = time.monotonic() + self.seconds
        for byte in line:
            if self.stop.wait(1.0) or time.monotonic() > deadline:
                return
            for sock in self.trickling:
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    pass
            self.sent += 1

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        for sock in self.idle + self.trickling:
            sock.close()


@pytest.mark.slow
def test_idle_and_trickling_connections_do_not_delay_an_openssh_login(tmp_path):
    config, key = keyed_config(
        tmp_path,
        version_timeout=30,
        auth={"grace_time": 120, "failure_delay": 0.2, "max_attempts": 6},
        limits={"max_startups": "1000"},  # hold them all: this measures the event loop
    )
    with GatewayProcess(tmp_path, config) as gw:
        quiet = timed_logins(gw, key, LOGINS_TIMED)
        flood = Flood(gw, "127.0.0.3", IDLE, TRICKLING, seconds=25)
        try:
            assert flood.banners() == IDLE + TRICKLING, gw.log_text()[-3000:]
            flood.thread.start()
            time.sleep(3)  # bytes are trickling in
            loaded = timed_logins(gw, key, LOGINS_TIMED)
            assert flood.sent >= 3
        finally:
            flood.close()
    report = f"OpenSSH logins quiet {quiet} s, under {IDLE}+{TRICKLING} flood {loaded} s"
    print(report)
    assert max(loaded) <= max(quiet) + DELAY_BOUND, report


def logged(gw: GatewayProcess, pattern: str, count: int, timeout: float = 5.0) -> bool:
    """Whether the gateway logs ``count`` lines matching ``pattern`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while len(re.findall(pattern, gw.log_text())) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


@pytest.mark.slow
def test_past_max_startups_the_excess_is_refused_before_any_key_exchange(tmp_path):
    require_peer("plink")
    config, key = keyed_config(tmp_path, limits={"max_startups": "5", "penalties": False})
    with GatewayProcess(tmp_path, config) as gw:
        held = [bound_socket(gw) for _ in range(5)]
        assert all(s.recv(100).startswith(b"SSH-1.99-") for s in held)
        # Raw sockets that speak first anyway, as SSH-2 and as SSH-1: one line, no
        # version line, so no KEXINIT and no SSH-1 PUBLIC_KEY can follow.
        for hello in (b"SSH-2.0-OpenSSH_9.6\r\n", b"SSH-1.5-1.2.27\n") * 10:
            sock = bound_socket(gw)
            sock.sendall(hello)
            assert read_all(sock) == BUSY_LINE
            sock.close()
        refused = ssh_login(gw, key)
        assert refused.returncode == 255 and "in" not in refused.stdout
        plink = subprocess.run(
            plink1_argv(gw, "echo in", fingerprint=ssh1_fingerprint(gw)),
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert plink.returncode != 0 and "in" not in plink.stdout
        # The 20 raw sockets and ssh at least (plink may give up before it connects, and
        # its failure is checked above); the log is read from the process as it comes.
        refusal = r"refusing 127\.0\.0\.1:\d+ at accept: max_startups 5:100:5"
        deadline = time.monotonic() + 10
        while len(re.findall(refusal, log := gw.log_text())) < 21 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(re.findall(refusal, log)) >= 21, log[-3000:]
        assert "ssh2: " not in log and "ssh1 " not in log  # no protocol ever started
        # The flood stops: the gateway serves again by itself.
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while (result := ssh_login(gw, key)).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert result.stdout == "in\n", result.stderr


@pytest.mark.slow
def test_stalled_connections_are_timed_out(tmp_path):
    config, _ = keyed_config(
        tmp_path, version_timeout=3, auth={"grace_time": 3, "failure_delay": 0.2, "max_attempts": 6}
    )
    config["limits"] = {"penalties": False, "max_startups": "100"}
    with GatewayProcess(tmp_path, config) as gw:
        slow_line = [bound_socket(gw) for _ in range(20)]  # one byte a second, no line end
        slow_kex = [bound_socket(gw) for _ in range(20)]  # a version line, then one byte a second
        for sock in slow_kex:
            sock.sendall(b"SSH-2.0-slowloris\r\n")
        # After the line: a packet length of 256, then its bytes one a second.
        packet = b"\x00\x00\x01\x00\x14" + b"\x00" * 60
        started = time.monotonic()
        open_ = slow_line + slow_kex
        for second in range(12):
            for sock in list(open_):
                try:
                    sock.send(b"x" if sock in slow_line else packet[second : second + 1])
                except OSError:
                    open_.remove(sock)
            time.sleep(1)
            if not open_:
                break
        took = time.monotonic() - started
        for sock in slow_line + slow_kex:
            sock.close()
        assert not open_ and took < 11, f"{len(open_)} connections still open after {took:.1f} s"
        assert logged(gw, r"127\.0\.0\.1:\d+: no identification line within", 20)
        assert logged(gw, r"disconnecting 127\.0\.0\.1:\d+: login grace time exceeded", 20)


@pytest.mark.slow
def test_a_source_that_failed_is_refused_and_an_allow_listed_one_is_not(tmp_path):
    paramiko = require_module("paramiko")
    config, key = keyed_config(
        tmp_path,
        limits={"penalty_authfail": 12, "penalty_min": 15, "penalty_exempt": ["127.0.0.2/32"]},
    )
    with GatewayProcess(tmp_path, config) as gw:
        pinned = gateway_fingerprints(gw)

        def fail(source: str) -> None:
            with pytest.raises(paramiko.AuthenticationException):
                paramiko_client(
                    gw, source=source, password="wrong " + PASSWORD, fingerprints=pinned
                )

        for source in ("127.0.0.1", "127.0.0.2"):
            fail(source)
            # 12 s is not past the 15 s minimum: one failure alone is not refused.
            assert ssh_login(gw, key, source).returncode == 0
            fail(source)  # 24 s, less the few that passed: now it is
        refused = ssh_login(gw, key, "127.0.0.1")
        allowed = ssh_login(gw, key, "127.0.0.2")
        raw = bound_socket(gw, "127.0.0.1")
        told = read_all(raw)
        raw.close()
        log = gw.log_text()
    assert refused.returncode == 255 and refused.stdout == "", refused.stderr
    assert allowed.returncode == 0 and allowed.stdout == "in\n", allowed.stderr
    assert told == PENALTY_LINE  # no version line: no key exchange for a penalised source
    assert re.search(
        r"penalty: activating \d+s refusal of 127\.0\.0\.1/32 for failed authentication", log
    )
    assert re.search(
        r"refusing 127\.0\.0\.1:\d+ at accept: penalty: 127\.0\.0\.1/32 refused for \d+s more",
        log,
    )
    assert "127.0.0.2/32" not in log and "refusing 127.0.0.2" not in log


@pytest.mark.slow
def test_a_flood_is_refused_before_descriptors_run_out_and_the_gateway_recovers(tmp_path):
    """600 connections that send a version line and then nothing, against a gateway with
    256 descriptors: max_startups (default 10:30:100, its full capped to 96 to fit) refuses
    the excess at accept, a logged-in session goes on meanwhile, no accept ever fails for
    want of descriptors, and once the flood stops a new login works."""
    require_module("paramiko")
    config, key = keyed_config(tmp_path, limits={"penalties": False})
    with GatewayProcess(tmp_path, config, nofile=256) as gw:
        pinned = gateway_fingerprints(gw)
        session = paramiko_client(gw, key_filename=str(key), fingerprints=pinned)
        try:
            held, refused, flood = 0, 0, []
            for _ in range(600):
                sock = bound_socket(gw, "127.0.0.3")
                sock.sendall(b"SSH-2.0-flood\r\n")
                flood.append(sock)
            for sock in flood:
                first = read_line(sock)
                held += first.startswith(b"SSH-")
                refused += first == BUSY_LINE
            _, out, _ = session.exec_command("echo still here", timeout=20)
            assert out.read() == b"still here\n"
        finally:
            for sock in flood:
                sock.close()
            session.close()
        deadline = time.monotonic() + 15
        while (result := ssh_login(gw, key)).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        log = gw.log_text()
    assert held + refused == 600 and held <= 96, (held, refused)
    assert "max_startups 10:30:100 needs more file descriptors than the limit of 256" in log
    assert "using 10:30:96" in log
    assert "Too many open files" not in log and "EMFILE" not in log
    assert result.returncode == 0 and result.stdout == "in\n", result.stderr


def read_line(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """The first line the gateway sends (or what it sent before closing)."""
    sock.settimeout(timeout)
    data = b""
    while b"\n" not in data:
        try:
            chunk = sock.recv(256)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data[: data.index(b"\n") + 1] if b"\n" in data else data
