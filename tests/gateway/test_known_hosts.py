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
from tests.support.gateway_helpers import ed25519_key, rsa_key
from tests.support.peers import require_peer

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
    known.check_ssh2("Router1", 22, KEY, "accept-new").record()
    known.check_ssh2("router1", 22, KEY, "accept-new").record()
    known.check_ssh2("router1", 2222, KEY, "accept-new").record()
    assert path.read_text().splitlines() == [
        line_for("router1", KEY),
        line_for("[router1]:2222", KEY),
    ]
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(HostKeyChanged) as exc:
        known.check_ssh2("router1", 2222, OTHER, "accept-new").record()
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
    second._entries = lambda protocol: []  # its view predates the first append
    first.check_ssh2("h", 22, KEY, "accept-new").record()
    second.check_ssh2("h", 22, KEY, "accept-new").record()
    assert path.read_text().splitlines() == [line_for("h", KEY)]
    pin = second.check_ssh2("h", 22, OTHER, "accept-new")  # still looks unknown to it
    with pytest.raises(HostKeyChanged):
        pin.record()  # but the file, re-read under the lock, pins another key by now
    assert path.read_text().splitlines() == [line_for("h", KEY)]


def test_a_different_key_type_for_a_known_host_is_a_change(path):
    known = KnownHosts(path)
    known.check_ssh2("h", 22, RSA, "accept-new").record()
    with pytest.raises(HostKeyChanged):
        known.check_ssh2("h", 22, KEY, "accept-new").record()
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
        known.check_ssh2("anything", 22, KEY, "accept-new").record()
    assert "REVOKED" in str(exc.value)
    assert path.read_text().count("\n") == 1  # not recorded


def test_ssh1_keys(path):
    key = rsa_key(1024).public().data()
    e, n = key["e"], key["n"]
    known = KnownHosts(path)
    known.check_ssh1("old", 22, 1024, e, n, "accept-new").record()
    # SSH-1 keys have their own file beside known_hosts (OpenSSH's tools refuse them there).
    assert Path(f"{path}.ssh1").read_text() == f"old 1024 {e} {n}\n"
    assert not path.exists()
    known.check_ssh1("old", 22, 1024, e, n, "strict")
    with pytest.raises(HostKeyChanged) as exc:
        known.check_ssh1("old", 22, 1024, e, n + 2, "strict")
    assert ssh1_fingerprint(e, n + 2) in str(exc.value)
    # SSH-1 and SSH-2 keys of one host live side by side.
    known.check_ssh2("old", 22, KEY, "accept-new").record()
    assert path.read_text() == line_for("old", KEY) + "\n"
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
        KnownHosts(path).check_ssh2("h", 22, KEY, "accept-new").record()
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
    KnownHosts(path).check_ssh2("b", 22, KEY, "accept-new").record()
    assert path.read_text().splitlines() == [line_for("a", KEY), line_for("b", KEY)]


def test_ssh_keygen_reads_our_file_and_we_read_its_hashed_lines(path, tmp_path):
    tools = require_peer("ssh-keygen")
    known = KnownHosts(path)
    known.check_ssh2("dev.example", 2200, KEY, "accept-new").record()
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
        "KnownHosts(sys.argv[1]).check_ssh2('racer', 22, key, 'accept-new').record()\n"
    )
    blob = base64.b64encode(KEY.public().blob()).decode()
    repo = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), blob], cwd=repo)
        for _ in range(6)
    ]
    assert [p.wait(60) for p in procs] == [0] * 6
    assert path.read_text().splitlines() == [line_for("racer", KEY)]


# -- two files: known_hosts (SSH-2, for OpenSSH's tools) and known_hosts.ssh1 --------------


def ssh1_numbers(bits: int = 1024) -> tuple[int, int]:
    data = rsa_key(bits).public().data()
    return data["e"], data["n"]


def keygen(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=30)


def test_openssh_tools_work_on_both_files_after_ssh1_and_ssh2_pins(path):
    # Issue 9 item 12: one SSH-1 line made the file "not a valid known_hosts file" for
    # ssh-keygen -R/-H. SSH-1 keys now live in known_hosts.ssh1, which the SSH-1
    # ssh-keygen1 of OpenSSH 7.5 works on in turn.
    tools = require_peer("ssh-keygen", "ssh-keygen1")
    e, n = ssh1_numbers()
    known = KnownHosts(path)
    known.check_ssh1("old.example", 2222, 1024, e, n, "accept-new").record()
    known.check_ssh2("new.example", 22, KEY, "accept-new").record()
    known.check_ssh2("other.example", 22, OTHER, "accept-new").record()
    ssh1_path = Path(f"{path}.ssh1")
    for tool, file, name in (
        (tools["ssh-keygen"], path, "new.example"),
        (tools["ssh-keygen1"], ssh1_path, "[old.example]:2222"),
    ):
        found = keygen(tool, "-F", name, "-f", str(file))
        assert found.returncode == 0 and name in found.stdout, found.stderr
        hashed = keygen(tool, "-H", "-f", str(file))
        assert hashed.returncode == 0 and "invalid" not in hashed.stderr, hashed.stderr
        assert file.read_text().startswith("|1|")
    # We read what ssh-keygen hashed.
    fresh = KnownHosts(path)
    fresh.check_ssh2("new.example", 22, KEY, "strict")
    fresh.check_ssh1("old.example", 2222, 1024, e, n, "strict")
    removed = keygen(tools["ssh-keygen"], "-R", "new.example", "-f", str(path))
    assert removed.returncode == 0, removed.stderr
    with pytest.raises(HostKeyUnknown):
        fresh.check_ssh2("new.example", 22, KEY, "strict")
    fresh.check_ssh2("other.example", 22, OTHER, "strict")


def test_ssh1_lines_of_an_older_gateway_are_moved_out(path, tmp_path):
    e, n = ssh1_numbers()
    path.parent.mkdir()
    path.write_text(
        "# kept\n"
        + f"old 1024 {e} {n}\n"
        + line_for("new", KEY)
        + "\n"
        + f"@revoked * 1024 {e} {n + 2}\n"
    )
    path.chmod(0o600)
    ssh1_path = Path(f"{path}.ssh1")
    ssh1_path.write_text(f"old 1024 {e} {n}\n")  # already there: not written twice
    known = KnownHosts(path)
    assert path.read_text() == "# kept\n" + line_for("new", KEY) + "\n"
    assert ssh1_path.read_text() == f"old 1024 {e} {n}\n@revoked * 1024 {e} {n + 2}\n"
    assert path.stat().st_mode & 0o777 == 0o600
    known.check_ssh1("old", 22, 1024, e, n, "strict")
    with pytest.raises(HostKeyRevoked):
        known.check_ssh1("any", 22, 1024, e, n + 2, "accept-new")
    known.check_ssh2("new", 22, KEY, "strict")
    assert known.move_ssh1_lines() == 0


def test_ssh1_lines_added_to_known_hosts_by_hand_are_honoured(path):
    e, n = ssh1_numbers()
    known = KnownHosts(path)
    path.parent.mkdir()
    path.write_text(f"old 1024 {e} {n}\n")
    known.check_ssh1("old", 22, 1024, e, n, "strict")
    with pytest.raises(HostKeyChanged) as changed:
        known.check_ssh1("old", 22, 1024, e, n + 2, "accept-new")
    assert f"{path}:1" in str(changed.value)


def test_forget_removes_the_hosts_lines_from_both_files(path):
    e, n = ssh1_numbers()
    known = KnownHosts(path)
    known.check_ssh2("router", 2222, KEY, "accept-new").record()
    known.check_ssh1("router", 2222, 1024, e, n, "accept-new").record()
    ssh1_path = Path(f"{path}.ssh1")
    with path.open("a") as f:
        f.write(line_for(hashed("[router]:2222"), RSA) + "\n")
        f.write(line_for("router,[router]:2222", OTHER) + "  # several names: whole line\n")
        f.write("@revoked [router]:2222 " + line_for("x", OTHER).split(" ", 1)[1] + "\n")
        f.write(line_for("router", KEY) + "\n")  # port 22: another host
    removed = known.forget("Router", 2222)
    assert [(r.protocol, r.key_type, r.path, r.line) for r in removed] == [
        ("ssh2", "ssh-ed25519", path, 1),
        ("ssh2", "ssh-rsa", path, 2),
        ("ssh2", "ssh-ed25519", path, 3),
        ("ssh1", "rsa1", ssh1_path, 1),
    ]
    assert removed[0].fingerprint == ssh2_fingerprint(KEY)
    assert removed[3].fingerprint.startswith("SHA256:") and " MD5:" in removed[3].fingerprint
    assert path.read_text().splitlines() == [
        "@revoked [router]:2222 " + line_for("x", OTHER).split(" ", 1)[1],
        line_for("router", KEY),
    ]
    assert ssh1_path.read_text() == ""
    # The instance that checks (a running gateway) sees it at once.
    with pytest.raises(HostKeyUnknown):
        known.check_ssh2("router", 2222, KEY, "strict")
    known.check_ssh2("router", 2222, KEY, "accept-new").record()  # pinned again
    assert known.forget("elsewhere", 22) == []


def test_forget_only_one_protocol_and_without_files(path):
    e, n = ssh1_numbers()
    known = KnownHosts(path)
    assert known.forget("router", 22) == []
    assert not path.parent.exists()  # nothing created
    known.check_ssh2("router", 22, KEY, "accept-new").record()
    known.check_ssh1("router", 22, 1024, e, n, "accept-new").record()
    assert [r.protocol for r in known.forget("router", 22, ("ssh1",))] == ["ssh1"]
    known.check_ssh2("router", 22, KEY, "strict")


def test_an_append_waiting_for_the_lock_follows_a_replaced_file(path, monkeypatch):
    # forget (and ssh-keygen -R) replace the file by rename; a writer that had opened
    # the old one must append to the new one, or its pin would vanish with the old inode.
    known = KnownHosts(path)
    known.check_ssh2("a", 22, KEY, "accept-new").record()
    pin = known.check_ssh2("b", 22, KEY, "accept-new")
    original = os.open

    def open_then_replace(file, flags, *args):
        fd = original(file, flags, *args)
        if Path(file) == path and not getattr(open_then_replace, "done", False):
            open_then_replace.done = True
            KnownHosts(path).forget("a", 22)  # replaces the file meanwhile
        return fd

    monkeypatch.setattr(kh.os, "open", open_then_replace)
    pin.record()
    monkeypatch.undo()
    assert path.read_text().splitlines() == [line_for("b", KEY)]
