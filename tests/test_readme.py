"""The README stays true: its configuration reference is gateway.config's, and every client
command it shows (``ssh``, ``plink``, ``ssh1``, ``scp1``, ``sftp``, ``scp``, in its shell
blocks and in its prose) runs against a real gateway, succeeds, and speaks the protocol
the README means — or is listed in NOT_RUNNABLE with the reason.

The commands are taken from the README as written; the test only substitutes the port,
user, host and file names of the example and adds what a test run needs (batch mode, the
gateway's host keys, a key or password), never a protocol flag. Which protocol a command
must end up speaking follows from the program: ``ssh1`` and ``scp1`` are the README's
SSH-1 clients, ``plink`` says ``-1`` or ``-2``, OpenSSH's ``ssh``/``scp``/``sftp`` speak
SSH-2. The gateway's connection log line says which one it was.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

import gateway.config
import gateway.quirks
from tests.support.clients import (
    PASSWORD,
    base_config,
    hash_password,
    ssh1_fingerprint,
    ssh2_fingerprint,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer
from tests.support.sshd import keygen

README = Path(__file__).resolve().parent.parent / "README.md"
CLIENT_PROGRAMS = ("ssh", "plink", "ssh1", "scp1", "sftp", "scp")

# Client commands the README shows that this test does not run, and why.
NOT_RUNNABLE = {
    "ssh1 -c blowfish": "the README's own warning: this client crashes on OpenSSL 3",
    "plink -load NAME": "needs a saved PuTTY session; tests/ssh1/test_peers.py::"
    "test_plink_each_cipher runs plink -load with each cipher",
    "ssh -v": "an option named in prose, not a command",
    "ssh1 -1 -v": "an option named in prose, not a command; tests/ssh1/test_peers.py "
    "checks the fingerprint it shows",
    "plink -hostkey": "an option named in prose; every plink test pins the key with it",
    "scp -O": "an option named in prose; the SFTP and scp section's example runs it",
    "scp -t PATH": "the device's side of scp -O, named in prose",
    "scp -f PATH": "the device's side of scp -O, named in prose",
    "ssh host2 uptime": "needs an SSH-2 device behind the gateway: tests/integration/"
    "test_jump_host_peers.py runs ProxyJump from an ssh_config like the README's",
    "ssh -J alice@gw root@host2": "needs an SSH-2 device behind the gateway: tests/integration/"
    "test_jump_host_peers.py runs ssh -J to an OpenSSH sshd device",
    "ssh switch1 'show version'": "needs an SSH-1 device behind the gateway: tests/integration/"
    "test_jump_inner_peers.py runs ProxyJump to one",
    "ssh -J alice@gw admin@switch1": "needs an SSH-1 device behind the gateway: tests/"
    "integration/test_jump_inner_peers.py runs ssh -J to one",
    "plink -proxycmd \"plink -nc switch1:22 alice@gw\" admin@switch1 'show version'": "needs "
    "an SSH-1 device behind the gateway: tests/integration/test_jump_inner_peers.py runs "
    "plink through plink -nc to one",
}

_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")
_SHELL_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.M | re.S)
_ANY_BLOCK = re.compile(r"^```.*?^```", re.M | re.S)
_INLINE = re.compile(r"`((?:" + "|".join(CLIENT_PROGRAMS) + r") [^`]*)`")


def test_readme_holds_the_config_reference():
    doc = gateway.config.__doc__
    start = doc.index("| key |")
    table = doc[start : doc.index("\n\n", start)]
    assert table in README.read_text(), "paste gateway/config.py's reference table into README.md"


def reference_in(text: str) -> str:
    start = text.index("| key | default | meaning |")
    end = text.find("\n\n", start)
    return text[start : end if end >= 0 else len(text)]


def test_readme_reference_is_exactly_the_generated_table():
    # Not one row more or less than the schema writes (a row the schema lost would stay
    # in the README unnoticed by a containment check).
    generated = gateway.config.reference_table()
    assert reference_in(README.read_text()) == generated, (
        "README.md's configuration reference differs from the schema's; replace it with the "
        "output of: .venv/bin/python -c 'from gateway.config import reference_table; "
        "print(reference_table())'"
    )
    assert reference_in(gateway.config.__doc__) == generated


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    assert text.index("scripts/bootstrap && .venv/bin/twistd -n sshgateway") < text.index("scripts/test")


# ---------------------------------------------------------------- the client examples
def program_of(line: str) -> str | None:
    """The client program a shell line runs (after any VAR=value), or None."""
    words = line.split()
    while words and _ASSIGNMENT.fullmatch(words[0]):
        words.pop(0)
    return words[0] if words and words[0] in CLIENT_PROGRAMS else None


def client_examples(text: str) -> list[tuple[str, str]]:
    """(command, setup) for every client command in ``text``: the lines of its ``sh``
    blocks that run a client (setup: the rest of that block, e.g. the file a command
    names), then the inline code in its prose that starts with a client's name."""
    examples = []
    for block in _SHELL_BLOCK.findall(text):
        lines = block.splitlines()
        commands = [line for line in lines if program_of(line)]
        setup = "\n".join(line for line in lines if not program_of(line))
        examples += [(command.strip(), setup if commands else "") for command in commands]
    prose = _ANY_BLOCK.sub("", text)
    examples += [(span, "") for span in _INLINE.findall(prose)]
    return examples


def expected_protocol(command: str) -> str:
    words = shlex.split(command, comments=True)
    program = program_of(command)
    if program in ("ssh1", "scp1"):
        return "ssh1"
    if program == "plink":
        if "-1" in words:
            return "ssh1"
        if "-2" in words:
            return "ssh2"
        raise AssertionError(f"{command!r}: plink picks a protocol by itself; say -1 or -2")
    return "ssh2"


EXAMPLES = [e for e in client_examples(README.read_text()) if e[0] not in NOT_RUNNABLE]


def test_examples_are_found():
    commands = [command for command, _ in client_examples(README.read_text())]
    assert any(program_of(c) == "plink" for c in commands)
    assert any(program_of(c) == "ssh1" for c in commands)
    assert any(program_of(c) == "scp1" for c in commands)
    for command in NOT_RUNNABLE:
        assert command in commands, f"{command!r} is no longer in the README: drop it here"


def test_the_ssh1_examples_say_so():
    """OpenSSH 7.5's ssh1 and scp1 prefer SSH-2 when the server offers both (the gateway's
    SSH-1.99 banner): without -1 the README's SSH-1 examples would silently use SSH-2."""
    for command, _ in EXAMPLES:
        if program_of(command) in ("ssh1", "scp1"):
            assert "-1" in shlex.split(command, comments=True), command


@pytest.fixture(scope="module")
def readme_gateway(tmp_path_factory):
    """A gateway for the README's examples: alice logs in with an ed25519 key, an SSH-1
    RSA key (puttygen's, which OpenSSH's ssh1 reads too) or PASSWORD; she may reach the
    local target and a local target named switch1, as in the README's prose."""
    tools = require_peer("puttygen")
    d = tmp_path_factory.mktemp("readme")
    ed25519 = keygen(d / "id_ed25519")
    rsa1 = d / "key.rsa1"
    subprocess.run(
        [tools["puttygen"], "-t", "rsa1", "-b", "2048", "-o", str(rsa1),
         "--new-passphrase", "/dev/null"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    rsa1_public = subprocess.run(
        [tools["puttygen"], str(rsa1), "-O", "public"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    authorized = d / "authorized_keys"
    authorized.write_text(Path(str(ed25519) + ".pub").read_text() + rsa1_public)
    authorized.chmod(0o600)
    config = base_config(hash_password(), authorized, targets={"switch1": {"protocol": "local"}})
    config["users"]["alice"].update(targets=["local", "switch1"], target="local")
    with GatewayProcess(d, config) as gw:
        gw.keys = {"ed25519": ed25519, "rsa1": rsa1}
        gw.fingerprints = [ssh1_fingerprint(gw), ssh2_fingerprint(gw)]
        yield gw


def run_options(program: str, command: str, gw: GatewayProcess, workdir: Path) -> list[str]:
    """What a test run adds after the program's name: no prompts, the gateway's host keys,
    alice's credentials, and the port when the example names none."""
    words = shlex.split(command, comments=True)
    has_port = "-p" in words or "-P" in words
    if program == "plink":
        options = ["-batch"]
        for fingerprint in gw.fingerprints:
            options += ["-hostkey", fingerprint]
        if "-i" not in words:
            options += ["-pw", PASSWORD]
        return options + ([] if has_port else ["-P", str(gw.port)])
    options = [
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", f"UserKnownHostsFile={workdir / 'known_hosts'}",
        "-o", "IdentitiesOnly=yes",
        "-i", str(gw.keys["ed25519"]),
    ]  # fmt: skip
    if program in ("ssh1", "scp1"):
        options += ["-i", str(gw.keys["rsa1"])]
    port_flag = "-P" if program in ("scp", "scp1", "sftp") else "-p"
    return options + ([] if has_port else [port_flag, str(gw.port)])


def localise(command: str, gw: GatewayProcess, workdir: Path) -> str:
    """The README's command with the test's port, user, host and files."""
    program = program_of(command)
    assert program is not None
    command = re.sub(r"\b2222\b", str(gw.port), command)
    command = command.replace("$USER@", "alice@").replace("@gateway", "@127.0.0.1")
    command = command.replace("key.rsa1", shlex.quote(str(gw.keys["rsa1"])))
    command = command.replace(":/tmp/", f":{workdir / 'remote'}/")
    added = " ".join(shlex.quote(o) for o in run_options(program, command, gw, workdir))
    return re.sub(rf"(^|\s){re.escape(program)}\s", rf"\g<1>{program} {added} ", command, count=1)


def remote_command(command: str) -> str:
    """The command an ssh/plink example runs remotely (what follows user@host); "" for a
    shell."""
    words = shlex.split(command, comments=True)
    at = next(i for i, word in enumerate(words) if "@" in word)
    return " ".join(words[at + 1 :])


def closed_connections(gw: GatewayProcess) -> list[str]:
    return [line for line in list(gw.output) if "connection closed: " in line]


@pytest.mark.peer
@pytest.mark.parametrize("command, setup", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_readme_client_example(readme_gateway, tmp_path, command, setup):
    gw = readme_gateway
    require_peer(program_of(command))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "PWD": str(tmp_path)}
    if setup:
        subprocess.run(["sh", "-c", setup], cwd=tmp_path, env=env, check=True, timeout=30)
    (tmp_path / "file").write_bytes(b"a file for scp\n" * 1000)
    (tmp_path / "remote").mkdir()
    before = len(closed_connections(gw))
    # A shell (no command given) reads these lines; "README-$((6*7))" is echoed back by a
    # pty unexpanded, so only a shell that ran it prints README-42.
    result = subprocess.run(
        ["sh", "-c", localise(command, gw, tmp_path)],
        input=b"echo README-$((6*7))\nexit\n",
        capture_output=True, cwd=tmp_path, env=env, timeout=90,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while len(closed_connections(gw)) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    new = closed_connections(gw)[before:]
    assert len(new) == 1, (new, result.stderr)
    used = re.search(r" protocol=(\S+) ", new[0])
    assert used and used.group(1) == expected_protocol(command), (
        f"{command!r} spoke {used and used.group(1)}, not {expected_protocol(command)}:\n{new[0]}"
    )
    assert "result=success" in new[0], new[0]
    words = shlex.split(command, comments=True)
    if "-C" in words:
        assert "compression=zlib" in new[0], new[0]
    if "-i" in words:
        assert "auth=publickey" in new[0], new[0]
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    program = program_of(command)
    if program in ("scp", "scp1"):
        assert (tmp_path / "remote" / "file").read_bytes() == (tmp_path / "file").read_bytes()
    elif remote_command(command):
        # The local target runs it on this host: it must print what it prints here.
        local = subprocess.run(["sh", "-c", remote_command(command)], capture_output=True, timeout=30)
        assert result.stdout == local.stdout
    else:
        assert b"README-42" in result.stdout, result.stdout + result.stderr


def test_readme_holds_the_quirk_profile_table():
    # Generated from gateway.quirks, sources and all, like the config reference.
    table = gateway.quirks.readme_table()
    assert table in README.read_text(), (
        "paste the output of: .venv/bin/python -c 'from gateway.quirks import readme_table; "
        "print(readme_table())' into README.md's Quirk profiles section"
    )
