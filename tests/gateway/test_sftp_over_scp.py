"""The gateway's SFTP-over-scp server (gateway.targets.sftp_over_scp) in memory: Conch's
SFTP client on one side, the in-memory scp device (tests/support/scp_device.py) on the
other; plus raw hostile packets."""

from __future__ import annotations

import os
import stat
import struct
from typing import Any

import pytest
from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.filetransfer import (
    FX_BAD_MESSAGE,
    FX_EOF,
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    FXF_CREAT,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    SFTPError,
)
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.targets import sftp_over_scp
from gateway.targets.bridge import BridgeSession, UpstreamFailure
from gateway.targets.sftp_over_scp import SftpOverScpSession, Transfer
from protocols.session import ExitInfo, ISessionClient, ISessionTarget, SessionRequest
from tests.support.doubles import FakeSessionClient, FakeUpstream
from tests.support.scp_device import FakeScpDevice


@implementer(ISessionClient)
class LoopClient(FakeSessionClient):
    """The front end's side, handing stdout to Conch's SFTP client."""

    def __init__(self) -> None:
        super().__init__()
        self.sftp: filetransfer.FileTransferClient | None = None

    def write_stdout(self, data: bytes) -> None:
        super().write_stdout(data)
        if self.sftp is not None:
            self.sftp.dataReceived(data)


class _ToSession:
    def __init__(self, session: SftpOverScpSession) -> None:
        self.session = session

    def write(self, data: bytes) -> None:
        self.session.write_stdin(data)


class Harness:
    def __init__(self, files: dict | None = None, **kwargs: Any) -> None:
        self.device = FakeScpDevice(files)
        self.client = LoopClient()
        self.transfers: list[Transfer] = []
        self.session = SftpOverScpSession(
            self.client, self.device.open_exec, on_transfer=self.transfers.append, **kwargs
        )
        self.sftp = filetransfer.FileTransferClient()
        self.client.sftp = self.sftp
        self.sftp.makeConnection(_ToSession(self.session))  # sends INIT

    def result(self, d: defer.Deferred) -> Any:
        results: list = []
        d.addBoth(results.append)
        assert results, "no answer (the server would hang the client)"
        if isinstance(results[0], defer.Failure):
            results[0].raiseException()
        return results[0]

    def error(self, d: defer.Deferred) -> SFTPError:
        """The status error a request got (Conch's client turns SSH_FX_OP_UNSUPPORTED
        into NotImplementedError: turned back here)."""
        with pytest.raises((SFTPError, NotImplementedError)) as info:
            self.result(d)
        if isinstance(info.value, NotImplementedError):
            return SFTPError(FX_OP_UNSUPPORTED, info.value.args[0].decode())
        return info.value


def test_the_doubles_provide_their_interfaces() -> None:
    h = Harness({"/tmp/f": (0o644, b"x")})
    verifyObject(ISessionTarget, h.session)
    h.result(h.sftp.getAttrs(b"/tmp/f"))
    verifyObject(ISessionTarget, h.device.sessions[0])
    verifyObject(ISessionClient, h.device.sessions[0].client)


def test_get_reads_a_file_sequentially_with_requests_outstanding() -> None:
    content = os.urandom(300_000)
    h = Harness({"/tmp/f": (0o640, content)})
    handle = h.result(h.sftp.openFile(b"/tmp/f", FXF_READ, {}))
    assert h.device.commands == [b"scp -f /tmp/f"]
    reads = [handle.readChunk(offset, 32768) for offset in range(0, len(content) + 65536, 32768)]
    chunks: list[bytes] = []
    eofs = 0
    for d in reads:
        try:
            chunks.append(h.result(d))
        except EOFError:
            eofs += 1
    assert b"".join(chunks) == content
    assert eofs == 2
    assert h.result(handle.getAttrs()) == {
        "size": len(content),
        "permissions": stat.S_IFREG | 0o640,
    }
    h.result(handle.close())
    assert h.transfers == [Transfer("get", "/tmp/f", len(content), "ok")]
    assert h.device.sessions[0].stdin == b"\0\0\0"


def test_out_of_order_read_is_unsupported_and_the_next_one_still_works() -> None:
    h = Harness({"/tmp/f": (0o644, b"abcdef")})
    handle = h.result(h.sftp.openFile(b"/tmp/f", FXF_READ, {}))
    assert h.error(handle.readChunk(2, 2)).code == FX_OP_UNSUPPORTED
    assert h.result(handle.readChunk(0, 3)) == b"abc"
    assert h.error(handle.readChunk(0, 3)).code == FX_OP_UNSUPPORTED  # no going back
    assert h.result(handle.readChunk(3, 100)) == b"def"


def test_download_window_pauses_the_device() -> None:
    content = os.urandom(sftp_over_scp.READ_WINDOW * 3)
    h = Harness({"/tmp/big": (0o644, content)})
    handle = h.result(h.sftp.openFile(b"/tmp/big", FXF_READ, {}))
    device = h.device.sessions[0]
    assert device.paused and device.pauses == 1
    fetch = handle_fetch(h)
    assert len(fetch.buffer) <= sftp_over_scp.READ_WINDOW + h.device.chunk
    got = bytearray()
    offset = 0
    while offset < len(content):
        got += h.result(handle.readChunk(offset, 65536))
        offset += 65536
    assert bytes(got) == content


def handle_fetch(h: Harness) -> Any:
    (handle,) = [x for x in h.session.fs.handles]
    return handle.fetch


def test_client_that_cannot_take_more_pauses_the_device() -> None:
    h = Harness({"/tmp/f": (0o644, b"z" * 100_000)})
    h.client.producer.pauseProducing()
    h.result(h.sftp.openFile(b"/tmp/f", FXF_READ, {}))
    assert h.device.sessions[0].paused
    h.client.producer.resumeProducing()
    assert not h.device.sessions[0].paused


def test_get_missing_file_carries_the_device_message() -> None:
    h = Harness()
    error = h.error(h.sftp.openFile(b"/tmp/nope", FXF_READ, {}))
    assert error.code == FX_NO_SUCH_FILE
    assert error.message == "scp: /tmp/nope: No such file or directory"


def test_device_that_ends_mid_file() -> None:
    h = Harness({"/tmp/f": (0o644, b"x" * 50_000)})
    h.client.producer.pauseProducing()  # the device sends nothing after the header
    handle = h.result(h.sftp.openFile(b"/tmp/f", FXF_READ, {}))
    second = handle.readChunk(0, 32768)
    device = h.device.sessions[0]
    device.client.write_stderr(b"Connection reset\n")
    device._exit(255)
    error = h.error(second)
    assert (
        error.code == FX_FAILURE and "ended the transfer early (Connection reset)" in error.message
    )


def test_the_last_bytes_wait_for_the_device_status() -> None:
    """scp -f pads a file it could not read to its size and says so only at the end."""
    h = Harness({"/tmp/f": (0o644, b"x" * 10)})
    h.client.producer.pauseProducing()
    handle = h.result(h.sftp.openFile(b"/tmp/f", FXF_READ, {}))
    device = h.device.sessions[0]
    device.state = "scripted"  # the test writes the device's output
    h.client.producer.resumeProducing()
    first, last = handle.readChunk(0, 4), handle.readChunk(4, 6)
    device.client.write_stdout(b"\0" * 10)
    assert h.result(first) == b"\0" * 4
    assert not last.called
    device.client.write_stdout(b"\x01scp: /tmp/f: read: Input/output error\n")
    error = h.error(last)
    assert error.code == FX_FAILURE and error.message == "scp: /tmp/f: read: Input/output error"


def test_device_protocol_violation_fails_cleanly() -> None:
    h = Harness({"/tmp/f": (0o644, b"x" * 10)})
    h.client.producer.pauseProducing()
    handle = h.result(h.sftp.openFile(b"/tmp/f", FXF_READ, {}))
    device = h.device.sessions[0]
    device.state = "hostile"
    device.client.write_stdout(b"x" * 10 + b"\0garbage")
    error = h.error(handle.readChunk(0, 10))
    assert error.code == FX_FAILURE and "protocol error" in error.message
    assert device.closed


def test_put_spools_then_sends_with_scp_t() -> None:
    content = os.urandom(200_000)
    h = Harness()
    handle = h.result(
        h.sftp.openFile(b"/tmp/up", FXF_WRITE | FXF_CREAT | FXF_TRUNC, {"permissions": 0o100600})
    )
    for offset in range(0, len(content), 32768):
        h.result(handle.writeChunk(offset, content[offset : offset + 32768]))
    assert h.device.commands == []  # nothing sent before the size is known
    assert h.result(handle.getAttrs()) == {
        "size": len(content),
        "permissions": stat.S_IFREG | 0o600,
    }
    h.result(handle.close())
    assert h.device.commands == [b"scp -t /tmp/up"]
    assert h.device.files["/tmp/up"] == (0o600, content)
    assert h.device.sessions[0].eof
    assert h.transfers == [Transfer("put", "/tmp/up", len(content), "ok")]


def test_put_respects_device_flow_control() -> None:
    content = os.urandom(100_000)
    h = Harness()
    handle = h.result(h.sftp.openFile(b"/tmp/up", FXF_WRITE | FXF_CREAT | FXF_TRUNC, {}))
    h.result(handle.writeChunk(0, content))
    device_pauses_at_once = []

    original = FakeScpDevice.open_exec

    def open_exec(self: FakeScpDevice, command: bytes, client: Any) -> Any:
        session = original(self, command, client)
        device_pauses_at_once.append(session)
        return session

    h.device.open_exec = open_exec.__get__(h.device)  # type: ignore[method-assign]
    h.session.fs.open_exec = h.device.open_exec
    closing = handle.close()
    (session,) = device_pauses_at_once
    assert session.producer is not None
    assert not closing.called or h.device.files["/tmp/up"][1] == content
    h.result(closing)
    assert h.device.files["/tmp/up"] == (0o644, content)


def test_put_non_sequential_and_oversized_writes_refused() -> None:
    h = Harness(max_upload=1000)
    handle = h.result(h.sftp.openFile(b"/tmp/up", FXF_WRITE | FXF_CREAT | FXF_TRUNC, {}))
    assert h.error(handle.writeChunk(10, b"x")).code == FX_OP_UNSUPPORTED
    h.result(handle.writeChunk(0, b"x" * 600))
    error = h.error(handle.writeChunk(600, b"x" * 600))
    assert error.code == FX_FAILURE and "limit of 1000 bytes" in error.message


def test_in_place_upload_is_sent_only_once_cut_to_what_was_written() -> None:
    """OpenSSH 9's scp opens without TRUNC, writes, then sets the size: a whole file."""
    h = Harness()
    handle = h.result(h.sftp.openFile(b"/tmp/in-place", FXF_WRITE | FXF_CREAT, {}))
    h.result(handle.writeChunk(0, b"12345"))
    # (Conch's client sends a handle's setAttrs as a path SETSTAT: call the server's
    # handle directly; the OpenSSH scp peer test sends the real FSETSTAT.)
    (server_handle,) = h.session.fs.handles
    with pytest.raises(SFTPError) as info:
        server_handle.setAttrs({"size": 3})
    assert info.value.code == FX_OP_UNSUPPORTED
    server_handle.setAttrs({"size": 5})
    h.result(handle.close())
    assert h.device.files["/tmp/in-place"] == (0o644, b"12345")
    # Without the cut, the rest of an existing file would be lost: refused, nothing sent.
    handle = h.result(h.sftp.openFile(b"/tmp/kept", FXF_WRITE | FXF_CREAT, {}))
    h.result(handle.writeChunk(0, b"ab"))
    assert h.error(handle.close()).code == FX_OP_UNSUPPORTED
    assert "/tmp/kept" not in h.device.files
    assert h.device.commands == [b"scp -t /tmp/in-place"]


def test_put_refused_by_the_device() -> None:
    h = Harness()
    h.device.read_only.add("/tmp/ro")
    handle = h.result(h.sftp.openFile(b"/tmp/ro", FXF_WRITE | FXF_CREAT | FXF_TRUNC, {}))
    h.result(handle.writeChunk(0, b"data"))
    error = h.error(handle.close())
    assert error.code == FX_PERMISSION_DENIED and error.message == "scp: /tmp/ro: Permission denied"
    assert h.transfers[-1].result == "scp: /tmp/ro: Permission denied"


@pytest.mark.parametrize(
    "flags",
    [
        FXF_READ | FXF_WRITE,
        FXF_WRITE,
        FXF_WRITE | FXF_CREAT | FXF_TRUNC | 0x04,
        FXF_WRITE | FXF_CREAT | FXF_TRUNC | 0x20,
    ],
)
def test_open_modes_scp_cannot_do(flags: int) -> None:
    h = Harness({"/tmp/f": (0o644, b"x")})
    assert h.error(h.sftp.openFile(b"/tmp/f", flags, {})).code == FX_OP_UNSUPPORTED
    assert h.device.commands == []


def test_stat_from_the_c_line_and_of_directories() -> None:
    h = Harness({"/tmp/f": (0o604, b"12345")})
    assert h.result(h.sftp.getAttrs(b"/tmp/f")) == {"size": 5, "permissions": stat.S_IFREG | 0o604}
    assert h.device.commands == [b"scp -r -f /tmp/f"]
    assert h.device.sessions[0].closed  # dropped after the header
    assert h.result(h.sftp.getAttrs(b"/tmp", 1)) == {"size": 0, "permissions": stat.S_IFDIR | 0o755}
    assert h.result(h.sftp.getAttrs(b".")) == {"size": 0, "permissions": stat.S_IFDIR | 0o755}
    assert len(h.device.commands) == 2  # "." is the login directory: no scp needed
    assert h.error(h.sftp.getAttrs(b"/tmp/none")).code == FX_NO_SUCH_FILE


def test_realpath() -> None:
    h = Harness()
    assert h.result(h.sftp.realPath(b".")) == "."
    assert h.result(h.sftp.realPath(b"")) == "."
    assert h.result(h.sftp.realPath(b"a/./b/../c")) == "a/c"
    assert h.result(h.sftp.realPath(b"//etc//x/")) == "/etc/x"
    assert h.device.commands == []


def test_everything_else_is_unsupported_never_a_hang() -> None:
    h = Harness({"/tmp/f": (0o644, b"x")})
    for d in [
        h.sftp.openDirectory(b"/tmp"),
        h.sftp.removeFile(b"/tmp/f"),
        h.sftp.renameFile(b"/tmp/f", b"/tmp/g"),
        h.sftp.makeDirectory(b"/tmp/d", {}),
        h.sftp.removeDirectory(b"/tmp"),
        h.sftp.setAttrs(b"/tmp/f", {"permissions": 0o600}),
        h.sftp.readLink(b"/tmp/f"),
        h.sftp.makeLink(b"/tmp/l", b"/tmp/f"),
        h.sftp.extendedRequest(b"statvfs@openssh.com", NS(b"/")),
    ]:
        assert h.error(d).code == FX_OP_UNSUPPORTED
    assert h.device.commands == []


# ----------------------------------------------------------------- raw, hostile packets
class RawClient:
    def __init__(self) -> None:
        self.device = FakeScpDevice({"/tmp/f": (0o644, b"x")})
        self.client = FakeSessionClient()
        self.session = SftpOverScpSession(self.client, self.device.open_exec)
        self.send(1, struct.pack("!L", 3))  # INIT

    def send(self, kind: int, body: bytes) -> None:
        self.session.write_stdin(struct.pack("!LB", len(body) + 1, kind) + body)

    def replies(self) -> list[tuple[int, bytes]]:
        out, data = [], bytes(self.client.out)
        while data:
            (length,) = struct.unpack("!L", data[:4])
            out.append((data[4], data[5 : 4 + length]))
            data = data[4 + length :]
        return out


def test_malformed_packets_get_bad_message() -> None:
    raw = RawClient()
    raw.send(17, struct.pack("!L", 7) + b"\x00\x00")  # STAT, path length cut short
    raw.send(5, struct.pack("!L", 8) + b"\x00")  # READ, truncated
    raw.send(150, struct.pack("!L", 9))  # unknown type
    version, *rest = raw.replies()
    assert version[0] == filetransfer.FXP_VERSION
    codes = [
        (struct.unpack("!L", body[:4])[0], struct.unpack("!L", body[4:8])[0]) for _, body in rest
    ]
    assert codes == [(7, FX_BAD_MESSAGE), (8, FX_BAD_MESSAGE), (9, FX_OP_UNSUPPORTED)]
    assert raw.client.exit is None


@pytest.mark.parametrize("length", [0, 4, sftp_over_scp.MAX_PACKET + 1, 0xFFFFFFFF])
def test_out_of_bounds_packet_length_ends_the_session(length: int) -> None:
    raw = RawClient()
    raw.session.write_stdin(struct.pack("!L", length) + b"\x11")
    assert raw.client.exit == ExitInfo(
        status=1, message=f"SFTP packet length {length} out of bounds"
    )
    assert b"out of bounds" in raw.client.err
    raw.session.write_stdin(b"more")  # ignored, no traceback


def test_client_eof_ends_the_session_and_drops_unsent_uploads() -> None:
    h = Harness()
    handle = h.result(h.sftp.openFile(b"/tmp/up", FXF_WRITE | FXF_CREAT | FXF_TRUNC, {}))
    h.result(handle.writeChunk(0, b"partial"))
    h.session.close_stdin()
    assert h.client.exit == ExitInfo(status=0)
    assert h.client.eof
    assert h.device.commands == []  # a half-written upload is never sent


def test_close_mid_download_closes_the_device_session() -> None:
    h = Harness({"/tmp/f": (0o644, b"x" * 3_000_000)})
    h.result(h.sftp.openFile(b"/tmp/f", FXF_READ, {}))
    h.session.close()
    assert h.device.sessions[0].closed
    assert h.client.exit is None  # close() is the front end's: no callbacks after it


def test_eof_status_for_reads_past_the_end() -> None:
    h = Harness({"/tmp/f": (0o644, b"abc")})
    handle = h.result(h.sftp.openFile(b"/tmp/f", FXF_READ, {}))
    with pytest.raises(EOFError):
        h.result(handle.readChunk(3, 10))
    assert FX_EOF == 1


def test_paths_are_quoted_for_the_device_shell() -> None:
    assert sftp_over_scp.quote_path(b"/tmp/plain-name_1.txt") == b"/tmp/plain-name_1.txt"
    assert sftp_over_scp.quote_path(b"/tmp/a b;rm -rf ~") == b"'/tmp/a b;rm -rf ~'"
    assert sftp_over_scp.quote_path(b"it's") == b"'it'\\''s'"
    assert sftp_over_scp.quote_path(b"-oProxy") == b"./-oProxy"
    assert sftp_over_scp.quote_path(b"~/notes.txt") == b"notes.txt"
    assert sftp_over_scp.quote_path(b"~/a b") == b"'a b'"
    h = Harness({"/tmp/a b": (0o644, b"q")})
    assert h.result(h.sftp.getAttrs(b"/tmp/a b"))["size"] == 1
    assert h.device.commands == [b"scp -r -f '/tmp/a b'"]


def test_device_ignoring_the_pause_fails_the_transfer_not_the_memory() -> None:
    h = Harness({"/tmp/f": (0o644, b"x" * (sftp_over_scp.READ_HARD_LIMIT * 2))})
    h.client.producer.pauseProducing()
    handle = h.result(h.sftp.openFile(b"/tmp/f", FXF_READ, {}))
    device = h.device.sessions[0]
    device.client.write_stdout(b"x" * (sftp_over_scp.READ_HARD_LIMIT + 1))  # paused, yet
    error = h.error(handle.readChunk(0, 10))
    assert error.code == FX_FAILURE and "too far ahead" in error.message
    assert device.closed and not handle_fetch(h).buffer


def test_large_uploads_spool_to_a_private_temporary_file(tmp_path: Any) -> None:
    h = Harness(spool_dir=tmp_path)
    handle = h.result(h.sftp.openFile(b"/tmp/up", FXF_WRITE | FXF_CREAT | FXF_TRUNC, {}))
    content = os.urandom(sftp_over_scp.SPOOL_IN_MEMORY + 1000)
    for offset in range(0, len(content), 65536):
        h.result(handle.writeChunk(offset, content[offset : offset + 65536]))
    (server_handle,) = h.session.fs.handles
    spool = server_handle.spool
    assert spool._rolled
    assert stat.S_IMODE(os.fstat(spool.fileno()).st_mode) == 0o600
    assert list(tmp_path.iterdir()) == []  # already unlinked: nothing left behind
    h.result(handle.close())
    assert h.device.files["/tmp/up"][1] == content


def test_a_client_cannot_start_device_commands_without_end() -> None:
    h = Harness({"/tmp/f": (0o644, b"x" * 100)})
    h.client.producer.pauseProducing()  # keep the downloads open
    handles = [h.result(h.sftp.openFile(b"/tmp/f", FXF_READ, {})) for _ in range(4)]
    error = h.error(h.sftp.openFile(b"/tmp/f", FXF_READ, {}))
    assert error.code == FX_FAILURE and "too many transfers" in error.message
    assert len(h.device.commands) == 4
    h.result(handles[0].close())
    h.result(h.sftp.openFile(b"/tmp/f", FXF_READ, {}))  # room again


def test_the_upload_limit_counts_every_open_upload() -> None:
    h = Harness(max_upload=1000)
    first = h.result(h.sftp.openFile(b"/tmp/a", FXF_WRITE | FXF_CREAT | FXF_TRUNC, {}))
    second = h.result(h.sftp.openFile(b"/tmp/b", FXF_WRITE | FXF_CREAT | FXF_TRUNC, {}))
    h.result(first.writeChunk(0, b"x" * 600))
    error = h.error(second.writeChunk(0, b"y" * 600))
    assert error.code == FX_FAILURE and "limit of 1000 bytes" in error.message


# ----------------------------------------------------------------- through the real bridge
class BridgedDevice:
    """open_exec as the Router gives it: each command a BridgeSession (the upstream
    targets' session) whose connection the test opens or fails by hand."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.connects: list[tuple[SessionRequest, Any, defer.Deferred]] = []

    def open_exec(self, command: bytes, client: ISessionClient) -> BridgeSession:
        def connect(request: SessionRequest, sink: Any) -> defer.Deferred:
            d: defer.Deferred = defer.Deferred()
            self.connects.append((request, sink, d))
            return d

        return BridgeSession(
            self.clock,
            client,
            SessionRequest(command=command),
            connect,
            username="alice",
            target="dev1",
            connect_timeout=10,
        )


def bridged_harness() -> tuple[Harness, BridgedDevice]:
    h = Harness()
    bridged = BridgedDevice()
    h.session.fs.open_exec = bridged.open_exec
    return h, bridged


def test_through_the_bridge_input_waits_for_the_device_session() -> None:
    h, bridged = bridged_harness()
    opening = h.sftp.openFile(b"/tmp/f", FXF_READ, {})
    (request, sink, connected) = bridged.connects[0]
    assert request.command == b"scp -f /tmp/f"
    assert not opening.called
    upstream = FakeUpstream()
    connected.callback(upstream)
    assert upstream.written == b"\0"  # held by the bridge until the session opened
    sink.stdout(b"C0600 3 f\n")
    handle = h.result(opening)
    reading = handle.readChunk(0, 3)
    sink.stdout(b"abc\0")
    assert h.result(reading) == b"abc"
    assert upstream.written == b"\0\0\0" and upstream.eof
    sink.exited(ExitInfo(status=0))
    h.result(handle.close())
    assert h.transfers == [Transfer("get", "/tmp/f", 3, "ok")]


def test_through_the_bridge_an_unreachable_device_is_a_status_with_its_reason() -> None:
    h, bridged = bridged_harness()
    opening = h.sftp.openFile(b"/tmp/f", FXF_READ, {})
    bridged.connects[0][2].errback(
        UpstreamFailure("cannot connect to 10.0.0.9:22: connection refused")
    )
    error = h.error(opening)
    assert error.code == FX_FAILURE
    assert error.message == "sshgateway: dev1: cannot connect to 10.0.0.9:22: connection refused"
    assert h.client.exit is None  # the SFTP session goes on
    assert h.result(h.sftp.realPath(b"x/../y")) == "y"


def test_through_the_bridge_a_pause_that_ends_while_opening_is_lifted() -> None:
    h, bridged = bridged_harness()
    h.client.producer.pauseProducing()
    opening = h.sftp.openFile(b"/tmp/f", FXF_READ, {})
    h.client.producer.resumeProducing()  # before the device session is even open
    upstream = FakeUpstream()
    bridged.connects[0][2].callback(upstream)
    assert not upstream.paused
    bridged.connects[0][1].stdout(b"C0600 3 f\n")
    assert h.result(opening)
