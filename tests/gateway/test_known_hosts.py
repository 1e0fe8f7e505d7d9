"""gateway.known_hosts: OpenSSH's file format, the three policies, and hostile files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import known_hosts as kh
from gateway.hostkeys import ssh2_fingerprint
from gateway.known_hosts import (
    HostKeyChanged,
    HostKeyRevoked,
    HostKeyUnknown,
    KnownHosts,
    KnownHostsError,
    valid_policy,
)
from gateway.targets.bridge import UpstreamFailure
from protocols.ssh1.keys import ssh1_fingerprint
from tests.gateway.helpers import ed25519_key, rsa_key
from tests.peers import require_peer

KEY = ed25519_key()
OTHER = ed25519_key()
RSA = rsa_key()


def line_for(name: str, key) -> str:
    return f"{name} {key.sshType().decode()} {base64.b64encode(key.public().blob()).decode()}"


def hashed(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "known_hosts"


def test_failures_are_upstream_failures():
    for cls in (HostKeyChanged, HostKeyUnknown, HostKeyRevoked, KnownHostsError):
        assert issubclass(cls, UpstreamFailure)


def test_accept_new_records_once_then_pins(path):
    known = KnownHosts(path)
    known.check_ssh2("Router1", 22, KEY, "accept-new")
    known.check_ssh2("router1", 22, KEY, "accept-new")
    known.check_ssh2("router1", 2222, KEY, "accept-new")
    assert path.read_text().splitlines() == [
        line_for("router1", KEY),
        line_for("[router1]:2222", KEY),
    ]
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(HostKeyChanged) as exc:
        known.check_ssh2("router1", 2222, OTHER, "accept-new")
    message = str(exc.value)
    assert "host key for router1:2222 has CHANGED" in message
    assert ssh2_fingerprint(OTHER) in message
    assert f"{path}:2" in message
    assert "refusing to connect" in message.lower()
    assert "\n" not in message


def test_racing_first_connections_do_not_duplicate(path):
    # Two sessions (or processes) that both read the file before either recorded the
    # host: the second re-reads under the lock before appending.
    first, second = KnownHosts(path), KnownHosts(path)
    second._entries = lambda: []  # its view predates the first append
    first.check_ssh2("h", 22, KEY, "accept-new")
    second.check_ssh2("h", 22, KEY, "accept-new")
    assert path.read_text().splitlines() == [line_for("h", KEY)]
    with pytest.raises(HostKeyChanged):
        second.check_ssh2("h", 22, OTHER, "accept-new")  # and a different key is refused


def test_a_different_key_type_for_a_known_host_is_a_change(path):
    known = KnownHosts(path)
    known.check_ssh2("h", 22, RSA, "accept-new")
    with pytest.raises(HostKeyChanged):
        known.check_ssh2("h", 22, KEY, "accept-new")
    assert known.ssh2_key_types("h", 22) == ["ssh-rsa"]


def test_strict_requires_a_known_key(path):
    known = KnownHosts(path)
    with pytest.raises(HostKeyUnknown) as exc:
        known.check_ssh2("h", 22, KEY, "strict")
    assert "is not known" in str(exc.value)
    assert not path.exists()
    path.parent.mkdir()
    path.write_text(line_for("h", KEY) + "\n")
    known.check_ssh2("h", 22, KEY, "strict")
    with pytest.raises(HostKeyChanged):
        known.check_ssh2("h", 22, OTHER, "strict")


def test_openssh_syntax(path):
    path.parent.mkdir()
    path.write_text(
        "# comment\n\n"
        + line_for("a.example,b.example,10.0.0.1", KEY)
        + " comment here\n"
        + line_for(hashed("[hashed.example]:2200"), KEY)
        + "\n"
        + line_for("*.lab,!bad.lab", KEY)
        + "\n"
        + line_for("r?.site", KEY)
        + "\r\n"
        + "@cert-authority *.ca "
        + line_for("x", OTHER).split(" ", 1)[1]
        + "\n"
        + "garbage line\n"
        + "h2 ssh-ed25519 !!!notbase64\n"
    )
    known = KnownHosts(path)
    for host, port in (
        ("b.example", 22),
        ("10.0.0.1", 22),
        ("hashed.example", 2200),
        ("dev.lab", 22),
        ("r1.site", 22),
    ):
        known.check_ssh2(host, port, KEY, "strict")
    for host, port in (("hashed.example", 22), ("bad.lab", 22), ("r12.site", 22), ("a.example", 2)):
        with pytest.raises(HostKeyUnknown):
            known.check_ssh2(host, port, KEY, "strict")
    # A CA line is not a host key: not "known", so not "changed" either.
    with pytest.raises(HostKeyUnknown):
        known.check_ssh2("x.ca", 22, OTHER, "strict")


def test_revoked_key_refused_for_every_host(path):
    path.parent.mkdir()
    path.write_text("@revoked * " + line_for("x", KEY).split(" ", 1)[1] + "\n")
    known = KnownHosts(path)
    with pytest.raises(HostKeyRevoked) as exc:
        known.check_ssh2("anything", 22, KEY, "accept-new")
    assert "REVOKED" in str(exc.value)
    assert path.read_text().count("\n") == 1  # not recorded


def test_ssh1_keys(path):
    key = rsa_key(1024).public().data()
    e, n = key["e"], key["n"]
    known = KnownHosts(path)
    known.check_ssh1("old", 22, 1024, e, n, "accept-new")
    assert path.read_text() == f"old 1024 {e} {n}\n"
    known.check_ssh1("old", 22, 1024, e, n, "strict")
    with pytest.raises(HostKeyChanged) as exc:
        known.check_ssh1("old", 22, 1024, e, n + 2, "strict")
    assert ssh1_fingerprint(e, n + 2) in str(exc.value)
    # SSH-1 and SSH-2 keys of one host live side by side.
    known.check_ssh2("old", 22, KEY, "accept-new")
    fp = ssh1_fingerprint(e, n)
    known.check_ssh1("elsewhere", 22, 1024, e, n, fp)
    known.check_ssh1("elsewhere", 22, 1024, e, n, "MD5:" + fp.upper())
    with pytest.raises(HostKeyChanged):
        known.check_ssh1("elsewhere", 22, 1024, e, n + 2, fp)


def test_ssh1_sha256_fingerprint_as_ssh_keygen1_prints_it(path, tmp_path):
    tools = require_peer("ssh-keygen1")
    key = tmp_path / "rsa1"
    subprocess.run(
        [tools["ssh-keygen1"], "-q", "-t", "rsa1", "-b", "1024", "-N", "", "-f", str(key)],
        check=True,
        timeout=60,
    )
    listed = subprocess.run(
        [tools["ssh-keygen1"], "-l", "-f", str(key) + ".pub"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()[1]
    bits, e, n = (int(x) for x in Path(str(key) + ".pub").read_text().split()[:3])
    known = KnownHosts(path)
    known.check_ssh1("old", 22, bits, e, n, listed)
    known.check_ssh1("old", 22, bits, e, n, listed + "=")
    with pytest.raises(HostKeyChanged) as exc:
        known.check_ssh1("old", 22, bits, e, n + 2, listed)
    assert "(MD5 " in str(exc.value)


def test_fingerprint_policy(path):
    known = KnownHosts(path)
    known.check_ssh2("h", 22, KEY, ssh2_fingerprint(KEY))
    known.check_ssh2("h", 22, KEY, f"{ssh2_fingerprint(OTHER)}, {ssh2_fingerprint(KEY)}")
    with pytest.raises(HostKeyChanged) as exc:
        known.check_ssh2("h", 22, OTHER, ssh2_fingerprint(KEY))
    assert "has CHANGED" in str(exc.value)
    with pytest.raises(KnownHostsError):
        known.check_ssh2("h", 22, KEY, "trust-me")
    assert not path.exists()


def test_valid_policy():
    assert valid_policy("accept-new", "ssh2")
    assert valid_policy("strict", "ssh1")
    assert valid_policy(ssh2_fingerprint(KEY), "ssh2")
    assert valid_policy(ssh2_fingerprint(KEY), "ssh1")
    assert valid_policy(ssh2_fingerprint(KEY) + "=", "ssh2")
    assert valid_policy(":".join(["ab"] * 16), "ssh1")
    assert valid_policy("MD5:" + ":".join(["AB"] * 16), "ssh1")
    assert not valid_policy(":".join(["ab"] * 16), "ssh2")
    assert not valid_policy("SHA256:short", "ssh2")
    assert not valid_policy("", "ssh2")


def test_oversized_file_refused(path, monkeypatch):
    monkeypatch.setattr(kh, "MAX_FILE_BYTES", 1000)
    path.parent.mkdir()
    path.write_text("# x\n" * 400)
    with pytest.raises(KnownHostsError) as exc:
        KnownHosts(path).check_ssh2("h", 22, KEY, "accept-new")
    assert "cannot be used" in str(exc.value)


def test_long_and_hostile_lines_are_skipped(path):
    path.parent.mkdir()
    path.write_bytes(
        b"h "
        + b"A" * (kh.MAX_LINE_BYTES + 10)
        + b"\n"
        + b"h 99999999 65537 "
        + b"9" * 20000
        + b"\n"
        + b"\xff\xfe\x00 binary\n"
        + b"h ssh-ed25519 "
        + base64.b64encode(b"\x00\x00\x00\x07ssh-rsa")
        + b"\n"
        + line_for("h", KEY).encode()
        + b"\n"
    )
    known = KnownHosts(path)
    known.check_ssh2("h", 22, KEY, "strict")


def test_appends_after_a_last_line_without_newline(path):
    path.parent.mkdir()
    path.write_text(line_for("a", KEY))
    KnownHosts(path).check_ssh2("b", 22, KEY, "accept-new")
    assert path.read_text().splitlines() == [line_for("a", KEY), line_for("b", KEY)]


def test_ssh_keygen_reads_our_file_and_we_read_its_hashed_lines(path, tmp_path):
    tools = require_peer("ssh-keygen")
    known = KnownHosts(path)
    known.check_ssh2("dev.example", 2200, KEY, "accept-new")
    found = subprocess.run(
        [tools["ssh-keygen"], "-F", "[dev.example]:2200", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert found.returncode == 0 and "ssh-ed25519" in found.stdout
    subprocess.run(
        [tools["ssh-keygen"], "-H", "-f", str(path)], capture_output=True, timeout=30, check=True
    )
    assert path.read_text().startswith("|1|")
    fresh = KnownHosts(path)
    fresh.check_ssh2("dev.example", 2200, KEY, "strict")
    with pytest.raises(HostKeyChanged):
        fresh.check_ssh2("dev.example", 2200, OTHER, "strict")


def test_processes_racing_on_one_file_record_the_host_once(path):
    # Separate gateway processes share <state_dir>/known_hosts: the append is locked.
    script = (
        "import sys, base64\n"
        "from twisted.conch.ssh import keys\n"
        "from gateway.known_hosts import KnownHosts\n"
        "key = keys.Key.fromString(base64.b64decode(sys.argv[2]))\n"
        "KnownHosts(sys.argv[1]).check_ssh2('racer', 22, key, 'accept-new')\n"
    )
    blob = base64.b64encode(KEY.public().blob()).decode()
    repo = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), blob], cwd=repo)
        for _ in range(6)
    ]
    assert [p.wait(60) for p in procs] == [0] * 6
    assert path.read_text().splitlines() == [line_for("racer", KEY)]
