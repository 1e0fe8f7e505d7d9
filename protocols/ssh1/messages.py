"""SSH-1 message numbers, named exactly as the protocol names them, and the phase table.

Phase rules (the table :data:`ALLOWED` encodes them; the connection enforces them):
- Every phase accepts MSG_DISCONNECT, MSG_IGNORE and MSG_DEBUG from the peer.
- A message number we do not know is a protocol error in every phase; so is a known
  message outside the phases listed for it here.
- Server role (what a client may send):
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
  While the peer waits for our reply to a request ("pending"), it may send only the
  any-phase messages; the connection does not even decode further packets then, since
  the reply may switch on compression.
- Client role (what a server may send; client_connection.py):
    PUBLIC_KEY    SMSG_PUBLIC_KEY.
    REPLY         SMSG_SUCCESS / SMSG_FAILURE (and SMSG_AUTH_RSA_CHALLENGE in auth).
    INTERACTIVE   stdout, stderr, exit status, forwarded-channel messages.
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


class Role(Enum):
    SERVER = "server"
    CLIENT = "client"


class Phase(Enum):
    # server role
    SESSION_KEY = "session-key"
    USER = "user"
    AUTH = "auth"
    AUTH_RSA = "auth-rsa-response"
    PREPARATORY = "preparatory"
    INTERACTIVE = "interactive"
    CLOSING = "closing"
    # client role
    PUBLIC_KEY = "public-key"
    REPLY = "reply"
    # both
    CLOSED = "closed"


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


def allowed(role: Role, phase: Phase, msg_type: int, pending: bool = False) -> bool:
    if msg_type in ANY_PHASE:
        return True
    if pending:
        return False
    return msg_type in ALLOWED.get((role, phase), frozenset())
