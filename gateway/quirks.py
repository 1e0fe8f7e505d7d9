"""Quirk profiles: known SSH implementations found on old devices, recognised by the
software-version part of their identification line, each with the workarounds the gateway's
upstream clients apply to it and the legacy algorithms it is known to need.

This module owns the table (``PROFILES``), matching a line against it, a target's
``quirks`` setting (``"auto"``, ``"none"`` or a list of profile and workaround names)
turned into what applies to one connection, and the README's generated table.

The rule, as the issue asks ("all of these opt-in per target"): a profile's *workarounds*
only make the gateway do less (no re-key, no RSA login, ...) and apply automatically; the
*weaker algorithms* a profile lists are never added by it. They are used only when the
target's own ``kex`` / ``ciphers`` / ``macs`` / ``host_key_algorithms`` list them; the log
line names the ones the profile would want, and ``sshgateway probe --suggest-target``
prints a block that lists them.

Sources: PuTTY's ``ssh_detect_bugs`` (ssh.c, later sshverstring.c) and OpenSSH's
``compat.c`` (``compat_datafellows``), read for this table; what comes from vendor
documentation rather than either table says so in its ``source``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# Workarounds: name -> (protocols it concerns, what the gateway does about it). A
# workaround the clients need to switch is passed to them by name (SWITCHED); the others
# describe behaviour the gateway's clients already have with every device.
WORKAROUNDS: dict[str, tuple[tuple[str, ...], str]] = {
    "no-rekey": (
        ("ssh2",),
        "never start a key exchange after the first (one the device starts is answered)",
    ),
    "no-rsa-auth": (
        ("ssh1",),
        "never try SSH-1 RSA authentication, even with a key configured (the device "
        "disconnects on it): password only",
    ),
    "no-ssh1-ignore": (
        ("ssh1",),
        "send no SSH_MSG_IGNORE (the gateway's SSH-1 client never sends one)",
    ),
    "plain-ssh1-password": (
        ("ssh1",),
        "no padding camouflage around the password (the gateway's SSH-1 client sends it "
        "plain, in its own packet, always)",
    ),
    "late-channel-replies": (
        ("ssh2",),
        "the device answers channel requests late or not at all once the channel closes: "
        "the gateway's client waits for channel-request replies without a timer",
    ),
}
SWITCHED = frozenset({"no-rekey", "no-rsa-auth"})
# The target's config keys a profile's wanted algorithms are named by.
ALGORITHM_KEYS = ("kex", "host_key_algorithms", "ciphers", "macs")


@dataclass(frozen=True)
class Profile:
    name: str
    # Matched (re.fullmatch) against the software-version part of the line: what follows
    # "SSH-1.5-" / "SSH-2.0-" up to the first space.
    pattern: str
    workarounds: tuple[str, ...]
    # Legacy algorithms such devices are known to need (config key -> names); never
    # added by the profile, only reported.
    wants: tuple[tuple[str, tuple[str, ...]], ...]
    source: str

    def matches(self, software: str) -> bool:
        return re.fullmatch(self.pattern, software) is not None


_OLD_SSH2 = (
    ("kex", ("diffie-hellman-group1-sha1", "diffie-hellman-group-exchange-sha1")),
    ("ciphers", ("aes128-cbc", "3des-cbc")),
    ("macs", ("hmac-sha1",)),
    ("host_key_algorithms", ("ssh-rsa", "ssh-dss")),
)

PROFILES: tuple[Profile, ...] = (
    Profile(
        "cisco-1.25",
        r"Cisco-1\.25",
        ("no-ssh1-ignore", "plain-ssh1-password", "no-rsa-auth"),
        (("ciphers", ("3des",)),),
        "PuTTY ssh_detect_bugs: BUG_CHOKES_ON_SSH1_IGNORE, BUG_NEEDS_SSH1_PLAIN_PASSWORD, "
        'BUG_CHOKES_ON_RSA for "Cisco-1.25"',
    ),
    Profile(
        "osu-1.x",
        r"OSU_1\.(4alpha3|5alpha4)",
        ("no-ssh1-ignore", "plain-ssh1-password"),
        (),
        "PuTTY ssh_detect_bugs: BUG_CHOKES_ON_SSH1_IGNORE for OSU_1.4alpha3 and "
        "OSU_1.5alpha4, BUG_NEEDS_SSH1_PLAIN_PASSWORD for OSU_1.4alpha3",
    ),
    Profile(
        "ssh-1.2.18-22",
        r"1\.2\.(18|19|20|21|22)",
        ("no-ssh1-ignore",),
        (),
        "PuTTY ssh_detect_bugs: BUG_CHOKES_ON_SSH1_IGNORE for 1.2.18 to 1.2.22",
    ),
    Profile(
        "openssh-2.x",
        r"OpenSSH_2\..*",
        ("no-rekey", "late-channel-replies"),
        _OLD_SSH2,
        "PuTTY ssh_detect_bugs: BUG_SSH2_REKEY for OpenSSH_2.0-2.5.3, "
        "BUG_SENDS_LATE_REQUEST_REPLY for OpenSSH_2-5; OpenSSH compat.c: SSH_BUG_NOREKEY "
        "for OpenSSH_2.0-2.2, SSH_BUG_EXTEOF for OpenSSH_2.*",
    ),
    Profile(
        "openssh-3.x",
        r"OpenSSH_3\..*",
        ("late-channel-replies",),
        _OLD_SSH2,
        "PuTTY ssh_detect_bugs: BUG_SENDS_LATE_REQUEST_REPLY for OpenSSH_2-6.6; OpenSSH "
        "compat.c: SSH_OLD_FORWARD_ADDR, SSH_BUG_SIGTYPE for OpenSSH_3.*",
    ),
    Profile(
        "sun-ssh-1.0",
        r"Sun_SSH_1\.0(\.1)?",
        ("no-rekey",),
        _OLD_SSH2,
        "PuTTY ssh_detect_bugs: BUG_SSH2_REKEY for Sun_SSH_1.0 and 1.0.1; OpenSSH "
        "compat.c: SSH_BUG_NOREKEY for Sun_SSH_1.0*",
    ),
    Profile(
        "digissh-2.0",
        r"DigiSSH_2\.0",
        ("no-rekey",),
        _OLD_SSH2,
        "PuTTY ssh_detect_bugs: BUG_SSH2_REKEY for DigiSSH_2.0",
    ),
    Profile(
        "dropbear-0.4x",
        r"dropbear_0\.([2-4][0-9]|5[01])",
        ("late-channel-replies",),
        (
            ("kex", ("diffie-hellman-group1-sha1",)),
            ("ciphers", ("aes128-cbc", "3des-cbc")),
            ("macs", ("hmac-sha1",)),
            ("host_key_algorithms", ("ssh-rsa", "ssh-dss")),
        ),
        "PuTTY ssh_detect_bugs: BUG_SENDS_LATE_REQUEST_REPLY for dropbear_0.2x-0.51",
    ),
    Profile(
        "romsshell",
        r"RomSShell_.*",
        ("no-rekey",),
        _OLD_SSH2,
        "vendor reports, in neither PuTTY's nor OpenSSH's table: Allegro RomSShell (embedded "
        "in switches and UPS cards) offers only group1/group14-sha1, CBC and ssh-rsa/ssh-dss; "
        "no-rekey is this table's caution, not a documented bug",
    ),
    Profile(
        "comware",
        r"(Comware|3Com|HP)[-_ ]?.*",
        (),
        _OLD_SSH2,
        "vendor documentation, in neither PuTTY's nor OpenSSH's table: old H3C/3Com/HP "
        "Comware and ProCurve firmware offers only SHA-1 key exchange, CBC ciphers and "
        "ssh-rsa/ssh-dss; no bug workaround is known",
    ),
)

BY_NAME = {profile.name: profile for profile in PROFILES}


def software_version(line: str) -> str:
    """The software-version part of ``SSH-x.y-SOFTWARE comments``."""
    rest = line.split("-", 2)[2] if line.count("-") >= 2 else ""
    return rest.split(" ", 1)[0].strip()


def match(line: str) -> Profile | None:
    """The first profile whose pattern matches the line's software version."""
    software = software_version(line)
    for profile in PROFILES:
        if profile.matches(software):
            return profile
    return None


def check_setting(value: object) -> str | None:
    """What is wrong with a target's ``quirks`` value, if anything."""
    if value in ("auto", "none"):
        return None
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        return 'must be "auto", "none" or a list of profile and workaround names'
    unknown = [x for x in value if x not in BY_NAME and x not in WORKAROUNDS]
    if unknown:
        known = ", ".join(sorted([*BY_NAME, *WORKAROUNDS]))
        return f"unknown quirk {unknown[0]!r} (known: {known})"
    return None


@dataclass(frozen=True)
class Applied:
    """What one connection's quirks come to."""

    profile: str | None  # the matched or named profile(s), for the log and the flow
    workarounds: tuple[str, ...]
    wanted: tuple[tuple[str, tuple[str, ...]], ...]  # legacy algorithms it would want

    def switched(self) -> frozenset[str]:
        return frozenset(self.workarounds) & SWITCHED

    def describe(self, listed: Mapping[str, Sequence[str]] | None = None) -> str:
        """The log line's words; ``listed``: the target's own algorithm lists (what they
        already name is not reported as wanted)."""
        who = self.profile or "explicit"
        parts = [f"quirks {who}: {', '.join(self.workarounds) or 'no workarounds'}"]
        listed = listed or {}
        missing = [
            (key, [n for n in names if n not in listed.get(key, ())]) for key, names in self.wanted
        ]
        wants = "; ".join(f"{key} {', '.join(names)}" for key, names in missing if names)
        if wants:
            parts.append(f"would want {wants} (used only where the target lists them)")
        return "; ".join(parts)


def resolve(setting: str | Iterable[str], line: str, protocol: str) -> Applied | None:
    """The quirks for one upstream connection: ``setting`` is the target's ``quirks``,
    ``line`` the device's identification line. None when nothing applies."""
    if setting == "none":
        return None
    if setting == "auto":
        profile = match(line)
        if profile is None:
            return None
        names: list[str] = [profile.name]
    else:
        names = list(setting)
    workarounds: list[str] = []
    wanted: list[tuple[str, tuple[str, ...]]] = []
    profiles = []
    for name in names:
        found = BY_NAME.get(name)
        items = found.workarounds if found is not None else (name,)
        if found is not None:
            profiles.append(found.name)
            wanted.extend(found.wants)
        for item in items:
            if protocol in WORKAROUNDS[item][0] and item not in workarounds:
                workarounds.append(item)
    return Applied(", ".join(profiles) or None, tuple(workarounds), tuple(wanted))


def readme_table() -> str:
    """The README's "Quirk profiles" table."""
    lines = [
        "| profile | matches | workarounds | legacy algorithms it wants | source |",
        "| --- | --- | --- | --- | --- |",
    ]
    for p in PROFILES:
        wants = "; ".join(f"{key}: {', '.join(names)}" for key, names in p.wants) or "—"
        pattern = p.pattern.replace("|", "\\|")
        lines.append(
            f"| `{p.name}` | `{pattern}` | {', '.join(p.workarounds) or '—'} | {wants} | {p.source} |"
        )
    lines += ["", "| workaround | protocol | what the gateway does |", "| --- | --- | --- |"]
    for name, (protocols, meaning) in WORKAROUNDS.items():
        lines.append(f"| `{name}` | {', '.join(protocols)} | {meaning} |")
    return "\n".join(lines)
