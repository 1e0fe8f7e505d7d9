"""JSON log lines (gateway.logformat) in memory: the fixed fields, a connection record's
fields as fields, failures, values JSON cannot hold, and the hand-over to twistd."""

from __future__ import annotations

import io
import json

from twisted.application import service
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure

from gateway.logformat import event_fields, json_line, json_logging, twistd_log_file
from protocols.flow import C2S, S2C, FlowRecorder
from protocols.record import ConnectionRecord


def capture(emit) -> list[dict]:
    events: list[dict] = []
    log = Logger(namespace="gateway.test", observer=events.append)
    emit(log)
    return events


def a_record() -> ConnectionRecord:
    record = ConnectionRecord(peer="192.0.2.7:50022", protocol="ssh1")
    record.client_version = "SSH-1.5-PuTTY_Release_0.78"
    record.user, record.auth_method, record.auth_result = "alice", "password", "success"
    record.algorithms = {"cipher": "3des"}
    record.bytes_in, record.bytes_out = 1200, 3400
    record.close_reason = "client disconnected"
    flow = FlowRecorder("server", record.peer, "ssh1")
    flow.version(S2C, "SSH-1.99-sshgateway_0.1.0")
    flow.version(C2S, record.client_version)
    flow.packet(S2C, "SSH_SMSG_PUBLIC_KEY", 300)
    flow.packet(C2S, "SSH_CMSG_USER", 20)
    flow.target = "sw1"
    flow.exit(3)
    record.flow = flow
    return record


def test_connection_record_fields_are_fields():
    record = a_record()
    (event,) = capture(
        lambda log: log.info("connection closed: {summary}", summary=record.summary(), record=record)
    )
    line = json_line(event)
    assert line.endswith("\n") and line.count("\n") == 1
    out = json.loads(line)
    assert list(out)[:4] == ["time", "level", "namespace", "message"]
    assert out["level"] == "info" and out["namespace"] == "gateway.test"
    assert out["time"].endswith("+00:00")
    assert out["message"].startswith("connection closed: peer=192.0.2.7:50022 protocol=ssh1")
    assert {k: out[k] for k in ("peer", "protocol", "client_version", "user", "auth_method",
                                "auth_result", "bytes_in", "bytes_out", "close_reason")} == {
        "peer": "192.0.2.7:50022", "protocol": "ssh1",
        "client_version": "SSH-1.5-PuTTY_Release_0.78", "user": "alice",
        "auth_method": "password", "auth_result": "success", "bytes_in": 1200,
        "bytes_out": 3400, "close_reason": "client disconnected",
    }  # fmt: skip
    assert out["algorithms"] == {"cipher": "3des"}
    assert out["target"] == "sw1" and out["stage"] == "auth" and out["exit_status"] == 3
    assert out["flow_id"] == record.flow.id and isinstance(out["duration"], float)
    assert "summary" not in out and "record" not in out and "flow" not in out


def test_a_record_without_flow_recording():
    record = ConnectionRecord(peer="[::1]:2")
    (event,) = capture(lambda log: log.info("closed", record=record))
    out = event_fields(event)
    assert out["peer"] == "[::1]:2" and "target" not in out and "flow_id" not in out


def test_failure_gives_error_and_traceback():
    def emit(log):
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.failure("while doing {thing}", Failure(), thing="work")

    (event,) = capture(emit)
    out = json.loads(json_line(event))
    assert out["level"] == "critical" and out["message"] == "while doing work"
    assert out["error"] == "division by zero" and "ZeroDivisionError" in out["traceback"]
    assert out["thing"] == "work"


def test_values_json_cannot_hold_become_text():
    class Thing:
        def __str__(self):
            return "a thing"

    (event,) = capture(
        lambda log: log.warn(
            "odd {x}", x=Thing(), raw=b"\xff\x00ok", nan=float("nan"), nested={1: (2, {3})},
            message="shadowed", time="shadowed",
        )
    )  # fmt: skip
    out = json.loads(json_line(event))
    assert out["x"] == "a thing" and out["raw"] == "\\xff\x00ok" and out["nan"] == "nan"
    assert out["nested"] == {"1": [2, [3]]}
    assert out["message"] == "odd a thing" and out["level"] == "warn"


def test_legacy_events_keep_their_text():
    event = {
        "log_time": 0.0, "log_level": LogLevel.info, "log_namespace": "log_legacy",
        "log_system": "SSHServerTransport,3,127.0.0.1", "log_format": "{log_text}",
        "log_text": "legacy text", "message": ("legacy text",), "isError": 0, "system": "x",
        "time": 0.0,
    }  # fmt: skip
    assert json.loads(json_line(event)) == {
        "time": "1970-01-01T00:00:00.000000+00:00", "level": "info",
        "namespace": "log_legacy", "message": "legacy text",
        "system": "SSHServerTransport,3,127.0.0.1",
    }  # fmt: skip


def test_handed_to_twistd_as_the_applications_observer(capsys):
    application = service.Application("sshgateway")
    top = service.MultiService()
    wrapped = json_logging(top, {"nodaemon": True, "logfile": "-", "syslog": False})
    service.IService(wrapped).setServiceParent(application)
    assert top.parent is wrapped
    observer = application.getComponent(ILogObserver)
    assert observer is not None
    Logger(namespace="gateway.test", observer=observer).info("hello {who}", who="operator")
    out = json.loads(capsys.readouterr().out)
    assert (out["message"], out["who"]) == ("hello operator", "operator")


def test_log_file_as_twistd_picks_it(tmp_path):
    assert twistd_log_file({"syslog": True}) is None
    log_file = twistd_log_file({"logfile": str(tmp_path / "gw.log"), "nodaemon": False})
    assert not isinstance(log_file, io.TextIOBase)
    log_file.write("x\n")
    log_file.close()
    assert (tmp_path / "gw.log").read_text() == "x\n"
