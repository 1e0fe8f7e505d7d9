"""The client side of the control socket protocol (gateway.control: one JSON request
line, one JSON answer line): :func:`ask`, blocking, for ``sshgateway sessions``
(tools.sessions); :func:`ask_later`, a Deferred, for the parent of worker processes,
which asks each worker's control socket (gateway.worker_sessions).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

MAX_ANSWER = 64 * 1024 * 1024  # bytes of one answer line (a list of many sessions)
TIMEOUT = 30.0  # seconds for the whole exchange (the blocking client)


class ControlError(Exception):
    """The gateway could not be asked, or said no (``code`` from gateway.control; the
    refusal itself in ``answer``)."""

    def __init__(self, message: str, code: str = "", answer: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.answer = answer


def request_line(request: dict[str, Any]) -> bytes:
    return json.dumps(request).encode("utf-8") + b"\n"


def answer_of(path: Path, line: bytes) -> dict[str, Any]:
    """The successful answer in ``line``; ControlError when it is a refusal or no answer."""
    try:
        answer = json.loads(line)
    except (ValueError, RecursionError):
        answer = None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise ControlError(f"{path}: not a gateway's answer")
    if not answer["ok"]:
        raise ControlError(
            str(answer.get("message", "refused")), str(answer.get("error", "")), answer
        )
    return answer


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
                sock.sendall(request_line(request))
            except (BrokenPipeError, ConnectionResetError):
                pass  # a refusal comes at once, then the close: its line is still to read
            line = _read_line(sock)
        except TimeoutError:
            raise ControlError(f"{path}: the gateway did not answer within {timeout:.0f} s") from None
        except OSError as e:
            raise ControlError(f"{path}: {e.strerror or e}") from None
    finally:
        sock.close()
    return answer_of(path, line)


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


class OneRequest(LineReceiver):
    """Sends one request on connecting; ``answer`` fires with the answer line. Cancelling
    ``answer`` drops the connection (a caller's timeout)."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_ANSWER

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.answer: defer.Deferred[bytes] = defer.Deferred(self._cancelled)

    def _cancelled(self, _: Any) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self) -> None:
        self.transport.write(request_line(self.request))

    def lineReceived(self, line: bytes) -> None:
        if not self.answer.called:
            self.answer.callback(line)
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        if not self.answer.called:
            self.answer.errback(ControlError(f"an answer longer than {MAX_ANSWER} bytes"))
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.answer.called:
            self.answer.errback(ControlError("the connection closed without an answer"))


def ask_later(reactor: Any, path: Path, request: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
    """Send one request to the control socket at ``path``; a Deferred of its successful
    answer (ControlError for a refusal). No timeout of its own: cancel it for one."""
    protocol = OneRequest(request)
    connecting = connectProtocol(UNIXClientEndpoint(reactor, str(path)), protocol)

    def connected(_: Any) -> defer.Deferred[bytes]:
        return protocol.answer

    connecting.addCallback(connected)
    connecting.addCallback(lambda line: answer_of(path, line))
    return connecting
