"""Terminal set-up for pty sessions: SSH terminal modes -> termios, and the window size.

Modes arrive in SSH-2 numbering (RFC 4254 section 8, plus IUTF8 from RFC 8160). They are
looked up in tables by opcode; an opcode this platform's termios cannot express is skipped,
because a client's terminal description is advice, not something worth failing a session for.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from collections.abc import Iterable

from twisted.logger import Logger

from protocols.session import WindowSize

log = Logger()

# termios.tcgetattr() list layout.
_IFLAG, _OFLAG, _CFLAG, _LFLAG, _ISPEED, _OSPEED, _CC = range(7)

# opcode -> name of the control-character index in termios.
CONTROL_CHARS: dict[int, str] = {
    1: "VINTR",
    2: "VQUIT",
    3: "VERASE",
    4: "VKILL",
    5: "VEOF",
    6: "VEOL",
    7: "VEOL2",
    8: "VSTART",
    9: "VSTOP",
    10: "VSUSP",
    11: "VDSUSP",
    12: "VREPRINT",
    13: "VWERASE",
    14: "VLNEXT",
    15: "VFLUSH",
    16: "VSWTCH",
    17: "VSTATUS",
    18: "VDISCARD",
}

# opcode -> (termios field, flag name). A non-zero argument sets the flag, zero clears it.
FLAGS: dict[int, tuple[int, str]] = {
    30: (_IFLAG, "IGNPAR"),
    31: (_IFLAG, "PARMRK"),
    32: (_IFLAG, "INPCK"),
    33: (_IFLAG, "ISTRIP"),
    34: (_IFLAG, "INLCR"),
    35: (_IFLAG, "IGNCR"),
    36: (_IFLAG, "ICRNL"),
    37: (_IFLAG, "IUCLC"),
    38: (_IFLAG, "IXON"),
    39: (_IFLAG, "IXANY"),
    40: (_IFLAG, "IXOFF"),
    41: (_IFLAG, "IMAXBEL"),
    42: (_IFLAG, "IUTF8"),
    50: (_LFLAG, "ISIG"),
    51: (_LFLAG, "ICANON"),
    52: (_LFLAG, "XCASE"),
    53: (_LFLAG, "ECHO"),
    54: (_LFLAG, "ECHOE"),
    55: (_LFLAG, "ECHOK"),
    56: (_LFLAG, "ECHONL"),
    57: (_LFLAG, "NOFLSH"),
    58: (_LFLAG, "TOSTOP"),
    59: (_LFLAG, "IEXTEN"),
    60: (_LFLAG, "ECHOCTL"),
    61: (_LFLAG, "ECHOKE"),
    62: (_LFLAG, "PENDIN"),
    70: (_OFLAG, "OPOST"),
    71: (_OFLAG, "OLCUC"),
    72: (_OFLAG, "ONLCR"),
    73: (_OFLAG, "OCRNL"),
    74: (_OFLAG, "ONOCR"),
    75: (_OFLAG, "ONLRET"),
    92: (_CFLAG, "PARENB"),
    93: (_CFLAG, "PARODD"),
}

# CS7 and CS8 are values of the multi-bit CSIZE field, not independent bits: OR-ing them
# in (as a plain flag table would) turns "CS7 off, CS8 on" into garbage.
CHARACTER_SIZES: dict[int, str] = {90: "CS7", 91: "CS8"}

# opcode -> termios speed field.
SPEEDS: dict[int, int] = {128: _ISPEED, 129: _OSPEED}

# Baud rate in bits/s -> termios constant, for the ones this platform has.
BAUD_RATES: dict[int, int] = {
    int(name[1:]): getattr(termios, name)
    for name in dir(termios)
    if name.startswith("B") and name[1:].isdigit()
}

# RFC 4254: a control character of 255 means "not used".
_SSH_DISABLED = 255


def _disabled_char(fd: int) -> int:
    try:
        value = os.fpathconf(fd, "PC_VDISABLE")
    except (OSError, ValueError):
        value = -1
    return value if 0 <= value <= 255 else 0


def apply_modes(fd: int, modes: Iterable[tuple[int, int]]) -> None:
    """Set the terminal modes ``modes`` (SSH-2 opcodes) on the terminal ``fd``."""
    attrs = termios.tcgetattr(fd)
    termios.tcsetattr(fd, termios.TCSANOW, updated_attributes(attrs, modes, _disabled_char(fd)))


def updated_attributes(attrs: list, modes: Iterable[tuple[int, int]], disabled: int = 0) -> list:
    """``attrs`` (a termios.tcgetattr list) with ``modes`` applied; ``disabled`` is the
    platform's "no character" value that SSH's 255 stands for."""
    attrs = list(attrs)
    cc = list(attrs[_CC])
    for opcode, value in modes:
        if opcode in CONTROL_CHARS:
            index = getattr(termios, CONTROL_CHARS[opcode], None)
            if index is None or index >= len(cc) or not 0 <= value <= 255:
                continue
            char = disabled if value == _SSH_DISABLED else value
            # VMIN/VTIME share slots with VEOF/VEOL on some systems and are ints there.
            cc[index] = char if isinstance(cc[index], int) else bytes([char])
        elif opcode in FLAGS:
            field, name = FLAGS[opcode]
            bit = getattr(termios, name, None)
            if bit is None:
                continue
            attrs[field] = attrs[field] | bit if value else attrs[field] & ~bit
        elif opcode in CHARACTER_SIZES:
            size = getattr(termios, CHARACTER_SIZES[opcode], None)
            if size is not None and value:
                attrs[_CFLAG] = (attrs[_CFLAG] & ~termios.CSIZE) | size
        elif opcode in SPEEDS:
            speed = BAUD_RATES.get(value)
            if speed is not None:
                attrs[SPEEDS[opcode]] = speed
        else:
            log.debug("ignoring unknown terminal mode {opcode}", opcode=opcode)
    attrs[_CC] = cc
    return attrs


def set_window_size(fd: int, size: WindowSize) -> None:
    """Set the terminal's size; the kernel sends SIGWINCH to its foreground process group."""

    def clamp(n: int) -> int:
        return max(0, min(int(n), 0xFFFF))

    packed = struct.pack(
        "HHHH", clamp(size.rows), clamp(size.cols), clamp(size.xpixel), clamp(size.ypixel)
    )
    fcntl.ioctl(fd, termios.TIOCSWINSZ, packed)


def eof_sequence(fd: int, last_byte: int | None) -> bytes:
    """What to write to the terminal ``fd`` so that its reader sees end of file.

    Only a terminal in canonical mode has an end of file: there the VEOF character at the
    start of a line makes read() return 0, just like a closed pipe. After a partial line, the
    first VEOF only hands over that line, so a second one is needed. In raw mode (an editor,
    a shell's line editor) VEOF is an ordinary byte and injecting it would be a keystroke the
    user never typed, so nothing is sent (b"") — the same as OpenSSH, which never signals EOF
    to a pty at all.
    """
    attrs = termios.tcgetattr(fd)
    if not attrs[_LFLAG] & termios.ICANON:
        return b""
    cc = attrs[_CC]
    eof = cc[termios.VEOF]
    eof = eof if isinstance(eof, int) else eof[0]
    if eof == _disabled_char(fd):
        return b""
    line_ends = {ord("\n")}
    for name in ("VEOL", "VEOL2"):
        char = cc[getattr(termios, name)]
        char = char if isinstance(char, int) else char[0]
        if char != _disabled_char(fd):
            line_ends.add(char)
    if attrs[_IFLAG] & termios.ICRNL and not attrs[_IFLAG] & termios.IGNCR:
        line_ends.add(ord("\r"))
    if last_byte is None or last_byte in line_ends or last_byte == eof:
        return bytes([eof])
    return bytes([eof, eof])
