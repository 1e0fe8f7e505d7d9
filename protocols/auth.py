"""What the front ends need from authentication: credentials, the login context, the
shared login flow (grace time, attempt limit, failure delay), and the errors they map.

Both front ends authenticate through one ``twisted.cred`` portal that the gateway builds:

- passwords: ``twisted.cred.credentials.UsernamePassword`` (SSH-1 and SSH-2);
- SSH-2 public keys: ``twisted.cred.credentials.SSHPrivateKey`` (Conch's contract);
- SSH-1 RSA: :class:`SSH1RSAChallenge` below. SSH-1 RSA login is a challenge, not a
  signature: the checker finds the key whose modulus the client named and calls
  :meth:`ISSH1RSAChallenge.challenge`, which the SSH-1 front end answers by sending
  SSH_SMSG_AUTH_RSA_CHALLENGE and checking the client's response.

The *mind* passed to ``portal.login`` is the connection's :class:`LoginContext`; the realm
reads it to apply per-user policy (``auth = "all"``) and raises
:class:`PartialAuthentication` or :class:`PolicyRefused`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import Attribute, implementer

from protocols.session import IGatewayUser

# Method names as the connection record and policy use them (SSH-2 spelling).
METHOD_PASSWORD = "password"
METHOD_PUBLICKEY = "publickey"


class PartialAuthentication(UnauthorizedLogin):
    """This method succeeded, but the user's policy needs more (``auth = "all"``)."""

    def __init__(self, remaining: list[str]) -> None:
        super().__init__(f"more authentication required: {', '.join(remaining)}")
        self.remaining = remaining


class PolicyRefused(UnauthorizedLogin):
    """The credentials were right but policy forbids this login (reason is for the log only)."""


class TooManyAttempts(Exception):
    """The connection used up its authentication attempts; disconnect."""


class ISSH1RSAChallenge(ICredentials):
    username = Attribute("bytes: the login name")
    modulus = Attribute("int: the RSA modulus the client offered")

    def challenge(public_exponent: int, modulus: int) -> defer.Deferred[bool]:
        """Challenge the client to prove it holds the private key; fires True if it did."""


@implementer(ISSH1RSAChallenge)
class SSH1RSAChallenge:
    def __init__(self, username: bytes, modulus: int, challenger: Callable[[int, int], Any]):
        self.username = username
        self.modulus = modulus
        self._challenger = challenger

    def challenge(self, public_exponent: int, modulus: int) -> defer.Deferred[bool]:
        return defer.maybeDeferred(self._challenger, public_exponent, modulus)


@dataclass
class LoginContext:
    """Per-connection login state, passed as the cred *mind*."""

    protocol: str  # "ssh1" | "ssh2"
    peer: str
    client_version: str = ""  # the client's identification line (for the audit trail)
    method: str = ""  # the method being tried now
    succeeded: set[str] = field(default_factory=set)  # methods that passed for `username`
    username: str = ""

    def begin(self, username: str, method: str) -> None:
        # Methods that passed for another name do not count for this one.
        if username != self.username:
            self.succeeded = set()
            self.username = username
        self.method = method


@dataclass(frozen=True)
class AuthLimits:
    grace_time: float = 120.0  # seconds from connect to successful login
    max_attempts: int = 6  # failed attempts before disconnect
    failure_delay: float = 1.0  # a failed attempt answers no sooner than this after it began


class LoginFlow:
    """One connection's login bookkeeping, shared by the SSH-1 and SSH-2 front ends.

    ``attempt`` wraps ``portal.login``: every failure is answered no sooner than
    ``failure_delay`` after the attempt began (known and unknown users alike), counts
    towards ``max_attempts``, and after the last one the Deferred fails with
    :class:`TooManyAttempts`. ``on_grace_expired`` is called if no login succeeded within
    ``grace_time``.
    """

    def __init__(
        self,
        portal: Any,
        limits: AuthLimits,
        context: LoginContext,
        clock: IReactorTime,
        on_grace_expired: Callable[[], None],
    ) -> None:
        self.portal = portal
        self.limits = limits
        self.context = context
        self.clock = clock
        self.failures = 0
        self.done = False
        self._grace: IDelayedCall | None = clock.callLater(limits.grace_time, self._expired)
        self._on_grace_expired = on_grace_expired
        self._pending: list[IDelayedCall] = []

    def _expired(self) -> None:
        self._grace = None
        if not self.done:
            self._on_grace_expired()

    def attempt(self, username: str, method: str, credentials: ICredentials) -> defer.Deferred:
        """Fires with ``(interface, avatar, logout)``; fails with UnauthorizedLogin (or a
        subclass) after the failure delay, or with TooManyAttempts."""
        self.context.begin(username, method)
        started = self.clock.seconds()
        d = defer.maybeDeferred(self.portal.login, credentials, self.context, IGatewayUser)
        d.addCallbacks(self._succeeded, lambda f: self._failed(f, started))
        return d

    def _succeeded(self, result: tuple) -> tuple:
        self.done = True
        self.cancel()
        return result

    def _failed(self, failure: Failure, started: float) -> defer.Deferred:
        if failure.check(PartialAuthentication):
            return failure  # not a failure of the user: policy wants one more method
        if not failure.check(UnauthorizedLogin):
            # A checker bug must look like any other failure to the peer.
            failure = Failure(UnauthorizedLogin(f"internal error: {failure.getErrorMessage()}"))
        self.failures += 1
        if self.failures >= self.limits.max_attempts:
            failure = Failure(TooManyAttempts(f"{self.failures} failed authentication attempts"))
        wait = max(0.0, started + self.limits.failure_delay - self.clock.seconds())
        d: defer.Deferred = defer.Deferred()
        call = self.clock.callLater(wait, d.errback, failure)
        self._pending.append(call)
        return d

    def cancel(self) -> None:
        """Stop all timers (login done or connection lost)."""
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        for call in self._pending:
            if call.active():
                call.cancel()
        self._pending.clear()
