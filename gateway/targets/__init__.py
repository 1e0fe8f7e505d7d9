"""Session targets: what runs behind a session once a front end has opened it.

A target turns a SessionRequest into a running ISessionTarget (see protocols/session.py).
``local`` (gateway.targets.local.LocalTarget) runs the program on the gateway host; upstream
targets (ssh1, ssh2, telnet) live beside it with the same interface; the protocols and the
class of each are listed in gateway.targets.registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocols.ssh1.client_connection import DEFAULT_MIN_KEY_BITS


@dataclass(frozen=True)
class TargetConfig:
    """One ``[targets.NAME]`` table. Upstream credentials are the device's, held by the
    gateway (a stored password is plaintext by necessity: keep the config file 0600)."""

    name: str
    protocol: str  # a name in gateway.targets.registry.TARGET_PROTOCOLS
    host: str = ""
    aliases: tuple[str, ...] = ()  # other names a jump-host forward may use for ``host``
    port: int = 22
    username: str | None = None  # upstream login name; default: the gateway user's name
    password: str | None = None  # stored upstream password
    key: Path | None = None  # upstream key file (SSH-1 RSA or SSH-2 private key)
    credentials: str = "stored"  # "stored" | "pass-through" (reuse the gateway password)
    host_key: str = "accept-new"  # "accept-new" | "strict" | a fingerprint
    connect_timeout: float = 10.0  # seconds from session request to upstream session open
    idle_timeout: float = 0.0  # seconds without data either way; 0 = never
    # telnet: regular expressions (bytes, matched on received output) answered with the
    # username / password; None = don't answer.
    login_prompt: str | None = None
    password_prompt: str | None = None
    # telnet: the device shell's prompt (a regular expression for the end of a line). For
    # a command it marks where the command's output starts and ends; None = type the
    # command and ``exit`` at once.
    shell_prompt: str | None = None
    # Algorithm preferences; empty = the client's modern defaults. Legacy names
    # (diffie-hellman-group1-sha1, ssh-rsa, aes-cbc, 3des-cbc; SSH-1 des) only when listed.
    ciphers: tuple[str, ...] = ()
    kex: tuple[str, ...] = ()
    host_key_algorithms: tuple[str, ...] = ()
    macs: tuple[str, ...] = ()
    compression: int = 0  # ssh1: zlib level 1-9 requested from the device; 0 = off
    # ssh2: False = the gateway never starts a re-key towards this device (for firmware
    # that never answers one or breaks on it); a re-key the device starts is answered.
    rekey: bool = True
    # ssh2 keyboard-interactive: "answer" (echoed prompts get the login name, hidden ones
    # the password) or "ask" (the first hidden prompt gets the password; the user answers
    # the others in their session).
    keyboard_interactive: str = "answer"
    # telnet: "none" (exit status 0 when the device hangs up) or "posix" (a marker command
    # after the command reports its $?; needs shell_prompt).
    exit_status: str = "none"
    # Whether sessions on this target are recorded (gateway.recording); None: the default.
    record: bool | None = None
    min_key_bits: int = DEFAULT_MIN_KEY_BITS  # ssh1: the device's smallest acceptable host or server key
