"""The one SSH-2 algorithm registry: each role's defaults and accepted names come from it."""

from __future__ import annotations

import pytest

from protocols.ssh2.algorithms import CLIENT, KINDS, REGISTRY, SERVER, defaults, known
from protocols.ssh2.settings import SSH2Settings, UnknownAlgorithm


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("role", [SERVER, CLIENT])
def test_defaults_are_modern_names_the_role_may_use(role, kind):
    for name in defaults(role, kind):
        row = REGISTRY[kind][name]
        assert role in row.roles and not row.legacy
    assert set(known(role, kind)) == {n for n, row in REGISTRY[kind].items() if role in row.roles}


def test_client_only_names_are_refused_by_the_server_settings():
    assert "diffie-hellman-group1-sha1" in known(CLIENT, "kex")
    with pytest.raises(UnknownAlgorithm, match="ssh2 kex: unknown algorithm 'diffie-hellman-group1-sha1'"):
        SSH2Settings(kex=("diffie-hellman-group1-sha1",))


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("host_key_algorithms", "ssh-dss"),
        ("macs", "hmac-md5"),
        ("macs", "hmac-md5-96"),
        ("macs", "hmac-sha1-96"),
    ],
)
def test_old_device_algorithms_are_the_clients_opt_in_only(kind, name):
    # What HP iLO, old Cisco and Brocade firmware have: a target may list them; the
    # gateway's own server never offers them, even when [ssh2] lists them.
    row = REGISTRY[kind][name]
    assert row.legacy and row.roles == {CLIENT}
    assert name not in defaults(CLIENT, kind)
    with pytest.raises(UnknownAlgorithm, match=f"unknown algorithm '{name}'"):
        SSH2Settings(**{kind: (name,)})
