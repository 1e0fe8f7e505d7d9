"""``sshgateway probe``: its options, and running a probe from the command line (the
reactor started and stopped here, the report written in the chosen format, the exit
status)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.python.failure import Failure

from tools.probe.hosts import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, probe_hosts
from tools.probe.output import FORMATS
from tools.probe.progress import ProgressBar
from tools.probe.report import Credentials, HostReport
from tools.probe.targets import parse_target, read_targets


def setup_cli(p: Any) -> None:
    p.description = (
        "Connect to each HOST[:PORT] once as an SSH-1 client and as an SSH-2 client (plus one "
        "key exchange per SSH-2 host key type) and report what each protocol offers, without "
        "logging in unless --user is given. Exit status 0 when every host answered (and every "
        "login ran its command), 1 otherwise, 2 for bad arguments."
    )
    p.add_argument("targets", nargs="*", metavar="HOST[:PORT]", help="hosts to probe (port 22)")
    p.add_argument("--hosts-file", metavar="FILE", help="more targets, one per line ('#' comments)")
    p.add_argument(
        "--timeout", type=_positive, default=DEFAULT_TIMEOUT,
        help=f"seconds per host for the probe, all connections included, and again for the "
        f"logins with --user (default {DEFAULT_TIMEOUT:g})",
    )  # fmt: skip
    p.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY,
        help=f"hosts probed at once (default {DEFAULT_CONCURRENCY})",
    )  # fmt: skip
    p.add_argument("--format", choices=sorted(FORMATS), default="text")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument(
        "--suggest-target", metavar="NAME",
        help="probe one HOST[:PORT] and print a ready [targets.NAME] block for the gateway's "
        "config: protocol, the algorithms it needs that the defaults lack, the quirk profile "
        "its line matches, the host key to pin (with --user and --key: those too; no login)",
    )  # fmt: skip
    group = p.add_argument_group(
        "logging in",
        "With --user and --password or --key, also log in over each protocol found, run a "
        "command and record both connections as flows (sshgateway flows compare ID1 ID2). "
        "The host keys the probe saw are pinned for the login.",
    )
    group.add_argument("--user", help="login name")
    group.add_argument(
        "--password", help="the password; '-' reads one line from stdin (keeps it out of ps)"
    )
    group.add_argument("--key", help="a private key file (OpenSSH for SSH-2, SSH-1 RSA for SSH-1)")
    group.add_argument(
        "--state-dir", default="sshgateway-state",
        help="where the flow records go (<dir>/flows/; default ./sshgateway-state)",
    )  # fmt: skip
    group.add_argument(
        "--command",
        dest="login_command",
        metavar="COMMAND",
        default="true",
        help="the command run (default: true)",
    )


_TARGET_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _suggest(args: Any, report: HostReport, io: Any) -> int:
    from tools.probe.suggest import SuggestError, suggest_target

    try:
        block = suggest_target(
            args.suggest_target, report, user=args.user,
            key=Path(args.key).resolve() if args.key else None,
        )  # fmt: skip
    except SuggestError as exc:
        print(f"sshgateway probe: {exc}", file=io.stderr)
        return 1
    io.stdout.write(block)
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise ValueError(text)
    return value


def _credentials(args: Any, io: Any) -> Credentials | None:
    if args.user is None:
        if args.password is not None or args.key is not None:
            raise ValueError("--password and --key need --user")
        return None
    if args.password is None and args.key is None:
        raise ValueError("--user needs --password or --key")
    password = args.password
    if password == "-":
        line = io.stdin.readline(4096)
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    from gateway.flows import FlowWriter, flows_dir

    state_dir = Path(args.state_dir)
    return Credentials(
        user=args.user,
        password=password,
        key=Path(args.key) if args.key else None,
        state_dir=state_dir,
        command=args.login_command,
        flows=FlowWriter(flows_dir(state_dir)),
    )


def run_cli(args: Any, io: Any) -> int:
    targets = list(args.targets)
    try:
        if args.hosts_file:
            targets += read_targets(args.hosts_file)
        for target in targets:
            parse_target(target)
    except (OSError, ValueError) as exc:
        print(f"sshgateway probe: {exc}", file=io.stderr)
        return 2
    if not targets:
        print("sshgateway probe: no HOST[:PORT] given", file=io.stderr)
        return 2
    if args.concurrency < 1:
        print("sshgateway probe: --concurrency must be at least 1", file=io.stderr)
        return 2
    if args.suggest_target is not None:
        if len(targets) != 1:
            print("sshgateway probe: --suggest-target takes exactly one HOST[:PORT]", file=io.stderr)
            return 2
        if not _TARGET_NAME.fullmatch(args.suggest_target):
            print(
                f"sshgateway probe: {args.suggest_target!r} is not a target name "
                "(letters, digits, '_' and '-')",
                file=io.stderr,
            )
            return 2
    try:
        credentials = None if args.suggest_target is not None else _credentials(args, io)
    except ValueError as exc:
        print(f"sshgateway probe: {exc}", file=io.stderr)
        return 2
    from twisted.internet import reactor

    progress = None
    if not args.no_progress and io.stderr.isatty():
        progress = ProgressBar(io.stderr, reactor)
    outcome: list[Any] = []

    def start() -> None:
        d = probe_hosts(
            reactor, targets, args.timeout, args.concurrency,
            progress=progress, credentials=credentials,
        )  # fmt: skip
        d.addBoth(outcome.append)
        if progress is not None:
            d.addBoth(lambda _: progress.stop())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome or isinstance(outcome[0], Failure):
        detail = outcome[0].getErrorMessage() if outcome else "interrupted"
        print(f"sshgateway probe: {detail}", file=io.stderr)
        return 1
    reports: list[HostReport] = outcome[0]
    if args.suggest_target is not None:
        return _suggest(args, reports[0], io)
    io.stdout.write(FORMATS[args.format](reports))
    if args.format == "text" and credentials is not None:
        for r in reports:
            ids = [x.flow_id for x in r.logins if x.flow_id]
            if len(ids) == 2:
                print(
                    f"{r.host}:{r.port}: sshgateway flows compare --state-dir "
                    f"{credentials.state_dir} {ids[0]} {ids[1]}",
                    file=io.stdout,
                )
    answered = all(r.status == "ok" for r in reports)
    return 0 if answered and all(x.ok for r in reports for x in r.logins) else 1
