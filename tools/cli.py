"""The ``sshgateway`` admin command: ``hash-password``, ``fingerprints``, ``check-config``,
``known-hosts forget``, ``sessions list|kill``; ``sshgateway --version``.

Subcommands are registered in :data:`COMMANDS` (name -> setup and run functions), so later
ones (``flows``, ``probe``) are one entry each. Every run function returns the exit status.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gateway import passwords, version_line
from gateway.config import ConfigError, config_warnings, load_config
from gateway.hostkeys import HostKeyError, load_host_keys, load_target_key, ssh2_fingerprint
from gateway.known_hosts import KnownHosts, KnownHostsError
from gateway.routing import KNOWN_HOSTS_FILE
from tools import audit as auditview
from tools import sessions
from tools.flows import command as flowview
from tools.probe import command as probe

MAX_STDIN_LINE = passwords.MAX_PASSWORD_BYTES


@dataclass(frozen=True)
class IO:
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO


def _setup_hash_password(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Read one password line on stdin and print its hash, for `password = ...` in the "
        "config. On a terminal it asks twice without echo."
    )


def _read_password(io: IO) -> str | None:
    if io.stdin.isatty():
        first = getpass.getpass("Password: ", stream=io.stderr)
        if getpass.getpass("Again: ", stream=io.stderr) != first:
            print("sshgateway: the two passwords differ", file=io.stderr)
            return None
        return first
    line = io.stdin.readline(MAX_STDIN_LINE + 2)
    return line[:-1] if line.endswith("\n") else line


def _run_hash_password(args: argparse.Namespace, io: IO) -> int:
    password = _read_password(io)
    if password is None:
        return 1
    password = password.removesuffix("\r")
    if not password:
        print("sshgateway: refusing to hash an empty password", file=io.stderr)
        return 1
    if len(password.encode("utf-8")) > passwords.MAX_PASSWORD_BYTES:
        print(
            f"sshgateway: password longer than {passwords.MAX_PASSWORD_BYTES} bytes",
            file=io.stderr,
        )
        return 1
    print(passwords.hash_password(password), file=io.stdout)
    return 0


def _setup_fingerprints(p: argparse.ArgumentParser) -> None:
    p.description = "Print each host key with its fingerprint as SSH clients show it."
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--state-dir", help="the gateway's state directory")
    source.add_argument("--config", help="a config file (its state_dir is used)")
    p.add_argument(
        "--target",
        metavar="NAME",
        help="the host key the gateway shows for target NAME in a jump channel (ssh -J to "
        "an SSH-1 or telnet target) instead of its own",
    )


def _run_target_fingerprint(state_dir: Any, target: str, io: IO) -> int:
    try:
        key = load_target_key(state_dir, target)
    except HostKeyError as e:
        print(
            f"sshgateway: {e} (a target's host key is created at its first jump-host use)",
            file=io.stderr,
        )
        return 1
    print(f"SSH-2 {key.sshType().decode()} {key.size()} {ssh2_fingerprint(key)}", file=io.stdout)
    return 0


def _run_fingerprints(args: argparse.Namespace, io: IO) -> int:
    try:
        state_dir = args.state_dir if args.state_dir else load_config(args.config).state_dir
        if args.target is not None:
            return _run_target_fingerprint(state_dir, args.target, io)
        host_keys = load_host_keys(state_dir)
    except ConfigError as e:
        print(e, file=io.stderr)
        return 1
    except HostKeyError as e:
        print(
            f"sshgateway: {e} (host keys are created when the gateway first starts)", file=io.stderr
        )
        return 1
    for info in host_keys.infos():
        label = "SSH-2" if info.protocol == "ssh2" else "SSH-1"
        print(f"{label} {info.type} {info.bits} {info.fingerprints}", file=io.stdout)
    return 0


def _setup_known_hosts(p: argparse.ArgumentParser) -> None:
    p.description = (
        "The host keys of upstream devices the gateway has pinned: <state_dir>/known_hosts "
        "(SSH-2, OpenSSH's format) and known_hosts.ssh1 (SSH-1)."
    )
    sub = p.add_subparsers(dest="known_hosts_command", required=True, metavar="SUBCOMMAND")
    forget = sub.add_parser(
        "forget",
        help="remove the pinned host keys of a target",
        description=(
            "Remove the keys pinned for a target, so that its next connection pins the "
            'key it offers then (host_key = "accept-new") or is refused until an '
            'administrator adds it ("strict"). A running gateway sees the change at once.'
        ),
    )
    forget.add_argument(
        "target",
        metavar="TARGET",
        help="with --config: a target name; with --state-dir: HOST, HOST:PORT or [HOST]:PORT",
    )
    source = forget.add_mutually_exclusive_group(required=True)
    source.add_argument("--state-dir", help="the gateway's state directory")
    source.add_argument("--config", help="a config file (its state_dir and targets are used)")


_PROTOCOL_LABELS = {"ssh1": "SSH-1", "ssh2": "SSH-2"}


def _host_and_port(text: str) -> tuple[str, int] | None:
    """HOST, HOST:PORT or [HOST]:PORT (port 22 when not given)."""
    host, port = text, "22"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            return None
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or any(c.isspace() for c in host) or not port.isdigit():
        return None
    return (host, int(port)) if 0 < int(port) < 65536 else None


def _run_known_hosts(args: argparse.Namespace, io: IO) -> int:
    # The only subcommand so far: forget.
    protocols: tuple[str, ...] = ("ssh1", "ssh2")
    policy = None
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as e:
            print(e, file=io.stderr)
            return 1
        target = config.targets.get(args.target)
        if target is None or target.protocol not in protocols:
            kind = f"a {target.protocol} target" if target is not None else "no such target"
            names = sorted(n for n, t in config.targets.items() if t.protocol in protocols)
            print(
                f"sshgateway: {args.target!r}: {kind} in {args.config}, nothing to forget "
                f"(targets with host keys: {', '.join(names) or 'none'})",
                file=io.stderr,
            )
            return 1
        state_dir, host, port = config.state_dir, target.host, target.port
        protocols, policy = (target.protocol,), target.host_key.strip()
        name = f"{args.target} ({host}:{port})"
    else:
        found = _host_and_port(args.target)
        if found is None:
            print(
                f"sshgateway: {args.target!r} is not HOST, HOST:PORT or [HOST]:PORT "
                "(target names need --config)",
                file=io.stderr,
            )
            return 1
        state_dir, (host, port) = args.state_dir, found
        name = f"{host}:{port}"
    known = KnownHosts(Path(state_dir) / KNOWN_HOSTS_FILE)
    try:
        removed = known.forget(host, port, protocols)
    except KnownHostsError as e:
        print(f"sshgateway: {e.detail or e}", file=io.stderr)
        return 1
    if not removed:
        print(f"no host key recorded for {name}", file=io.stdout)
    for key in removed:
        label = _PROTOCOL_LABELS[key.protocol]
        print(
            f"forgot {name}: {label} {key.key_type} {key.fingerprint} ({key.path}:{key.line})",
            file=io.stdout,
        )
    if policy == "accept-new":
        print(
            f"{args.target}: the next connection pins the key the device offers then",
            file=io.stdout,
        )
    elif policy == "strict":
        where = known.ssh1_path if protocols == ("ssh1",) else known.path
        print(
            f'{args.target}: host_key is "strict": connections are refused until its key '
            f"is added to {where}",
            file=io.stdout,
        )
    elif policy is not None:
        print(
            f"{args.target}: host_key pins a fingerprint in the config; known_hosts is not "
            "consulted for it",
            file=io.stdout,
        )
    return 0


def _setup_check_config(p: argparse.ArgumentParser) -> None:
    p.description = "Validate a config file: print OK, or every error with its line."
    p.add_argument("file", help="the TOML config file")


def _run_check_config(args: argparse.Namespace, io: IO) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as e:
        print(e, file=io.stdout)
        return 1
    for user in config.users.values():
        if user.authorized_keys is not None and not user.authorized_keys.exists():
            print(
                f"{args.file}: warning: users.{user.name}.authorized_keys: "
                f"{user.authorized_keys} does not exist (yet)",
                file=io.stdout,
            )
    for warning in config_warnings(config):
        print(warning, file=io.stdout)
    print(f"{args.file}: OK", file=io.stdout)
    return 0


@dataclass(frozen=True)
class Command:
    help: str
    setup: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, IO], int]


COMMANDS: dict[str, Command] = {
    "hash-password": Command(
        "hash a password for the config", _setup_hash_password, _run_hash_password
    ),
    "fingerprints": Command("show host key fingerprints", _setup_fingerprints, _run_fingerprints),
    "check-config": Command("validate a config file", _setup_check_config, _run_check_config),
    "known-hosts": Command(
        "upstream devices' pinned host keys", _setup_known_hosts, _run_known_hosts
    ),
    "probe": Command("what SSH-1 and SSH-2 a host offers", probe.setup_cli, probe.run_cli),
    "flows": Command("list, show and compare flow records", flowview.setup_parser, flowview.run),
    "audit": Command("the audit trail, filtered", auditview.setup_parser, auditview.run),
    "sessions": Command("list and end live sessions", sessions.setup_cli, sessions.run_cli),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sshgateway", description="sshgateway admin tools")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.setup(sub.add_parser(name, help=command.help))
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Entry point of the ``sshgateway`` console script; returns the exit status."""
    io = IO(stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr)
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command].run(args, io)


if __name__ == "__main__":
    sys.exit(main())
