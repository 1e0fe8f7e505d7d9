"""``sshgateway sessions list|kill``: the running gateway's live sessions, through its
control socket (gateway.control: one JSON request line, one JSON answer line). With a
shared store (``[store] url``) the gateway answers for every instance of the cluster
(gateway.store.sessions): ``list`` shows which instance holds each session, ``kill`` ends a
session wherever it is held; what the gateway could not reach comes as warnings (stderr).

Exit status: 0 done; 1 when the gateway cannot be reached, refuses, has no such session,
or the instance holding it did not end it in time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, load_config
from gateway.control import CONTROL_SOCKET, NOT_FOUND, control_socket_path
from gateway.control_client import ControlError, ask
from gateway.live_sessions import SessionSummary


def setup_cli(p: argparse.ArgumentParser) -> None:
    p.description = (
        "The running gateway's live sessions, through its control socket "
        f"(<state_dir>/{CONTROL_SOCKET} or [control] socket): only the gateway's account "
        "and root may use it."
    )
    sub = p.add_subparsers(dest="sessions_command", required=True, metavar="SUBCOMMAND")
    listing = sub.add_parser(
        "list",
        help="the open sessions",
        description="One line per open session: id, user, source, front protocol, target, "
        "start time, bytes from and to the client, recording file; with worker processes the "
        "worker, with a shared store the instance that holds it (every instance's sessions).",
    )
    listing.add_argument("--format", choices=("text", "json"), default="text")
    kill = sub.add_parser(
        "kill",
        help="end a session",
        description="End a session: its client is told (the message) and disconnected, the "
        "device leg or local program closed; the gateway's log names who ended it. With a "
        "shared store, a session another instance holds is ended by that instance (this "
        "waits for it, at most 10 s).",
    )
    kill.add_argument("id", metavar="ID", help="the session id, as `sessions list` shows it")
    kill.add_argument(
        "--message", metavar="TEXT", help='what the client is told (default: "session ended '
        'by an operator")'
    )
    for command in (listing, kill):
        source = command.add_mutually_exclusive_group(required=True)
        source.add_argument("--state-dir", help="the gateway's state directory")
        source.add_argument("--config", help="the gateway's config file")
        source.add_argument("--socket", help="the control socket itself")


def socket_of(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if args.state_dir:
        return Path(args.state_dir) / CONTROL_SOCKET
    return control_socket_path(load_config(args.config))


def run_cli(args: argparse.Namespace, io: Any) -> int:
    try:
        path = socket_of(args)
    except ConfigError as e:
        print(e, file=io.stderr)
        return 1
    except OSError as e:
        print(f"sshgateway: cannot read {args.config}: {e.strerror or e}", file=io.stderr)
        return 1
    try:
        if args.sessions_command == "list":
            answer = ask(path, {"request": "list"})
            sessions = [SessionSummary.from_json(s) for s in answer.get("sessions", [])]
            for warning in answer.get("warnings") or ():
                print(f"sshgateway: warning: {warning}", file=io.stderr)
            show_sessions(sessions, args.format, io.stdout)
            return 0
        answer = ask(path, {"request": "kill", "session": args.id, "message": args.message})
        ended = SessionSummary.from_json(answer.get("session"))
    except ControlError as e:
        hint = " (`sshgateway sessions list` shows the open ones)" if e.code == NOT_FOUND else ""
        print(f"sshgateway: {e}{hint}", file=io.stderr)
        return 1
    except (ValueError, TypeError) as e:
        print(f"sshgateway: {path}: not a gateway's answer: {e}", file=io.stderr)
        return 1
    print(f"ended session {ended.id}: {describe(ended)}", file=io.stdout)
    return 0


def describe(s: SessionSummary) -> str:
    front = {"ssh1": "SSH-1", "ssh2": "SSH-2"}.get(s.front_protocol, s.front_protocol or "?")
    where = f" on instance {s.instance}" if s.instance else ""
    return f"{s.user} from {s.source or '?'} ({front}) to {target_text(s)}{where}"


def target_text(s: SessionSummary) -> str:
    """The target column: its name, and for a jump-host forward where it goes."""
    if s.forward is None:
        return s.target
    return f"{s.target} (forward {s.forward})" if s.target else f"forward {s.forward}"


def started_text(started: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))


COLUMNS = ("ID", "USER", "SOURCE", "FRONT", "TARGET", "STARTED", "IN", "OUT", "RECORDING")
# With worker processes (gateway.worker_sessions), which worker holds each session.
WORKER_COLUMN = "WORKER"
# With a shared store (gateway.store.sessions), which instance holds each session.
INSTANCE_COLUMN = "INSTANCE"


def show_sessions(sessions: list[SessionSummary], form: str, out: Any) -> None:
    if form == "json":
        json.dump([s.to_json() for s in sessions], out, indent=2)
        print(file=out)
        return
    if not sessions:
        print("no live sessions", file=out)
        return
    with_workers = any(s.worker is not None for s in sessions)
    with_instances = any(s.instance is not None for s in sessions)
    header = (
        *COLUMNS[:-1],
        *((WORKER_COLUMN,) if with_workers else ()),
        *((INSTANCE_COLUMN,) if with_instances else ()),
        COLUMNS[-1],
    )
    rows = [header] + [
        (
            s.id, s.user, s.source or "-", s.front_protocol or "-", target_text(s),
            started_text(s.started), str(s.bytes_in), str(s.bytes_out),
            *((str(s.worker or "-"),) if with_workers else ()),
            *((s.instance or "-",) if with_instances else ()), s.recording or "-",
        )  # fmt: skip
        for s in sessions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)
