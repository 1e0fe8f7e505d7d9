"""``sshgateway probe --suggest-target NAME``: a probe's findings about one device turned
into a ready ``[targets.NAME]`` block for the gateway's config.

The block says the protocol (SSH-2 when the device has it, else SSH-1), the algorithm lists
only where the gateway's client defaults have nothing in common with what the device
offers (then exactly the names the device offers that the client knows, in the device's
order: those are the legacy ones the target must opt in to), the quirk profile its
identification line matches (gateway.quirks), and the host key to pin in the form
``host_key`` takes (SSH-2: the SHA256 fingerprint of the key the gateway will be shown
with those lists; SSH-1: the MD5 colon-hex form). For an SSH-1 device whose host or server
key is under 512 bits (legacy firmware only: nothing the gateway's own server would use)
or under the targets' default floor, ``min_key_bits`` is the device's smallest key: what
it needs, and no smaller key gets through later. Credentials are never printed: the
login name and key file when given, a commented password line otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from gateway import quirks
from protocols.ssh1.client_connection import DEFAULT_CIPHERS as SSH1_DEFAULT_CIPHERS
from protocols.ssh1.client_connection import DEFAULT_MIN_KEY_BITS
from protocols.ssh2.algorithms import CLIENT, HOST_KEY_TYPES, defaults, known
from protocols.ssh2.transport_base import supported_key_exchanges
from tools.probe.report import HostReport

# Config key -> the algorithm registry's kind and how the device's KEXINIT lists it.
_SSH2_LISTS = (
    ("kex", "kex", lambda k: k.kex),
    ("host_key_algorithms", "host_key_algorithms", lambda k: k.host_key_algorithms),
    ("ciphers", "ciphers", lambda k: [c for c in k.ciphers_c2s if c in k.ciphers_s2c]),
    ("macs", "macs", lambda k: [m for m in k.macs_c2s if m in k.macs_s2c]),
)


# SSH-1 keys under this many bits come only from legacy firmware (the gateway's own
# server never goes below it): the suggested block names the floor such a device needs.
SSH1_LEGACY_KEY_BITS = 512
# What a target's min_key_bits may be (gateway.config): smaller keys cannot be reached.
SSH1_LOWEST_FLOOR = 256


class SuggestError(Exception):
    """Why no block can be suggested for the device."""


def _toml(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


def _ssh2_lists(report: HostReport) -> tuple[dict[str, list[str]], str]:
    """The lists the target needs (only where the defaults lack a common name) and the
    host key algorithm the gateway will then agree on."""
    kexinit = report.ssh2.kexinit
    assert kexinit is not None
    needed: dict[str, list[str]] = {}
    chosen_host_key = ""
    runnable_kex = {name.decode() for name in supported_key_exchanges()}
    for key, kind, offered_of in _SSH2_LISTS:
        offered = offered_of(kexinit)
        ours = [n for n in defaults(CLIENT, kind) if kind != "kex" or n in runnable_kex]
        usable = [n for n in known(CLIENT, kind) if kind != "kex" or n in runnable_kex]
        common = [n for n in ours if n in offered]
        if not common:
            common = [n for n in offered if n in usable]
            if not common:
                raise SuggestError(
                    f"the device offers no {key} the gateway knows ({', '.join(offered) or 'none'})"
                )
            needed[key] = common
        if kind == "host_key_algorithms":
            chosen_host_key = common[0]
    return needed, chosen_host_key


def _ssh2_fingerprint(report: HostReport, algorithm: str) -> str | None:
    key_type = HOST_KEY_TYPES.get(algorithm, algorithm.encode()).decode()
    for host_key in report.ssh2.host_keys:
        if host_key.type == key_type and host_key.verified:
            return host_key.fingerprint
    return None


def _ssh1_key_floor(host_key_bits: int, server_key_bits: int) -> str | None:
    """The ``min_key_bits`` line for an SSH-1 device with a small key, else None."""
    what, bits = min(
        (("host key", host_key_bits), ("server key", server_key_bits)), key=lambda k: k[1]
    )
    if bits < SSH1_LOWEST_FLOOR:
        raise SuggestError(
            f"the device's {what} has {bits} bits; the gateway reaches SSH-1 devices whose "
            f"keys have at least {SSH1_LOWEST_FLOOR}"
        )
    if bits >= max(SSH1_LEGACY_KEY_BITS, DEFAULT_MIN_KEY_BITS):
        return None
    return f"min_key_bits = {bits}  # its {what} has {bits} bits: smaller ones are refused"


def suggest_target(
    name: str, report: HostReport, *, user: str | None = None, key: Path | None = None
) -> str:
    """The ``[targets.NAME]`` block for the probed device; raises SuggestError."""
    if report.ssh2.available and report.ssh2.kexinit is not None:
        protocol = "ssh2"
    elif report.ssh1.available and report.ssh1.offer is not None:
        protocol = "ssh1"
    else:
        raise SuggestError(
            f"{report.host}:{report.port}: {report.error or 'no SSH-1 or SSH-2 server answered'}"
        )
    line = report.identification or ""
    lines = [f"# {report.host}:{report.port} says {json.dumps(line)}", f"[targets.{name}]"]
    lines.append(f"protocol = {_toml(protocol)}")
    lines.append(f"host = {_toml(report.host)}")
    if report.port != 22:
        lines.append(f"port = {report.port}")
    if protocol == "ssh2":
        needed, host_key_algorithm = _ssh2_lists(report)
        for config_key, names in needed.items():
            lines.append(f"{config_key} = {_toml(names)}")
        fingerprint = _ssh2_fingerprint(report, host_key_algorithm)
    else:
        offer = report.ssh1.offer
        assert offer is not None
        if not any(c in offer.ciphers for c in SSH1_DEFAULT_CIPHERS):
            usable = [c for c in offer.ciphers if c in ("3des", "blowfish", "des")]
            if not usable:
                raise SuggestError(
                    f"the device offers no SSH-1 cipher the gateway has ({', '.join(offer.ciphers)})"
                )
            lines.append(f"ciphers = {_toml(usable)}")
        floor = _ssh1_key_floor(offer.host_key_bits, offer.server_key_bits)
        if floor is not None:
            lines.append(floor)
        fingerprint = offer.host_key_md5
    profile = quirks.match(line)
    if profile is not None:
        lines.append(f"quirks = {_toml([profile.name])}  # its line matches this quirk profile")
    if fingerprint is not None:
        lines.append(f"host_key = {_toml(fingerprint)}")
    else:
        lines.append('host_key = "accept-new"  # the probe saw no verified key of that type')
    if user is not None:
        lines.append(f"username = {_toml(user)}")
    if key is not None:
        lines.append(f"key = {_toml(str(key))}")
    else:
        lines.append('# password = "..."  (or key = "FILE", or credentials = "pass-through")')
    return "\n".join(lines) + "\n"
