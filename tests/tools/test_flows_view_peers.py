"""``sshgateway flows`` on records a real gateway wrote (issue 5, acceptance 1): one
``plink -1`` login and one OpenSSH login, then ``flows list``, ``show`` and ``compare``
(text, json, html) through ``--config`` show both, aligned in the stages, with each
protocol's own message names in order and what each negotiated."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from protocols.flow import STAGES
from tests.support.clients import (
    PASSWORD,
    base_config,
    hash_password,
    plink1_argv,
    ssh_argv,
    sshgateway_cli,
    write_authorized_keys,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer
from tools.flows.store import FlowStore

pytestmark = pytest.mark.peer

PAYLOAD = b"flows-view-payload\n"


def _in_order(text: str, names: list[str]) -> bool:
    position = 0
    for name in names:
        found = text.find(name, position)
        if found < 0:
            return False
        position = found + len(name)
    return True


def _wait_for_flows(gw: GatewayProcess, count: int, timeout: float = 20.0) -> list:
    store = FlowStore.for_state_dir(gw.config["state_dir"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flows = list(store.records())
        if len(flows) >= count:
            return flows
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} flow records:\n" + gw.log_text()[-3000:])


def test_flows_commands_on_a_plink_1_and_an_openssh_login(tmp_path):
    tools = require_peer("plink", "ssh", "sshpass")
    authz = write_authorized_keys(tmp_path / "authorized_keys")
    (tmp_path / "gw").mkdir()
    with GatewayProcess(tmp_path / "gw", base_config(hash_password(), authz)) as gw:
        runs = [
            plink1_argv(gw, "cat"),
            [tools["sshpass"], "-p", PASSWORD, *ssh_argv(
                gw, None, "-o", "PubkeyAuthentication=no",
                "-o", "PreferredAuthentications=password", "cat", batch=False,
            )],
        ]  # fmt: skip
        for argv in runs:
            result = subprocess.run(argv, input=PAYLOAD, capture_output=True, timeout=60)
            assert result.stdout == PAYLOAD, result.stderr + gw.log_text()[-2000:].encode()
        flows = _wait_for_flows(gw, 2)
        config = str(gw.config_path)

    by_protocol = {f.protocol: f for f in flows}
    ssh1, ssh2 = by_protocol["ssh1"], by_protocol["ssh2"]

    listing = sshgateway_cli("flows", "list", "--config", config)
    assert listing.stderr == ""
    rows = listing.stdout.splitlines()[1:]
    assert len(rows) == 2
    assert ssh2.id in rows[0] and ssh1.id in rows[1]
    assert all("alice" in r and "127.0.0.1:" in r and r.endswith("exit 0") for r in rows)

    shown = sshgateway_cli("flows", "show", ssh1.id[:-2], "--config", config).stdout
    assert shown.startswith(f"flow {ssh1.id}  ssh1")
    assert _in_order(
        shown,
        [
            "SSH_SMSG_PUBLIC_KEY",
            "SSH_CMSG_SESSION_KEY",
            "SSH_CMSG_USER",
            "SSH_CMSG_AUTH_PASSWORD",
            "SSH_CMSG_EXEC_CMD",
        ],
    )
    assert re.search(r"server_key_bits\s+1024", shown)

    compared = sshgateway_cli("flows", "compare", ssh1.id, ssh2.id, "--config", config).stdout
    sections = [
        line.split()[1].rstrip(":") for line in compared.splitlines() if line.startswith("== ")
    ]
    assert sections == list(STAGES)
    assert re.search(r"protocol\s+ssh1 \(server\)\s+ssh2 \(server\)", compared)
    assert re.search(r"client\s+SSH-1\.5-PuTTY\S*\s+SSH-2\.0-OpenSSH", compared)
    assert re.search(r"server key\s+1024 bits\s+-", compared)
    # Each protocol's cipher on the one row (SSH-1's cipher, SSH-2's cipher_c2s/s2c).
    assert re.search(r"cipher\s+(3des|blowfish)\s+(aes|chacha20)\S+", compared)
    assert "cipher_c2s" not in compared
    # SSH-1 on the left, SSH-2 on the right, each column in protocol order.
    body = compared[compared.index("== version") :].splitlines()
    left = "\n".join(line[15 : 15 + 52] for line in body)
    right = "\n".join(line[15 + 53 :] for line in body)
    assert _in_order(
        left,
        [
            "SSH_SMSG_PUBLIC_KEY",
            "SSH_CMSG_SESSION_KEY",
            "SSH_CMSG_USER",
            "SSH_CMSG_AUTH_PASSWORD",
            "SSH_SMSG_SUCCESS",
            "SSH_CMSG_EXEC_CMD",
            "SSH_CMSG_STDIN_DATA",
            "SSH_SMSG_EXITSTATUS",
        ],
    ), left
    assert _in_order(
        right,
        [
            "SSH2_MSG_KEXINIT",
            "SSH2_MSG_NEWKEYS",
            "SSH2_MSG_USERAUTH_REQUEST",
            "SSH2_MSG_USERAUTH_SUCCESS",
            "SSH2_MSG_CHANNEL_OPEN",
            "SSH2_MSG_CHANNEL_REQUEST",
            "SSH2_MSG_CHANNEL_DATA",
            "SSH2_MSG_CHANNEL_CLOSE",
        ],
    ), right
    assert "SSH2_" not in left and "SSH_CMSG" not in right and "SSH_SMSG" not in right
    # Each stage's messages sit between its header and the next one's, in both columns.
    kex = compared[compared.index("== kex") : compared.index("== auth")]
    assert "SSH_SMSG_PUBLIC_KEY" in kex and "SSH2_MSG_KEXINIT" in kex
    assert "SSH_CMSG_USER" not in kex and "SSH2_MSG_USERAUTH_REQUEST" not in kex

    doc = json.loads(
        sshgateway_cli(
            "flows", "compare", ssh1.id, ssh2.id, "--config", config, "--format", "json"
        ).stdout
    )
    assert [s["name"] for s in doc["stages"]] == list(STAGES)
    assert all(s["a"]["messages"] and s["b"]["messages"] for s in doc["stages"]), doc["stages"]

    page = tmp_path / "compare.html"
    sshgateway_cli(
        "flows",
        "compare",
        ssh1.id,
        ssh2.id,
        "--config",
        config,
        "--format",
        "html",
        "-o",
        str(page),
    )
    html = page.read_text()
    assert _in_order(html, ["<svg", "SSH_SMSG_PUBLIC_KEY", "SSH2_MSG_KEXINIT", "</svg>"])
