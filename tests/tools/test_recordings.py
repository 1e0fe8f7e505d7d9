"""``sshgateway recordings list|show|play|export`` on hand-made asciicast v2 files: the
columns and summaries, finding a recording, tolerance (unknown header keys and event
codes, the cut-off last line of a crash, over-long lines, hostile text), the player's
timing without waiting, Ctrl-C, and what export writes."""

from __future__ import annotations

import io
import json
import stat

import pytest

from tests.support.casts import header, run, shell_session, write_cast
from tests.support.gateway_helpers import LOCAL_ACCESS
from tools import cli
from tools.recordings import cast as cast_module
from tools.recordings.cast import CastFile, Event, summarize
from tools.recordings.player import Timing, play, schedule


@pytest.fixture
def state(tmp_path):
    recordings = tmp_path / "recordings"
    shell_session(recordings / "s-1-shell.cast", timestamp=1796310000)
    write_cast(
        recordings / "s-2-exec.cast",
        header(timestamp=1796310600, command="uname -a", title="bob -> host2: uname -a"),
        [[0.1, "o", "Linux host2\r\n"], [0.2, "m", "truncated: disk full"]],
    )
    return tmp_path


# -- list ------------------------------------------------------------------------------------


def test_list_newest_first_with_columns(state):
    status, out, err = run("list", "--state-dir", str(state))
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STARTED", "(UTC)", "USER", "TARGET", "DURATION", "SIZE",
                                "TRUNCATED", "WHAT"]
    assert lines[1].split()[:4] == ["s-2-exec", "2026-12-03", "15:10:00", "bob"]
    assert lines[1].split()[4:6] == ["host2", "0.2s"]
    assert lines[1].split()[-4:] == ["yes", "exec:", "uname", "-a"]
    assert lines[2].split()[:6] == ["s-1-shell", "2026-12-03", "15:00:00", "alice", "dev1",
                                    "3.0s"]
    assert lines[2].split()[-2:] == ["no", "shell"]


def test_list_json_and_limit(state):
    status, out, _ = run("list", "--state-dir", str(state), "--format", "json", "--limit", "1")
    assert status == 0
    listed = json.loads(out)
    assert listed["directory"] == str(state / "recordings")
    (item,) = listed["recordings"]
    assert item["id"] == "s-2-exec" and item["truncated"] is True
    assert item["user"] == "bob" and item["target"] == "host2" and item["command"] == "uname -a"
    assert item["started"] == "2026-12-03T15:10:00+00:00" and item["duration"] == 0.2
    assert item["size"] == (state / "recordings" / "s-2-exec.cast").stat().st_size


def test_list_reads_one_level_of_subdirectories_and_skips_others(tmp_path):
    shell_session(tmp_path / "recordings" / "2026-12-03" / "s-9.cast")
    (tmp_path / "recordings" / "notes.txt").write_text("not a recording")
    (tmp_path / "recordings" / ".s-10.cast.tmp").write_text("")
    status, out, _ = run("list", "--dir", str(tmp_path / "recordings"), "--format", "json")
    assert [r["id"] for r in json.loads(out)["recordings"]] == ["s-9"]


def test_list_empty_missing_and_bad_state_dir(tmp_path):
    status, out, err = run("list", "--state-dir", str(tmp_path))
    assert status == 0 and out == f"no recordings in {tmp_path / 'recordings'}\n"
    status, out, err = run("list", "--state-dir", str(tmp_path / "nope"))
    assert status == 1 and "does not exist" in err and out == ""
    status, _, err = run("list", "--state-dir", str(tmp_path), "--limit", "0")
    assert status == 1 and "--limit" in err


def test_list_takes_the_directory_from_the_config(state, tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(f'state_dir = "{state}"\n[users.a]\nauthorized_keys = "keys"\n{LOCAL_ACCESS}')
    status, out, err = run("list", "--config", str(config), "--format", "json")
    assert status == 0, err
    assert len(json.loads(out)["recordings"]) == 2
    status, _, err = run("list", "--config", str(tmp_path / "missing.toml"))
    assert status == 1 and err
    elsewhere = tmp_path / "elsewhere"
    shell_session(elsewhere / "s-7.cast")
    config.write_text(config.read_text() + f'[recording]\ndir = "{elsewhere}"\n')
    status, out, err = run("list", "--config", str(config), "--format", "json")
    assert status == 0, err
    assert [r["id"] for r in json.loads(out)["recordings"]] == ["s-7"]


def test_list_names_an_unreadable_file_and_goes_on(state):
    (state / "recordings" / "s-0-bad.cast").write_text("this is not asciicast\n")
    (state / "recordings" / "s-0-v1.cast").write_text('{"version": 1, "stdout": []}\n')
    status, out, _ = run("list", "--state-dir", str(state))
    assert status == 0
    assert "unreadable: the first line is not a JSON header" in out
    assert "unreadable: not asciicast v2 (version 1)" in out
    assert "s-1-shell" in out and "s-2-exec" in out


# -- show ------------------------------------------------------------------------------------


def test_show_text_summarizes_header_and_events(state):
    status, out, err = run("show", "--state-dir", str(state), "s-1")
    assert status == 0 and err == ""
    assert "recording s-1-shell" in out
    assert "user       alice" in out and "target     dev1" in out
    assert "session    shell" in out and "title      alice -> dev1" in out
    assert "terminal   80x24" in out and "env        TERM=xterm" in out
    assert "events     1 'i', 1 'm', 4 'o', 1 'r'" in out
    assert "output     60 characters (19 on stderr); input 3 characters recorded" in out
    assert "resized    100x30" in out and "TRUNCATED" not in out and "marker" not in out


def test_show_json_and_truncation_mark(state):
    status, out, _ = run("show", "--state-dir", str(state), "s-2-exec", "--format", "json")
    shown = json.loads(out)
    assert status == 0
    assert shown["header"]["command"] == "uname -a"
    assert shown["truncated"] is True and shown["truncated_at"] == 0.2
    assert shown["markers"] == [{"time": 0.2, "label": "truncated: disk full"}]
    status, out, _ = run("show", "--state-dir", str(state), "s-2-exec")
    assert "TRUNCATED  events lost from 0.200s (disk full); the session went on" in out
    assert shown["truncated_reason"] == "disk full"


def test_show_tolerates_unknown_keys_codes_and_a_crash_cut_last_line(tmp_path):
    path = write_cast(
        tmp_path / "crash.cast",
        header(theme={"fg": "#fff"}, x_future={"a": [1, 2]}, idle_time_limit=2),
        [[0.5, "o", "one\r\n"], [0.7, "x", {"exit": 0}], [0.8, "o", "two"], "not an event",
         [0.9, "o"]],
        tail='[1.5, "o", "thr',
    )
    status, out, err = run("show", str(path))  # a path: no --state-dir needed
    assert status == 0
    assert 'x_future: {"a": [1, 2]}' in out and "theme" not in out
    assert "events     2 'o', 1 'x'" in out and "duration   0.8s" in out
    assert "line 5: not an event, skipped" in err and "line 6: not an event, skipped" in err
    assert "line 7: the last line is cut off (a crash?), skipped" in err


def test_show_escapes_control_characters_from_the_file(tmp_path):
    write_cast(tmp_path / "recordings" / "evil.cast",
               header(title="\x1b]0;owned\x07", user="a\x1b[2Jb", env={"TERM": "x\ry"}), [])
    write_cast(tmp_path / "recordings" / "evil2.cast",
               header(title="a\x1b[2Jb -> \x9bdev: x"), [])
    status, out, _ = run("show", "--state-dir", str(tmp_path), "evil")
    assert status == 0 and "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "title      \\x1b]0;owned\\x07" in out and "user       a\\x1b[2Jb" in out
    status, out, _ = run("list", "--state-dir", str(tmp_path))
    assert "\x1b" not in out and "\x9b" not in out
    assert "a\\x1b[2Jb" in out and "\\x9bdev" in out


def test_user_and_target_from_the_header_keys_or_the_gateways_title():
    from tools.recordings.cast import parse_header

    def who(**fields):
        h = parse_header(json.dumps(header(**fields)).encode())
        return h.user, h.target

    assert who(title="alice -> dev1") == ("alice", "dev1")
    assert who(title="alice -> dev1: uname -a") == ("alice", "dev1")
    assert who(title="bob -> local", user="carol") == ("carol", "local")
    assert who(sshgateway={"user": "dave", "target": "sw1"}, title="x") == ("dave", "sw1")
    assert who(title="a demo") == (None, None) and who() == (None, None)


def test_over_long_line_is_skipped_without_holding_it(tmp_path, monkeypatch):
    monkeypatch.setattr(cast_module, "MAX_LINE_BYTES", 100)
    path = write_cast(tmp_path / "long.cast", header(),
                      [[0.1, "o", "x" * 500], [0.2, "o", "short"]])
    cast = CastFile(path)
    summary = summarize(cast)
    assert summary.events["o"] == 1 and summary.output_chars == 5
    assert cast.notes == ["line 2: longer than 100 bytes, skipped"]


def test_find_by_prefix_ambiguous_unknown(state):
    status, _, err = run("show", "--state-dir", str(state), "s-")
    assert status == 1 and "ambiguous: s-1-shell, s-2-exec" in err
    status, _, err = run("show", "--state-dir", str(state), "zzz")
    assert status == 1 and "no recording 'zzz'" in err
    status, _, err = run("show", "no-such-id")
    assert status == 1 and "give --state-dir, --config or --dir" in err


def test_not_a_cast_file(tmp_path):
    (tmp_path / "empty.cast").write_text("")
    status, _, err = run("show", str(tmp_path / "empty.cast"))
    assert status == 1 and err == "sshgateway recordings: the file is empty\n"


# -- play ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def events(*items: tuple[float, str, str]) -> list[Event]:
    return [Event(t, code, data) for t, code, data in items]


def test_play_keeps_the_timing_of_output_events_only():
    clock, written = FakeClock(), []
    played = play(
        events((0.5, "o", "a"), (1.0, "i", "typed"), (2.0, "m", "stderr"), (2.0, "o", "err"),
               (2.0, "r", "90x20"), (3.0, "x", "?"), (4.5, "o", "b")),
        written.append, Timing(), clock=clock, sleep=clock.sleep,
    )
    assert played == 3 and written == ["a", "err", "b"]
    assert clock.slept == [0.5, 1.5, 2.5]


def test_play_speed_and_max_idle():
    items = events((0.5, "o", "a"), (10.5, "o", "b"), (11.0, "o", "c"))
    due = [t for t, _ in schedule(items, Timing(speed=2.0))]
    assert due == [0.25, 5.25, 5.5]
    due = [t for t, _ in schedule(items, Timing(speed=1.0, max_idle=1.0))]
    assert due == [0.5, 1.5, 2.0]
    due = [t for t, _ in schedule(items, Timing(speed=4.0, max_idle=2.0))]
    assert due == [0.125, 0.625, 0.75]


def test_play_takes_times_going_backwards_as_no_pause():
    items = events((2.0, "o", "a"), (1.0, "o", "b"), (3.0, "o", "c"))
    assert [t for t, _ in schedule(items, Timing())] == [2.0, 2.0, 3.0]


def test_play_does_not_sleep_when_late():
    clock, written = FakeClock(), []

    def slow_write(data):
        written.append(data)
        clock.now += 5  # a slow terminal: already past the next event's time

    play(events((0.1, "o", "a"), (1.0, "o", "b")), slow_write, Timing(), clock=clock,
         sleep=clock.sleep)
    assert written == ["a", "b"] and clock.slept == [0.1]


class BinaryOut(io.TextIOWrapper):
    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8")

    def value(self) -> bytes:
        self.flush()
        return self.buffer.getvalue()


def test_play_command_writes_output_with_speed(state, monkeypatch):
    slept = []
    monkeypatch.setattr("tools.recordings.player.time.sleep", slept.append)
    out, err = BinaryOut(), io.StringIO()
    status = cli.main(["recordings", "play", "--state-dir", str(state), "s-1", "--speed", "100"],
                      stdin=io.StringIO(), stdout=out, stderr=err)
    assert status == 0 and err.getvalue() == ""
    assert out.value() == (b"dev1$ ls\r\nREADME  notes.txt\r\nls: cannot open x\r\n"
                           b"dev1$ exit\r\n")
    assert sum(slept) < 3.0 / 100 + 0.01


def test_play_uses_the_header_idle_limit_unless_told(tmp_path, monkeypatch):
    path = write_cast(tmp_path / "idle.cast", header(idle_time_limit=1.0),
                      [[0.0, "o", "a"], [60.0, "o", "b"]])
    captured = []
    monkeypatch.setattr("tools.recordings.command.play",
                        lambda evs, write, timing: captured.append(timing))
    run("play", str(path))
    run("play", str(path), "--max-idle", "5")
    assert [t.max_idle for t in captured] == [1.0, 5.0]
    status, _, err = run("play", str(path), "--speed", "0")
    assert status == 1 and "--speed must be more than 0" in err


def test_ctrl_c_stops_play_cleanly(state):
    out, err = BinaryOut(), io.StringIO()
    written = []

    def interrupt_on_second(data: bytes) -> int:
        written.append(data)
        if len(written) == 2:
            raise KeyboardInterrupt
        return len(data)

    out.buffer.write = interrupt_on_second  # type: ignore[method-assign]
    status = cli.main(["recordings", "play", "--state-dir", str(state), "s-1", "--speed",
                       "1000"], stdin=io.StringIO(), stdout=out, stderr=err)
    assert status == 130
    assert err.getvalue() == "sshgateway recordings: stopped\n"
    assert written[-1] == b"\x1b[0m\r\n"  # colours reset after the interruption


# -- export ----------------------------------------------------------------------------------


def test_export_to_a_file_0600_leaving_out_what_is_not_an_event(tmp_path):
    source = write_cast(tmp_path / "crash.cast", header(x_future=1),
                        [[0.5, "o", "one\r\n"], "junk", [0.7, "zz", 3]], tail='[0.9, "o", "tw')
    target = tmp_path / "out" / "copy.cast"
    target.parent.mkdir()
    status, out, err = run("export", str(source), "-o", str(target))
    assert status == 0 and out == ""
    assert "line 3: not an event, skipped" in err and "line 5: the last line is cut off" in err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    lines = target.read_text().splitlines()
    assert json.loads(lines[0])["x_future"] == 1
    assert lines[1:] == ['[0.5, "o", "one\\r\\n"]', '[0.7, "zz", 3]']


def test_export_to_stdout_is_the_file_as_written(state):
    out, err = BinaryOut(), io.StringIO()
    status = cli.main(["recordings", "export", "--state-dir", str(state), "s-1-shell"],
                      stdout=out, stderr=err)
    assert status == 0
    assert out.value() == (state / "recordings" / "s-1-shell.cast").read_bytes()
