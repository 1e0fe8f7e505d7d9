"""``sshgateway sessions list|kill``: the running gateway's live sessions, through its
control socket (gateway.control: one JSON request line, one JSON answer line).

Exit status: 0 done; 1 when the gateway cannot be reached, refuses, or has no such
session.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, load_config
from gateway.control import CONTROL_SOCKET, NOT_FOUND, control_socket_path
from gateway.live_sessions import SessionSummary

MAX_ANSWER = 64 * 1024 * 1024  # bytes of one answer line (a list of many sessions)
TIMEOUT = 30.0  # seconds for the whole exchange


class ControlError(Exception):
    """The gateway could not be asked, or said no (``code`` from gateway.control)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def ask(path: Path, request: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one request to the control socket at ``path``; its successful answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no control socket at {path}: is the gateway running?") from None
        except ConnectionRefusedError:
            raise ControlError(
                f"nothing answers on {path}: the gateway is not running (a stale socket)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"{path}: permission denied (only the gateway's account and root may use it)"
            ) from None
        except OSError as e:
            raise ControlError(f"{path}: {e.strerror or e}") from None
        try:
            try:
                sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # a refusal comes at once, then the close: its line is still to read
            line = _read_line(sock)
        except TimeoutError:
            raise ControlError(f"{path}: the gateway did not answer within {timeout:.0f} s") from None
        except OSError as e:
            raise ControlError(f"{path}: {e.strerror or e}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(line)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise ControlError(f"{path}: not a gateway's answer")
    if not answer["ok"]:
        raise ControlError(str(answer.get("message", "refused")), str(answer.get("error", "")))
    return answer


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk or size > MAX_ANSWER:
            break
    return b"".join(chunks).split(b"\n", 1)[0]


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
        "start time, bytes from and to the client, recording file.",
    )
    listing.add_argument("--format", choices=("text", "json"), default="text")
    kill = sub.add_parser(
        "kill",
        help="end a session",
        description="End a session: its client is told (the message) and disconnected, the "
        "device leg or local program closed; the gateway's log names who ended it.",
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
    return f"{s.user} from {s.source or '?'} ({front}) to {s.target}"


def started_text(started: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))


COLUMNS = ("ID", "USER", "SOURCE", "FRONT", "TARGET", "STARTED", "IN", "OUT", "RECORDING")


def show_sessions(sessions: list[SessionSummary], form: str, out: Any) -> None:
    if form == "json":
        json.dump([s.to_json() for s in sessions], out, indent=2)
        print(file=out)
        return
    if not sessions:
        print("no live sessions", file=out)
        return
    rows = [COLUMNS] + [
        (
            s.id, s.user, s.source or "-", s.front_protocol or "-", s.target,
            started_text(s.started), str(s.bytes_in), str(s.bytes_out), s.recording or "-",
        )  # fmt: skip
        for s in sessions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)
