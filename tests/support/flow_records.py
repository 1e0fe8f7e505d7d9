"""Hand-made flow records in the shapes of flows-spec v1 (a ``plink -1`` password login,
an OpenSSH login, or any steps), writing them where the gateway keeps them, and running
``sshgateway flows`` on them in-process."""

from __future__ import annotations

import io
import json
from pathlib import Path

from protocols.flow import STAGES
from tools import cli


def read_jsonl(path: Path) -> list[dict]:
    """The complete records of a JSON-lines file a running gateway may be appending to.

    An append is one write(2), but a reader can see it half done (the file grows a page at
    a time), so a last line without its newline is a record still being written: left out,
    not decoded."""
    data = path.read_bytes() if path.exists() else b""
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def make_record(flow_id: str, protocol: str, steps, **fields) -> dict:
    """A v1 record from (t, dir, name, size, stage[, count]) steps; stages computed as the
    spec says (a round trip is a change from c2s to s2c inside a stage)."""
    messages = []
    for step in steps:
        t, direction, name, size, stage, *rest = step
        m = {"t": t, "dir": direction, "name": name, "size": size, "stage": stage}
        if rest:
            m["count"] = rest[0]
        messages.append(m)
    stages = []
    for name in STAGES:
        mine = [m for m in messages if m["stage"] == name]
        if not mine:
            stages.append(
                {
                    "name": name,
                    "start": None,
                    "end": None,
                    "messages": 0,
                    "bytes": 0,
                    "round_trips": 0,
                }
            )
            continue
        trips = sum(
            1
            for a, b in zip(mine, mine[1:], strict=False)
            if a["dir"] == "c2s" and b["dir"] == "s2c"
        )
        stages.append(
            {
                "name": name,
                "start": mine[0]["t"],
                "end": mine[-1]["t"],
                "messages": sum(m.get("count", 1) for m in mine),
                "bytes": sum(m["size"] for m in mine),
                "round_trips": trips,
            }
        )
    record = {
        "v": 1,
        "id": flow_id,
        "link": None,
        "role": "server",
        "protocol": protocol,
        "peer": "127.0.0.1:51234",
        "started": "2026-11-21T14:05:01.123456+00:00",
        "duration": messages[-1]["t"] if messages else 0.0,
        "versions": {},
        "user": "alice",
        "target": "local",
        "negotiated": {},
        "auth": [],
        "requests": [],
        "stages": stages,
        "messages": messages,
        "messages_truncated": False,
        "bytes": {
            "c2s": sum(m["size"] for m in messages if m["dir"] == "c2s"),
            "s2c": sum(m["size"] for m in messages if m["dir"] == "s2c"),
        },
        "exit_status": 0,
        "close_reason": "session finished",
    }
    record.update(fields)
    return record


def ssh1_plink_login(flow_id: str = "f-20261121T140501Z-11aa11aa", **fields) -> dict:
    steps = [
        (0.0, "s2c", "version", 26, "version"),
        (0.001, "c2s", "version", 28, "version"),
        (0.002, "s2c", "SSH_SMSG_PUBLIC_KEY", 419, "kex"),
        (0.041, "c2s", "SSH_CMSG_SESSION_KEY", 283, "kex"),
        (0.043, "s2c", "SSH_SMSG_SUCCESS", 16, "kex"),
        (0.044, "c2s", "SSH_CMSG_USER", 24, "auth"),
        (0.045, "s2c", "SSH_SMSG_FAILURE", 16, "auth"),
        (0.046, "c2s", "SSH_CMSG_AUTH_PASSWORD", 40, "auth"),
        (0.152, "s2c", "SSH_SMSG_SUCCESS", 16, "auth"),
        (0.153, "c2s", "SSH_CMSG_REQUEST_PTY", 56, "session"),
        (0.154, "s2c", "SSH_SMSG_SUCCESS", 16, "session"),
        (0.155, "c2s", "SSH_CMSG_EXEC_SHELL", 16, "session"),
        (0.160, "s2c", "SSH_SMSG_STDOUT_DATA", 64, "interaction"),
        (0.2, "c2s", "SSH_CMSG_STDIN_DATA", 480, "interaction", 20),
        (0.21, "s2c", "SSH_SMSG_STDOUT_DATA", 960, "interaction", 12),
        (0.9, "s2c", "SSH_SMSG_EXITSTATUS", 16, "close"),
        (0.901, "c2s", "SSH_CMSG_EXIT_CONFIRMATION", 16, "close"),
    ]
    base = dict(
        versions={"server": "SSH-1.99-sshgateway_0.1.0", "client": "SSH-1.5-PuTTY_Release_0.78"},
        negotiated={
            "host_key_type": "rsa1",
            "host_key_bits": 2048,
            "host_key_fingerprint": "MD5:3f:2a:9c:1d:00:11:22:33:44:55:66:77:88:99:aa:bb",
            "server_key_bits": 1024,
            "cipher": "3des",
            "compression": "none",
        },
        auth=[{"method": "password", "result": "success", "t": 0.152}],
        requests=[
            {"name": "pty", "result": "success", "t": 0.154},
            {"name": "exec_shell", "result": "success", "t": 0.155},
        ],
    )
    base.update(fields)
    return make_record(flow_id, "ssh1", steps, **base)


def ssh2_openssh_login(flow_id: str = "f-20261121T140502Z-22bb22bb", **fields) -> dict:
    steps = [
        (0.0, "s2c", "version", 27, "version"),
        (0.001, "c2s", "version", 41, "version"),
        (0.002, "c2s", "SSH2_MSG_KEXINIT", 1544, "kex"),
        (0.002, "s2c", "SSH2_MSG_KEXINIT", 1032, "kex"),
        (0.004, "c2s", "SSH2_MSG_KEX_ECDH_INIT", 48, "kex"),
        (0.008, "s2c", "SSH2_MSG_KEX_ECDH_REPLY", 184, "kex"),
        (0.008, "s2c", "SSH2_MSG_NEWKEYS", 16, "kex"),
        (0.009, "c2s", "SSH2_MSG_NEWKEYS", 16, "kex"),
        (0.010, "c2s", "SSH2_MSG_SERVICE_REQUEST", 96, "auth"),
        (0.011, "s2c", "SSH2_MSG_SERVICE_ACCEPT", 96, "auth"),
        (0.012, "c2s", "SSH2_MSG_USERAUTH_REQUEST", 112, "auth"),
        (0.013, "s2c", "SSH2_MSG_USERAUTH_FAILURE", 96, "auth"),
        (0.020, "c2s", "SSH2_MSG_USERAUTH_REQUEST", 400, "auth"),
        (0.021, "s2c", "SSH2_MSG_USERAUTH_PK_OK", 368, "auth"),
        (0.025, "c2s", "SSH2_MSG_USERAUTH_REQUEST", 680, "auth"),
        (0.030, "s2c", "SSH2_MSG_USERAUTH_SUCCESS", 80, "auth"),
        (0.031, "c2s", "SSH2_MSG_CHANNEL_OPEN", 128, "session"),
        (0.031, "s2c", "SSH2_MSG_CHANNEL_OPEN_CONFIRMATION", 128, "session"),
        (0.032, "c2s", "SSH2_MSG_CHANNEL_REQUEST", 368, "session"),
        (0.033, "s2c", "SSH2_MSG_CHANNEL_SUCCESS", 80, "session"),
        (0.033, "c2s", "SSH2_MSG_CHANNEL_REQUEST", 112, "session"),
        (0.034, "s2c", "SSH2_MSG_CHANNEL_SUCCESS", 80, "session"),
        (0.040, "s2c", "SSH2_MSG_CHANNEL_DATA", 1920, "interaction", 15),
        (0.2, "c2s", "SSH2_MSG_CHANNEL_DATA", 1600, "interaction", 20),
        (0.5, "s2c", "SSH2_MSG_CHANNEL_WINDOW_ADJUST", 96, "interaction"),
        (0.9, "s2c", "SSH2_MSG_CHANNEL_EOF", 80, "interaction"),
        (0.9, "s2c", "SSH2_MSG_CHANNEL_REQUEST", 112, "close"),
        (0.9, "s2c", "SSH2_MSG_CHANNEL_CLOSE", 80, "close"),
        (0.902, "c2s", "SSH2_MSG_CHANNEL_CLOSE", 80, "close"),
        (0.903, "c2s", "SSH2_MSG_DISCONNECT", 96, "close"),
    ]
    base = dict(
        peer="127.0.0.1:51240",
        started="2026-11-21T14:05:02.500000+00:00",
        versions={
            "server": "SSH-1.99-sshgateway_0.1.0",
            "client": "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3",
        },
        negotiated={
            "kex": "curve25519-sha256",
            "host_key_type": "ssh-ed25519",
            "host_key_bits": 256,
            "host_key_fingerprint": "SHA256:q9dsl0R2lWcTYdWkI6dXfZCuz4ZJMiCWgxP7P6hCWSA",
            "cipher_c2s": "aes128-ctr",
            "cipher_s2c": "aes128-ctr",
            "mac_c2s": "hmac-sha2-256",
            "mac_s2c": "hmac-sha2-256",
            "compression": "none",
        },
        auth=[
            {"method": "none", "result": "failure", "t": 0.013},
            {"method": "publickey", "result": "success", "t": 0.030},
        ],
        requests=[
            {"name": "pty-req", "result": "success", "t": 0.033},
            {"name": "shell", "result": "success", "t": 0.034},
        ],
    )
    base.update(fields)
    return make_record(flow_id, "ssh2", steps, **base)


def write_records(state_dir: Path, *records, name: str = "flows.jsonl", raw: bytes = b"") -> Path:
    """Append ``records`` (then ``raw`` bytes) to ``state_dir/flows/name``, as the gateway
    writes them."""
    directory = state_dir / "flows"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with open(path, "ab") as f:
        for r in records:
            f.write(json.dumps(r).encode() + b"\n")
        f.write(raw)
    return path


def run(*argv: str) -> tuple[int, str, str]:
    """``sshgateway flows ARGV...`` in this process: its status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(["flows", *argv], stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()
