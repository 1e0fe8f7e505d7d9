"""``sshgateway flows list|show|compare``: reading records (bounded, hostile lines skipped),
stage alignment, and the text, JSON and HTML renderings, on hand-made records of a
``plink -1`` password login and an OpenSSH login (the shapes of flows-spec v1)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from protocols.flow import STAGES
from tests.support.flow_records import run, ssh1_plink_login, ssh2_openssh_login, write_records
from tests.support.gateway_helpers import LOCAL_ACCESS
from tools import jsonl_store
from tools.flows.records import MAX_MESSAGES, parse_flow


@pytest.fixture
def state(tmp_path):
    write_records(tmp_path, ssh1_plink_login(), ssh2_openssh_login())
    return tmp_path


# -- list ------------------------------------------------------------------------------------


def test_list_newest_first_with_columns(state):
    status, out, err = run("list", "--state-dir", str(state))
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["TIME", "(UTC)", "ID"]
    assert "f-20261121T140502Z-22bb22bb" in lines[1] and "ssh2" in lines[1]
    assert "f-20261121T140501Z-11aa11aa" in lines[2] and "ssh1" in lines[2]
    assert "2026-11-21 14:05:01" in lines[2] and "127.0.0.1:51234" in lines[2]
    assert "alice" in lines[2] and "local" in lines[2] and "0.901s" in lines[2]
    assert lines[2].endswith("exit 0")


def test_list_limit_and_rotated_files(tmp_path):
    write_records(
        tmp_path,
        ssh1_plink_login("f-1-old", started="2026-11-21T13:00:00+00:00"),
        name="flows.jsonl.2",
    )
    write_records(
        tmp_path,
        ssh1_plink_login("f-2-mid", started="2026-11-21T13:30:00+00:00"),
        name="flows.jsonl.1",
    )
    write_records(tmp_path, ssh2_openssh_login("f-3-new", started="2026-11-21T14:00:00+00:00"))
    status, out, _ = run("list", "--state-dir", str(tmp_path), "--format", "json")
    assert status == 0
    assert [f["id"] for f in json.loads(out)["flows"]] == ["f-3-new", "f-2-mid", "f-1-old"]
    status, out, _ = run("list", "--state-dir", str(tmp_path), "--limit", "2", "--format", "json")
    flows = json.loads(out)["flows"]
    assert [f["id"] for f in flows] == ["f-3-new", "f-2-mid"]
    assert set(flows[0]) >= {"time", "peer", "user", "protocol", "target", "duration", "result"}


def test_list_from_config(state, tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(f'state_dir = "{state}"\n[users.a]\nauthorized_keys = "keys"\n{LOCAL_ACCESS}')
    status, out, err = run("list", "--config", str(config))
    assert status == 0, err
    assert "f-20261121T140501Z-11aa11aa" in out


def test_list_empty_and_bad_config(tmp_path):
    status, out, _ = run("list", "--state-dir", str(tmp_path))
    assert status == 0 and "no flow records" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml\n")
    status, out, err = run("list", "--config", str(bad))
    assert status == 1 and out == "" and err


@pytest.mark.parametrize(
    "argv", [["list"], ["show", "f-1"], ["compare", "f-1", "f-2"]], ids=["list", "show", "compare"]
)
def test_missing_state_dir_is_an_error(tmp_path, argv):
    """Issue 9, item 13: a mistyped --state-dir (or a config's state_dir that is not there)
    is said to be missing, with status 1, not taken for a gateway with no flows yet."""
    missing = tmp_path / "stat-dir"
    status, out, err = run(*argv, "--state-dir", str(missing))
    assert (status, out) == (1, "")
    assert err == f"sshgateway flows: state directory {missing} does not exist\n"
    config = tmp_path / "gw.toml"
    config.write_text(
        f'state_dir = "{missing}"\n[users.a]\nauthorized_keys = "keys"\n{LOCAL_ACCESS}'
    )
    status, out, err = run(*argv, "--config", str(config))
    assert (status, out) == (1, "") and f"state directory {missing} does not exist" in err
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    status, out, err = run(*argv, "--state-dir", str(not_a_dir))
    assert status == 1 and "is not a directory" in err


def test_list_marks_upstream_legs_and_results(tmp_path):
    up = ssh2_openssh_login(
        "f-9-up",
        role="client",
        link="f-20261121T140501Z-11aa11aa",
        started="2026-11-21T14:05:01.2+00:00",
    )
    failed = ssh1_plink_login(
        "f-0-fail",
        exit_status=None,
        requests=[],
        auth=[{"method": "password", "result": "failure", "t": 1}],
        started="2026-11-21T12:00:00+00:00",
    )
    write_records(tmp_path, ssh1_plink_login(), up, failed)
    status, out, _ = run("list", "--state-dir", str(tmp_path))
    assert status == 0
    assert "f-9-up (upstream of f-20261121T140501Z-11aa11aa)" in out
    assert out.splitlines()[-1].endswith("auth failed")


# -- reading hostile input -------------------------------------------------------------------


def test_malformed_lines_are_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl_store, "MAX_LINE_BYTES", 20000)
    junk = (
        b"not json\n"
        b"\xff\xfe binary\n"
        b"[1, 2, 3]\n"
        b'{"v": 1}\n'
        b'{"v": 1, "id": "x\\u001b[31m"}\n'
        + b"[" * 3000
        + b"\n"
        + b'{"id": "'
        + b"A" * 50000
        + b'"}\n'
        + b"\n"
    )
    write_records(tmp_path, ssh1_plink_login(), raw=junk)
    write_records(tmp_path, ssh2_openssh_login())
    status, out, err = run("list", "--state-dir", str(tmp_path), "--format", "json")
    assert status == 0
    assert len(json.loads(out)["flows"]) == 2
    notes = err.splitlines()
    assert sum("not a JSON line" in n for n in notes) == 3
    assert sum("not a flow record" in n for n in notes) == 3
    assert sum("longer than 20000 bytes" in n for n in notes) == 1
    assert all(n.startswith("sshgateway flows: note: flows.jsonl:") for n in notes)


def test_a_record_being_appended_is_left_for_the_next_read(tmp_path):
    """The live file's last line without its newline is an append in progress: no note.
    The same in a rotated file is a damaged line, noted."""
    whole = json.dumps(ssh2_openssh_login()).encode()
    write_records(tmp_path, ssh1_plink_login(), raw=whole[:40])
    status, out, err = run("list", "--state-dir", str(tmp_path), "--format", "json")
    assert (status, len(json.loads(out)["flows"]), err) == (0, 1, "")
    write_records(tmp_path, raw=whole[40:] + b"\n")
    status, out, err = run("list", "--state-dir", str(tmp_path), "--format", "json")
    assert (status, len(json.loads(out)["flows"]), err) == (0, 2, "")
    write_records(tmp_path, ssh1_plink_login(), name="flows.jsonl.1", raw=whole[:40])
    status, out, err = run("list", "--state-dir", str(tmp_path), "--format", "json")
    assert status == 0 and "flows.jsonl.1:2: not a JSON line" in err


def test_fields_of_the_wrong_type_do_not_break_rendering(tmp_path):
    weird = {
        "v": 1,
        "id": "f-weird",
        "role": ["x"],
        "protocol": 5,
        "peer": None,
        "started": "yesterday",
        "duration": float("nan") if False else "long",
        "versions": "SSH",
        "user": "\x1b]0;pwned\x07eve",
        "negotiated": {"cipher": {"a": 1}, "kex": ["a", "b"], "x\u202e": "y"},
        "auth": [1, {"method": None}],
        "requests": "all",
        "stages": [{"name": "kex", "start": "0"}, 7],
        "bytes": [1, 2],
        "messages": [{"dir": "up", "name": "\x1b[2J", "size": -5, "count": True}, "m"],
        "exit_status": True,
        "close_reason": "<script>alert(1)</script>",
    }
    write_records(tmp_path, weird, ssh1_plink_login())
    for argv in (["list"], ["show", "f-weird"], ["compare", "f-weird", "f-2026"]):
        status, out, err = run(*argv, "--state-dir", str(tmp_path))
        assert status == 0, err
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    status, out, _ = run(
        "compare", "f-weird", "f-2026", "--state-dir", str(tmp_path), "--format", "html"
    )
    assert status == 0 and "<script>" not in out and "&lt;script&gt;" in out
    assert "\x1b" not in out


def test_parse_flow_bounds_messages():
    record = ssh1_plink_login()
    record["messages"] = record["messages"] * 1000
    flow = parse_flow(record)
    assert len(flow.messages) == MAX_MESSAGES and flow.messages_truncated


# -- show ------------------------------------------------------------------------------------


def test_show_stage_by_stage(state):
    status, out, err = run("show", "f-20261121T140501Z-11", "--state-dir", str(state))
    assert status == 0 and err == ""
    assert out.startswith("flow f-20261121T140501Z-11aa11aa  ssh1, client connected to the gateway")
    for needle in (
        "SSH-1.5-PuTTY_Release_0.78",
        "server_key_bits        1024",
        "cipher                 3des",
        "password               success",
        "exec_shell",
        "c2s 943 B, s2c 1549 B",
        "close     session finished",
    ):
        assert needle in out, needle
    after = out[out.index("\nstages") :].splitlines()
    stage_lines = [line for line in after if re.match(r"  [a-z]+ ", line)]
    assert [line.split()[0] for line in stage_lines] == list(STAGES)
    assert "kex (key and algorithm negotiation)  0.002-0.043 s  3 msgs, 1 rt, 718 B" in out
    body = out[out.index("stages") :]
    order = [
        "SSH_SMSG_PUBLIC_KEY",
        "SSH_CMSG_SESSION_KEY",
        "SSH_CMSG_USER",
        "SSH_CMSG_AUTH_PASSWORD",
        "SSH_CMSG_EXEC_SHELL",
        "SSH_CMSG_EXIT_CONFIRMATION",
    ]
    positions = [body.index(name) for name in order]
    assert positions == sorted(positions)
    assert "->  SSH_CMSG_STDIN_DATA 480 B x20" in out


def test_show_json_is_the_record_with_its_upstream_legs(tmp_path):
    client = ssh1_plink_login()
    up = ssh2_openssh_login("f-up", role="client", link=client["id"])
    write_records(tmp_path, client, up)
    status, out, _ = run("show", client["id"], "--state-dir", str(tmp_path), "--format", "json")
    assert status == 0
    shown = json.loads(out)
    assert shown["flow"] == client and shown["upstream_legs"] == ["f-up"]
    status, out, _ = run("show", client["id"], "--state-dir", str(tmp_path))
    assert "upstream leg f-up  ssh2 to local" in out
    status, out, _ = run("show", "f-up", "--state-dir", str(tmp_path))
    assert f"upstream leg of {client['id']}" in out and "gateway to device" in out


def test_show_unknown_and_ambiguous(state):
    status, out, err = run("show", "f-nope", "--state-dir", str(state))
    assert status == 1 and out == "" and "no flow 'f-nope'" in err
    status, out, err = run("show", "f-2026", "--state-dir", str(state))
    assert status == 1 and "ambiguous" in err


def test_exact_id_wins_over_prefix(tmp_path):
    write_records(tmp_path, ssh1_plink_login("f-1"), ssh2_openssh_login("f-10"))
    status, out, _ = run("show", "f-1", "--state-dir", str(tmp_path))
    assert status == 0 and out.startswith("flow f-1  ssh1")


# -- compare ---------------------------------------------------------------------------------


def test_compare_text_aligns_the_six_stages(state):
    status, out, err = run(
        "compare", "f-20261121T140501Z", "f-20261121T140502Z", "--state-dir", str(state)
    )
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert (
        "A f-20261121T140501Z-11aa11aa" in lines[0] and "B f-20261121T140502Z-22bb22bb" in lines[0]
    )
    assert re.search(r"protocol\s+ssh1 \(server\)\s+ssh2 \(server\)", out)
    assert re.search(r"client\s+SSH-1.5-PuTTY_Release_0.78\s+SSH-2.0-OpenSSH_9.2p1", out)
    assert re.search(r"server key\s+1024 bits\s+-", out)
    assert re.search(r"key exchange\s+-\s+curve25519-sha256", out)
    assert re.search(r"cipher\s+3des\s+aes128-ctr", out)
    assert re.search(r"kex\s+3 msgs, 1 rt, 718 B, 41.0 ms\s+6 msgs, 2 rt, 2840 B, 7.0 ms", out)
    sections = [line for line in lines if line.startswith("== ")]
    assert [s.split()[1].rstrip(":") for s in sections] == list(STAGES)
    kex = lines[lines.index(sections[1]) + 1]
    assert "<- SSH_SMSG_PUBLIC_KEY 419 B" in kex and "-> SSH2_MSG_KEXINIT 1544 B" in kex
    order = ["SSH_SMSG_PUBLIC_KEY", "SSH_CMSG_SESSION_KEY", "SSH_CMSG_USER", "SSH2_MSG_NEWKEYS"]
    assert [out.index(n) for n in order[:3]] == sorted(out.index(n) for n in order[:3])
    assert out.index("SSH2_MSG_KEXINIT") < out.index("SSH2_MSG_USERAUTH_REQUEST")


def test_compare_json(state):
    status, out, _ = run(
        "compare",
        "f-20261121T140501Z",
        "f-20261121T140502Z",
        "--state-dir",
        str(state),
        "--format",
        "json",
    )
    assert status == 0
    doc = json.loads(out)
    assert [f["protocol"] for f in doc["flows"]] == ["ssh1", "ssh2"]
    assert [s["name"] for s in doc["stages"]] == list(STAGES)
    kex = doc["stages"][1]
    assert kex["a"]["messages"] == 3 and kex["b"]["round_trips"] == 2
    assert [m["name"] for m in kex["messages_a"]] == [
        "SSH_SMSG_PUBLIC_KEY",
        "SSH_CMSG_SESSION_KEY",
        "SSH_SMSG_SUCCESS",
    ]
    negotiated = {n["name"]: (n["a"], n["b"]) for n in doc["negotiated"]}
    assert negotiated["server key"] == ("1024 bits", None)
    assert negotiated["key exchange"] == (None, "curve25519-sha256")
    assert negotiated["cipher"] == ("3des", "aes128-ctr")


def test_compare_html_is_self_contained(state, tmp_path):
    target = tmp_path / "out.html"
    status, out, err = run(
        "compare",
        "f-20261121T140501Z",
        "f-20261121T140502Z",
        "--state-dir",
        str(state),
        "--format",
        "html",
        "-o",
        str(target),
    )
    assert status == 0 and out == "" and err == ""
    page = target.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 1
    for forbidden in ("<script", "src=", "href=", "@import", "<link", "http:", "https:"):
        assert forbidden not in page.lower(), forbidden
    svg = page[page.index("<svg") : page.index("</svg>")]
    for name in (
        "SSH_SMSG_PUBLIC_KEY",
        "SSH_CMSG_SESSION_KEY",
        "SSH_CMSG_USER",
        "SSH2_MSG_KEXINIT",
        "SSH2_MSG_KEX_ECDH_REPLY",
    ):
        assert name in svg, name
    # Each stage band starts at the same height for both flows: one band per stage.
    assert all(f">{stage}</text>" in svg for stage in STAGES)
    assert svg.count("<line") >= 17 + 30


def test_compare_html_refuses_text_only_commands(state):
    with pytest.raises(SystemExit):
        run("list", "--state-dir", str(state), "--format", "html")


def test_compare_unwritable_output(state, tmp_path):
    status, _, err = run(
        "compare",
        "f-20261121T140501Z",
        "f-20261121T140502Z",
        "--state-dir",
        str(state),
        "--format",
        "html",
        "-o",
        str(tmp_path / "missing" / "x.html"),
    )
    assert status == 1 and "x.html" in err


# -- the HTML page (issue 9, item 14) ----------------------------------------------------------


class PageParser(HTMLParser):
    """The parts of the compare page the tests read: the order of its top-level blocks,
    each table's rows (cell texts) under its heading, and the SVG's texts (a <text> with
    <tspan> lines joined)."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.svg_texts: list[str] = []
        self._heading: str | None = None
        self._in: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self._in.append(tag)
        if tag in ("svg", "table", "h2") and "svg" not in self._in[:-1]:
            self.order.append(tag)
        if tag == "table":
            self.tables[self._heading or ""] = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "text":
            self._text = []

    def handle_endtag(self, tag):
        while self._in and self._in.pop() != tag:
            pass
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[list(self.tables)[-1]].append(self._row)
            self._row = None
        elif tag == "text" and self._text is not None:
            self.svg_texts.append("".join(self._text))
            self._text = None

    def handle_data(self, data):
        if self._in and self._in[-1] == "h2":
            self._heading = data.strip()
        if self._cell is not None:
            self._cell.append(data)
        if self._text is not None:
            self._text.append(data)


def compare_page(tmp_path, a: dict, b: dict) -> tuple[str, PageParser]:
    write_records(tmp_path, a, b)
    status, out, err = run(
        "compare", a["id"], b["id"], "--state-dir", str(tmp_path), "--format", "html"
    )
    assert status == 0, err
    parsed = PageParser()
    parsed.feed(out)
    return out, parsed


def test_compare_html_puts_the_diagram_first(tmp_path):
    page, parsed = compare_page(tmp_path, ssh1_plink_login(), ssh2_openssh_login())
    assert parsed.order[0] == "svg", parsed.order
    assert page.index("<svg") < page.index("<table")
    assert set(parsed.tables) >= {"Negotiated parameters", "Stages", "Flows"}


def test_compare_html_aligns_negotiated_parameters_by_meaning(tmp_path):
    """SSH-1's cipher and SSH-2's cipher_c2s/s2c on one row ("3des" beside "chacha20..."),
    the two directions in one cell when they differ; one row each for MAC, compression,
    key exchange, host key and server key."""
    ssh2 = ssh2_openssh_login()
    ssh2["negotiated"].update(
        cipher_c2s="chacha20-poly1305@openssh.com",
        cipher_s2c="chacha20-poly1305@openssh.com",
        mac_c2s="hmac-sha2-256-etm@openssh.com",
        mac_s2c="hmac-sha2-512",
        host_key_algorithm="ssh-ed25519",
        strict_kex=True,
    )
    _, parsed = compare_page(tmp_path, ssh1_plink_login(), ssh2)
    rows = {row[0]: row[1:] for row in parsed.tables["Negotiated parameters"][1:]}
    assert [row[0] for row in parsed.tables["Negotiated parameters"][1:8]] == [
        "cipher", "MAC", "compression", "key exchange", "host key", "host key fingerprint",
        "server key",
    ]  # fmt: skip
    assert rows["cipher"] == ["3des", "chacha20-poly1305@openssh.com"]
    assert rows["MAC"] == ["-", "c2s hmac-sha2-256-etm@openssh.com, s2c hmac-sha2-512"]
    assert rows["compression"] == ["none", "none"]
    assert rows["key exchange"] == ["-", "curve25519-sha256"]
    assert rows["host key"] == ["rsa1, 2048 bits", "ssh-ed25519, 256 bits"]
    assert rows["host key fingerprint"][0].startswith("MD5:3f:2a")
    assert rows["server key"] == ["1024 bits", "-"]
    assert rows["strict_kex"] == ["-", "yes"]
    for name in ("cipher_c2s", "cipher_s2c", "mac_c2s", "host_key_bits", "server_key_bits"):
        assert name not in rows


def test_compare_html_shows_client_versions_whole(tmp_path):
    long_version = "SSH-2.0-OpenSSH_9.9p2 Debian-1+deb13u1 with a comment longer than any column"
    ssh2 = ssh2_openssh_login(
        versions={"server": "SSH-1.99-sshgateway_0.1.0", "client": long_version}
    )
    _, parsed = compare_page(tmp_path, ssh1_plink_login(), ssh2)
    assert long_version in parsed.svg_texts, parsed.svg_texts
    assert "SSH-1.5-PuTTY_Release_0.78" in parsed.svg_texts
    summary = {row[0]: row[1:] for row in parsed.tables["Flows"]}
    assert summary["client version"] == ["SSH-1.5-PuTTY_Release_0.78", long_version]


def test_compare_html_escapes_every_field_by_construction(tmp_path):
    hostile = '"><script>alert(1)</script><svg onload=x>'
    ssh1 = ssh1_plink_login(
        versions={"client": "SSH-1.5-" + hostile, "server": hostile},
        negotiated={"cipher": hostile, hostile: hostile},
        peer=hostile,
        user=hostile,
        target=hostile,
        close_reason=hostile,
        requests=[{"name": hostile, "result": hostile, "t": 0.1}],
    )
    ssh1["messages"][2]["name"] = hostile
    page, parsed = compare_page(tmp_path, ssh1, ssh2_openssh_login())
    assert "<script" not in page and "<svg onload" not in page and page.count("<svg") == 1
    assert "SSH-1.5-" + hostile in parsed.svg_texts and hostile + " 419 B" in parsed.svg_texts
    rows = {row[0]: row[1:] for row in parsed.tables["Negotiated parameters"]}
    assert rows["cipher"][0] == hostile and rows[hostile] == [hostile, "-"]
