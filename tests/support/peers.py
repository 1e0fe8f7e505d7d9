"""Helpers for tests that drive real SSH implementations (OpenSSH, PuTTY, ...).

A missing peer skips the test on a developer machine and fails it under ``CI=true``:
CI must never go green by silently not testing against the real thing.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# An OpenSSL config that activates the legacy provider beside the default one: OpenSSH
# 7.5's ssh1 builds its SSH-1 3DES and DES on single DES, which OpenSSL 3 keeps there
# (give it with OPENSSL_CONF=file).
OPENSSL_LEGACY = """openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
legacy = legacy_sect
[default_sect]
activate = 1
[legacy_sect]
activate = 1
"""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_peer(*programs: str) -> dict[str, str]:
    """Paths of the given programs; skip (or fail under CI) when one is missing."""
    found: dict[str, str] = {}
    for name in programs:
        # The venv's own scripts (ssh-audit) are not on PATH when pytest runs as
        # .venv/bin/python -m pytest; sshd lives in /usr/sbin, often not on PATH either.
        search = os.pathsep.join(
            [os.environ.get("PATH", ""), os.path.dirname(sys.executable), "/usr/sbin"]
        )
        path = shutil.which(name, path=search)
        if path is None:
            message = f"real peer {name!r} is not installed"
            if in_ci():
                pytest.fail(message + " (CI=true: a missing peer is a failure)")
            pytest.skip(message)
        found[name] = path
    return found


def require_module(name: str):
    """Import a Python peer library; skip (or fail under CI) when it is missing."""
    try:
        return __import__(name)
    except ImportError:
        message = f"python peer {name!r} is not installed"
        if in_ci():
            pytest.fail(message + " (CI=true: a missing peer is a failure)")
        pytest.skip(message)


@contextmanager
def putty_cipher_session(cipher: str) -> Iterator[str]:
    """A saved PuTTY session that makes ``plink -load NAME`` speak SSH-1 with ``cipher``.

    plink has no cipher flag, and reads saved sessions from the passwd home directory
    (not $HOME); the cipher goes above WARN so that -batch does not refuse it.
    """
    import pwd

    name = f"sshgateway-test-{cipher}-{os.getpid()}-{next(_session_numbers)}"
    sessions = Path(pwd.getpwuid(os.geteuid()).pw_dir) / ".putty" / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    path = sessions / name
    path.write_text(f"Cipher={cipher},WARN,aes,3des,blowfish,des\nSshProt=0\nHostName=127.0.0.1\n")
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)


_session_numbers = itertools.count()


def run_to_file(
    argv: list[str], input: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """``subprocess.run`` with stdout captured through a temporary file, not a pipe.

    Once a workaround for plink -1 stalls in long downloads, which turned out not to
    depend on the pipe: the gateway sent SSH-1 packets longer than plink 0.78 can take in
    (it freezes its socket while more than 32768 bytes wait undecoded; see
    protocols/ssh1/server_connection.DEFAULT_CHUNK), and they stalled with files too.
    tests/ssh1/test_peers.py runs plink through pipes again.
    """
    with tempfile.TemporaryFile() as out:
        result = subprocess.run(
            argv, input=input, stdout=out, stderr=subprocess.PIPE, timeout=timeout
        )
        out.seek(0)
        result.stdout = out.read()
    return result
