"""Issue 4 end to end: real clients -> gateway -> an SSH-1 device.

The device is the gateway's own SSH-1 server in a second process (no other SSH-1 server is
packaged); the clients are OpenSSH's ``ssh`` and PuTTY's ``plink``.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from protocols.ssh1 import messages as m
from protocols.ssh1.packet import PacketEncoder
from tests.support.clients import (
    base_config,
    hash_password,
    peak_rss_growth_kib,
    plink1_argv,
    run_plink1,
    ssh_argv,
)
from tests.support.gateway_process import GatewayProcess, local_access
from tests.support.peers import putty_cipher_session, run_to_file
from tests.support.ssh1.minclient import HUGE_EXPONENT_KEY, public_key_payload
from tests.support.terminal import assert_window_change_reaches, size_report_script

pytestmark = pytest.mark.peer

DEVICE_PASSWORD = "device secret 42"


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """An SSH-1-only device with one account, admin/DEVICE_PASSWORD."""
    config = {
        "protocols": ["1"],
        "users": {"admin": {"password": hash_password(DEVICE_PASSWORD), **local_access()}},
        "ssh1": {"ciphers": ["blowfish", "3des"]},
        "auth": {"failure_delay": 0.2},
    }
    with GatewayProcess(tmp_path_factory.mktemp("device"), config) as dev:
        yield dev


def silent_port() -> tuple[socket.socket, int]:
    """A listener that accepts (backlog) but never answers: an upstream that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock, sock.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def hanging():
    sock, port = silent_port()
    yield port
    sock.close()


class HostileSSH1Device:
    """A loopback TCP server playing a hostile SSH-1 device from a script: its version
    line, then SSH_SMSG_PUBLIC_KEY with a 4096-bit host key whose 71-bit public exponent
    OpenSSL refuses to encrypt with (every protocol check passes); then it waits for the
    client to hang up."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        packet = PacketEncoder().encode(
            m.SSH_SMSG_PUBLIC_KEY, public_key_payload(host=HUGE_EXPONENT_KEY)
        )
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(20)
                try:
                    conn.sendall(b"SSH-1.5-hostile_device\n")
                    received = b""
                    while b"\n" not in received and (chunk := conn.recv(256)):
                        received += chunk
                    conn.sendall(packet)
                    while conn.recv(4096):
                        pass
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def hostile():
    device = HostileSSH1Device()
    yield device
    device.close()


@pytest.fixture(scope="module")
def bridge_gw(tmp_path_factory, password_hash, authorized_keys, device, hanging, hostile):
    targets = {
        "dev1": {
            "protocol": "ssh1", "host": "127.0.0.1", "port": device.port,
            "username": "admin", "password": DEVICE_PASSWORD, "host_key": "accept-new",
            "connect_timeout": 10, "ciphers": ["blowfish", "3des"],
        },
        "dev1-3des": {
            "protocol": "ssh1", "host": "127.0.0.1", "port": device.port,
            "username": "admin", "password": DEVICE_PASSWORD, "host_key": "accept-new",
            "connect_timeout": 10, "ciphers": ["3des"],
        },
        "down": {
            "protocol": "ssh1", "host": "127.0.0.1", "port": closed_port(),
            "username": "admin", "password": "x", "connect_timeout": 5,
        },
        "hangs": {
            "protocol": "ssh1", "host": "127.0.0.1", "port": hanging,
            "username": "admin", "password": "x", "connect_timeout": 3,
        },
        "moved": {
            "protocol": "ssh1", "host": "localhost", "port": device.port,
            "username": "admin", "password": DEVICE_PASSWORD, "host_key": "accept-new",
        },
        "secret": {
            "protocol": "ssh1", "host": "127.0.0.1", "port": device.port,
            "username": "admin", "password": DEVICE_PASSWORD,
        },
        "unusable": {
            "protocol": "ssh1", "host": "127.0.0.1", "port": hostile.port,
            "username": "admin", "password": "x", "host_key": "accept-new",
        },
    }
    config = base_config(password_hash, authorized_keys, targets=targets)
    config["users"]["alice"]["targets"] = [
        "local", "dev1", "dev1-3des", "down", "hangs", "moved", "unusable",
    ]
    workdir = tmp_path_factory.mktemp("bridge-gw")
    # "moved" was pinned to another key earlier: the device now shows a different one.
    # A gateway before the SSH-1 pins got their own file kept it in known_hosts: it is
    # moved to known_hosts.ssh1 at start, and still pinned.
    state = workdir / "state"
    state.mkdir(mode=0o700)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    numbers = other.public_numbers()
    known = state / "known_hosts"
    known.write_text(f"[localhost]:{device.port} 2048 {numbers.e} {numbers.n}\n")
    known.chmod(0o600)
    with GatewayProcess(workdir, config) as gw:
        yield gw


def test_openssh_command_through_ssh1_device(bridge_gw, client_keys):
    result = subprocess.run(
        ssh_argv(bridge_gw, client_keys["ed25519"], "echo hi; echo err >&2; exit 7",
                 user="alice+dev1"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.stdout == "hi\n", result.stderr + bridge_gw.log_text()[-3000:]
    assert "err" in result.stderr
    assert result.returncode == 7


def test_known_hosts_pinned_after_first_use(bridge_gw, client_keys):
    subprocess.run(
        ssh_argv(bridge_gw, client_keys["ed25519"], "true", user="alice+dev1"),
        capture_output=True, timeout=60,
    )
    known = (bridge_gw.workdir / "state" / "known_hosts.ssh1").read_text()
    assert f"[127.0.0.1]:{bridge_gw.config['targets']['dev1']['port']} 2048 " in known
    # The SSH-2 file holds no SSH-1 line, not even the one an older gateway left there.
    assert " 2048 " not in (bridge_gw.workdir / "state" / "known_hosts").read_text()


def test_device_key_openssl_refuses_fails_cleanly_and_is_not_pinned(
    bridge_gw, client_keys, hostile
):
    # Issue 9 item 2: the key passes every protocol check but cannot encrypt; before, the
    # client raised ValueError ("Unhandled Error" in the log) after pinning the key.
    result = echo_hi_via(bridge_gw, client_keys, "unusable")
    assert result.returncode == 255 and result.stdout == ""
    assert "sshgateway: unusable:" in result.stderr
    assert "cannot be used for RSA encryption" in result.stderr
    assert hostile.connections >= 1
    bridge_gw.wait_for_log(r"cannot be used for RSA encryption")
    bridge_gw.assert_no_traceback()
    state = bridge_gw.workdir / "state"
    for name in ("known_hosts", "known_hosts.ssh1"):
        path = state / name
        assert not path.exists() or f":{hostile.port} " not in path.read_text()


@pytest.mark.slow
def test_64mib_each_way_through_ssh1_bridge(bridge_gw, client_keys, tmp_path):
    size = 64 * 1024 * 1024
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(size))
    with blob.open("rb") as stdin:
        result = subprocess.run(
            ssh_argv(bridge_gw, client_keys["ed25519"], "cat", user="alice+dev1"),
            stdin=stdin, capture_output=True, timeout=600,
        )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(blob.read_bytes()).digest()


BURSTS = """\
import os, sys, time
bursts, pause, kib, mode = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
block = bytes(range(256)) * 4 * kib
progress = "progress" in mode  # a line on stderr every 8 KiB, as devices report progress
acked = "acked" in mode  # each burst after the first waits for a line on stdin
step = 8192 if progress else len(block)
for n in range(bursts):
    if acked and n:
        sys.stdin.readline()
    for k in range(0, len(block), step):
        data = memoryview(block)[k:k + step]
        while data:
            data = data[os.write(1, data):]
        if progress:
            os.write(2, b"%d.%d\\n" % (n, k // step))
    if n + 1 < bursts:  # the last burst is followed at once by the exit
        time.sleep(pause)
"""


def download_slowly(
    argv: list[str], rate: float, stall_after: float = 30, ack_every: int = 0
) -> tuple[int, bytes, bytes, int]:
    """Run ``argv`` and read its stdout at most ``rate`` bytes/s (a reader slower than
    the device), answering a line on its stdin after every ``ack_every`` bytes (0: none);
    returns the byte count, the sha256 digest, stderr and the exit status. Fails once
    nothing arrives for ``stall_after`` seconds."""
    client = subprocess.Popen(argv, stdin=subprocess.PIPE if ack_every else subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = bytearray()
    errors = threading.Thread(target=lambda: stderr.extend(client.stderr.read()), daemon=True)
    errors.start()
    digest, received = hashlib.sha256(), 0
    started = time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([client.stdout], [], [], stall_after)
            assert ready, f"nothing for {stall_after:g} s after {received} bytes: stalled"
            chunk = os.read(client.stdout.fileno(), 16384)
            if not chunk:
                break
            digest.update(chunk)
            if ack_every and received // ack_every < (received + len(chunk)) // ack_every:
                try:
                    client.stdin.write(b"\n")
                    client.stdin.flush()
                except BrokenPipeError:  # after the last burst ssh may have exited
                    pass
            received += len(chunk)
            ahead = received / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        status = client.wait(30)
    finally:
        client.kill()
        client.wait()
        errors.join(10)
    return received, digest.digest(), bytes(stderr), status


@pytest.mark.parametrize("target", ["dev1", "dev1-3des"])
def test_bursty_device_download_to_a_slow_reader_completes(
    bridge_gw, client_keys, tmp_path, target
):
    """Issue 15: ssh -> gateway -> an SSH-1 device whose program writes 256 KiB bursts
    with pauses, while ssh's reader takes its output in small slow steps, so the bridge is
    paused and resumed all along (by ssh's window, then the device's socket, then the
    program's pipe). Every byte and the exit status arrive, in bounded time."""
    script = tmp_path / "bursts.py"
    script.write_text(BURSTS)
    bursts = 24
    argv = ssh_argv(bridge_gw, client_keys["ed25519"], "-c", "aes128-ctr",
                    f"{sys.executable} {script} {bursts} 0.02 256", user=f"alice+{target}")
    received, digest, stderr, status = download_slowly(argv, rate=8e6)
    assert received == bursts * 256 * 1024, stderr
    assert digest == hashlib.sha256(bytes(range(256)) * 1024 * bursts).digest()
    assert status == 0


@pytest.mark.slow
def test_32mib_from_a_throttling_device_with_progress_on_stderr(bridge_gw, client_keys, tmp_path):
    """Issue 15, the stalled download: 32 MiB from an SSH-1 device that throttles its
    output, read by a slower reader behind ssh. The device sends 4 MiB bursts (more than
    ssh's window and the socket buffers hold), blocked whenever the gateway does not
    read, reports progress on stderr every 8 KiB, and sends its next burst only once the
    reader has acknowledged the last one (as rcp's source waits for the sink): so the
    gateway's SSH-1 client, paused in the middle of a read that holds the end of a burst
    (more stderr and stdout packets), must deliver them when resumed although the device
    sends nothing more until they are delivered. Byte count, sha256, every line in
    order and exit status 0."""
    script = tmp_path / "bursts.py"
    script.write_text(BURSTS)
    bursts, burst = 8, 4 * 1024 * 1024
    argv = ssh_argv(bridge_gw, client_keys["ed25519"], "-c", "aes128-ctr",
                    f"{sys.executable} {script} {bursts} 0.002 {burst // 1024} progress acked",
                    user="alice+dev1")
    received, digest, stderr, status = download_slowly(
        argv, rate=8e6, stall_after=20, ack_every=burst
    )
    assert received == bursts * burst, stderr[-2000:]
    assert digest == hashlib.sha256(bytes(range(256)) * (burst // 256) * bursts).digest()
    steps = burst // 8192
    assert stderr.splitlines() == [b"%d.%d" % (n, k) for n in range(bursts) for k in range(steps)]
    assert status == 0
    bridge_gw.assert_no_traceback()


def echo_hi_via(gw: GatewayProcess, client_keys, target: str) -> subprocess.CompletedProcess:
    """``echo hi`` through the gateway to ``target`` with OpenSSH, as alice, key login."""
    return subprocess.run(
        ssh_argv(gw, client_keys["ed25519"], "echo hi", user=f"alice+{target}"),
        capture_output=True, text=True, timeout=60,
    )


def test_unreachable_upstream_fails_fast_with_reason(bridge_gw, client_keys):
    started = time.monotonic()
    result = echo_hi_via(bridge_gw, client_keys, "down")
    assert result.returncode != 0
    assert result.stderr.count("\n") >= 1 and "sshgateway: down:" in result.stderr
    assert "refused" in result.stderr
    assert time.monotonic() - started < 15


def test_hanging_upstream_times_out(bridge_gw, client_keys):
    started = time.monotonic()
    result = echo_hi_via(bridge_gw, client_keys, "hangs")
    assert result.returncode != 0
    assert "sshgateway: hangs:" in result.stderr
    assert time.monotonic() - started < 3 + 10


def test_forbidden_and_unknown_targets_look_the_same(bridge_gw, client_keys):
    forbidden = echo_hi_via(bridge_gw, client_keys, "secret")
    unknown = echo_hi_via(bridge_gw, client_keys, "nosuchtarget")
    assert forbidden.returncode == unknown.returncode != 0
    assert forbidden.stdout == unknown.stdout == ""
    assert forbidden.stderr.replace("secret", "T") == unknown.stderr.replace("nosuchtarget", "T")
    assert "not available" in forbidden.stderr


def test_plink_ssh1_front_to_ssh1_device(bridge_gw):
    result = run_plink1(bridge_gw, "echo via; exit 3", user="alice+dev1", status=3)
    assert result.stdout.strip() == "via", result.stderr


def test_changed_device_key_refused_with_warning(bridge_gw, client_keys):
    result = echo_hi_via(bridge_gw, client_keys, "moved")
    assert result.returncode != 0 and result.stdout == ""
    assert "CHANGED" in result.stderr.upper() and "sshgateway: moved:" in result.stderr


def test_openssh_tty_shell_on_device_with_window_change(bridge_gw, client_keys, tmp_path):
    result = subprocess.run(
        ssh_argv(bridge_gw, client_keys["ed25519"], "-tt", "tty", user="alice+dev1"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.stdout.startswith("/dev/pts/"), result
    marker = tmp_path / "size"
    argv = ssh_argv(bridge_gw, client_keys["ed25519"], "-tt", size_report_script(marker),
                    user="alice+dev1")
    assert_window_change_reaches(argv, marker)


@pytest.mark.slow
def test_gateway_memory_bounded_with_a_slow_reader(bridge_gw, client_keys):
    """The client reads at about 100 KB/s while the device could send far faster."""
    argv = ssh_argv(bridge_gw, client_keys["ed25519"], "cat /dev/zero", user="alice+dev1")
    assert peak_rss_growth_kib(bridge_gw, argv) < 32 * 1024


@pytest.mark.slow
def test_64mib_through_plink1_to_ssh1_device(bridge_gw):
    data = os.urandom(64 * 1024 * 1024)
    with putty_cipher_session("blowfish") as session:
        argv = plink1_argv(bridge_gw, "cat", user="alice+dev1", load=session)
        result = run_to_file(argv, input=data, timeout=600)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
