"""Routing: which target a session goes to.

Owns the ``user+target`` login name (:func:`split_login`, the one place every checker and
the realm split it), the :class:`Router` that holds every configured target and picks one
per session, the refusal that looks the same for a target that does not exist and one the
user may not reach, and the numbered target menu of an interactive session.

Which target a session gets (``alice`` is the authenticated user):

- ``alice+NAME``: NAME, if it is in alice's ``targets``; otherwise one line on stderr
  (``sshgateway: target 'NAME' is not available to alice``) and exit status 255, whether
  or not NAME exists. The login itself succeeds either way, so the outcome of the login
  tells nothing about which targets exist.
- ``alice``: her ``target`` key; else, for an interactive session (shell, no command) with
  more than one allowed target, the menu; else ``local`` if allowed; else her only target.

A key's forced command (authorized_keys ``command=``, carried by the avatar) replaces
whatever the client asked to run, before the choice above (so a forced session never
gets the menu); a ``local`` session gets the client's command in
``SSH_ORIGINAL_COMMAND``, an upstream target runs the forced command. The key's
``environment=`` variables (when the config permits them) go into the session's
environment over what the client sent.

A user reaches ``local`` only when its ``targets`` names it; its sessions there run as the
OS account its ``os_user`` names (the config makes sure there is one; a user without one
is refused here too, never run as the gateway's own account).

A subsystem request (SSH-2 ``subsystem sftp``) goes to the target the same way (never to
the menu); what serves it there is chosen by :meth:`Router.open_subsystem`, the one place
that knows which target protocol has SFTP and how.

Targets are built by :func:`build_router` from the config: ``local`` is one
``LocalTarget``; upstream targets are ``XTarget(reactor, config, known_hosts)``, the class
of their protocol in ``gateway.targets.registry``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from gateway.config import LOCAL_TARGET, SFTP_SERVER_PATHS, GatewayConfig
from gateway.known_hosts import KnownHosts
from gateway.session_tap import session_info, tap_session
from gateway.sftp_watch import watch_session
from gateway.targets.local import LocalTarget
from gateway.targets.registry import TARGET_PROTOCOLS
from gateway.upstream_errors import FAILURE_STATUS
from protocols.flow import open_flow
from protocols.forwarding import ForwardRefused
from protocols.session import (
    ExitInfo,
    ISessionClient,
    ISessionTarget,
    SessionRequest,
    WindowSize,
)
from protocols.session_values import SFTP_SUBSYSTEM

log = Logger()

# Under the state dir: uploads to SSH-1 devices wait here until scp can take them whole.
SFTP_SPOOL = "sftp-spool"

TARGET_SEPARATOR = "+"

# The variable that holds the client's command when a key's forced command replaced it.
ORIGINAL_COMMAND = "SSH_ORIGINAL_COMMAND"

KNOWN_HOSTS_FILE = "known_hosts"

# The menu: how long a user has to choose, how many wrong answers, how long a line.
MENU_TIMEOUT = 60.0
MENU_TRIES = 3
MAX_MENU_LINE = 64
CANCELLED_STATUS = 1


def _apply_key_options(
    username: str,
    request: SessionRequest,
    forced_command: bytes | None,
    environment: Mapping[str, str] | None,
    subsystem_command: bytes | None = None,
) -> tuple[SessionRequest, bytes | None]:
    """``request`` with the key's forced command and environment; and the client's own
    command when the forced one replaced it (None for a shell request, as sshd). A forced
    command replaces a subsystem too (as sshd); then the original command is
    ``subsystem_command``, what the subsystem would have run."""
    env = dict(request.env)
    env.update(environment or {})  # the key's variables win over the client's
    original = None
    command = request.command
    subsystem = request.subsystem
    if forced_command is not None:
        original = request.command
        asked = "command" if original is not None else "shell"
        if subsystem is not None:
            original, asked = subsystem_command, f"subsystem {subsystem}"
            subsystem = None
        command = forced_command
        log.info(
            "routing: {user}: the key's forced command replaces the client's {asked}",
            user=username,
            asked=asked,
        )
    return dataclasses.replace(request, command=command, env=env, subsystem=subsystem), original


def find_sftp_server(
    configured: os.PathLike[str] | str | None, paths: Sequence[str] = SFTP_SERVER_PATHS
) -> str | None:
    """The sftp-server program for ``local``: ``configured`` (``[session] sftp_server``)
    if given, else the first of ``paths``; None when it is not an executable file."""
    for path in (os.fspath(configured),) if configured is not None else paths:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def split_login(login: str) -> tuple[str, str | None]:
    """``"alice+switch1"`` -> ``("alice", "switch1")``; ``"alice"`` (or ``"alice+"``) ->
    ``("alice", None)``. User names cannot contain ``+``, so the first one separates."""
    user, sep, target = login.partition(TARGET_SEPARATOR)
    return user, (target if sep and target else None)


def not_available(target: str, username: str) -> str:
    """The one refusal for a target that does not exist and one the user may not reach."""
    return f"target {_printable(target)!r} is not available to {username}"


def _printable(text: str) -> str:
    # The name comes from the client: keep control characters out of stderr and the log.
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= 64 else cleaned[:64] + "..."


def _note_file(client: ISessionClient, direction: str, path: str, size: int, result: str) -> None:
    """Note a file an SFTP session moved in the client leg's flow (if it is still open)."""
    flow = open_flow(getattr(client, "flow_id", None))
    if flow is not None:
        flow.file(direction, path, size, result)


# --- sessions that never reach a target -------------------------------------------------------


@implementer(ISessionTarget)
class RefusedSession:
    """Ends the session with one line on stderr and a non-zero status, nothing else."""

    def __init__(
        self, clock: IReactorTime, client: ISessionClient, message: str, status: int
    ) -> None:
        self._client = client
        self._message = message
        self._status = status
        # The front end has not got this object back yet: answer on the next turn.
        self._call: IDelayedCall | None = clock.callLater(0, self._report)

    def _report(self) -> None:
        self._call = None
        self._client.write_stderr(f"sshgateway: {self._message}\r\n".encode("utf-8", "replace"))
        self._client.send_eof()
        self._client.exited(ExitInfo(status=self._status))

    def write_stdin(self, data: bytes) -> None:
        pass

    def close_stdin(self) -> None:
        pass

    def resize(self, size: WindowSize) -> None:
        pass

    def send_signal(self, name: str) -> None:
        pass

    def close(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


# --- the menu -------------------------------------------------------------------------------

_CR, _LF, _NUL = 0x0D, 0x0A, 0x00
_ERASE = (0x08, 0x7F)
_CANCEL = (0x03, 0x04)  # ^C, ^D
_KILL_LINE = 0x15  # ^U


@implementer(ISessionTarget)
class MenuSession:
    """Shows the user's targets, reads one line (a number or a name), opens that target and
    from then on passes everything through to it.

    With a pty the client's terminal is raw, so the menu echoes and handles erase itself;
    a line ends at CR or LF, and the LF or NUL of a CR LF / CR NUL pair is not passed on.
    Input is bounded: a line keeps at most :data:`MAX_MENU_LINE` bytes.
    """

    def __init__(
        self,
        router: Router,
        username: str,
        request: SessionRequest,
        client: ISessionClient,
        choices: tuple[str, ...],
        password: str | None,
        *,
        timeout: float = MENU_TIMEOUT,
    ) -> None:
        self._router = router
        self._username = username
        self._request = request
        self._client = client
        self._choices = choices
        self._password = password
        self._clock = router.clock
        self._timeout = timeout
        self._pty = request.pty is not None
        self._eol = b"\r\n" if self._pty else b"\n"
        self._size: WindowSize | None = request.pty.size if request.pty else None
        self._line = bytearray()
        self._swallow = False  # the next byte may be the LF / NUL of a CR pair
        self._tries = 0
        self._done = False
        self._producer: Any = None
        self.inner: ISessionTarget | None = None
        self._calls: list[IDelayedCall] = [
            self._clock.callLater(0, self._show),
            self._clock.callLater(timeout, self._timed_out),
        ]

    # -- dialogue ------------------------------------------------------------------------

    def _show(self) -> None:
        if self._done:
            return
        lines = [f"sshgateway: targets for {self._username}:"]
        lines += [f"  {n}) {name}" for n, name in enumerate(self._choices, start=1)]
        self._client.write_stdout(self._eol.join(s.encode() for s in lines) + self._eol)
        self._prompt()

    def _prompt(self) -> None:
        self._client.write_stdout(b"target (number or name): ")

    def _timed_out(self) -> None:
        self._finish(f"no target chosen within {self._timeout:g} s", CANCELLED_STATUS)

    def _finish(self, message: str, status: int) -> None:
        if self._done:
            return
        self._done = True
        self._cancel_calls()
        self._client.write_stderr(
            (self._eol if self._pty else b"") + f"sshgateway: {message}\r\n".encode()
        )
        self._client.send_eof()
        self._client.exited(ExitInfo(status=status))

    def _feed(self, data: bytes) -> bytes:
        """Consume menu input; returns what follows the chosen line (for the target)."""
        for index, byte in enumerate(data):
            if self._swallow:
                self._swallow = False
                if byte in (_LF, _NUL):
                    continue
            if byte in (_CR, _LF):
                self._swallow = byte == _CR
                if self._choose():
                    return data[index + 1 :]
                if self._done:
                    return b""
            elif byte in _ERASE:
                if self._line:
                    del self._line[-1]
                    self._echo(b"\b \b")
            elif byte == _KILL_LINE:
                self._echo(b"\b \b" * len(self._line))
                self._line.clear()
            elif byte in _CANCEL:
                self._finish("no target chosen", CANCELLED_STATUS)
                return b""
            elif 0x20 <= byte < 0x7F and len(self._line) < MAX_MENU_LINE:
                self._line.append(byte)
                self._echo(bytes((byte,)))
        return b""

    def _echo(self, data: bytes) -> None:
        if self._pty:
            self._client.write_stdout(data)

    def _choose(self) -> bool:
        text = self._line.decode("ascii").strip()
        self._line.clear()
        self._echo(self._eol)
        if not text:
            self._prompt()
            return False
        name = None
        if text.isdigit() and 1 <= int(text) <= len(self._choices):
            name = self._choices[int(text) - 1]
        elif text in self._choices:
            name = text
        if name is None:
            self._tries += 1
            if self._tries >= MENU_TRIES:
                self._finish("no target chosen", CANCELLED_STATUS)
                return False
            self._client.write_stdout(f"no such choice: {text}".encode() + self._eol)
            self._prompt()
            return False
        self._done = True
        self._cancel_calls()
        request = self._request
        if request.pty is not None and self._size is not None:
            request = dataclasses.replace(
                request, pty=dataclasses.replace(request.pty, size=self._size)
            )
        inner = self._router.open_target(
            self._username, name, request, self._client, password=self._password
        )
        self.inner = inner
        if self._producer is not None:
            inner.registerProducer(self._producer, True)
        return True

    def _cancel_calls(self) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []

    # -- ISessionTarget ------------------------------------------------------------------

    def write_stdin(self, data: bytes) -> None:
        if self.inner is None:
            if self._done:
                return
            data = self._feed(data)
            if self.inner is None or not data:
                return
        if self._swallow:
            self._swallow = False
            if data[:1] in (b"\n", b"\0"):
                data = data[1:]
                if not data:
                    return
        self.inner.write_stdin(data)

    def close_stdin(self) -> None:
        if self.inner is not None:
            self.inner.close_stdin()
        else:
            self._finish("no target chosen", CANCELLED_STATUS)

    def resize(self, size: WindowSize) -> None:
        if self.inner is not None:
            self.inner.resize(size)
        else:
            self._size = size

    def send_signal(self, name: str) -> None:
        if self.inner is not None:
            self.inner.send_signal(name)

    def close(self) -> None:
        self._done = True
        self._cancel_calls()
        if self.inner is not None:
            self.inner.close()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self._producer = producer
        if self.inner is not None:
            self.inner.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._producer = None
        if self.inner is not None:
            self.inner.unregisterProducer()


# --- the router -----------------------------------------------------------------------------


class Router:
    """Every configured target by name, and the per-user choice among them.

    ``targets`` maps each name in ``config.targets`` to an object with
    ``open_session(username, request, client[, *, password])``; the local target's takes
    ``os_user`` instead (the user's OS account), and ``password`` is passed only to
    ``credentials = "pass-through"`` targets.
    """

    def __init__(
        self,
        config: GatewayConfig,
        targets: Mapping[str, Any],
        clock: IReactorTime,
        *,
        menu_timeout: float = MENU_TIMEOUT,
    ) -> None:
        self.config = config
        self.targets = dict(targets)
        self.clock = clock
        self.menu_timeout = menu_timeout
        # The flow sink (gateway.flows.FlowWriter) forwarded connections are written to.
        self.flows: Any = None
        # The inner SSH-2 servers (gateway.inner_ssh2.InnerServers) that answer jump
        # channels to ssh1 and telnet targets; None: such channels are refused.
        self.inner_servers: Any = None
        # What watches every session (gateway.session_tap.ISessionTap); set by the service.
        self.session_taps: list[Any] = []

    def allowed(self, username: str) -> tuple[str, ...]:
        """The targets ``username`` may reach (configured and built), in config order."""
        user = self.config.users.get(username)
        if user is None:
            return ()
        return tuple(t for t in user.targets if t in self.targets)

    def wants_password(self, username: str) -> bool:
        """Whether any target the user may reach takes the gateway password upstream (the
        password checker keeps the password only then)."""
        return any(
            self.config.targets[t].credentials == "pass-through"
            for t in self.allowed(username)
            if t in self.config.targets
        )

    def open_session(
        self,
        username: str,
        request: SessionRequest,
        client: ISessionClient,
        *,
        target: str | None = None,
        password: str | None = None,
        forced_command: bytes | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> ISessionTarget:
        """The session for ``username`` (already authenticated, without ``+target``);
        ``target`` is what the login name asked for; ``forced_command`` and
        ``environment`` come from the key's authorized_keys line. Never raises for a
        refusal."""
        original: bytes | None = None
        if forced_command is not None or environment:
            subsystem_command = None
            if forced_command is not None and request.subsystem is not None:
                server = find_sftp_server(self.config.sftp_server)
                subsystem_command = (server or request.subsystem).encode("utf-8")
            request, original = _apply_key_options(
                username, request, forced_command, environment, subsystem_command
            )
        allowed = self.allowed(username)
        if target is not None:
            if target not in allowed:
                exists = target in self.targets
                log.info(
                    "routing: {user} asked for target {target!r}: refused ({why})",
                    user=username,
                    target=_printable(target),
                    why="not in the user's targets" if exists else "no such target",
                )
                return self.refuse(client, not_available(target, username))
            return self.open_target(
                username, target, request, client, password=password, original_command=original
            )
        user = self.config.users.get(username)
        if user is not None and user.target is not None and user.target in allowed:
            return self.open_target(
                username, user.target, request, client, password=password, original_command=original
            )
        if request.command is None and request.subsystem is None and len(allowed) > 1:
            return MenuSession(
                self, username, request, client, allowed, password, timeout=self.menu_timeout
            )
        if LOCAL_TARGET in allowed:
            return self.open_target(
                username,
                LOCAL_TARGET,
                request,
                client,
                password=password,
                original_command=original,
            )
        if len(allowed) == 1:
            return self.open_target(
                username, allowed[0], request, client, password=password, original_command=original
            )
        if not allowed:
            log.warn("routing: {user} may reach no target", user=username)
            return self.refuse(client, f"no target is available to {username}")
        return self.refuse(
            client,
            f"no target given: log in as {username}+TARGET ({', '.join(allowed)})",
        )

    def open_target(
        self,
        username: str,
        name: str,
        request: SessionRequest,
        client: ISessionClient,
        *,
        password: str | None = None,
        original_command: bytes | None = None,
    ) -> ISessionTarget:
        """Open target ``name`` (already allowed) for ``username``; ``original_command``
        is the client's command that a forced command replaced."""
        if name not in self.allowed(username):
            return self.refuse(client, not_available(name, username))
        config = self.config.targets.get(name)
        log.info("routing: {user} -> {target}", user=username, target=name)
        flow = open_flow(getattr(client, "flow_id", None))
        if flow is not None:
            flow.target = name  # the client leg's record says where its session went
        protocol = "local" if config is None else config.protocol

        def start(client: ISessionClient) -> ISessionTarget:
            if request.subsystem is not None:
                return self.open_subsystem(username, name, protocol, request, client, password)
            return self._start(username, name, request, client, password, original_command)

        if not self.session_taps:
            return start(client)
        info = session_info(username, name, protocol, request, client)
        return tap_session(self.session_taps, info, client, start)

    def open_subsystem(
        self,
        username: str,
        name: str,
        protocol: str,
        request: SessionRequest,
        client: ISessionClient,
        password: str | None = None,
    ) -> ISessionTarget:
        """The one place that picks what serves ``request.subsystem`` on target ``name``
        (already allowed), by the target's protocol:

        - ``local``: the system's sftp-server (``[session] sftp_server``, else the usual
          places), run as the user's ``os_user`` through its shell, as sshd does;
        - ``ssh2``: relayed to the device, whose own server answers over the bridged channel;
        - ``ssh1``: SSH-1 has no subsystems: the gateway serves SFTP itself and turns
          whole-file operations into scp on the device (gateway.targets.sftp_over_scp);
        - ``telnet`` and anything else: refused.

        Refusals are one stderr line and exit status 255 after the request succeeded: the
        client then shows the reason (OpenSSH's sftp and scp print it before "Connection
        closed"), which a failed request would not."""
        subsystem = request.subsystem or ""
        if subsystem != SFTP_SUBSYSTEM:
            return self._refuse_subsystem(username, name, subsystem, client, "unknown subsystem")
        if protocol == "local":
            server = find_sftp_server(self.config.sftp_server)
            if server is None:
                log.error(
                    "routing: no sftp-server for local: {where} is not an executable file",
                    where=self.config.sftp_server or ", ".join(SFTP_SERVER_PATHS),
                )
                return self._refuse_subsystem(
                    username, name, subsystem, client, "the gateway host has no sftp-server"
                )
            log.info(
                "routing: {user}: sftp on {target}: {server}",
                user=username,
                target=name,
                server=server,
            )
            command = server.encode("utf-8", "surrogateescape")
            local_request = dataclasses.replace(request, command=command)
            return self._watched(username, name, local_request, client, password)
        if protocol == "ssh2":
            log.info(
                "routing: {user}: sftp on {target}: relayed to the device",
                user=username,
                target=name,
            )
            return self._watched(username, name, request, client, password)
        if protocol == "ssh1":
            log.info(
                "routing: {user}: sftp on {target}: served by the gateway over the device's scp",
                user=username,
                target=name,
            )
            return self._sftp_over_scp(username, name, request, client, password)
        return self._refuse_subsystem(
            username, name, subsystem, client, f"{protocol} devices have no SFTP or file transfer"
        )

    def _refuse_subsystem(
        self, username: str, name: str, subsystem: str, client: ISessionClient, why: str
    ) -> ISessionTarget:
        log.info(
            "routing: {user} asked for subsystem {subsystem!r} on {target}: refused ({why})",
            user=username,
            subsystem=_printable(subsystem),
            target=name,
            why=why,
        )
        return self.refuse(client, f"{_printable(subsystem)} on {name}: {why}")

    def _watched(
        self,
        username: str,
        name: str,
        request: SessionRequest,
        client: ISessionClient,
        password: str | None,
    ) -> ISessionTarget:
        """A relayed SFTP session (sftp-server on ``local``, an SSH-2 device's own server),
        watched on the way so that the files it moves are noted in the client's flow."""

        def noted(direction: str, path: str, size: int, result: str) -> None:
            _note_file(client, direction, path, size, result)

        def start(watched: ISessionClient) -> ISessionTarget:
            return self._start(username, name, request, watched, password)

        return watch_session(client, start, noted, label=f"{username} on {name}")

    def _sftp_over_scp(
        self,
        username: str,
        name: str,
        request: SessionRequest,
        client: ISessionClient,
        password: str | None,
    ) -> ISessionTarget:
        """The gateway's own SFTP server in front of SSH-1 device ``name``: each file
        operation is an ``scp -f``/``scp -t`` exec session on the device, opened as the
        user's own sessions there are; each file moved is noted in the client's flow."""
        from gateway.targets.sftp_over_scp import sftp_over_scp

        def open_exec(command: bytes, exec_client: ISessionClient) -> ISessionTarget:
            exec_request = SessionRequest(command=command, addresses=request.addresses)
            return self._start(username, name, exec_request, exec_client, password)

        def noted(transfer: Any) -> None:
            _note_file(client, transfer.direction, transfer.path, transfer.size, transfer.result)

        spool = Path(self.config.state_dir) / SFTP_SPOOL
        spool.mkdir(mode=0o700, exist_ok=True)
        start = sftp_over_scp(open_exec, spool_dir=spool, on_transfer=noted)
        return start(client)

    def _start(
        self,
        username: str,
        name: str,
        request: SessionRequest,
        client: ISessionClient,
        password: str | None,
        original_command: bytes | None = None,
    ) -> ISessionTarget:
        """Start ``request`` on target ``name`` (already allowed) as its protocol takes it."""
        target = self.targets[name]
        config = self.config.targets.get(name)
        if config is None or config.protocol == "local":
            user = self.config.users.get(username)
            if user is None or user.os_user is None:
                log.warn("routing: {user} has no os_user for {target}", user=username, target=name)
                return self.refuse(client, not_available(name, username))
            if original_command is not None:
                # As sshd: set last, over anything of the same name.
                env = dict(request.env)
                env[ORIGINAL_COMMAND] = original_command.decode("utf-8", "surrogateescape")
                request = dataclasses.replace(request, env=env)
            return target.open_session(username, request, client, os_user=user.os_user)
        if config.credentials == "pass-through":
            if password is None:
                return self.refuse(
                    client,
                    f"target {name!r} logs in with your gateway password: "
                    "log in to the gateway with your password (not a key) to reach it",
                )
            return target.open_session(username, request, client, password=password)
        return target.open_session(username, request, client)

    def open_forward(
        self,
        username: str,
        host: str,
        port: int,
        client: ISessionClient,
        *,
        avatar: Any = None,
    ) -> ISessionTarget:
        """A jump-host forward (SSH-2 ``direct-tcpip``) of ``username`` to ``host:port``:
        the TCP leg to the target or ``permit_open`` destination it names, or for an
        ssh1 or telnet target the gateway's own SSH-2 server for it, whose sessions come
        back here as ``avatar`` (the outer login's) routed to that target would. Raises
        ForwardRefused (gateway.forwarding has the matching rules)."""
        from gateway.forwarding import TcpForward, choose_destination
        from gateway.inner_ssh2 import INNER_PROTOCOLS

        user = self.config.users.get(username)
        destination = choose_destination(
            username,
            host,
            port,
            self.config.targets,
            self.allowed(username),
            user.permit_open if user is not None else (),
        )
        flows = self.flows
        flow_done = flows.write_flow if flows is not None else None
        if destination.target is not None and destination.protocol in INNER_PROTOCOLS:
            routed_to = getattr(avatar, "routed_to", None)
            if self.inner_servers is None or routed_to is None:
                raise ForwardRefused(
                    f"target {destination.target!r} is {destination.protocol}: no SSH-2 "
                    "server for it here"
                )
            return self.inner_servers.open(
                destination.target, routed_to(destination.target), client, flow_done
            )

        def start(client: ISessionClient) -> ISessionTarget:
            return TcpForward(self.clock, username, destination, client, flow_done=flow_done)

        if not self.session_taps:
            return start(client)
        # Watched like a session (audit trail, live sessions, metrics; never recorded: its
        # bytes are the client's own encrypted SSH).
        info = session_info(
            username,
            destination.target or "",
            "tcp",
            SessionRequest(),
            client,
            forward=f"{host}:{port}",
        )
        return tap_session(self.session_taps, info, client, start)

    def refuse(self, client: ISessionClient, message: str) -> ISessionTarget:
        return RefusedSession(self.clock, client, message, FAILURE_STATUS)

    def close_all(self) -> defer.Deferred[None]:
        """Hang up every running session of every target (for service shutdown)."""
        waits = []
        seen: set[int] = set()
        for target in self.targets.values():
            close_all = getattr(target, "close_all", None)
            if close_all is None or id(target) in seen:
                continue
            seen.add(id(target))
            waits.append(defer.maybeDeferred(close_all))
        done = defer.gatherResults(waits, consumeErrors=True)
        done.addErrback(lambda failure: log.failure("closing targets", failure))
        return done.addCallback(lambda _: None)


def _load_known_hosts(config: GatewayConfig) -> KnownHosts:
    return KnownHosts(config.state_dir / KNOWN_HOSTS_FILE)


def build_router(
    config: GatewayConfig, reactor: Any, *, local: Any = None, known_hosts: Any = None
) -> Router:
    """Build every configured target. ``local`` defaults to ``LocalTarget(reactor)``;
    ``known_hosts`` to ``KnownHosts(<state_dir>/known_hosts)`` when a target checks host keys.

    A target class that rejects its config raises ValueError naming the target.
    """
    if local is None:
        local = LocalTarget(reactor)
    targets: dict[str, Any] = {}
    protocols = [TARGET_PROTOCOLS[t.protocol] for t in config.targets.values()]
    if known_hosts is None and any(p.checks_host_keys for p in protocols):
        known_hosts = _load_known_hosts(config)
    for name, target in config.targets.items():
        upstream = TARGET_PROTOCOLS[target.protocol].upstream
        if upstream is None:
            targets[name] = local
            continue
        try:
            targets[name] = upstream(reactor, target, known_hosts)
        except (ValueError, TypeError) as e:
            message = str(e)
            raise ValueError(message if name in message else f"target {name}: {message}") from e
    return Router(config, targets, reactor)
