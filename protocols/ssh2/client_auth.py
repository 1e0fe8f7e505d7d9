"""The gateway client's SSH-2 user authentication: password, key file, and
keyboard-interactive answered with the password (many devices only offer that) or, with
the ``ask`` option, partly by the user; each tried a bounded number of times so a server
cannot keep us going round.

An RSA key signs with what the server's ``server-sig-algs`` lists; without one (a server
older than RFC 8332) with ``ssh-rsa`` first when the target allows SHA-1, as OpenSSH does.
The server's USERAUTH_BANNER goes to the user's stderr, made safe (:func:`shown_banner`)."""

from __future__ import annotations

from typing import Any

from twisted.conch.ssh import common, transport, userauth
from twisted.internet import defer

from protocols.ssh2.client_state import ClientAttempt, SSH2ClientError
from protocols.ssh2.logs import quiet_logger

# RFC 8332 signature algorithms for an RSA user key, best first; ssh-rsa (SHA-1) besides
# them only when the options allow it (ClientUserAuth.signature_algorithms).
RSA_USER_SIGNATURES = (b"rsa-sha2-512", b"rsa-sha2-256")
MAX_AUTH_ROUNDS = 4  # keyboard-interactive info requests we answer per connection
MAX_BANNER = 8192  # bytes of a device's USERAUTH_BANNER shown to the user


class ClientUserAuth(userauth.SSHUserAuthClient):
    """Password, key file, and keyboard-interactive answered with the password; each
    tried a bounded number of times so a server cannot keep us going round."""

    preferredOrder = [b"publickey", b"password", b"keyboard-interactive"]
    _log = quiet_logger("gateway.targets.ssh2.conch")

    def __init__(self, user: bytes, instance: Any, attempt: ClientAttempt) -> None:
        super().__init__(user, instance)
        self.attempt = attempt
        self._signatures: list[bytes] | None = None  # chosen once the server's EXT_INFO is in
        self._password_tries = 1 if attempt.password is not None else 0
        asks = attempt.options.ask is not None
        self._kbd_tries = 1 if attempt.password is not None or asks else 0
        self._password_for_prompt = attempt.password  # "ask": the first hidden prompt's
        self._rounds = 0

    def signature_algorithms(self) -> list[bytes]:
        """The signature algorithms to try with our key, in order. For an RSA key, what
        the server's ``server-sig-algs`` (RFC 8308) lists; a server that sends none is
        older than RFC 8332 (OpenSSH < 7.2, most devices): ``ssh-rsa`` (SHA-1) first,
        where the target allows it, as OpenSSH does — some such servers disconnect at
        the first algorithm they do not know instead of answering FAILURE."""
        key = self.attempt.key
        if key is None:
            return []
        if key.type() != "RSA":
            return [key.sshType()]
        sha1 = [b"ssh-rsa"] if self.attempt.options.sha1_user_signatures else []
        extensions = getattr(self.transport, "peerExtensions", None) or {}
        listed = extensions.get(b"server-sig-algs")
        if listed is None:
            return sha1 + list(RSA_USER_SIGNATURES)
        names = listed.split(b",")
        return [alg for alg in RSA_USER_SIGNATURES if alg in names] + sha1

    def auth_publickey(self) -> bool:
        # One signed request per signature algorithm, without the "would you accept"
        # probe: the key is ours, and a probe only costs a round trip.
        if self._signatures is None:
            self._signatures = self.signature_algorithms()
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
        if self.attempt.options.ask is not None:
            return self._ask_user(instruction, prompts)
        # Hidden prompts get the password ("Password:", "Enter PASSCODE:"...); echoed
        # ones (a username question) get the login name.
        answers = []
        for _prompt, echo in prompts:
            if echo:
                answers.append(self.attempt.login)
            else:
                answers.append(self.attempt.password or "")
        return defer.succeed(answers)

    @defer.inlineCallbacks
    def _ask_user(self, instruction: bytes, prompts: list[tuple[bytes, bool]]) -> Any:
        """``ask``: the first hidden prompt of the login gets the password the gateway
        holds (stored or passed through); every other prompt goes to the user, the
        device's instruction shown before the first one."""
        ask = self.attempt.options.ask
        assert ask is not None
        answers: list[str] = []
        intro = instruction.decode("utf-8", "replace").strip()
        for prompt, echo in prompts:
            if not echo and self._password_for_prompt is not None:
                answers.append(self._password_for_prompt)
                self._password_for_prompt = None
                continue
            text = prompt.decode("utf-8", "replace")
            if intro:
                text, intro = f"{intro}\n{text}", ""
            try:
                answers.append((yield ask(text, echo)))
            except Exception as exc:  # the user cancelled, or cannot answer (no pty)
                self.attempt.fail(SSH2ClientError(str(exc)))
                self.transport.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"login cancelled")
                yield defer.Deferred()  # the connection is going: nothing more to answer
        return answers

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
        # A device's legal notice goes to the user's stderr, as OpenSSH's client shows it
        # (never into stdout, where a command's output goes).
        try:
            message = common.getNS(packet)[0]
        except Exception:  # a truncated banner is not worth a disconnect
            return
        shown = shown_banner(message)
        if shown:
            self.attempt.sink.stderr(shown)


def shown_banner(message: bytes) -> bytes:
    """A device's banner made safe for the user's terminal: UTF-8 with U+FFFD for what is
    not (old firmware sends Latin-1 or CP437), no control characters (no escape sequences
    from the device), lines ended by CR LF (the client's terminal may be raw), bounded."""
    text = message[:MAX_BANNER].decode("utf-8", "replace")
    lines = ["".join(c for c in line if c.isprintable() or c == "\t") for line in text.splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    return "".join(line + "\r\n" for line in lines).encode("utf-8")
