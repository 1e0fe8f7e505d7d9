"""The SSH-2 upstream target against devices as old firmware is: real OpenSSH sshd and
dropbear with only legacy keys and algorithms (ssh-dss, group1, CBC, hmac-md5/sha1), and
paramiko as a device for what those cannot be configured to show (no server-sig-algs with
only ssh-rsa user signatures, keyboard-interactive with several prompts, a user name asked
again in-band, a banner that is not UTF-8, a slow login). tests.support.paramiko_device
says which of its behaviour is paramiko's own and which is simulated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.known_hosts import KnownHosts
from gateway.targets import TargetConfig
from gateway.targets import bridge as bridge_module
from gateway.targets.ssh2 import SSH2Target
from protocols.session import PtyRequest, SessionRequest, WindowSize
from tests.support.doubles import FakeSessionClient
from tests.support.dropbear import DropbearServer
from tests.support.paramiko_device import DeviceBehaviour, ParamikoDevice
from tests.support.peers import require_module
from tests.support.sshd import OpenSSHServer, close_reactor, fresh_reactor, keygen, run_until

pytestmark = pytest.mark.peer
TIMEOUT = 30
MODERN_AND_SSH_RSA = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


@pytest.fixture
def reactor():
    r = fresh_reactor()
    yield r
    close_reactor(r)


@pytest.fixture(scope="module")
def user_key(tmp_path_factory) -> Path:
    return keygen(tmp_path_factory.mktemp("user") / "id_rsa", "rsa")


def config(port: int, **extra) -> TargetConfig:
    extra.setdefault("connect_timeout", 20.0)
    extra.setdefault("username", "root")
    return TargetConfig(name="dev", protocol="ssh2", host="127.0.0.1", port=port, **extra)


def open_session(reactor, target, request, password=None):
    client = FakeSessionClient()
    session = target.open_session("alice", request, client, password=password)
    return client, session


def run(reactor, target, command: bytes = b"echo ok", password=None):
    client, session = open_session(reactor, target, SessionRequest(command=command), password)
    assert run_until(reactor, lambda: client.exit is not None, TIMEOUT)
    return client, session


def opened(reactor, target, command: bytes = b"cat"):
    client, session = open_session(reactor, target, SessionRequest(command=command))
    assert run_until(reactor, lambda: session.upstream is not None or client.exit, TIMEOUT), (
        bytes(client.err)
    )
    assert session.upstream is not None, bytes(client.err)
    return client, session


# -- real devices: OpenSSH with a legacy algorithm set, dropbear --------------------------


@pytest.mark.parametrize(
    ("kex", "cipher", "mac"),
    [
        ("diffie-hellman-group1-sha1", "3des-cbc", "hmac-sha1"),
        ("diffie-hellman-group1-sha1", "aes128-cbc", "hmac-md5"),
        ("diffie-hellman-group14-sha1", "aes256-cbc", "hmac-sha1-96"),
        ("diffie-hellman-group-exchange-sha1", "aes192-cbc", "hmac-md5-96"),
    ],
)
def test_sshd_with_only_a_dss_host_key_and_legacy_algorithms(
    reactor, user_key, tmp_path, kex, cipher, mac
):
    # Acceptance 3: an ssh-dss host key (HP iLO, old Cisco SG) with 3DES/CBC, HMAC-SHA1
    # or MD5 and group1; Debian's sshd 9.2 still has all of them when configured so.
    legacy = f"KexAlgorithms {kex}\nCiphers {cipher}\nMACs {mac}\nHostKeyAlgorithms ssh-dss\n"
    with OpenSSHServer(
        tmp_path / "sshd", [Path(str(user_key) + ".pub")], ("dsa",), legacy
    ) as server:
        modern = SSH2Target(reactor, config(server.port, key=user_key), KnownHosts(tmp_path / "kh"))
        client, _ = run(reactor, modern)
        assert client.exit.status == 255
        assert b"key exchange with upstream failed" in client.err

        target = SSH2Target(
            reactor,
            config(
                server.port, key=user_key, kex=(kex,), ciphers=(cipher,), macs=(mac,),
                host_key_algorithms=("ssh-dss",),
            ),
            KnownHosts(tmp_path / "kh"),
        )  # fmt: skip
        client, session = opened(reactor, target)
        assert session.upstream.description == (
            f"ssh2 127.0.0.1:{server.port} kex={kex} hostkey=ssh-dss cipher={cipher} "
            f"mac={mac} strict_kex=yes"
        )
        data = bytes(range(256)) * 512
        session.write_stdin(data)
        session.close_stdin()
        assert run_until(reactor, lambda: client.exit is not None, TIMEOUT)
    assert bytes(client.out) == data
    assert client.exit.status == 0
    pinned = (tmp_path / "kh").read_text().split()
    assert pinned[1:3] == server.host_public().split()[:2]  # the DSA key, pinned


def test_dropbear_with_a_dss_host_key(reactor, user_key, tmp_path):
    with DropbearServer(tmp_path / "dropbear", [Path(str(user_key) + ".pub")], ("dss",)) as db:
        target = SSH2Target(
            reactor,
            config(
                db.port, key=user_key, host_key_algorithms=("ssh-dss",),
                kex=("diffie-hellman-group14-sha1",), macs=("hmac-sha1",),
                ciphers=("aes128-ctr",),
            ),
            KnownHosts(tmp_path / "kh"),
        )  # fmt: skip
        client, session = opened(reactor, target, b"echo from dropbear; exit 4")
        assert session.upstream.description.startswith(
            f"ssh2 127.0.0.1:{db.port} kex=diffie-hellman-group14-sha1 hostkey=ssh-dss "
            "cipher=aes128-ctr mac=hmac-sha1 "
        )
        assert run_until(reactor, lambda: client.exit is not None, TIMEOUT)
    assert bytes(client.out) == b"from dropbear\n"
    assert client.exit.status == 4


def test_no_rekey_towards_the_device_even_past_the_limit(reactor, user_key, tmp_path, monkeypatch):
    """``rekey = false``: the client never sends KEXINIT of its own (sshd, which would
    follow one, sees none); the same transfer with re-keying on re-keys several times."""
    from protocols.ssh2.rekey import RekeyingTransport

    monkeypatch.setattr(RekeyingTransport, "rekey_limit", 128 * 1024)
    with OpenSSHServer(tmp_path / "sshd", [Path(str(user_key) + ".pub")]) as server:
        exchanges = {}
        for rekey in (True, False):
            target = SSH2Target(
                reactor, config(server.port, key=user_key, rekey=rekey), KnownHosts(tmp_path / "kh")
            )
            client, session = opened(reactor, target)
            transport = session.upstream.channel.attempt.transport
            data = b"x" * (1024 * 1024)
            session.write_stdin(data)
            session.close_stdin()
            assert run_until(reactor, lambda c=client: c.exit is not None, TIMEOUT)
            assert bytes(client.out) == data
            exchanges[rekey] = transport.key_exchanges
    assert exchanges[True] >= 5
    assert exchanges[False] == 1


# -- paramiko as a device: the quirks sshd and dropbear cannot show ----------------------


def rsa_key_file(path: Path):
    """A paramiko RSA key (the gateway's key for the target) and its PEM file."""
    paramiko = require_module("paramiko")
    key = paramiko.RSAKey.generate(2048)
    key.write_private_key_file(str(path))
    path.chmod(0o600)
    return key


def test_no_server_sig_algs_gets_ssh_rsa_first(reactor, tmp_path):
    """A device older than RFC 8332: no EXT_INFO, ssh-rsa (SHA-1) user signatures only,
    and a disconnect at the first signature algorithm it does not know (paramiko's own
    behaviour): the gateway signs with ssh-rsa first, as OpenSSH does."""
    key = rsa_key_file(tmp_path / "id_rsa")
    behaviour = DeviceBehaviour(
        server_sig_algs=False,
        user_signatures=("ssh-rsa",),
        accept_key=key,
    )
    with ParamikoDevice(behaviour) as device:
        target = SSH2Target(
            reactor,
            config(device.port, key=tmp_path / "id_rsa", host_key_algorithms=MODERN_AND_SSH_RSA),
            KnownHosts(tmp_path / "kh"),
        )
        client, _ = run(reactor, target, b"show version")
    assert bytes(client.out) == b"exec show version\n", (bytes(client.err), device.auth_log)
    assert client.exit.status == 3
    assert device.auth_log == [("publickey", "ssh-rsa")]


def test_without_ssh_rsa_allowed_a_sha1_only_device_is_refused_not_tried(reactor, tmp_path):
    key = rsa_key_file(tmp_path / "id_rsa")
    behaviour = DeviceBehaviour(
        server_sig_algs=False,
        user_signatures=("ssh-rsa",),
        accept_key=key,
    )
    with ParamikoDevice(behaviour) as device:
        target = SSH2Target(
            reactor, config(device.port, key=tmp_path / "id_rsa"), KnownHosts(tmp_path / "kh")
        )
        client, _ = run(reactor, target)
    assert client.exit.status == 255
    assert b"sshgateway: dev: " in client.err
    assert ("publickey", "ssh-rsa") not in device.auth_log


def test_server_sig_algs_is_followed(reactor, tmp_path):
    # A device that lists rsa-sha2-256 only: the gateway's first signature is that one.
    key = rsa_key_file(tmp_path / "id_rsa")
    behaviour = DeviceBehaviour(
        user_signatures=("rsa-sha2-256",), accept_key=key
    )
    with ParamikoDevice(behaviour) as device:
        target = SSH2Target(
            reactor,
            config(device.port, key=tmp_path / "id_rsa", host_key_algorithms=MODERN_AND_SSH_RSA),
            KnownHosts(tmp_path / "kh"),
        )
        client, _ = run(reactor, target)
    assert client.exit.status == 3, bytes(client.err)
    assert device.auth_log == [("publickey", "ssh-rsa")]  # paramiko names the key type
    assert not [entry for entry in device.auth_log if entry[0] == "publickey-refused"]


@pytest.mark.parametrize(
    "rounds",
    [
        [[("User Name:", True), ("Password:", False)]],
        [[("Login:", True)], [("Password:", False)]],
        [[("Password:", False)], [("Username again:", True), ("Password again:", False)]],
    ],
    ids=["two-prompts", "two-rounds", "three-prompts-two-rounds"],
)
def test_keyboard_interactive_with_several_prompts(reactor, tmp_path, rounds):
    """Echoed prompts get the login name, hidden ones the password: stored or passed
    through from the user's gateway login."""
    behaviour = DeviceBehaviour(password="dev pw", username="admin", kbd_rounds=rounds)
    with ParamikoDevice(behaviour) as device:
        known = KnownHosts(tmp_path / "kh")
        stored = SSH2Target(reactor, config(device.port, username="admin", password="dev pw"), known)
        client, _ = run(reactor, stored, b"id")
        assert (bytes(client.out), client.exit.status) == (b"exec id\n", 3), bytes(client.err)
        through = SSH2Target(
            reactor, config(device.port, username="admin", credentials="pass-through"), known
        )
        client, _ = run(reactor, through, b"id", password="dev pw")
        assert client.exit.status == 3, bytes(client.err)
    expected = [["admin" if echo else "dev pw" for _, echo in prompts] for prompts in rounds]
    assert device.answers == expected * 2


def test_a_device_asking_for_the_user_name_again_in_band(reactor, tmp_path):
    """After the SSH login, an old switch CLI asks ``User Name:`` / ``Password:`` in the
    session itself: that is session output, and the user answers it as on the device."""
    behaviour = DeviceBehaviour(password="dev pw", in_band_login=True)
    with ParamikoDevice(behaviour) as device:
        target = SSH2Target(
            reactor,
            config(device.port, username="admin", password="dev pw"),
            KnownHosts(tmp_path / "kh"),
        )
        pty = PtyRequest(term="vt100", size=WindowSize(rows=24, cols=80), modes=())
        client, session = open_session(reactor, target, SessionRequest(pty=pty))
        assert run_until(reactor, lambda: b"User Name:" in client.out, TIMEOUT)
        session.write_stdin(b"admin\r")
        assert run_until(reactor, lambda: b"Password:" in client.out, TIMEOUT)
        session.write_stdin(b"secret\r")
        assert run_until(reactor, lambda: b"sw1# " in client.out, TIMEOUT)
        session.write_stdin(b"show clock\r")
        assert run_until(reactor, lambda: client.exit is not None, TIMEOUT)
    assert device.shell_input == [b"admin", b"secret", b"show clock"]
    assert bytes(client.out).endswith(b"you typed show clock\r\n")
    assert b"secret" not in client.out  # the device does not echo its password prompt
    assert client.exit.status == 0


def test_a_banner_that_is_not_utf8_is_shown_with_replacement(reactor, tmp_path):
    # Latin-1 and CP437 from old firmware, an escape sequence, a lone CR.
    banner = b"Authorized use only \xa9 ACME\r\n\x1b[2J\xb0\xb1\xb2 HP \xff\n\n"
    behaviour = DeviceBehaviour(password="dev pw", banner=banner)
    with ParamikoDevice(behaviour) as device:
        target = SSH2Target(
            reactor,
            config(device.port, username="admin", password="dev pw"),
            KnownHosts(tmp_path / "kh"),
        )
        client, _ = run(reactor, target, b"id")
    assert client.exit.status == 3
    assert bytes(client.out) == b"exec id\n"  # never in the command's output
    assert bytes(client.err).decode("utf-8") == (
        "Authorized use only \ufffd ACME\r\n[2J\ufffd\ufffd\ufffd HP \ufffd\r\n"
    )


def test_a_slow_login_shows_progress_and_is_bounded(reactor, tmp_path, monkeypatch):
    """A device that takes 2 s per authentication check (an iLO takes up to 90): the user
    sees the gateway waiting; a connect_timeout shorter than the login ends it."""
    monkeypatch.setattr(bridge_module, "PROGRESS_AFTER", 0.5)
    behaviour = DeviceBehaviour(password="dev pw", login_delay=2.0)
    with ParamikoDevice(behaviour) as device:
        known = KnownHosts(tmp_path / "kh")
        patient = SSH2Target(
            reactor,
            config(device.port, username="admin", password="dev pw", connect_timeout=15),
            known,
        )
        client, _ = run(reactor, patient, b"id")
        assert bytes(client.out) == b"exec id\n"
        assert re.fullmatch(rb"sshgateway: waiting for dev \([01] s; gives up after 15 s\)\r\n", client.err)
        assert client.exit.status == 3

        hasty = SSH2Target(
            reactor,
            config(device.port, username="admin", password="dev pw", connect_timeout=1.5),
            known,
        )
        client, _ = run(reactor, hasty, b"id")
    assert client.out == b""
    assert re.fullmatch(
        rb"sshgateway: waiting for dev \([01] s; gives up after 1.5 s\)\r\n"
        rb"sshgateway: dev: no session within 1.5 s\r\n",
        client.err,
    )
    assert client.exit.status == 255


def test_keyboard_interactive_ask_puts_the_one_time_code_to_the_user(reactor, tmp_path):
    """``keyboard_interactive = "ask"``: the password prompt gets the password the user
    logged in to the gateway with (pass-through); the code prompt goes to the user, who
    types it in the session before it opens (with a pty; without one it is refused)."""
    rounds = [[("Password: ", False)], [("Verification code: ", True)]]
    behaviour = DeviceBehaviour(
        username="admin", password="dev pw", kbd_rounds=rounds, kbd_answers=[["dev pw"], ["424242"]]
    )
    with ParamikoDevice(behaviour) as device:
        cfg = config(
            device.port, username="admin", credentials="pass-through", keyboard_interactive="ask"
        )
        target = SSH2Target(reactor, cfg, KnownHosts(tmp_path / "kh"))
        pty = PtyRequest(term="vt100", size=WindowSize(rows=24, cols=80), modes=())
        client, session = open_session(reactor, target, SessionRequest(pty=pty), password="dev pw")
        assert run_until(reactor, lambda: b"Verification code: " in client.err, TIMEOUT), client.err
        assert bytes(client.err) == b"round 2\r\nVerification code: "  # the instruction first
        session.write_stdin(b"42424\x7f2\x7f42\rshow clock\r")  # the session's line typed ahead
        assert run_until(reactor, lambda: client.exit is not None, TIMEOUT), client.err
        # Echoed, as the prompt asked; DEL erased on the user's terminal.
        assert bytes(client.err).endswith(b"code: 42424\x08 \x082\x08 \x0842\r\n")

        client, _ = open_session(reactor, target, SessionRequest(command=b"id"), password="dev pw")
        assert run_until(reactor, lambda: client.exit is not None, TIMEOUT)
    assert device.answers == [["dev pw"], ["424242"], ["dev pw"]]
    assert device.shell_input == [b"show clock"]
    assert client.exit.status == 255
    assert b"connect with a terminal (ssh -t)" in client.err
