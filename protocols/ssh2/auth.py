"""SSH-2 user authentication (ssh-userauth, RFC 4252) through the shared LoginFlow.

Conch's SSHUserAuthServer keeps its own timeout, attempt counter and password delay; here
all three come from :class:`protocols.auth.LoginFlow`, which the SSH-1 front end shares, so
the limits mean the same on both protocols. Only ``publickey`` and ``password`` are offered
(``plink -2 -pw -batch`` fails when keyboard-interactive comes first); ``none`` only where
the portal takes anonymous credentials, which the gateway's own portal never does (the
inner server of a jump channel, whose login is bound to the outer one, does). Requests
are handled one at a time; the few a client may pipeline wait in a short queue.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.conch import error as conch_error
from twisted.conch.ssh import keys, transport, userauth
from twisted.conch.ssh.common import NS
from twisted.cred import credentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from protocols.auth import (
    METHOD_PASSWORD,
    METHOD_PUBLICKEY,
    PartialAuthentication,
    TooManyAttempts,
)
from protocols.ssh2.logs import quiet_logger
from protocols.ssh2.wire import Reader, WireError

log = Logger()

MSG_USERAUTH_REQUEST = 50
MSG_USERAUTH_FAILURE = 51
MSG_USERAUTH_SUCCESS = 52
MSG_USERAUTH_PK_OK = 60

MAX_USERNAME = 256
MAX_NAME = 64  # service and method names
MAX_PASSWORD = 1024
MAX_KEY_BLOB = 16 * 1024
MAX_SIGNATURE = 16 * 1024
MAX_QUEUED_REQUESTS = 8

METHOD_NONE = b"none"

# Method name -> the credentials interface a portal checker must handle for it.
METHOD_INTERFACES: dict[bytes, Any] = {
    METHOD_PUBLICKEY.encode(): credentials.ISSHPrivateKey,
    METHOD_PASSWORD.encode(): credentials.IUsernamePassword,
    METHOD_NONE: credentials.IAnonymous,
}


class KeyAcceptable(PartialAuthentication):
    """A signature-less publickey query names a key the user may log in with.

    Conch checkers say so by raising ``ValidPublicKey`` (an UnauthorizedLogin); it is
    mapped to this PartialAuthentication subclass so that LoginFlow neither counts nor
    delays it — the client will now sign, which is the real attempt.
    """

    def __init__(self) -> None:
        super().__init__([METHOD_PUBLICKEY])


class KeyQueryPortal:
    """Wraps the gateway portal for LoginFlow: ValidPublicKey becomes KeyAcceptable."""

    def __init__(self, portal: Any) -> None:
        self.portal = portal

    def login(self, creds: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        d = defer.maybeDeferred(self.portal.login, creds, mind, *interfaces)

        def query_answer(failure: Failure) -> Failure:
            if failure.check(conch_error.ValidPublicKey):
                return Failure(KeyAcceptable())
            return failure

        return d.addErrback(query_answer)

    def listCredentialsInterfaces(self) -> list[Any]:
        return self.portal.listCredentialsInterfaces()


class SSH2UserAuthServer(userauth.SSHUserAuthServer):
    """ssh-userauth on the shared login flow; the transport owns the flow (it starts the
    grace timer at handoff) and the factory supplies the portal and the next services."""

    _log = quiet_logger(__name__ + ".conch")

    def serviceStarted(self) -> None:
        self.flow = self.transport.login_flow
        self.record = self.transport.record
        portal = self.transport.factory.portal
        available = set(portal.listCredentialsInterfaces())
        self.supportedAuthentications = [
            method for method, iface in METHOD_INTERFACES.items() if iface in available
        ]
        self.user: bytes | None = None
        self.nextService: bytes | None = None
        self.method = b""
        self._busy = False
        self._queue: deque[bytes] = deque()
        self._finished = False
        self._succeeded: list[str] = []
        self._cancelLoginTimeout = None  # the grace timer lives in LoginFlow

    def serviceStopped(self) -> None:
        self._queue.clear()
        self._finished = True

    # -- request intake ------------------------------------------------------------------

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> None:
        if self._finished:
            return  # RFC 4252 section 5.1: ignore requests after success
        if self._busy:
            if len(self._queue) >= MAX_QUEUED_REQUESTS:
                self.transport.protocol_error("too many pipelined authentication requests")
                return
            self._queue.append(packet)
            return
        self._handle(packet)

    def _next(self) -> None:
        self._busy = False
        if self.transport._disconnecting:
            self._queue.clear()  # no more password hashing for a connection that is gone
            return
        while self._queue and not self._busy and not self._finished:
            self._handle(self._queue.popleft())

    def _handle(self, packet: bytes) -> None:
        try:
            reader = Reader(packet)
            user = reader.string(MAX_USERNAME)
            service = reader.string(MAX_NAME)
            method = reader.string(MAX_NAME)
        except WireError as e:
            self.transport.protocol_error(f"bad userauth request: {e}")
            return
        if service not in self.transport.factory.services or service == self.name:
            self.transport.sendDisconnect(
                transport.DISCONNECT_SERVICE_NOT_AVAILABLE, b"no such service"
            )
            return
        if user != self.user or service != self.nextService:
            self._succeeded = []
        self.user, self.nextService, self.method = user, service, method
        flow = self.record.flow
        if flow is not None:
            flow.auth_method = method.decode("ascii", "replace")
        try:
            username = user.decode("utf-8")
        except UnicodeDecodeError:
            # Not a name anyone has; answered like any other failed attempt below.
            username = user.decode("utf-8", "replace")

        if method not in self.supportedAuthentications:
            # "none" and unoffered methods: just list what we offer; no attempt is used up.
            self._flow_auth("failure")
            self._send_failure(partial=False)
            return
        try:
            attempt = self._credentials(method, user, reader)
        except WireError as e:
            self.transport.protocol_error(f"bad {method.decode('ascii', 'replace')} request: {e}")
            return
        if attempt is None:
            self._flow_auth("failure")
            self._send_failure(partial=False)
            return
        method_name = method.decode("ascii")
        self.record.user = username
        self.record.auth_method = method_name
        self._busy = True
        d = self.flow.attempt(username, method_name, attempt)
        d.addCallbacks(self._succeeded_login, self._failed_login, errbackArgs=(packet,))
        d.addErrback(self._internal_error)
        d.addBoth(lambda _: self._next())

    def _credentials(self, method: bytes, user: bytes, reader: Reader) -> Any:
        if method == METHOD_NONE:
            reader.end()
            return credentials.Anonymous()
        if method == b"password":
            change = reader.boolean()
            password = reader.string(MAX_PASSWORD)
            if change:
                reader.string(MAX_PASSWORD)  # password change is not supported
                reader.end()
                return None
            reader.end()
            return credentials.UsernamePassword(user, password)
        # publickey
        has_signature = reader.boolean()
        algorithm = reader.string(MAX_NAME)
        blob = reader.string(MAX_KEY_BLOB)
        signature = reader.string(MAX_SIGNATURE) if has_signature else None
        reader.end()
        if algorithm not in self.transport.user_signature_algorithms:
            return None
        try:
            key = keys.Key.fromString(blob)
        except Exception:
            log.info("ssh2: unparseable public key offered by {peer}", peer=self.record.peer)
            return None
        if algorithm not in key.supportedSignatureAlgorithms():
            return None
        if signature is None:
            return credentials.SSHPrivateKey(user, algorithm, blob, None, None)
        signed = (
            NS(self.transport.sessionID)
            + bytes((MSG_USERAUTH_REQUEST,))
            + NS(user)
            + NS(self.nextService)
            + NS(b"publickey")
            + b"\x01"
            + NS(algorithm)
            + NS(blob)
        )
        try:
            sig_reader = Reader(signature)
            if sig_reader.string(MAX_NAME) != algorithm:
                return None
            if key.isSecurityKey():
                signed = self._wrapMessageWithSKMetadata(signature, signed, key.application)
        except (WireError, ValueError):
            return None
        return credentials.SSHPrivateKey(user, algorithm, blob, signed, signature)

    # -- outcomes -------------------------------------------------------------------------

    def _succeeded_login(self, result: tuple) -> None:
        interface, avatar, logout = result
        from protocols.ssh2.connection import ConchAvatar

        if self.transport._disconnecting or self.transport.transport is None:
            logout()  # the connection is going away (grace time, client left)
            return

        self._finished = True
        self._queue.clear()
        self._succeeded.append(self.method.decode("ascii"))
        self.record.auth_method = "+".join(dict.fromkeys(self._succeeded))
        self.record.auth_result = "success"
        self._flow_auth("success")
        if self.record.flow is not None:
            self.record.flow.user = self.record.user
        log.info(
            "ssh2: {peer} logged in as {user!r} with {method}",
            peer=self.record.peer,
            user=self.record.user,
            method=self.record.auth_method,
        )
        self.transport.avatar = ConchAvatar(avatar, self.transport.factory, self.record)
        self.transport.logoutFunction = logout
        self.transport.sendPacket(MSG_USERAUTH_SUCCESS, b"")
        service = self.transport.factory.services[self.nextService]
        self.transport.setService(service())

    def _failed_login(self, failure: Failure, packet: bytes) -> None:
        if failure.check(KeyAcceptable):
            # Echo algorithm and blob back (RFC 4252 section 7).
            reader = Reader(packet)
            for _ in range(3):
                reader.string(MAX_KEY_BLOB)
            reader.boolean()
            algorithm = reader.string(MAX_NAME)
            blob = reader.string(MAX_KEY_BLOB)
            self.transport.sendPacket(MSG_USERAUTH_PK_OK, NS(algorithm) + NS(blob))
            return
        if failure.check(PartialAuthentication):
            method = self.method.decode("ascii")
            self._succeeded.append(method)
            self.flow.context.succeeded.add(method)
            remaining = [m.encode("ascii") for m in failure.value.remaining]
            self._flow_auth("partial")
            self._send_failure(partial=True, methods=remaining or None)
            return
        self.record.auth_result = "failure"
        self._flow_auth("failure")
        if failure.check(TooManyAttempts):
            log.info("ssh2: {peer}: {why}", peer=self.record.peer, why=failure.getErrorMessage())
            self.transport.sendDisconnect(
                transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
                b"too many authentication failures",
            )
            return
        if not failure.check(UnauthorizedLogin):
            failure.raiseException()
        # The reason stays in our log; the client learns only that it failed.
        log.info(
            "ssh2: {peer} failed {method} for {user!r}",
            peer=self.record.peer,
            method=self.method.decode("ascii"),
            user=self.record.user,
        )
        self._send_failure(partial=False)

    def _flow_auth(self, result: str) -> None:
        """One attempt of the method in progress, for the flow record (never its data)."""
        flow = self.record.flow
        if flow is not None:
            flow.auth(flow.auth_method, result)

    def _internal_error(self, failure: Failure) -> None:
        log.failure("ssh2: authentication error for {peer}", failure, peer=self.record.peer)
        self.transport.protocol_error("internal error during authentication")

    def _send_failure(self, partial: bool, methods: list[bytes] | None = None) -> None:
        if methods is None:
            done = set(self._succeeded)
            offered = [m for m in self.supportedAuthentications if m != METHOD_NONE]
            methods = [m for m in offered if m.decode() not in done] or offered
        self.transport.sendPacket(
            MSG_USERAUTH_FAILURE, NS(b",".join(methods)) + (b"\x01" if partial else b"\x00")
        )

    def timeoutAuthentication(self) -> None:  # Conch's own timer is never started here
        raise NotImplementedError
