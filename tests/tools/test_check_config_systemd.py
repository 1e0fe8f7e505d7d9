"""``sshgateway check-config`` on ``systemd:`` endpoints, outside systemd (no LISTEN_FDS):
the form is checked, the socket is not looked for."""

from __future__ import annotations

import io

import pytest

from tests.support.gateway_helpers import LOCAL_ACCESS
from tools import cli


def check(tmp_path, listen: str) -> tuple[int, str]:
    config = tmp_path / "gw.toml"
    config.write_text(
        f'listen = ["{listen}"]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[users.alice]\nauthorized_keys = "{tmp_path / "ak"}"\n{LOCAL_ACCESS}'
    )
    out = io.StringIO()
    status = cli.main(["check-config", str(config)], stdout=out, stderr=io.StringIO())
    return status, out.getvalue()


@pytest.mark.parametrize(
    "listen",
    ["systemd:domain=INET:index=0", "systemd:domain=INET:name=ssh",
     "systemd:domain=INET6:index=1", "systemd:domain=UNIX:name=sshgateway.socket"],
)  # fmt: skip
def test_systemd_endpoints_pass_outside_systemd(tmp_path, monkeypatch, listen):
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    status, out = check(tmp_path, listen)
    assert (status, out.splitlines()[-1]) == (0, f"{tmp_path / 'gw.toml'}: OK"), out


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        ("systemd:domain=INET", "give exactly one of index=N and name=NAME"),
        ("systemd:domain=INET:index=0:name=ssh", "give exactly one of index=N and name=NAME"),
        ("systemd:domain=IPX:index=0", "domain must be INET, INET6 or UNIX"),
        ("systemd:index=0", "domain must be INET, INET6 or UNIX"),
        ("systemd:domain=INET:index=first", "index must be a number"),
        ("systemd:domain=INET:name=", "name is empty"),
        ("systemd:domain=INET:index=0:port=22", "unknown option port"),
        ("systemd:INET:0", "expected systemd:domain=INET:index=N or :name=NAME"),
    ],
)
def test_malformed_systemd_endpoints_are_errors(tmp_path, listen, why):
    status, out = check(tmp_path, listen)
    assert status == 1
    assert f"listen: bad endpoint '{listen}': {why}" in out
