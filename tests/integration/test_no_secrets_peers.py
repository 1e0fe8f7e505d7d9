"""No secret in any file the gateway writes (issue 13, "No secrets"; acceptance 6).

A real gateway with recording and the audit trail on is logged in to with a password (OpenSSH ``ssh`` through
sshpass, and ``plink -1 -pw``) and with an RSA key (OpenSSH); in recorded terminal
sessions through both fronts a password is typed at a device prompt that does not echo
it. Then every file under the state directory (flow records, recordings, the audit trail
when there is one, host keys...) and the gateway's log are searched for the login
password, the device password and the key's private material (each base64 line of the
private key file, and its private numbers in hex, decimal and binary). None may appear
with ``[recording] input = false`` (the default). With ``input = true`` the recordings may
hold the device password, as typed (the README says so): the test checks that they do,
which also shows the search finds what is there, and that nothing else does.
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.casts import run as recordings_cli
from tests.support.clients import (
    base_config,
    hash_password,
    plink1_argv,
    ssh_argv,
    write_authorized_keys,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer
from tests.support.sshd import keygen

pytestmark = pytest.mark.peer

LOGIN_PASSWORD = "Gw7login-Qx93vTe2Lm"
DEVICE_PASSWORD = "Dv4device-Zr58kWp1Hs"
# The "device": a program that asks for a password without echoing it, as a router's
# enable prompt does, and says how long the answer was (so the test knows it arrived).
DEVICE_PROMPT = "Device password: "
DEVICE_SCRIPT = (
    f"stty -echo; printf '{DEVICE_PROMPT}'; read -r pw; stty echo; "
    'printf "\\ngot %s characters\\n" "${#pw}"'
)


@dataclass
class Secret:
    name: str
    needle: bytes


def key_secrets(key: Path) -> list[Secret]:
    """What would give the private key away: each line of the base64 body of the key file,
    and the private numbers in hex (either case), decimal and binary."""
    secrets = []
    lines = key.read_text().splitlines()
    body = [line for line in lines if line and not line.startswith("-----")]
    assert body, "an OpenSSH private key file has a base64 body"
    for number, line in enumerate(body):
        # The first line is the format's fixed preamble (the same for every key), not secret.
        if number > 0 and len(line) >= 16:
            secrets.append(Secret(f"key file line {number + 1}", line.encode()))
    private = serialization.load_ssh_private_key(key.read_bytes(), None)
    numbers = private.private_numbers()  # an RSA key: d, p, q and the CRT values
    for name in ("d", "p", "q", "dmp1", "dmq1", "iqmp"):
        value: int = getattr(numbers, name)
        hex_digits = f"{value:x}"
        secrets += [
            Secret(f"{name} in hex", hex_digits.encode()),
            Secret(f"{name} in HEX", hex_digits.upper().encode()),
            Secret(f"{name} in decimal", str(value).encode()),
            Secret(f"{name} in binary", value.to_bytes((value.bit_length() + 7) // 8, "big")),
            Secret(f"{name} in base64", base64.b64encode(
                value.to_bytes((value.bit_length() + 7) // 8, "big"))[8:40]),
        ]
    return secrets


def password_secrets(name: str, password: str) -> list[Secret]:
    raw = password.encode()
    return [
        Secret(name, raw),
        Secret(f"{name} in base64", base64.b64encode(raw)),
        Secret(f"{name} in hex", raw.hex().encode()),
        Secret(f"{name} as UTF-16", password.encode("utf-16-le")),
    ]


def found_in(secret: Secret, files: dict[str, bytes]) -> list[str]:
    return [name for name, data in files.items() if secret.needle in data]


def everything_written(gw: GatewayProcess) -> dict[str, bytes]:
    """Every file under the state directory, and the gateway's log."""
    state = Path(gw.config["state_dir"])
    files = {str(p.relative_to(state)): p.read_bytes() for p in state.rglob("*") if p.is_file()}
    files["<gateway log>"] = gw.log_text().encode()
    return files


def device_session(argv: list[str]) -> str:
    """Run a client whose remote command is DEVICE_SCRIPT: answer the prompt once it is
    shown (as a person would: after the device has turned echo off), return the output."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    seen = b""
    try:
        while DEVICE_PROMPT.encode() not in seen:
            chunk = proc.stdout.read1(4096)
            assert chunk, f"no prompt; output so far: {seen!r}"
            seen += chunk
        proc.stdin.write(DEVICE_PASSWORD.encode() + b"\r")
        proc.stdin.flush()
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = (seen + rest).decode(errors="replace")
    assert proc.returncode == 0, (output, err)
    assert f"got {len(DEVICE_PASSWORD)} characters" in output
    assert DEVICE_PASSWORD not in output  # the device did not echo it
    return output


def run_every_login(gw: GatewayProcess, key: Path) -> None:
    tools = require_peer("sshpass", "plink")
    # Password logins: OpenSSH (SSH-2) through sshpass, and plink -1 (SSH-1).
    done = subprocess.run(
        [tools["sshpass"], "-p", LOGIN_PASSWORD,
         *ssh_argv(gw, None, "-o", "PreferredAuthentications=password", "echo pw-ok",
                   batch=False)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0 and "pw-ok" in done.stdout, done.stderr
    done = subprocess.run(plink1_argv(gw, "echo plink-ok", password=LOGIN_PASSWORD),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "plink-ok" in done.stdout, done.stderr
    # Terminal sessions with the device prompt: OpenSSH with the key, plink -1 with the
    # password.
    device_session(ssh_argv(gw, key, "-tt", DEVICE_SCRIPT))
    device_session(plink1_argv(gw, "-t", DEVICE_SCRIPT, password=LOGIN_PASSWORD))


@pytest.fixture(scope="module")
def login_key(tmp_path_factory) -> Path:
    return keygen(tmp_path_factory.mktemp("key") / "alice_rsa", "rsa")


def gateway_with(tmp_path: Path, key: Path, record_input: bool) -> GatewayProcess:
    authorized = write_authorized_keys(tmp_path / "authorized_keys", key)
    config = base_config(hash_password(LOGIN_PASSWORD), authorized)
    config["recording"] = {"enabled": True, "input": record_input}
    return GatewayProcess(tmp_path, config)


def recorded_sessions(gw: GatewayProcess) -> list[dict]:
    status, out, err = recordings_cli("list", "--state-dir", gw.config["state_dir"], "--format",
                                      "json")
    assert status == 0, err
    return json.loads(out)["recordings"]


def test_no_secret_in_any_file_with_input_off(tmp_path, login_key):
    with gateway_with(tmp_path, login_key, record_input=False) as gw:
        run_every_login(gw, login_key)
    files = everything_written(gw)
    # Not vacuous: the files that could hold a secret are there, with the sessions in them.
    assert any(name.startswith("flows/") for name in files)
    audit = b"".join(data for name, data in files.items() if name.startswith("audit/"))
    assert audit.count(b'"login"') >= 4 and b"password" in audit and b"publickey" in audit
    recorded = recorded_sessions(gw)
    assert len(recorded) >= 4, recorded
    casts = b"".join(data for name, data in files.items() if name.endswith(".cast"))
    assert DEVICE_PROMPT.encode() in casts and b"got 20 characters" in casts
    secrets = [*password_secrets("the login password", LOGIN_PASSWORD),
               *password_secrets("the device password", DEVICE_PASSWORD),
               *key_secrets(login_key)]
    leaks = {s.name: found_in(s, files) for s in secrets if found_in(s, files)}
    assert leaks == {}


def test_with_input_on_only_the_recordings_hold_the_device_password(tmp_path, login_key):
    with gateway_with(tmp_path, login_key, record_input=True) as gw:
        run_every_login(gw, login_key)
    files = everything_written(gw)
    holding = found_in(Secret("device password", DEVICE_PASSWORD.encode()), files)
    # Both terminal sessions typed it; it is in their recordings, as "i" events, and
    # nowhere else.
    assert len(holding) == 2 and all(name.endswith(".cast") for name in holding), holding
    for name in holding:
        typed = [json.loads(line) for line in files[name].decode().splitlines()[1:]]
        inputs = "".join(e[2] for e in typed if e[1] == "i")
        assert DEVICE_PASSWORD in inputs
        assert DEVICE_PASSWORD not in "".join(e[2] for e in typed if e[1] == "o")
    secrets = [*password_secrets("the login password", LOGIN_PASSWORD),
               *key_secrets(login_key)]
    leaks = {s.name: found_in(s, files) for s in secrets if found_in(s, files)}
    assert leaks == {}
