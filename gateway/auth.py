"""The one authentication backend of both front ends: credential checkers (password,
SSH-2 public key, SSH-1 RSA challenge), the realm that applies per-user policy, and
:func:`build_portal` that puts them together.

Unknown users go through the same code paths as known ones and fail with the same
:class:`UnauthorizedLogin` message; a password for an unknown user costs one dummy hash,
so that its answer takes the same time as a wrong password's (the front end's
``LoginFlow`` adds the failure delay on top, for every failure alike).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import keys
from twisted.conch.ssh.common import getNS
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway import passwords
from gateway.authorized_keys import AuthorizedKeysFile
from gateway.config import GatewayConfig, UserConfig
from protocols.auth import (
    METHOD_PASSWORD,
    METHOD_PUBLICKEY,
    ISSH1RSAChallenge,
    LoginContext,
    PartialAuthentication,
    PolicyRefused,
)
from protocols.session import IGatewayUser, ISessionClient, ISessionTarget, SessionRequest

_log = Logger()

# The single answer for every failed check, so that nothing tells users apart.
_REFUSED = "authentication failed"

# Password checks running at once (each scrypt check needs 32 MiB and ~0.1 s of CPU).
MAX_CONCURRENT_HASHES = 4

# How CPU-heavy work (password hashing) is run: ``blocking(f, *args) -> Deferred``.
Blocking = Callable[..., defer.Deferred]


def run_inline(f: Callable[..., Any], *args: Any) -> defer.Deferred:
    """Run ``f`` now, in the caller's thread (for tests and tools, not for the reactor)."""
    return defer.maybeDeferred(f, *args)


def run_in_thread(f: Callable[..., Any], *args: Any) -> defer.Deferred:
    """Run ``f`` in the global reactor's thread pool, so one login does not stall the others."""
    from twisted.internet import threads

    return threads.deferToThread(f, *args)


class AvatarId(bytes):
    """The avatar ID the checkers return: the login name, plus which method proved it.

    The realm trusts this ``method`` rather than what the front end claimed it was trying,
    so that ``auth = "all"`` counts what was really checked.
    """

    method: str

    def __new__(cls, name: bytes, method: str) -> AvatarId:
        self = super().__new__(cls, name)
        self.method = method
        return self


def _username(raw: bytes | str) -> str | None:
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        return None


@implementer(ICredentialsChecker)
class PasswordChecker:
    """``IUsernamePassword`` against the users' stored hashes."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        users: Mapping[str, UserConfig],
        blocking: Blocking = run_in_thread,
        max_concurrent: int = MAX_CONCURRENT_HASHES,
    ) -> None:
        self.users = users
        self.blocking = blocking
        # Each scrypt check holds 32 MiB: a burst of guesses waits its turn instead of
        # multiplying that by the thread pool's size.
        self._slots = defer.DeferredSemaphore(max_concurrent)
        configured = [u.password_hash for u in users.values() if u.password_hash]
        # Unknown users pay for a hash with the same cost parameters as the real ones.
        self._dummy_like = configured[0] if configured else None

    def _check(self, name: str | None, password: bytes | str) -> bool:
        user = self.users.get(name) if name is not None else None
        if user is None or user.password_hash is None:
            return passwords.dummy_verify(password, self._dummy_like)
        return passwords.verify_password(user.password_hash, password)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        name = _username(credentials.username)
        d = self._slots.run(self.blocking, self._check, name, credentials.password)

        def decided(ok: bool) -> AvatarId:
            if not ok or name is None:
                raise UnauthorizedLogin(_REFUSED)
            return AvatarId(name.encode("utf-8"), METHOD_PASSWORD)

        return d.addCallback(decided)


class KeyStore:
    """Each user's authorized_keys file (re-read on change), shared by both key checkers."""

    def __init__(self, users: Mapping[str, UserConfig]) -> None:
        self.files = {
            name: AuthorizedKeysFile(user.authorized_keys)
            for name, user in users.items()
            if user.authorized_keys is not None
        }

    def get(self, name: str | None) -> AuthorizedKeysFile | None:
        return self.files.get(name) if name is not None else None


def _signature_algorithm(signature: bytes) -> bytes | None:
    try:
        return getNS(signature)[0]
    except Exception:  # a truncated signature blob
        return None


@implementer(ICredentialsChecker)
class SSH2PublicKeyChecker:
    """``ISSHPrivateKey``: is the key listed for the user, and is the signature good?

    Conch's contract: a listed key without a signature (the client's "would you accept
    this key?" query) fails with :class:`ValidPublicKey`, so that the server answers
    SSH_MSG_USERAUTH_PK_OK.
    """

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        return defer.maybeDeferred(self._check, credentials)

    def _check(self, credentials: Any) -> AvatarId:
        name = _username(credentials.username)
        listed = self.store.get(name)
        try:
            # Compare canonical encodings: the client's blob is parsed, then re-encoded.
            offered = keys.Key.fromString(credentials.blob, type="blob").blob()
        except Exception:  # Conch raises several types for garbage blobs
            offered = None
        entry = listed.find_ssh2(offered) if listed is not None and offered else None
        if entry is None or entry.key is None or name is None:
            raise UnauthorizedLogin(_REFUSED)
        if credentials.signature is None:
            raise ValidPublicKey()
        # The signature must be made with the algorithm the client announced (a client
        # cannot announce rsa-sha2-512 and then pass an ssh-rsa/SHA-1 signature).
        if _signature_algorithm(credentials.signature) != credentials.algName:
            raise UnauthorizedLogin(_REFUSED)
        try:
            good = entry.key.verify(credentials.signature, credentials.sigData)
        except Exception:  # a malformed signature is just a failure
            good = False
        if not good:
            raise UnauthorizedLogin(_REFUSED)
        return AvatarId(name.encode("utf-8"), METHOD_PUBLICKEY)


@implementer(ICredentialsChecker)
class SSH1RSAChecker:
    """``ISSH1RSAChallenge``: find the listed key with the client's modulus (an SSH-1 line
    or an ``ssh-rsa`` line), then have the front end challenge the client with it."""

    credentialInterfaces = (ISSH1RSAChallenge,)

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        name = _username(credentials.username)
        listed = self.store.get(name)
        entry = listed.find_ssh1(credentials.modulus) if listed is not None else None
        if entry is None or entry.rsa is None or name is None:
            return defer.fail(UnauthorizedLogin(_REFUSED))
        e, n = entry.rsa
        d = defer.maybeDeferred(credentials.challenge, e, n)

        def answered(ok: object) -> AvatarId:
            if ok is not True:
                raise UnauthorizedLogin(_REFUSED)
            return AvatarId(name.encode("utf-8"), METHOD_PUBLICKEY)

        return d.addCallback(answered)


@implementer(IGatewayUser)
class GatewayUser:
    """The avatar: who logged in, what environment they may set, and where sessions go."""

    def __init__(self, username: str, targets: Any, env_allow: Iterable[str]) -> None:
        self.username = username
        self.targets = targets
        self.env_allow = tuple(env_allow)

    def env_allowed(self, name: str) -> bool:
        # fnmatchcase: the allow-list must not depend on the host's case rules.
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.env_allow)

    def open_session(self, request: SessionRequest, client: ISessionClient) -> ISessionTarget:
        return self.targets.open_session(self.username, request, client)


def _normalise_method(method: str) -> str:
    # SSH-1 front ends may call their key method "rsa"; policy counts it as publickey.
    return METHOD_PUBLICKEY if method in ("rsa", "rsa1", "publickey") else method


@implementer(IRealm)
class GatewayRealm:
    """Turns a checked avatar ID into a :class:`GatewayUser`, applying ``auth = "all"``.

    The mind is the connection's :class:`protocols.auth.LoginContext`: the method that
    just passed is added to ``mind.succeeded``; while configured methods remain,
    SSH-2 gets :class:`PartialAuthentication` (partial success) and SSH-1, which has no
    such answer, :class:`PolicyRefused`.
    """

    def __init__(
        self, users: Mapping[str, UserConfig], targets: Any, env_allow: Iterable[str]
    ) -> None:
        self.users = users
        self.targets = targets
        self.env_allow = tuple(env_allow)

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple:
        if IGatewayUser not in interfaces:
            raise NotImplementedError("the gateway only provides IGatewayUser avatars")
        name = _username(avatarId)
        user = self.users.get(name) if name is not None else None
        if user is None or name is None:
            raise UnauthorizedLogin(_REFUSED)
        context = mind if isinstance(mind, LoginContext) else None
        method = getattr(avatarId, "method", None) or (context.method if context else "")
        method = _normalise_method(method)
        if user.auth == "all":
            if context is None:
                raise PolicyRefused(f'user {name}: auth = "all" needs a login context')
            if context.username != name:
                context.begin(name, method)
            context.succeeded.add(method)
            remaining = [m for m in user.methods if m not in context.succeeded]
            if remaining:
                if context.protocol == "ssh1":
                    raise PolicyRefused(
                        f'user {name}: auth = "all" requires {", ".join(user.methods)}, '
                        "and SSH-1 cannot ask for a second method"
                    )
                raise PartialAuthentication(remaining)
        elif context is not None:
            if context.username != name:
                context.begin(name, method)
            context.succeeded.add(method)
        avatar = GatewayUser(name, self.targets, self.env_allow)
        return IGatewayUser, avatar, lambda: None


def build_portal(
    config: GatewayConfig, targets: Any, *, blocking: Blocking = run_in_thread
) -> Portal:
    """The one portal of the gateway: the realm and the three checkers.

    ``targets`` must have ``open_session(username, request, client) -> ISessionTarget``
    (``gateway.targets.local.LocalTarget``). ``blocking`` runs password hashing; the
    default uses the reactor's thread pool, pass :func:`run_inline` in in-memory tests.
    """
    realm = GatewayRealm(config.users, targets, config.env_allow)
    store = KeyStore(config.users)
    return Portal(
        realm,
        [
            PasswordChecker(config.users, blocking),
            SSH2PublicKeyChecker(store),
            SSH1RSAChecker(store),
        ],
    )
