"""The one authentication backend of both front ends: credential checkers (password,
SSH-2 public key, SSH-1 RSA challenge), the realm that applies per-user policy, and
:func:`build_portal` that puts them together.

Unknown users go through the same code paths as known ones and fail with the same
:class:`UnauthorizedLogin` message; a password for an unknown user costs one dummy hash,
so that its answer takes the same time as a wrong password's (the front end's
``LoginFlow`` adds the failure delay on top, for every failure alike).

Password hashing is bounded and shared fairly between sources (:mod:`gateway.fair_slots`):
the portal (:class:`GatewayPortal`) tells the password checker which address an attempt
comes from (the login context's peer). A source gets at most half of the hashing slots
(and of the CPUs) and a short queue; attempts beyond that fail at once, exactly like a
wrong password, so a flood of guesses from one address slows down only that address.

Login names may be ``user+target`` (:func:`gateway.routing.split_login`): every checker
authenticates ``user`` and the avatar carries the requested target; whether that target
exists or is allowed is decided when a session opens, never at login. For targets with
``credentials = "pass-through"`` the password checker keeps the password the user typed
on the avatar ID, only for users who may reach such a target, so that the session can
send it upstream; it is never logged.

authorized_keys options (gateway.authorized_keys): a key is found by the checkers, which
also decide ``from=`` and ``expiry-time=`` (the portal passes them the login context's
peer), so that a key refused by its options gets exactly the answer of a key that is not
listed (no PK_OK, SSH-1 FAILURE without a challenge); only the log says why. The line
that admitted the key travels on the avatar ID; the realm turns it into the avatar's
``SessionRestrictions``, forced command and (only with ``permit_user_environment``)
environment. A password login has none of these.
"""

from __future__ import annotations

import fnmatch
import os
import time
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
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import passwords
from gateway.authorized_keys import AuthorizedKey, AuthorizedKeysFile
from gateway.config import GatewayConfig, UserConfig
from gateway.events import LOGIN, LOGIN_FAILED, emit
from gateway.fair_slots import UNKNOWN_SOURCE, FairSlots, SourceBusy, source_of
from gateway.host_patterns import peer_address
from gateway.routing import split_login
from protocols.auth import (
    METHOD_PASSWORD,
    METHOD_PUBLICKEY,
    ISSH1RSAChallenge,
    LoginContext,
    PartialAuthentication,
    PolicyRefused,
)
from protocols.forwarding import ForwardRefused
from protocols.session import (
    UNRESTRICTED,
    IGatewayUser,
    ISessionClient,
    ISessionTarget,
    SessionRequest,
    SessionRestrictions,
)

_log = Logger()

# The single answer for every failed check, so that nothing tells users apart.
_REFUSED = "authentication failed"

# Password checks running at once (each scrypt check needs 32 MiB and ~0.1 s of CPU).
MAX_CONCURRENT_HASHES = 4
# Of those, what one source may hold: half the slots, and no more than half the CPUs, so
# that a flood of guesses from one address leaves both slots and CPU to other addresses.
MAX_HASHES_PER_SOURCE = max(1, min(MAX_CONCURRENT_HASHES // 2, (os.cpu_count() or 2) // 2))
# Checks from one source waiting for a slot; more fail at once, as a wrong password does.
# Each SSH connection has one check in flight, so this is about as many connections from
# one address logging in at the same moment (a NAT) before some are refused.
MAX_QUEUED_PER_SOURCE = 8

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
    """The avatar ID the checkers return: the user name (without ``+target``), which
    method proved it, the target the login name asked for, — for pass-through targets
    only — the password that was checked, and for a key the authorized_keys line that
    admitted it (its options restrict the session).

    The realm trusts this ``method`` rather than what the front end claimed it was trying,
    so that ``auth = "all"`` counts what was really checked. ``repr`` shows the name only.
    """

    method: str
    target: str | None
    password: str | None
    key: AuthorizedKey | None

    def __new__(
        cls,
        name: bytes,
        method: str,
        target: str | None = None,
        password: str | None = None,
        key: AuthorizedKey | None = None,
    ) -> AvatarId:
        self = super().__new__(cls, name)
        self.method = method
        self.target = target
        self.password = password
        self.key = key
        return self


def _decode(raw: bytes | str) -> str | None:
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        return None


def _login(raw: bytes | str) -> tuple[str | None, str | None]:
    """The (user, target) of a login name; (None, None) if it is not UTF-8."""
    login = _decode(raw)
    if login is None:
        return None, None
    return split_login(login)


def _username(raw: bytes | str) -> str | None:
    return _login(raw)[0]


# Whether to keep a user's checked password for pass-through: ``keep(user) -> bool``.
KeepPassword = Callable[[str], bool]


def _never(name: str) -> bool:
    return False


@implementer(ICredentialsChecker)
class PasswordChecker:
    """``IUsernamePassword`` against the users' stored hashes."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        users: Mapping[str, UserConfig],
        blocking: Blocking = run_in_thread,
        max_concurrent: int = MAX_CONCURRENT_HASHES,
        keep_password: KeepPassword = _never,
        *,
        per_source: int = MAX_HASHES_PER_SOURCE,
        queued_per_source: int = MAX_QUEUED_PER_SOURCE,
    ) -> None:
        self.users = users
        self.blocking = blocking
        self.keep_password = keep_password
        # Each scrypt check holds 32 MiB: a burst of guesses waits its turn instead of
        # multiplying that by the thread pool's size, and waits behind its own source's
        # guesses only, never in front of everyone else's logins.
        self.slots = FairSlots(max_concurrent, per_source, queued_per_source)
        configured = [u.password_hash for u in users.values() if u.password_hash]
        # Unknown users pay for a hash with the same cost parameters as the real ones.
        self._dummy_like = configured[0] if configured else None

    def _check(self, name: str | None, password: bytes | str) -> bool:
        user = self.users.get(name) if name is not None else None
        if user is None or user.password_hash is None:
            return passwords.dummy_verify(password, self._dummy_like)
        return passwords.verify_password(user.password_hash, password)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        """For callers without a login context: they all count as one source."""
        return self.check(credentials, UNKNOWN_SOURCE)

    def check(self, credentials: Any, source: str) -> defer.Deferred:
        """Check a password attempt that comes from ``source`` (:func:`source_of`)."""
        name, target = _login(credentials.username)
        d = self.slots.run(source, self.blocking, self._check, name, credentials.password)

        def decided(ok: bool) -> AvatarId:
            if not ok or name is None:
                raise UnauthorizedLogin(_REFUSED)
            kept = None
            if self.keep_password(name):
                # surrogateescape: a target can recover the exact bytes the user typed.
                raw = credentials.password
                kept = raw if isinstance(raw, str) else raw.decode("utf-8", "surrogateescape")
            return AvatarId(name.encode("utf-8"), METHOD_PASSWORD, target, kept)

        def over_share(failure: Failure) -> Failure:
            failure.trap(SourceBusy)
            busy = failure.value
            if busy.first:
                _log.info(
                    "password checks from {source} beyond its share of hashing: refusing "
                    "its extra attempts until its queue drains",
                    source=busy.source,
                )
            # Refused unchecked, but answered exactly like a wrong password.
            return Failure(UnauthorizedLogin(_REFUSED))

        return d.addCallbacks(decided, over_share)


class KeyStore:
    """Each user's authorized_keys file (re-read on change), shared by both key checkers,
    and the one decision on a listed key's ``from=`` and ``expiry-time=``."""

    def __init__(
        self, users: Mapping[str, UserConfig], clock: Callable[[], float] = time.time
    ) -> None:
        self.files = {
            name: AuthorizedKeysFile(user.authorized_keys)
            for name, user in users.items()
            if user.authorized_keys is not None
        }
        self.clock = clock

    def get(self, name: str | None) -> AuthorizedKeysFile | None:
        return self.files.get(name) if name is not None else None

    def admit(self, name: str, entries: Iterable[AuthorizedKey], peer: str) -> AuthorizedKey | None:
        """The first of ``entries`` (lines listing the offered key) whose options admit a
        login from ``peer`` now; each line that refuses says why in the log, as sshd
        does, and the next is tried."""
        address = peer_address(peer)
        now = self.clock()
        for entry in entries:
            why = entry.options.login_refusal(address, now)
            if why is None:
                return entry
            _log.info(
                "authorized_keys {where}: correct key for {user} refused: {why}",
                where=entry.where,
                user=name,
                why=why,
            )
        return None


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
        """For callers without a login context: no address, so a from= line refuses."""
        return self.check(credentials, "")

    def check(self, credentials: Any, peer: str) -> defer.Deferred:
        """Check a key (or the query for one) offered by a client at ``peer``."""
        return defer.maybeDeferred(self._check, credentials, peer)

    def _check(self, credentials: Any, peer: str) -> AvatarId:
        name, target = _login(credentials.username)
        listed = self.store.get(name)
        try:
            # Compare canonical encodings: the client's blob is parsed, then re-encoded.
            offered = keys.Key.fromString(credentials.blob, type="blob").blob()
        except Exception:  # Conch raises several types for garbage blobs
            offered = None
        entry = None
        if listed is not None and offered and name is not None:
            # Before PK_OK too: a key its options refuse must look like an unlisted one.
            entry = self.store.admit(name, listed.find_ssh2(offered), peer)
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
        return AvatarId(name.encode("utf-8"), METHOD_PUBLICKEY, target, key=entry)


@implementer(ICredentialsChecker)
class SSH1RSAChecker:
    """``ISSH1RSAChallenge``: find the listed key with the client's modulus (an SSH-1 line
    or an ``ssh-rsa`` line), then have the front end challenge the client with it."""

    credentialInterfaces = (ISSH1RSAChallenge,)

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        """For callers without a login context: no address, so a from= line refuses."""
        return self.check(credentials, "")

    def check(self, credentials: Any, peer: str) -> defer.Deferred:
        """Check the key a client at ``peer`` offers; its options are decided before the
        challenge, so a refused key gets FAILURE exactly as an unlisted one does."""
        name, target = _login(credentials.username)
        listed = self.store.get(name)
        entry = None
        if listed is not None and name is not None:
            entry = self.store.admit(name, listed.find_ssh1(credentials.modulus), peer)
        if entry is None or entry.rsa is None or name is None:
            return defer.fail(UnauthorizedLogin(_REFUSED))
        e, n = entry.rsa
        d = defer.maybeDeferred(credentials.challenge, e, n)

        def answered(ok: object) -> AvatarId:
            if ok is not True:
                raise UnauthorizedLogin(_REFUSED)
            return AvatarId(name.encode("utf-8"), METHOD_PUBLICKEY, target, key=entry)

        return d.addCallback(answered)


@implementer(IGatewayUser)
class GatewayUser:
    """The avatar: who logged in, what environment they may set, and where sessions go.

    ``target`` is what the login name asked for (``user+target``), None if nothing;
    ``password`` is the checked login password, kept only for pass-through targets.
    From the key's authorized_keys line: ``restrictions`` (read by the front ends),
    ``forced_command`` (replaces what the client asks to run) and ``environment`` (set for
    the session); the router applies the last two.
    """

    def __init__(
        self,
        username: str,
        targets: Any,
        env_allow: Iterable[str],
        *,
        target: str | None = None,
        password: str | None = None,
        restrictions: SessionRestrictions = UNRESTRICTED,
        forced_command: bytes | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.username = username
        self.targets = targets
        self.env_allow = tuple(env_allow)
        self.target = target
        self._password = password
        self.restrictions = restrictions
        self.forced_command = forced_command
        self.environment = dict(environment or {})

    def __repr__(self) -> str:
        return f"<GatewayUser {self.username!r} target={self.target!r}>"

    def env_allowed(self, name: str) -> bool:
        # fnmatchcase: the allow-list must not depend on the host's case rules.
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.env_allow)

    def open_session(self, request: SessionRequest, client: ISessionClient) -> ISessionTarget:
        key_options: dict[str, Any] = {}
        if self.forced_command is not None:
            key_options["forced_command"] = self.forced_command
        if self.environment:
            key_options["environment"] = self.environment
        if self.target is None and self._password is None and not key_options:
            # Also what a bare LocalTarget (no routing) understands.
            return self.targets.open_session(self.username, request, client)
        # Only the Router (gateway.routing) applies a forced command: anything else
        # fails the session rather than run what the client asked.
        return self.targets.open_session(
            self.username,
            request,
            client,
            target=self.target,
            password=self._password,
            **key_options,
        )

    def open_forward(self, host: str, port: int, client: ISessionClient) -> ISessionTarget:
        """A jump-host forward (SSH-2 ``direct-tcpip``) to ``host:port``; raises
        ForwardRefused when this user may not reach it (gateway.forwarding decides)."""
        open_forward = getattr(self.targets, "open_forward", None)
        if open_forward is None:
            raise ForwardRefused("forwarding needs the router")
        return open_forward(self.username, host, port, client, avatar=self)

    def routed_to(self, target: str) -> GatewayUser:
        """This login as a login name ``user+target`` would have made it: same password,
        key restrictions, forced command and environment, sessions go to ``target`` (the
        avatar of the gateway's SSH-2 server inside a jump channel to ``target``)."""
        return GatewayUser(
            self.username,
            self.targets,
            self.env_allow,
            target=target,
            password=self._password,
            restrictions=self.restrictions,
            forced_command=self.forced_command,
            environment=self.environment,
        )


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
        self,
        users: Mapping[str, UserConfig],
        targets: Any,
        env_allow: Iterable[str],
        *,
        permit_user_environment: bool = False,
    ) -> None:
        self.users = users
        self.targets = targets
        self.env_allow = tuple(env_allow)
        self.permit_user_environment = permit_user_environment

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple:
        if IGatewayUser not in interfaces:
            raise NotImplementedError("the gateway only provides IGatewayUser avatars")
        name, target = _login(avatarId)
        target = getattr(avatarId, "target", None) or target
        password = getattr(avatarId, "password", None)
        key = getattr(avatarId, "key", None)
        user = self.users.get(name) if name is not None else None
        if user is None or name is None:
            raise UnauthorizedLogin(_REFUSED)
        context = mind if isinstance(mind, LoginContext) else None
        method = getattr(avatarId, "method", None) or (context.method if context else "")
        method = _normalise_method(method)
        if user.auth == "all":
            if context is None:
                raise PolicyRefused(f'user {name}: auth = "all" needs a login context')
            # The context holds the login name as sent (``alice+switch1``): same user.
            if _username(context.username) != name:
                context.begin(name, method)
            context.succeeded.add(method)
            password = _remember_password(context, name, password)
            key = _remember_key(context, name, key)
            remaining = [m for m in user.methods if m not in context.succeeded]
            if remaining:
                if context.protocol == "ssh1":
                    raise PolicyRefused(
                        f'user {name}: auth = "all" requires {", ".join(user.methods)}, '
                        "and SSH-1 cannot ask for a second method"
                    )
                raise PartialAuthentication(remaining)
        elif context is not None:
            if _username(context.username) != name:
                context.begin(name, method)
            context.succeeded.add(method)
        avatar = GatewayUser(
            name,
            self.targets,
            self.env_allow,
            target=target,
            password=password,
            **self._key_options(name, key),
        )
        return IGatewayUser, avatar, lambda: None

    def _key_options(self, name: str, key: AuthorizedKey | None) -> dict[str, Any]:
        """The avatar's share of the key line's options (none for a password login)."""
        if key is None:
            return {}
        options = key.options
        found: dict[str, Any] = {"restrictions": options.session_restrictions(key.where)}
        if options.command is not None:
            # surrogateescape: the exact bytes written in the file.
            found["forced_command"] = options.command.encode("utf-8", "surrogateescape")
        if options.environment:
            if self.permit_user_environment:
                found["environment"] = dict(options.environment)
            else:
                _log.info(
                    "authorized_keys {where}: environment= for {user} ignored "
                    "(permit_user_environment is off)",
                    where=key.where,
                    user=name,
                )
        return found


# With ``auth = "all"`` the password may pass before the key does: the pass-through
# password waits on the login context, tied to the user it was checked for.
_PENDING_PASSWORD = "_sshgateway_passthrough"


def _remember_password(context: LoginContext, name: str, password: str | None) -> str | None:
    if password is not None:
        setattr(context, _PENDING_PASSWORD, (name, password))
        return password
    pending = getattr(context, _PENDING_PASSWORD, None)
    if pending is not None and pending[0] == name:
        return pending[1]
    return None


_PENDING_KEY = "_sshgateway_key_line"


def _remember_key(
    context: LoginContext, name: str, key: AuthorizedKey | None
) -> AuthorizedKey | None:
    """With ``auth = "all"`` the key may pass before the password: its line's options
    still restrict the session that the last method opens."""
    if key is not None:
        setattr(context, _PENDING_KEY, (name, key))
        return key
    pending = getattr(context, _PENDING_KEY, None)
    if pending is not None and pending[0] == name:
        return pending[1]
    return None


class GatewayPortal(Portal):
    """The portal that passes the login context's peer on to the checkers: the password
    checker schedules hashing per source, the key checkers decide ``from=``."""

    def __init__(self, realm: IRealm, password_checker: PasswordChecker, checkers: list) -> None:
        super().__init__(realm, [password_checker, *checkers])
        self.password_checker = password_checker
        self.key_checkers = list(checkers)

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        d = self._login(credentials, mind, *interfaces)
        if isinstance(mind, LoginContext):
            d.addBoth(_audit_login, credentials, mind)
        return d

    def _login(self, credentials: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        peer = mind.peer if isinstance(mind, LoginContext) else ""
        if IUsernamePassword.providedBy(credentials):
            d = self.password_checker.check(credentials, source_of(peer))
        else:
            checker = next(
                (
                    c
                    for c in self.key_checkers
                    if any(i.providedBy(credentials) for i in c.credentialInterfaces)
                ),
                None,
            )
            if checker is None:
                return super().login(credentials, mind, *interfaces)
            d = checker.check(credentials, peer)
        return d.addCallback(self.realm.requestAvatar, mind, *interfaces)


# The longest login name an audit event repeats (a client may send anything).
_AUDIT_NAME_MAX = 64


def _audit_name(raw: Any) -> str:
    """The login name as the audit trail shows it: the user part of ``user+target``, made
    printable and bounded (it is the client's text, for known and unknown users alike)."""
    name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    user = split_login(name)[0]
    user = "".join(c if c.isprintable() else "?" for c in user)
    return user if len(user) <= _AUDIT_NAME_MAX else user[:_AUDIT_NAME_MAX] + "..."


def _audit_login(result: Any, credentials: Any, context: LoginContext) -> Any:
    """Emit ``login`` or ``login_failed`` for one checked attempt: the same fields for a
    known and an unknown user (never the password, never why it failed). A key that is
    only being offered (SSH-2 PK_OK) or a method that passed when ``auth = "all"`` wants
    another is no outcome yet."""
    if isinstance(result, Failure) and result.check(ValidPublicKey, PartialAuthentication):
        return result
    failed = isinstance(result, Failure)
    fields: dict[str, Any] = {
        "user": _audit_name(getattr(credentials, "username", b"")),
        "method": context.method,
        "source": context.peer,
        "protocol": context.protocol,
        "client_version": context.client_version,
    }
    algorithm = getattr(credentials, "algName", None)
    if isinstance(algorithm, bytes):  # SSH-2 publickey: ssh-rsa means a SHA-1 signature
        fields["key_algorithm"] = algorithm.decode("ascii", "replace")
    if failed:
        emit(
            _log,
            LOGIN_FAILED,
            "audit: failed {method} login as {user!r} from {source} ({protocol})",
            **fields,
        )
    else:
        emit(_log, LOGIN, "audit: {user} logged in with {method} from {source} ({protocol})", **fields)
    return result


def build_portal(
    config: GatewayConfig, targets: Any, *, blocking: Blocking = run_in_thread
) -> GatewayPortal:
    """The one portal of the gateway: the realm and the three checkers.

    ``targets`` is the :class:`gateway.routing.Router` (or anything with
    ``open_session(username, request, client) -> ISessionTarget``, for users who never
    name a target). ``blocking`` runs password
    hashing; the default uses the reactor's thread pool, pass :func:`run_inline` in
    in-memory tests.
    """
    realm = GatewayRealm(
        config.users,
        targets,
        config.env_allow,
        permit_user_environment=config.permit_user_environment,
    )
    store = KeyStore(config.users)

    def keep_password(name: str) -> bool:
        user = config.users.get(name)
        return user is not None and any(
            config.targets[t].credentials == "pass-through"
            for t in user.targets
            if t in config.targets
        )

    return GatewayPortal(
        realm,
        PasswordChecker(config.users, blocking, keep_password=keep_password),
        [SSH2PublicKeyChecker(store), SSH1RSAChecker(store)],
    )
