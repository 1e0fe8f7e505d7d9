"""authorized_keys parsing (SSH-2 and SSH-1 lines, options, limits) and the re-reading cache."""

from __future__ import annotations

import os
import subprocess

import pytest
from twisted.logger import globalLogPublisher

from gateway import authorized_keys as ak
from tests.support.gateway_helpers import LogCapture, ed25519_key, rsa_key, ssh1_line
from tests.support.peers import require_peer


@pytest.fixture
def logs():
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


def openssh_line(key, comment="me@host") -> str:
    return key.public().toString("OPENSSH").decode() + " " + comment


def test_ssh2_lines_with_and_without_options():
    ed, rsa = ed25519_key(), rsa_key()
    text = "\n".join(
        [
            "# a comment",
            "",
            openssh_line(ed),
            "no-port-forwarding,no-agent-forwarding,no-X11-forwarding " + openssh_line(rsa),
        ]
    )
    found = ak.parse_authorized_keys(text.encode())
    assert [e.line for e in found] == [3, 4]
    assert found[0].blob == ed.public().blob() and found[0].rsa is None
    assert found[0].comment == "me@host"
    assert found[1].options == ("no-port-forwarding", "no-agent-forwarding", "no-X11-forwarding")
    data = rsa.public().data()
    assert found[1].rsa == (data["e"], data["n"])  # an ssh-rsa line serves SSH-1 too


def test_ssh1_line():
    key = rsa_key()
    (entry,) = ak.parse_authorized_keys(ssh1_line(key, "old laptop").encode())
    data = key.public().data()
    assert entry.key is None and entry.rsa == (data["e"], data["n"])
    assert entry.comment == "old laptop"


def test_ssh1_line_without_comment_and_with_options():
    key = rsa_key()
    data = key.public().data()
    line = f"no-pty {data['n'].bit_length()} {data['e']} {data['n']}"
    # no-pty cannot be enforced by the gateway: the key is skipped, not silently widened.
    assert ak.parse_authorized_keys(line.encode()) == []
    line = f"restrict {data['n'].bit_length()} {data['e']} {data['n']}"
    (entry,) = ak.parse_authorized_keys(line.encode())
    assert entry.options == ("restrict",) and entry.comment == ""


def test_quoted_options_with_spaces_and_commas(logs):
    ed = ed25519_key()
    line = 'command="echo a, b",from="10.0.0.1" ' + openssh_line(ed)
    assert ak.parse_line(line.encode()).options == ('command="echo a, b"', 'from="10.0.0.1"')
    # ... but those restrictions are not enforced by the gateway, so the key is refused.
    assert ak.parse_authorized_keys(line.encode(), "f") == []
    assert "cannot enforce option(s) command, from" in logs.text()


@pytest.mark.parametrize(
    "line,why",
    [
        (b"ssh-ed25519 !!!notbase64", "bad base64"),
        (b"ssh-ed25519 AAAA", "unusable"),
        (
            b"ssh-rsa " + b"AAAAC3NzaC1lZDI1NTE5AAAAIJrSTTDzZF2EbloVf1lW7sANZJJz0r8i1r6Lltq9tUaG",
            "does not match",
        ),
        (b"2048 35 12345 tiny", "out of range"),
        (b"foo bar", "not a key line"),
        (b'command="unterminated ssh-ed25519 AAAA', "unterminated"),
    ],
)
def test_bad_lines_are_skipped_with_a_reason(line, why, logs):
    good = openssh_line(ed25519_key()).encode()
    found = ak.parse_authorized_keys(line + b"\n" + good, "keys")
    assert [e.line for e in found] == [2]
    assert why in logs.text() and "keys:1: skipped" in logs.text()


def test_ssh1_bits_mismatch_is_refused():
    key = rsa_key()
    data = key.public().data()
    with pytest.raises(ak.KeyLineError):
        ak.parse_line(f"1000 {data['e']} {data['n']} x".encode())


def test_overlong_line_skipped(logs):
    good = openssh_line(ed25519_key()).encode()
    junk = b"ssh-ed25519 " + b"A" * (ak.MAX_LINE_BYTES + 10)
    found = ak.parse_authorized_keys(junk + b"\n" + good)
    assert len(found) == 1 and "longer than" in logs.text()


def test_file_cache_rereads_on_change(tmp_path):
    path = tmp_path / "authorized_keys"
    first, second = ed25519_key(), ed25519_key()
    path.write_text(openssh_line(first) + "\n")
    os.chmod(path, 0o600)
    keyfile = ak.AuthorizedKeysFile(path)
    assert keyfile.find_ssh2(first.public().blob()) is not None
    assert keyfile.find_ssh2(second.public().blob()) is None
    path.write_text(openssh_line(second) + "\n")
    os.utime(path, ns=(1, 10**18))  # a different mtime, whatever the clock's resolution
    assert keyfile.find_ssh2(first.public().blob()) is None
    assert keyfile.find_ssh2(second.public().blob()) is not None


def test_file_missing_oversized_or_group_writable(tmp_path, logs):
    path = tmp_path / "authorized_keys"
    keyfile = ak.AuthorizedKeysFile(path)
    assert keyfile.keys() == []
    assert "does not exist" in logs.text()
    path.write_text(openssh_line(ed25519_key()) + "\n")
    os.chmod(path, 0o620)
    assert keyfile.keys() == []
    assert "writable by group or others" in logs.text()
    os.chmod(path, 0o644)  # readable by others is normal for authorized_keys
    assert len(keyfile.keys()) == 1
    path.write_bytes(b"#" * (ak.MAX_FILE_BYTES + 1))
    assert keyfile.keys() == []
    assert "larger than" in logs.text()


def test_find_ssh1_by_modulus_in_both_line_kinds(tmp_path):
    old, new = rsa_key(), rsa_key()
    path = tmp_path / "keys"
    path.write_text(ssh1_line(old) + "\n" + openssh_line(new) + "\n")
    keyfile = ak.AuthorizedKeysFile(path)
    assert keyfile.find_ssh1(old.public().data()["n"]).key is None
    assert keyfile.find_ssh1(new.public().data()["n"]).key is not None
    assert keyfile.find_ssh1(12345) is None


# --- real key generators ------------------------------------------------------------------


@pytest.mark.peer
def test_puttygen_ssh1_public_line(tmp_path):
    tools = require_peer("puttygen")
    key = tmp_path / "key"
    empty = tmp_path / "empty"
    empty.write_text("")
    subprocess.run(
        [
            tools["puttygen"],
            "-q",
            "-t",
            "rsa1",
            "-b",
            "1024",
            "-o",
            str(key),
            "--new-passphrase",
            str(empty),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    public = subprocess.run(
        [tools["puttygen"], str(key), "-O", "public"], check=True, capture_output=True, timeout=60
    ).stdout
    (entry,) = ak.parse_authorized_keys(public)
    assert entry.key is None and entry.rsa is not None and entry.rsa[1].bit_length() == 1024


@pytest.mark.peer
def test_ssh_keygen1_public_line(tmp_path):
    tools = require_peer("ssh-keygen1")
    key = tmp_path / "key"
    subprocess.run(
        [tools["ssh-keygen1"], "-q", "-t", "rsa1", "-b", "1024", "-N", "", "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    (entry,) = ak.parse_authorized_keys((tmp_path / "key.pub").read_bytes())
    assert entry.rsa is not None and entry.key is None


@pytest.mark.peer
@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_ssh_keygen_public_lines(tmp_path, kind):
    tools = require_peer("ssh-keygen")
    key = tmp_path / "key"
    subprocess.run(
        [tools["ssh-keygen"], "-q", "-t", kind, "-N", "", "-C", "c o m", "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    line = b'from="127.0.0.1",no-pty ' + (tmp_path / "key.pub").read_bytes()
    entry = ak.parse_line(line)
    assert entry.comment == "c o m" and entry.key is not None
    (entry,) = ak.parse_authorized_keys((tmp_path / "key.pub").read_bytes())
    assert (entry.rsa is not None) == (kind == "rsa")
