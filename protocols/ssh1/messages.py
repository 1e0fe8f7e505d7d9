"""SSH-1 message numbers, named exactly as the protocol names them, and the connection's
state machine as tables (like h11's ``_state.py``): which messages the peer may send in
each phase (:data:`ALLOWED`), which messages move the phase (:data:`TRANSITIONS`), and
what a pending reply answers (:class:`Awaiting`). The connection applies them; the rules:

Allowed messages (ALLOWED; the connection checks every packet it decodes):
- Every phase accepts MSG_DISCONNECT, MSG_IGNORE and MSG_DEBUG from the peer.
- A message number we do not know is a protocol error in every phase; so is a known
  message outside the phases listed for it here. Either ends the connection with a
  DISCONNECT naming the message and the phase.
- Server role (what a client may send):
    PUBLIC_KEY    nothing: our SMSG_PUBLIC_KEY has not gone out (only inside the constructor).
    SESSION_KEY   CMSG_SESSION_KEY only (after our SMSG_PUBLIC_KEY).
    USER          CMSG_USER.
    AUTH          the CMSG_AUTH_* requests; each waits for our SUCCESS/FAILURE or
                  RSA challenge before anything else may follow.
    AUTH_RSA      CMSG_AUTH_RSA_RESPONSE, after our SMSG_AUTH_RSA_CHALLENGE.
    PREPARATORY   the CMSG_REQUEST_* / forwarding / MAX_PACKET_SIZE requests (each
                  answered SUCCESS/FAILURE), then CMSG_EXEC_SHELL or CMSG_EXEC_CMD.
                  Also MSG_PORT_OPEN, which the protocol places in the interactive
                  phase: a client that forwards without a session (plink -N) sends it
                  here, and the server refuses it rather than ending the connection;
                  and the data / close / close-confirmation of a refused channel
                  (refused as opened-then-closed for clients that crash on
                  CHANNEL_OPEN_FAILURE, see server.py).
    INTERACTIVE   stdin, EOF, window size, forwarded-channel messages.
    CLOSING       as INTERACTIVE plus CMSG_EXIT_CONFIRMATION (after our SMSG_EXITSTATUS).
- Client role (what a server may send; client_connection.py):
    PUBLIC_KEY    SMSG_PUBLIC_KEY.
    REPLY         SMSG_SUCCESS / SMSG_FAILURE (and SMSG_AUTH_RSA_CHALLENGE in auth).
    INTERACTIVE   stdout, stderr, exit status, forwarded-channel messages.

Transitions (TRANSITIONS[(role, phase, message)] -> next phase):
- Both roles start in PUBLIC_KEY (:data:`INITIAL_PHASE`).
- A message moves the phase when it is sent or received, whichever side sends it: the
  server's own replies move it through the login (SUCCESS to the session key -> USER;
  SUCCESS to the user name or an authentication -> PREPARATORY; FAILURE -> AUTH; an RSA
  challenge -> AUTH_RSA) and its EXITSTATUS -> CLOSING; the client's session key -> REPLY
  and its EXEC_SHELL / EXEC_CMD -> INTERACTIVE.
- A message with no row for the current phase leaves the phase as it is. A message that
  moves a role's phase anywhere has a row for every phase in which that role may send or
  receive it, staying put included (tests/ssh1/test_phases.py checks the received half,
  and that every row's received message is allowed in its phase by ALLOWED).
- MSG_DISCONNECT, sent or received, moves every phase to CLOSED. CLOSED is terminal:
  nothing leaves it, and nothing more is decoded.
- Only ``Connection._advance`` changes the phase; the role classes never assign it.
  What they may send in a phase is checked by their public methods (RuntimeError for a
  caller's mistake, before anything is sent).

Awaited replies (:class:`Awaiting`):
- The server's ``pending`` names the client's request that waits for our reply; while it
  is set the peer may send only the any-phase messages, and the connection does not even
  decode further packets, since the reply may switch on compression.
- The client's ``pending`` (HOST_KEY) holds decoding until the caller has judged the
  server's keys; its ``awaiting`` names its own request the server has yet to answer, and
  a reply when nothing is awaited is a protocol error.
"""

from __future__ import annotations

from enum import Enum

SSH_MSG_NONE = 0
SSH_MSG_DISCONNECT = 1
SSH_SMSG_PUBLIC_KEY = 2
SSH_CMSG_SESSION_KEY = 3
SSH_CMSG_USER = 4
SSH_CMSG_AUTH_RHOSTS = 5
SSH_CMSG_AUTH_RSA = 6
SSH_SMSG_AUTH_RSA_CHALLENGE = 7
SSH_CMSG_AUTH_RSA_RESPONSE = 8
SSH_CMSG_AUTH_PASSWORD = 9
SSH_CMSG_REQUEST_PTY = 10
SSH_CMSG_WINDOW_SIZE = 11
SSH_CMSG_EXEC_SHELL = 12
SSH_CMSG_EXEC_CMD = 13
SSH_SMSG_SUCCESS = 14
SSH_SMSG_FAILURE = 15
SSH_CMSG_STDIN_DATA = 16
SSH_SMSG_STDOUT_DATA = 17
SSH_SMSG_STDERR_DATA = 18
SSH_CMSG_EOF = 19
SSH_SMSG_EXITSTATUS = 20
SSH_MSG_CHANNEL_OPEN_CONFIRMATION = 21
SSH_MSG_CHANNEL_OPEN_FAILURE = 22
SSH_MSG_CHANNEL_DATA = 23
SSH_MSG_CHANNEL_CLOSE = 24
SSH_MSG_CHANNEL_CLOSE_CONFIRMATION = 25
SSH_SMSG_X11_OPEN = 27
SSH_CMSG_PORT_FORWARD_REQUEST = 28
SSH_MSG_PORT_OPEN = 29
SSH_CMSG_AGENT_REQUEST_FORWARDING = 30
SSH_SMSG_AGENT_OPEN = 31
SSH_MSG_IGNORE = 32
SSH_CMSG_EXIT_CONFIRMATION = 33
SSH_CMSG_X11_REQUEST_FORWARDING = 34
SSH_CMSG_AUTH_RHOSTS_RSA = 35
SSH_MSG_DEBUG = 36
SSH_CMSG_REQUEST_COMPRESSION = 37
SSH_CMSG_MAX_PACKET_SIZE = 38
SSH_CMSG_AUTH_TIS = 39
SSH_SMSG_AUTH_TIS_CHALLENGE = 40
SSH_CMSG_AUTH_TIS_RESPONSE = 41
SSH_CMSG_AUTH_KERBEROS = 42
SSH_SMSG_AUTH_KERBEROS_RESPONSE = 43
SSH_CMSG_HAVE_KERBEROS_TGT = 44

NAMES: dict[int, str] = {
    value: name
    for name, value in dict(globals()).items()
    if name.startswith(("SSH_MSG_", "SSH_CMSG_", "SSH_SMSG_")) and isinstance(value, int)
}


def name_of(msg_type: int) -> str:
    return NAMES.get(msg_type, f"unknown message {msg_type}")


# Cipher numbers (for reference; the registry lives in ciphers.py) and other constants.
SSH_PROTOFLAG_SCREEN_NUMBER = 1
SSH_PROTOFLAG_HOST_IN_FWD_OPEN = 2

SSH_AUTH_RHOSTS = 1
SSH_AUTH_RSA = 2
SSH_AUTH_PASSWORD = 3
SSH_AUTH_RHOSTS_RSA = 4
SSH_AUTH_TIS = 5

# What the bits of SSH_SMSG_PUBLIC_KEY's masks mean, as the protocol draft names them, for
# showing what a server offers: every cipher number (ciphers.py implements 0, 2, 3 and 6)
# and auth method the draft lists, and the protocol flags.
CIPHER_NAMES = {
    0: "none",
    1: "idea",
    2: "des",
    3: "3des",
    4: "tss",
    5: "arcfour",
    6: "blowfish",
}
AUTH_NAMES = {
    SSH_AUTH_RHOSTS: "rhosts",
    SSH_AUTH_RSA: "rsa",
    SSH_AUTH_PASSWORD: "password",
    SSH_AUTH_RHOSTS_RSA: "rhosts-rsa",
    SSH_AUTH_TIS: "tis",
    6: "kerberos",
}
PROTOFLAG_NAMES = {
    SSH_PROTOFLAG_SCREEN_NUMBER: "screen-number",
    SSH_PROTOFLAG_HOST_IN_FWD_OPEN: "host-in-fwd-open",
}


def mask_names(
    mask: int, names: dict[int, str], what: str, numbered_by_value: bool = False
) -> list[str]:
    """The names of the bits set in ``mask``; one not in ``names`` is ``"<what> <key>"``.
    Cipher and auth masks are indexed by bit number (1 << number); the protocol flags by
    value (flag 1, flag 2, ...): ``numbered_by_value``."""
    out = []
    for bit in range(32):
        value = 1 << bit
        if not mask & value:
            continue
        key = value if numbered_by_value else bit
        out.append(names.get(key, f"{what} {key}"))
    return out


class Role(Enum):
    SERVER = "server"
    CLIENT = "client"


class Phase(Enum):
    # both roles start here: the server sends its keys, the client waits for them
    PUBLIC_KEY = "public-key"
    # server role
    SESSION_KEY = "session-key"
    USER = "user"
    AUTH = "auth"
    AUTH_RSA = "auth-rsa-response"
    PREPARATORY = "preparatory"
    INTERACTIVE = "interactive"
    CLOSING = "closing"
    # client role (and INTERACTIVE)
    REPLY = "reply"
    # both
    CLOSED = "closed"


INITIAL_PHASE = Phase.PUBLIC_KEY


class Awaiting(Enum):
    """What a reply answers: the request that waits for it. The value is the request's
    name in :class:`~protocols.ssh1.events.RequestAnswered` and in error messages.

    The server groups the requests its core answers alike (AUTH, REQUEST); the client
    names each of its own, because its caller acts on which one was answered."""

    # either role
    USER = "user"  # CMSG_USER: SUCCESS (no authentication needed) or FAILURE
    RSA = "rsa"  # CMSG_AUTH_RSA: an RSA challenge or FAILURE
    COMPRESSION = "compression"  # CMSG_REQUEST_COMPRESSION: SUCCESS starts compression
    # server: the client's request waits for our reply
    AUTH = "auth"  # a password, an RSA response or a method we never accept
    REQUEST = "request"  # pty, X11, port or agent forwarding
    MAX_PACKET = "max-packet"  # CMSG_MAX_PACKET_SIZE: SUCCESS sets our chunk size
    # client: the server's keys wait for our session key (``pending``) ...
    HOST_KEY = "host-key"
    # ... and our own requests wait for the server's reply (``awaiting``)
    SESSION_KEY = "session-key"
    PASSWORD = "password"
    RSA_CHALLENGE = "rsa-challenge"  # the server's challenge waits for our response
    RSA_RESPONSE = "rsa-response"
    PTY = "pty"


ANY_PHASE = frozenset({SSH_MSG_DISCONNECT, SSH_MSG_IGNORE, SSH_MSG_DEBUG})

_CHANNEL = frozenset(
    {
        SSH_MSG_PORT_OPEN,
        SSH_MSG_CHANNEL_OPEN_CONFIRMATION,
        SSH_MSG_CHANNEL_OPEN_FAILURE,
        SSH_MSG_CHANNEL_DATA,
        SSH_MSG_CHANNEL_CLOSE,
        SSH_MSG_CHANNEL_CLOSE_CONFIRMATION,
    }
)
# What a client may send about channels before its session starts (see PREPARATORY).
_EARLY_CHANNEL = frozenset(
    {
        SSH_MSG_PORT_OPEN,
        SSH_MSG_CHANNEL_DATA,
        SSH_MSG_CHANNEL_CLOSE,
        SSH_MSG_CHANNEL_CLOSE_CONFIRMATION,
    }
)
_CLIENT_INTERACTIVE = frozenset({SSH_CMSG_STDIN_DATA, SSH_CMSG_EOF, SSH_CMSG_WINDOW_SIZE}) | _CHANNEL

AUTH_REQUESTS = frozenset(
    {
        SSH_CMSG_AUTH_RHOSTS,
        SSH_CMSG_AUTH_RSA,
        SSH_CMSG_AUTH_PASSWORD,
        SSH_CMSG_AUTH_RHOSTS_RSA,
        SSH_CMSG_AUTH_TIS,
        SSH_CMSG_AUTH_KERBEROS,
        SSH_CMSG_HAVE_KERBEROS_TGT,
    }
)
PREPARATORY_REQUESTS = frozenset(
    {
        SSH_CMSG_REQUEST_COMPRESSION,
        SSH_CMSG_REQUEST_PTY,
        SSH_CMSG_X11_REQUEST_FORWARDING,
        SSH_CMSG_PORT_FORWARD_REQUEST,
        SSH_CMSG_AGENT_REQUEST_FORWARDING,
        SSH_CMSG_MAX_PACKET_SIZE,
    }
)

ALLOWED: dict[tuple[Role, Phase], frozenset[int]] = {
    (Role.SERVER, Phase.PUBLIC_KEY): frozenset(),
    (Role.SERVER, Phase.SESSION_KEY): frozenset({SSH_CMSG_SESSION_KEY}),
    (Role.SERVER, Phase.USER): frozenset({SSH_CMSG_USER}),
    (Role.SERVER, Phase.AUTH): AUTH_REQUESTS,
    (Role.SERVER, Phase.AUTH_RSA): frozenset({SSH_CMSG_AUTH_RSA_RESPONSE}),
    (Role.SERVER, Phase.PREPARATORY): PREPARATORY_REQUESTS
    | {SSH_CMSG_EXEC_SHELL, SSH_CMSG_EXEC_CMD}
    | _EARLY_CHANNEL,
    (Role.SERVER, Phase.INTERACTIVE): _CLIENT_INTERACTIVE,
    (Role.SERVER, Phase.CLOSING): _CLIENT_INTERACTIVE | {SSH_CMSG_EXIT_CONFIRMATION},
    (Role.SERVER, Phase.CLOSED): frozenset(),
    (Role.CLIENT, Phase.PUBLIC_KEY): frozenset({SSH_SMSG_PUBLIC_KEY}),
    (Role.CLIENT, Phase.REPLY): frozenset(
        {SSH_SMSG_SUCCESS, SSH_SMSG_FAILURE, SSH_SMSG_AUTH_RSA_CHALLENGE}
    ),
    (Role.CLIENT, Phase.INTERACTIVE): frozenset(
        {SSH_SMSG_STDOUT_DATA, SSH_SMSG_STDERR_DATA, SSH_SMSG_EXITSTATUS}
    )
    | _CHANNEL
    | {SSH_SMSG_X11_OPEN, SSH_SMSG_AGENT_OPEN},
    (Role.CLIENT, Phase.CLOSED): frozenset(),
}

_S, _C = Role.SERVER, Role.CLIENT
TRANSITIONS: dict[tuple[Role, Phase, int], Phase] = {
    # server: we send our keys; our SUCCESS accepts the client's session key
    (_S, Phase.PUBLIC_KEY, SSH_SMSG_PUBLIC_KEY): Phase.SESSION_KEY,
    (_S, Phase.SESSION_KEY, SSH_SMSG_SUCCESS): Phase.USER,
    # server: our replies to the user name and the authentication requests
    (_S, Phase.USER, SSH_SMSG_SUCCESS): Phase.PREPARATORY,  # no authentication needed
    (_S, Phase.USER, SSH_SMSG_FAILURE): Phase.AUTH,
    (_S, Phase.AUTH, SSH_SMSG_SUCCESS): Phase.PREPARATORY,
    (_S, Phase.AUTH, SSH_SMSG_FAILURE): Phase.AUTH,
    (_S, Phase.AUTH, SSH_SMSG_AUTH_RSA_CHALLENGE): Phase.AUTH_RSA,
    (_S, Phase.AUTH_RSA, SSH_SMSG_SUCCESS): Phase.PREPARATORY,
    (_S, Phase.AUTH_RSA, SSH_SMSG_FAILURE): Phase.AUTH,
    # server: our replies to preparatory requests keep the phase; the client's exec ends it
    (_S, Phase.PREPARATORY, SSH_SMSG_SUCCESS): Phase.PREPARATORY,
    (_S, Phase.PREPARATORY, SSH_SMSG_FAILURE): Phase.PREPARATORY,
    (_S, Phase.PREPARATORY, SSH_CMSG_EXEC_SHELL): Phase.INTERACTIVE,
    (_S, Phase.PREPARATORY, SSH_CMSG_EXEC_CMD): Phase.INTERACTIVE,
    # server: our exit status, then the client's confirmation
    (_S, Phase.INTERACTIVE, SSH_SMSG_EXITSTATUS): Phase.CLOSING,
    (_S, Phase.CLOSING, SSH_SMSG_EXITSTATUS): Phase.CLOSING,  # a second one changes nothing
    (_S, Phase.CLOSING, SSH_CMSG_EXIT_CONFIRMATION): Phase.CLOSED,
    # client: our session key; then requests and replies until our exec
    (_C, Phase.PUBLIC_KEY, SSH_CMSG_SESSION_KEY): Phase.REPLY,
    (_C, Phase.REPLY, SSH_CMSG_EXEC_SHELL): Phase.INTERACTIVE,
    (_C, Phase.REPLY, SSH_CMSG_EXEC_CMD): Phase.INTERACTIVE,
    # client: the server's exit status (the core confirms it at once)
    (_C, Phase.INTERACTIVE, SSH_SMSG_EXITSTATUS): Phase.CLOSED,
    # both: DISCONNECT, either way, from every phase but CLOSED
    **{
        (role, phase, SSH_MSG_DISCONNECT): Phase.CLOSED
        for role, phase in ALLOWED
        if phase is not Phase.CLOSED
    },
}


def allowed(role: Role, phase: Phase, msg_type: int, pending: bool = False) -> bool:
    if msg_type in ANY_PHASE:
        return True
    if pending:
        return False
    return msg_type in ALLOWED.get((role, phase), frozenset())


def next_phase(role: Role, phase: Phase, msg_type: int) -> Phase:
    """The phase after ``msg_type`` is sent or received in ``phase``; unchanged without a row."""
    return TRANSITIONS.get((role, phase, msg_type), phase)
