"""The config schema is the one place each key is described: its rows drive the
unknown-key checks (per target protocol too), the typed values and their defaults, and the
reference table (tests/test_readme.py holds README.md to it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config as module
from gateway.config import SCHEMA, TARGETS, UPSTREAM_PROTOCOLS, ConfigError, parse_config
from gateway.targets.registry import TARGET_PROTOCOLS
from tests.support.gateway_helpers import LOCAL_ACCESS, fast_hash

HASH = fast_hash("secret")
USER = f'[users.alice]\npassword = "{HASH}"\n{LOCAL_ACCESS}'
BASE = Path("/etc/gw")

# Where a parsed config keeps the value of each table's keys.
HOLDERS = {
    "": lambda config: config,
    "auth": lambda config: config.auth_limits,
    "session": lambda config: config,
    "ssh2": lambda config: config.ssh2,
    "ssh1": lambda config: config.ssh1,
    "flows": lambda config: config.flows,
    "users.NAME": lambda config: config.users["alice"],
}


def problems(text: str) -> list:
    try:
        parse_config(text, "gw.toml", base=BASE)
    except ConfigError as e:
        return e.problems
    return []


@pytest.mark.parametrize(
    "key",
    [
        k
        for k in SCHEMA
        if k.name and k.default is not None and k.table in HOLDERS
        # Never left out: a user without targets is an error (test_config_access.py).
        and (k.table, k.name) != (module.USERS, "targets")
    ],
    ids=lambda k: f"{k.table}.{k.name}".lstrip("."),
)
def test_a_key_left_out_gets_the_schema_default(key):
    config = parse_config(USER, base=BASE)
    value = getattr(HOLDERS[key.table](config), key.name)
    expected = BASE / key.default if key.name == "state_dir" else key.default
    assert value == expected


@pytest.mark.parametrize(
    "key, protocol",
    [
        (k, p)
        for k in SCHEMA
        if k.table == TARGETS and k.name and not k.required
        for p in k.protocols
    ],
    ids=lambda x: getattr(x, "name", x),
)
def test_a_target_key_left_out_gets_the_schema_default(key, protocol):
    host = "" if protocol == "local" else 'host = "h"\n'
    config = parse_config(USER + f'[targets.t]\nprotocol = "{protocol}"\n{host}', base=BASE)
    value = getattr(config.targets["t"], key.name)
    if key.name == "port":  # the protocol's own, from the registry
        assert value == TARGET_PROTOCOLS[protocol].default_port
    elif key.default is None:
        assert value is None, key.name
    else:
        assert value == key.default, key.name


@pytest.mark.parametrize("table", sorted({k.table for k in SCHEMA} - {"", TARGETS}))
def test_unknown_key_hint_lists_the_schema_keys_of_the_table(table):
    rows = sorted(k.name for k in SCHEMA if k.table == table and k.name)
    header = "[users.alice]" if table == "users.NAME" else f"[{table}]"
    text = (
        USER + "frobnicate = 1\n" if table == "users.NAME" else USER + f"{header}\nfrobnicate = 1\n"
    )
    [problem] = [p for p in problems(text) if p.key.endswith(".frobnicate")]
    assert problem.message == f"unknown key (known here: {', '.join(rows)})"


@pytest.mark.parametrize("protocol", list(TARGET_PROTOCOLS))
def test_each_target_protocol_takes_exactly_the_keys_that_name_it(protocol):
    taken = {k.name for k in SCHEMA if k.table == TARGETS and k.name and protocol in k.protocols}
    host = "" if protocol == "local" else 'host = "h"\n'
    for key in {k.name for k in SCHEMA if k.table == TARGETS and k.name} - {"protocol", "host"}:
        found = problems(USER + f'[targets.t]\nprotocol = "{protocol}"\n{host}{key} = 1\n')
        refused = [p for p in found if p.key == f"targets.t.{key}" and "(known here:" in p.message]
        if key in taken:
            assert not refused, (protocol, key, refused)
        else:
            assert [p.message.split(" (")[0] for p in refused] == [
                f"not used by {protocol} targets"
            ]
            assert f"(known here: {', '.join(sorted(taken))})" in refused[0].message


def test_the_schema_names_the_registry_protocols():
    named = {p for k in SCHEMA if k.table == TARGETS for p in k.protocols}
    assert named == set(TARGET_PROTOCOLS)
    assert set(UPSTREAM_PROTOCOLS) == {n for n, p in TARGET_PROTOCOLS.items() if p.upstream}
    assert module.TARGET_KEYS["local"] == {"protocol", "record"}


def test_every_row_is_in_the_reference_once():
    table = module.reference_table().splitlines()[2:]
    assert [line.split(" | ")[0] for line in table] == [f"| {k.label}" for k in SCHEMA]
    assert len(set(table)) == len(SCHEMA)
