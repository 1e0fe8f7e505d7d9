"""The ``sshgateway`` admin command: ``hash-password``, ``fingerprints``, ``check-config``.

Subcommands are registered in :data:`COMMANDS` (name -> setup and run functions), so later
ones (``flows``, ``probe``) are one entry each. Every run function returns the exit status.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from gateway import passwords
from gateway.config import ConfigError, config_warnings, load_config
from gateway.hostkeys import HostKeyError, load_host_keys
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


def _run_fingerprints(args: argparse.Namespace, io: IO) -> int:
    try:
        state_dir = args.state_dir if args.state_dir else load_config(args.config).state_dir
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
        print(f"{label} {info.type} {info.bits} {info.fingerprint}", file=io.stdout)
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
    "probe": Command("what SSH-1 and SSH-2 a host offers", probe.setup_cli, probe.run_cli),
    "flows": Command("list, show and compare flow records", flowview.setup_parser, flowview.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sshgateway", description="sshgateway admin tools")
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
