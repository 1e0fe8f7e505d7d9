"""paramiko's server classes as an SSH-2 *device* behind the gateway, for the quirks of old
firmware that OpenSSH's sshd and dropbear cannot be configured to show: no
``server-sig-algs`` with only ``ssh-rsa`` user signatures accepted, keyboard-interactive
with several prompts or rounds, a user name asked again in-band after login, a banner that
is not UTF-8, a slow login.

What is real and what is simulated: the SSH transport, key exchange, the missing EXT_INFO
(paramiko's own ``server_sig_algs=False``), the signature check and the disconnect at the
first signature algorithm it does not accept (paramiko's own handling) are paramiko's;
``ssh-rsa`` (SHA-1) user signatures, which paramiko 4 dropped, are put back as it had them. The
login dialogues, the delay and the shell's in-band ``User Name:`` prompt are this module's
simulation of a device. The server runs in threads of the test process, on a loopback port
chosen by the kernel.

``with ParamikoDevice(...) as device:`` -> ``device.port``; ``device.auth_log`` lists
``(method, detail)`` of each attempt (``("publickey", "ssh-rsa")``, ...).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.support.peers import require_module

Prompts = Sequence[tuple[str, bool]]  # (prompt, echo)


@dataclass
class DeviceBehaviour:
    host_key: Any = None  # a paramiko PKey; default: a fresh 2048-bit RSA key
    server_sig_algs: bool = True
    # The signature algorithms accepted for user keys (paramiko's PubkeyAcceptedAlgorithms);
    # None: paramiko's defaults. "ssh-rsa" here is SHA-1, which paramiko 4 dropped: it is
    # put back for this device as paramiko 2.x had it.
    user_signatures: tuple[str, ...] | None = None
    accept_key: Any = None  # a paramiko PKey whose public half may log in
    password: str | None = None  # for "password" and as the answer to hidden prompts
    username: str = "admin"  # the answer expected to echoed prompts
    # Keyboard-interactive: one list of prompts per round (an INFO_REQUEST each).
    kbd_rounds: list[Prompts] = field(default_factory=list)
    # The answers expected per round; None: the username to echoed prompts, the password
    # to hidden ones.
    kbd_answers: list[list[str]] | None = None
    banner: bytes | None = None
    login_delay: float = 0.0  # seconds each authentication check takes
    in_band_login: bool = False  # the shell asks "User Name:" / "Password:" itself


class ParamikoDevice:
    def __init__(self, behaviour: DeviceBehaviour) -> None:
        self.paramiko = require_module("paramiko")
        self.behaviour = behaviour
        if behaviour.host_key is None:
            behaviour.host_key = self.paramiko.RSAKey.generate(2048)
        self.auth_log: list[tuple[str, str]] = []
        self.answers: list[list[str]] = []  # keyboard-interactive answers, per round
        self.shell_input: list[bytes] = []  # lines typed into the in-band dialogue
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._transports: list[Any] = []
        self._stopping = threading.Event()
        self.port = 0

    # -- the device ---------------------------------------------------------------------

    def _interface(self) -> Any:
        paramiko = self.paramiko
        behaviour = self.behaviour
        device = self

        class Server(paramiko.ServerInterface):
            def __init__(self) -> None:
                self.round = 0
                self.command: bytes | None = None
                self.ready = threading.Event()

            def get_allowed_auths(self, username: str) -> str:
                methods = []
                if behaviour.accept_key is not None:
                    methods.append("publickey")
                if behaviour.password is not None and not behaviour.kbd_rounds:
                    methods.append("password")
                if behaviour.kbd_rounds:
                    methods.append("keyboard-interactive")
                return ",".join(methods) or "none"

            def get_banner(self) -> tuple[Any, str]:
                return (behaviour.banner, "") if behaviour.banner else (None, "")

            def _slow(self) -> None:
                if behaviour.login_delay:
                    time.sleep(behaviour.login_delay)

            def check_auth_publickey(self, username: str, key: Any) -> int:
                self._slow()
                ok = behaviour.accept_key is not None and key.asbytes() == behaviour.accept_key.asbytes()
                device.auth_log.append(("publickey", key.get_name()))
                return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

            def check_auth_password(self, username: str, password: str) -> int:
                self._slow()
                device.auth_log.append(("password", ""))
                if password == behaviour.password:
                    return paramiko.AUTH_SUCCESSFUL
                return paramiko.AUTH_FAILED

            def check_auth_interactive(self, username: str, submethods: str) -> Any:
                device.auth_log.append(("keyboard-interactive", submethods))
                self.round = 0
                return self._query()

            def _query(self) -> Any:
                query = paramiko.InteractiveQuery("device login", f"round {self.round + 1}")
                for prompt, echo in behaviour.kbd_rounds[self.round]:
                    query.add_prompt(prompt, echo)
                return query

            def check_auth_interactive_response(self, responses: Sequence[str]) -> Any:
                self._slow()
                prompts = behaviour.kbd_rounds[self.round]
                device.answers.append(list(responses))
                expected = [behaviour.username if echo else behaviour.password for _, echo in prompts]
                if behaviour.kbd_answers is not None:
                    expected = behaviour.kbd_answers[self.round]
                if list(responses) != expected:
                    return paramiko.AUTH_FAILED
                self.round += 1
                if self.round < len(behaviour.kbd_rounds):
                    return self._query()
                return paramiko.AUTH_SUCCESSFUL

            def check_channel_request(self, kind: str, chanid: int) -> int:
                if kind == "session":
                    return paramiko.OPEN_SUCCEEDED
                return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

            def check_channel_pty_request(self, *args: Any) -> bool:
                return True

            def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
                self.command = command
                self.ready.set()
                return True

            def check_channel_shell_request(self, channel: Any) -> bool:
                self.ready.set()
                return True

        return Server()

    def _serve(self, sock: socket.socket) -> None:
        paramiko = self.paramiko
        behaviour = self.behaviour
        transport = paramiko.Transport(sock, server_sig_algs=behaviour.server_sig_algs)
        if behaviour.user_signatures is not None:
            transport._preferred_pubkeys = behaviour.user_signatures
            transport._key_info = {**transport._key_info, "ssh-rsa": self._sha1_rsa_key()}
        self._transports.append(transport)
        transport.add_server_key(behaviour.host_key)
        # The user's key is checked when paramiko logs the algorithm it was signed with.
        if behaviour.accept_key is not None:
            self._watch_publickey(transport)
        server = self._interface()
        try:
            transport.start_server(server=server)
        except Exception:
            return
        channel = transport.accept(30)
        if channel is None or not server.ready.wait(30):
            transport.close()
            return
        try:
            if server.command is not None:
                channel.sendall(b"exec " + server.command + b"\n")
                channel.send_exit_status(3)
            else:
                self._shell(channel)
        except Exception:
            pass
        finally:
            with contextlib.suppress(Exception):
                channel.close()
            transport.close()

    def _sha1_rsa_key(self) -> type:
        from cryptography.hazmat.primitives import hashes

        class Sha1RSAKey(self.paramiko.RSAKey):
            HASHES = {**self.paramiko.RSAKey.HASHES, "ssh-rsa": hashes.SHA1}

        return Sha1RSAKey

    def _watch_publickey(self, transport: Any) -> None:
        # paramiko says which signature algorithm it refused only in its log.
        log = self.auth_log
        logger = logging.getLogger(f"paramiko.device.{id(transport)}")
        logger.setLevel(logging.INFO)
        logger.propagate = False

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                text = record.getMessage()
                if text.startswith("Auth rejected: pubkey algorithm"):
                    log.append(("publickey-refused", text))

        logger.addHandler(Handler())
        transport.set_log_channel(logger.name)

    def _readline(self, channel: Any, echo: bool) -> bytes:
        line = b""
        while True:
            data = channel.recv(1)
            if not data:
                return line
            if data in (b"\r", b"\n"):
                channel.sendall(b"\r\n")
                return line
            line += data
            if echo:
                channel.sendall(data)

    def _shell(self, channel: Any) -> None:
        if self.behaviour.in_band_login:
            # An old switch CLI: the SSH login done, it asks again in-band.
            channel.sendall(b"\r\nUser Name:")
            self.shell_input.append(self._readline(channel, echo=True))
            channel.sendall(b"Password:")
            self.shell_input.append(self._readline(channel, echo=False))
        channel.sendall(b"sw1# ")
        line = self._readline(channel, echo=True)
        self.shell_input.append(line)
        channel.sendall(b"you typed " + line + b"\r\n")
        channel.send_exit_status(0)

    # -- lifetime -----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def __enter__(self) -> ParamikoDevice:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self._listener = listener
        self.port = listener.getsockname()[1]
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        for transport in self._transports:
            with contextlib.suppress(Exception):
                transport.close()
        for thread in self._threads:
            thread.join(5)
