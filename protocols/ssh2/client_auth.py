"""The gateway client's SSH-2 user authentication: password, key file, and
keyboard-interactive answered with the password (many devices only offer that), each
tried a bounded number of times so a server cannot keep us going round."""

from __future__ import annotations

from typing import Any

from twisted.conch.ssh import common, transport, userauth
from twisted.internet import defer

from protocols.ssh2.client_state import ClientAttempt
from protocols.ssh2.logs import quiet_logger

# RFC 8332 signature algorithms for an RSA user key, best first; ssh-rsa (SHA-1) only when
# the options allow it (a device that old signs nothing better).
RSA_USER_SIGNATURES = (b"rsa-sha2-512", b"rsa-sha2-256")
MAX_AUTH_ROUNDS = 4  # keyboard-interactive info requests we answer per connection


class ClientUserAuth(userauth.SSHUserAuthClient):
    """Password, key file, and keyboard-interactive answered with the password; each
    tried a bounded number of times so a server cannot keep us going round."""

    preferredOrder = [b"publickey", b"password", b"keyboard-interactive"]
    _log = quiet_logger("gateway.targets.ssh2.conch")

    def __init__(self, user: bytes, instance: Any, attempt: ClientAttempt) -> None:
        super().__init__(user, instance)
        self.attempt = attempt
        self._signatures: list[bytes] = []
        if attempt.key is not None:
            if attempt.key.type() == "RSA":
                self._signatures = list(RSA_USER_SIGNATURES)
                if attempt.options.sha1_user_signatures:
                    self._signatures.append(b"ssh-rsa")
            else:
                self._signatures = [attempt.key.sshType()]
        self._password_tries = 1 if attempt.password is not None else 0
        self._kbd_tries = 1 if attempt.password is not None else 0
        self._rounds = 0

    def auth_publickey(self) -> bool:
        # One signed request per signature algorithm, without the "would you accept"
        # probe: the key is ours, and a probe only costs a round trip.
        if not self._signatures:
            return False
        algorithm = self._signatures.pop(0)
        key = self.attempt.key
        assert key is not None
        public = key.public()
        signed = (
            common.NS(self.transport.sessionID)
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + common.NS(self.user)
            + common.NS(self.instance.name)
            + common.NS(b"publickey")
            + b"\x01"
            + common.NS(algorithm)
            + common.NS(public.blob())
        )
        signature = key.sign(signed, signatureType=algorithm)
        self.askForAuth(
            b"publickey",
            b"\x01" + common.NS(algorithm) + common.NS(public.blob()) + common.NS(signature),
        )
        return True

    def ssh_USERAUTH_PK_OK(self, packet: bytes) -> None:
        if self.lastAuth == b"keyboard-interactive":
            self._rounds += 1
            if self._rounds > MAX_AUTH_ROUNDS:
                self.transport.sendDisconnect(
                    transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"too many prompts"
                )
                return
            super().ssh_USERAUTH_PK_OK(packet)
            return
        # PK_OK for a signed request, or a password change request: neither is
        # something the gateway can act on.
        self.askForAuth(b"none", b"")

    def getPassword(self, prompt: bytes | None = None) -> defer.Deferred | None:
        if self._password_tries <= 0 or self.attempt.password is None:
            return None
        self._password_tries -= 1
        return defer.succeed(self.attempt.password.encode("utf-8"))

    def auth_keyboard_interactive(self) -> bool:
        if self._kbd_tries <= 0:
            return False
        self._kbd_tries -= 1
        return super().auth_keyboard_interactive()

    def getGenericAnswers(
        self, name: bytes, instruction: bytes, prompts: list[tuple[bytes, bool]]
    ) -> defer.Deferred:
        # Hidden prompts get the password ("Password:", "Enter PASSCODE:"...); echoed
        # ones (a username question) get the login name.
        answers = []
        for _prompt, echo in prompts:
            if echo:
                answers.append(self.attempt.login)
            else:
                answers.append(self.attempt.password or "")
        return defer.succeed(answers)

    def ssh_USERAUTH_SUCCESS(self, packet: bytes) -> None:
        self.attempt.phase = "session set-up"
        self._flow_auth("success")
        super().ssh_USERAUTH_SUCCESS(packet)

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Any:
        self._flow_auth("partial" if packet[-1:] == b"\x01" else "failure")
        return super().ssh_USERAUTH_FAILURE(packet)

    def askForAuth(self, kind: bytes, extraData: bytes) -> None:
        if self.attempt.flow is not None:
            self.attempt.flow.auth_method = kind.decode("ascii", "replace")
        super().askForAuth(kind, extraData)

    def _flow_auth(self, result: str) -> None:
        flow = self.attempt.flow
        if flow is not None:
            flow.auth((self.lastAuth or b"none").decode("ascii", "replace"), result)

    def ssh_USERAUTH_BANNER(self, packet: bytes) -> None:
        pass  # a device's legal banner is not session output
