"""The log as JSON lines from a real gateway: every line of its output is one JSON object,
and a login's connection record is there field by field (OpenSSH with the config's
``log_format = "json"``, plink -1 with ``twistd sshgateway --log-format json``)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.clients import keyed_config, plink1_argv, ssh_argv
from tests.support.ops_process import OptionsGateway

pytestmark = pytest.mark.peer


def json_lines(gw: OptionsGateway) -> list[dict]:
    """Every line the gateway wrote, each parsed as JSON (a line that is not fails)."""
    lines = gw.log_text().splitlines()
    assert lines
    objects = []
    for line in lines:
        try:
            objects.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\n{gw.log_text()[-3000:]}") from None
    for obj in objects:
        assert {"time", "level", "namespace", "message"} <= set(obj), obj
    return objects


def closed_record(gw: OptionsGateway, protocol: str) -> dict:
    gw.wait_for_log(r'"message": "connection closed: ')
    records = [o for o in json_lines(gw) if o["message"].startswith("connection closed: ")]
    (record,) = [r for r in records if r.get("protocol") == protocol]
    return record


def test_config_key_json_with_openssh(tmp_path):
    config, key = keyed_config(tmp_path, log_format="json")
    with OptionsGateway(tmp_path, config) as gw:
        result = subprocess.run(
            ssh_argv(gw, key, "echo json-log"), capture_output=True, text=True, timeout=60
        )
        assert result.stdout == "json-log\n", result.stderr
        record = closed_record(gw, "ssh2")
    assert record["level"] == "info"
    assert record["namespace"] == "gateway.dispatch.VersionDispatcher"
    assert record["peer"].startswith("127.0.0.1:")
    assert record["client_version"].startswith("SSH-2.0-OpenSSH_")
    assert record["server_version"].startswith("SSH-1.99-sshgateway_")
    assert (record["user"], record["auth_method"], record["auth_result"]) == (
        "alice", "publickey", "success"
    )  # fmt: skip
    assert record["target"] == "local" and record["exit_status"] == 0
    assert record["stage"] in ("interaction", "close")
    assert record["close_reason"] and record["bytes_in"] > 0 and record["bytes_out"] > 0
    assert record["algorithms"]["kex"] and record["flow_id"].startswith("f-")
    # The start-up lines are JSON too (twistd's own, buffered before logging began).
    listening = [o for o in json_lines(gw) if o["message"].startswith("sshgateway listening on")]
    assert listening and listening[0]["where"].startswith("tcp:127.0.0.1:")


def test_command_line_json_with_plink1(tmp_path):
    config, _ = keyed_config(tmp_path)
    with OptionsGateway(tmp_path, config, "--log-format", "json") as gw:
        result = subprocess.run(
            plink1_argv(gw, "echo plink1-json"), capture_output=True, text=True, timeout=60
        )
        assert result.stdout.strip() == "plink1-json", result.stderr
        record = closed_record(gw, "ssh1")
    assert record["client_version"].startswith("SSH-1.5-PuTTY")
    assert (record["user"], record["auth_method"], record["auth_result"]) == (
        "alice", "password", "success"
    )  # fmt: skip
    assert record["target"] == "local" and record["exit_status"] == 0
    assert record["algorithms"]


def test_command_line_text_overrides_the_config(tmp_path):
    config, _ = keyed_config(tmp_path, log_format="json")
    with OptionsGateway(tmp_path, config, "--log-format", "text") as gw:
        pass
    first = gw.log_text().splitlines()[0]
    assert not first.startswith("{") and "[gateway." in first
