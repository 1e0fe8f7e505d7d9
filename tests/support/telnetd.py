"""A real telnet device for tests: Debian's inetutils ``telnetd`` on a loopback port.

telnetd is an inetd service (the connection on fd 0/1). :class:`TelnetDaemon` is that inetd:
it listens on 127.0.0.1, port 0, and hands each accepted connection to a fresh
``telnetd -h -E LOGIN``. LOGIN is a small shell script standing in for /bin/login (no test
user has to be added to the system): it prompts ``login:`` and ``Password:`` (echo off),
checks the pair it was written with, then runs ``/bin/sh`` with the prompt ``dev$ ``
(as a child, the way /bin/login does).

Also :func:`fresh_reactor` / :func:`run_until`: tests drive the gateway side with a private
reactor (the global one cannot be restarted between tests).
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.peers import require_peer

SHELL_PROMPT = "dev$ "

_LOGIN_SCRIPT = """#!/bin/sh
printf 'Debian test device\\r\\n\\r\\n{host_prompt}'
IFS= read -r user || exit 1
stty -echo
printf 'Password: '
IFS= read -r pw || exit 1
stty echo
printf '\\r\\n'
if [ "$user" != {user} ] || [ "$pw" != {password} ]; then
    printf 'Login incorrect\\r\\n'
    exit 1
fi
export PS1={prompt}
# Like /bin/login, stay the shell's parent and outlive it a little: telnetd hangs up as
# soon as its child exits, dropping pty output it has not read yet.
/bin/sh
status=$?
sleep 0.2
exit $status
"""


class TelnetDaemon:
    """inetutils telnetd, one process per connection, behind a loopback listener."""

    def __init__(self, workdir: Path, user: str, password: str, login_prompt: str = "login: "):
        self.telnetd = require_peer("telnetd")["telnetd"]
        self.workdir = workdir
        self.login = workdir / "login.sh"
        self.login.write_text(
            _LOGIN_SCRIPT.format(
                host_prompt=login_prompt,
                user=shlex.quote(user),
                password=shlex.quote(password),
                prompt=shlex.quote(SHELL_PROMPT),
            )
        )
        self.login.chmod(0o700)
        self.children: list[subprocess.Popen] = []
        self.listener = socket.socket()
        self.port = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> TelnetDaemon:
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                self.children.append(
                    subprocess.Popen(
                        [self.telnetd, "-h", "-E", str(self.login)],
                        stdin=conn,
                        stdout=conn,
                        stderr=subprocess.DEVNULL,
                        close_fds=True,
                        start_new_session=True,
                    )
                )

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        if self._thread is not None:
            self._thread.join(5)
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait(5)


def fresh_reactor():
    """A private select reactor, driven with :func:`run_until`."""
    from twisted.internet.selectreactor import SelectReactor

    return SelectReactor()


def run_until(reactor, done: Callable[[], bool], timeout: float) -> bool:
    """Iterate ``reactor`` until ``done()`` or ``timeout`` seconds; returns ``done()``."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        reactor.iterate(0.02)
    return done()


def stop_reactor(reactor) -> None:
    """Drop every connection and the reactor's own descriptors."""
    for selectable in reactor.removeAll():
        with contextlib.suppress(Exception):
            selectable.connectionLost(None)
    for call in reactor.getDelayedCalls():
        if call.active():
            call.cancel()
    with contextlib.suppress(Exception):
        reactor.waker.connectionLost(None)
