"""SSH-1 bulk ciphers, registered by name and by wire number.

All are CBC with an all-zero IV whose state runs on across packets, so each direction
holds one stream object for the whole connection. Adding a cipher means adding one row
to :data:`CIPHERS`; nothing else dispatches on names.

- ``3des``: three independent single-DES CBC streams ("inner CBC"), not EDE3-CBC.
- ``blowfish``: Blowfish-CBC over byte-reversed 32-bit words (the original code was
  little-endian); the swap is done on the whole buffer at C speed.
- ``des``: single DES-CBC.
- ``none``: identity.

Single DES: ``cryptography`` has no single-DES primitive, only TripleDES, which with the
key repeated costs three DES passes for one. When ``pycryptodomex`` (the optional
``fastdes`` extra) is installed, its native single DES is used instead: 2.5x less CPU for
``des``, and for ``3des``, which is three single-DES streams here (measured figures in
README "Benchmarks"). Both give the same bytes (tests/ssh1/test_primitives.py).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.decrepit.ciphers.algorithms import Blowfish, TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:  # optional: native single DES (the ``fastdes`` extra)
    from Cryptodome.Cipher import DES as _NativeDES
except ImportError:  # pragma: no cover - depends on the installation
    _NativeDES = None

BLOCK_SIZE = 8
_ZERO_IV = bytes(BLOCK_SIZE)
# Who does single DES: "pycryptodomex" (native) or "cryptography" (TripleDES, key x3).
DES_BACKEND = "pycryptodomex" if _NativeDES is not None else "cryptography"


class Stream(Protocol):
    def update(self, data: bytes) -> bytes: ...


class _Identity:
    __slots__ = ()

    def update(self, data: bytes) -> bytes:
        return bytes(data)


def _des_cbc_cryptography(key8: bytes, encrypt: bool) -> Stream:
    cipher = Cipher(TripleDES(key8 * 3), modes.CBC(_ZERO_IV))
    return cipher.encryptor() if encrypt else cipher.decryptor()


class _NativeDesStream:
    """pycryptodomex's DES-CBC object (its IV runs on across calls) as a Stream."""

    __slots__ = ("update",)

    def __init__(self, key8: bytes, encrypt: bool) -> None:
        cipher = _NativeDES.new(key8, _NativeDES.MODE_CBC, iv=_ZERO_IV)
        self.update = cipher.encrypt if encrypt else cipher.decrypt


def _des_cbc(key8: bytes, encrypt: bool) -> Stream:
    if _NativeDES is not None:
        return _NativeDesStream(key8, encrypt)
    return _des_cbc_cryptography(key8, encrypt)


class _Chain:
    """Runs data through several streams in order (3DES inner CBC)."""

    __slots__ = ("_stages",)

    def __init__(self, stages: list[Stream]) -> None:
        self._stages = stages

    def update(self, data: bytes) -> bytes:
        for stage in self._stages:
            data = stage.update(data)
        return data


def _swap_words(data: bytes) -> bytes:
    words = array("I", data)
    if words.itemsize != 4:  # pragma: no cover - every supported platform has 4-byte I
        raise RuntimeError("array('I') is not 32-bit here")
    words.byteswap()
    return words.tobytes()


class _SwappedBlowfish:
    __slots__ = ("_inner",)

    def __init__(self, inner: Stream) -> None:
        self._inner = inner

    def update(self, data: bytes) -> bytes:
        return _swap_words(self._inner.update(_swap_words(data)))


def _make_none(key: bytes, encrypt: bool) -> Stream:
    return _Identity()


def _make_des(key: bytes, encrypt: bool, des: Callable[[bytes, bool], Stream] = _des_cbc) -> Stream:
    return des(key[:8], encrypt)


def _make_3des(key: bytes, encrypt: bool, des: Callable[[bytes, bool], Stream] = _des_cbc) -> Stream:
    k1, k2, k3 = key[0:8], key[8:16], key[16:24]
    if encrypt:
        return _Chain([des(k1, True), des(k2, False), des(k3, True)])
    return _Chain([des(k3, False), des(k2, True), des(k1, False)])


def _make_blowfish(key: bytes, encrypt: bool) -> Stream:
    cipher = Cipher(Blowfish(key[:32]), modes.CBC(_ZERO_IV))
    return _SwappedBlowfish(cipher.encryptor() if encrypt else cipher.decryptor())


@dataclass(frozen=True)
class CipherSpec:
    name: str
    number: int
    factory: Callable[[bytes, bool], Stream]
    description: str  # as clients log it, for our own log lines

    def encryptor(self, session_key: bytes) -> Stream:
        return self.factory(session_key, True)

    def decryptor(self, session_key: bytes) -> Stream:
        return self.factory(session_key, False)

    @property
    def encrypts(self) -> bool:
        return self.number != 0


CIPHERS: tuple[CipherSpec, ...] = (
    CipherSpec("none", 0, _make_none, "no encryption"),
    CipherSpec("des", 2, _make_des, "single-DES"),
    CipherSpec("3des", 3, _make_3des, "3DES (inner CBC)"),
    CipherSpec("blowfish", 6, _make_blowfish, "Blowfish"),
)
BY_NAME: dict[str, CipherSpec] = {c.name: c for c in CIPHERS}
BY_NUMBER: dict[int, CipherSpec] = {c.number: c for c in CIPHERS}


def cipher_mask(names: tuple[str, ...] | list[str]) -> int:
    """The SMSG_PUBLIC_KEY supported-cipher mask for these names."""
    mask = 0
    for name in names:
        mask |= 1 << BY_NAME[name].number
    return mask


def names_in_mask(mask: int) -> list[str]:
    return [c.name for c in CIPHERS if mask & (1 << c.number)]



def cryptography_stream(name: str, key: bytes, encrypt: bool) -> Stream:
    """The cipher ``name`` built on ``cryptography`` alone, whatever else is installed:
    the reference the tests check the native DES against and the benchmarks measure."""
    if name == "des":
        return _make_des(key, encrypt, _des_cbc_cryptography)
    if name == "3des":
        return _make_3des(key, encrypt, _des_cbc_cryptography)
    return BY_NAME[name].factory(key, encrypt)
