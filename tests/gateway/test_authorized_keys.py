"""authorized_keys parsing (SSH-2 and SSH-1 lines, options, limits) and the re-reading cache."""

from __future__ import annotations

import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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
    assert found[0].options == ak.KeyOptions()
    assert found[1].options == ak.KeyOptions(
        port_forwarding=False, agent_forwarding=False, x11_forwarding=False
    )
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
    (entry,) = ak.parse_authorized_keys(line.encode())
    assert entry.options == ak.KeyOptions(pty=False) and entry.rsa == (data["e"], data["n"])
    line = f'restrict,command="echo a b" {data["n"].bit_length()} {data["e"]} {data["n"]}'
    (entry,) = ak.parse_authorized_keys(line.encode())
    assert entry.comment == "" and entry.options.command == "echo a b"
    assert not entry.options.pty and not entry.options.port_forwarding


def test_quoted_options_with_spaces_and_commas():
    ed = ed25519_key()
    line = 'command="echo a, b",from="10.0.0.1" ' + openssh_line(ed)
    (entry,) = ak.parse_authorized_keys(line.encode(), "f")
    assert entry.options == ak.KeyOptions(command="echo a, b", from_patterns="10.0.0.1")
    assert entry.blob == ed.public().blob() and entry.where == "f:1"


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
    assert keyfile.find_ssh2(first.public().blob()) != []
    assert keyfile.find_ssh2(second.public().blob()) == []
    path.write_text(openssh_line(second) + "\n")
    os.utime(path, ns=(1, 10**18))  # a different mtime, whatever the clock's resolution
    assert keyfile.find_ssh2(first.public().blob()) == []
    assert keyfile.find_ssh2(second.public().blob()) != []


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
    assert [e.key for e in keyfile.find_ssh1(old.public().data()["n"])] == [None]
    assert keyfile.find_ssh1(new.public().data()["n"])[0].key is not None
    assert keyfile.find_ssh1(12345) == []


def test_a_key_listed_twice_is_found_on_both_lines_in_order(tmp_path):
    key = ed25519_key()
    path = tmp_path / "keys"
    path.write_text(f'from="10.0.0.0/8" {openssh_line(key)}\nno-pty {openssh_line(key)}\n')
    found = ak.AuthorizedKeysFile(path).find_ssh2(key.public().blob())
    assert [(e.line, e.options.from_patterns, e.options.pty) for e in found] == [
        (1, "10.0.0.0/8", True),
        (2, None, False),
    ]


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


# --- options, as sshd parses them -----------------------------------------------------------

NO_FLAGS = dict(pty=False, port_forwarding=False, agent_forwarding=False, x11_forwarding=False)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("restrict", dict(NO_FLAGS, user_rc=False)),
        # restrict turns everything off; a later flag turns one back on, an earlier one not
        ("restrict,pty", dict(NO_FLAGS, pty=True, user_rc=False)),
        ("pty,restrict", dict(NO_FLAGS, user_rc=False)),
        ("no-pty", dict(pty=False)),
        ("no-pty,pty", {}),
        ("no-port-forwarding,port-forwarding", {}),
        ("no-agent-forwarding", dict(agent_forwarding=False)),
        ("no-X11-forwarding", dict(x11_forwarding=False)),
        ("no-user-rc", dict(user_rc=False)),
        # names are case-insensitive, as sshd's strncasecmp
        ("NO-PTY,Restrict", dict(NO_FLAGS, user_rc=False)),
        ('COMMAND="ls"', dict(command="ls")),
        # an empty option between commas is passed over, as sshd does
        ("no-pty,,no-agent-forwarding", dict(pty=False, agent_forwarding=False)),
        # quoting: \" is a quote, any other backslash stays; commas and spaces are data
        (r'command="echo \"a, b\" c\\d \n"', dict(command='echo "a, b" c\\\\d \\n')),
        ('command=""', dict(command="")),
        ('from="10.0.0.0/8,!10.1.2.3,*.example.com"',
         dict(from_patterns="10.0.0.0/8,!10.1.2.3,*.example.com")),
        ('environment="A=1",environment="B_2=x=y z"', dict(environment=(("A", "1"), ("B_2", "x=y z")))),
        # a name given twice: the first counts
        ('environment="A=1",environment="A=2"', dict(environment=(("A", "1"),))),
        ('expiry-time="20300101Z"', dict(expiry=1893456000)),
        ('expiry-time="203001011230Z"', dict(expiry=1893456000 + 12 * 3600 + 30 * 60)),
        ('expiry-time="20300101123005UTC"', dict(expiry=1893456000 + 12 * 3600 + 30 * 60 + 5)),
        # several: the earliest counts
        ('expiry-time="20300102Z",expiry-time="20300101Z"', dict(expiry=1893456000)),
        # FIDO flags: accepted, nothing to enforce (Conch verifies no sk- keys)
        ("no-touch-required,verify-required", {}),
    ],
)  # fmt: skip
def test_options(text, expected):
    assert ak.parse_options(text) == ak.KeyOptions(**expected)


def test_expiry_time_without_zone_is_local_time():
    import time

    expected = int(time.mktime((2030, 1, 1, 0, 0, 0, 0, 0, -1)))
    assert ak.parse_options('expiry-time="20300101"').expiry == expected


@pytest.mark.parametrize(
    "text,why",
    [
        ("pty,", "unexpected end of options"),
        ("no-pty,no-agent-forwarding,", "unexpected end of options"),
        ("command=ls", "without a starting quote"),
        ('command="ls', "without an ending quote"),
        ('command="a",command="b"', "more than one command="),
        ('from="a",from="b"', "more than one from="),
        ('command="a"x', "unexpected text after an option"),
        ('environment="1A B=x"', "not NAME=value"),
        ('environment="NOVALUE"', "not NAME=value"),
        ('environment="=x"', "not NAME=value"),
        ('expiry-time="2030"', "not YYYYMMDD"),
        ('expiry-time="20301301"', "not a valid date"),
        ('expiry-time="2030010112"', "not YYYYMMDD"),
        ('expiry-time="19000101Z"', "before 1970"),
    ],
)
def test_malformed_options(text, why):
    with pytest.raises(ak.KeyLineError, match=why) as raised:
        ak.parse_options(text)
    assert not isinstance(raised.value, ak.UnknownOption)


@pytest.mark.parametrize(
    "text,name",
    [
        ('permitopen="host:22"', "permitopen"),
        ('permitlisten="8080"', "permitlisten"),
        ('tunnel="1"', "tunnel"),
        ('principals="a,b"', "principals"),
        ("cert-authority", "cert-authority"),
        ("ptyx", "ptyx"),  # sshd matches "pty" then finds no comma: unknown too
        ("no-restrict", "no-restrict"),  # restrict takes no "no-"
        ('pty="yes"', "pty"),
        ("no-pty,frobnicate", "frobnicate"),
        ("command", "command"),
    ],
)
def test_unknown_options_skip_the_line_with_a_log_line(text, name, logs):
    key = ed25519_key()
    with pytest.raises(ak.UnknownOption) as raised:
        ak.parse_options(text)
    assert raised.value.name == name
    good = openssh_line(ed25519_key())
    found = ak.parse_authorized_keys(f"{text} {openssh_line(key)}\n{good}".encode(), "keys")
    assert [e.line for e in found] == [2]
    assert f"keys:1: skipped: option '{name}' is not supported by the gateway" in logs.text()


def test_too_many_environment_options():
    many = ",".join(f'environment="V{i}=x"' for i in range(ak.MAX_ENVIRONMENT + 1))
    with pytest.raises(ak.KeyLineError, match="more than"):
        ak.parse_options(many)
    assert len(ak.parse_options(many.rsplit(",", 1)[0]).environment) == ak.MAX_ENVIRONMENT


@pytest.mark.parametrize(
    "prefix,command",
    [
        # a quoted option value may hold spaces, tabs and commas: the key comes after it
        ('command="a b\tc, d"', "a b\tc, d"),
        # an escaped quote does not end the value, nor the options field
        (r'command="echo \" ssh-ed25519 AAAA\""', 'echo " ssh-ed25519 AAAA"'),
        # non-UTF-8 bytes in a forced command are kept as they are written
        (b'command="printf \xff"', "printf \udcff"),
    ],
)
def test_hostile_quoting_in_front_of_a_key(prefix, command):
    key = ed25519_key()
    raw = prefix if isinstance(prefix, bytes) else prefix.encode()
    entry = ak.parse_line(raw + b" " + openssh_line(key).encode())
    assert entry.options.command == command and entry.blob == key.public().blob()
    assert entry.options.command.encode("utf-8", "surrogateescape") == (
        raw[len(b'command="') : -1].replace(b'\\"', b'"')
    )


@pytest.mark.parametrize(
    "line,why",
    [
        (b'command="never closed ssh-ed25519 AAAA', "unterminated quote"),
        (b"no-pty,", "options but no key"),
        (b'command="x" ', "options but no key"),
        (b"restrict,restrict frob AAAA", "not a key line"),
    ],
)
def test_unusable_option_lines(line, why, logs):
    assert ak.parse_authorized_keys(line, "k") == []
    assert why in logs.text()


def test_overlong_option_line_is_skipped(logs):
    key = ed25519_key()
    command = "x" * ak.MAX_LINE_BYTES
    line = f'command="{command}" {openssh_line(key)}'.encode()
    assert ak.parse_authorized_keys(line, "k") == []
    assert "longer than" in logs.text()


def test_a_file_of_many_lines_each_parsed_on_its_own(logs):
    keys_ = [ed25519_key() for _ in range(4)]
    rsa = rsa_key()
    lines = [
        f"restrict {openssh_line(keys_[0])}",
        f'no-pty,from="127.0.0.1" {openssh_line(keys_[1])}',
        f'permitopen="x:1" {openssh_line(keys_[2])}',  # skipped: unknown option
        '"',  # skipped: a lone quote
        f'command="echo forced" {ssh1_line(rsa)}',
        f'environment="LANG=C",expiry-time="20991231Z" {openssh_line(keys_[3])}',
        "# comment",
        "   ",
    ] * 50
    found = ak.parse_authorized_keys("\n".join(lines).encode(), "k")
    assert len(found) == 4 * 50
    assert [e.line for e in found[:4]] == [1, 2, 5, 6]
    assert found[2].options.command == "echo forced" and found[2].key is None
    assert logs.text().count("not supported by the gateway") == 50


def test_login_refusal_for_from_and_expiry():
    import ipaddress

    loopback = ipaddress.ip_address("127.0.0.1")
    now = 1893456000
    assert ak.KeyOptions().login_refusal(loopback, now) is None
    assert ak.KeyOptions(expiry=now).login_refusal(loopback, now) is None  # not yet after it
    expired = ak.KeyOptions(expiry=now - 1).login_refusal(loopback, now)
    assert "expired at 2029-12-31 23:59:59 UTC" in expired
    assert ak.KeyOptions(from_patterns="127.0.0.1").login_refusal(loopback, now) is None
    refused = ak.KeyOptions(from_patterns="10.0.0.0/8").login_refusal(loopback, now)
    assert "127.0.0.1 is not permitted to use this key" in refused and "10.0.0.0/8" in refused
    unknown = ak.KeyOptions(from_patterns="*").login_refusal(None, now)
    assert "unknown address" in unknown
    broken = ak.KeyOptions(from_patterns="10.0.0.1/8").login_refusal(loopback, now)
    assert "invalid from= criteria" in broken


def test_session_restrictions_from_options():
    options = ak.parse_options("restrict,pty")
    restrictions = options.session_restrictions("keys:3")
    assert restrictions.refusal("pty") is None
    assert "port-forwarding is not permitted" in restrictions.refusal("port-forwarding")
    assert "keys:3" in restrictions.refusal("x11-forwarding")
    assert restrictions.refusal("agent-forwarding") is not None


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_options_text_parses_or_is_refused_cleanly(text):
    try:
        ak.parse_options(text)
    except ak.KeyLineError:
        pass


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_line_parses_or_is_skipped_cleanly(raw):
    ak.parse_authorized_keys(raw + b" ssh-ed25519 AAAA\n" + raw)
