"""The shared JSON-lines writer (gateway.jsonl) with several processes appending to the
same file, as the worker processes do (gateway.workers): no line lost or torn, however
the rotations of the different processes interleave."""

from __future__ import annotations

import json
import multiprocessing
import os

from gateway.jsonl import RotatingJSONLines

PROCESSES = 4
LINES = 400


def _write_many(directory: str, writer_number: int) -> None:
    writer = RotatingJSONLines(directory, "audit.jsonl", 2048, 200, what="audit")
    for index in range(LINES):
        assert writer.write({"writer": writer_number, "index": index, "pad": "x" * 60})


def test_processes_appending_and_rotating_lose_no_line(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_write_many, args=(str(tmp_path), n)) for n in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    seen = set()
    for name in os.listdir(tmp_path):
        if not name.startswith("audit.jsonl"):
            continue
        text = (tmp_path / name).read_text()
        assert len(text.encode()) <= 2048
        for line in text.splitlines():
            record = json.loads(line)
            seen.add((record["writer"], record["index"]))
    assert len(seen) == PROCESSES * LINES


def test_no_lock_file_is_left_beside_the_records(tmp_path):
    writer = RotatingJSONLines(tmp_path, "flows.jsonl", 1000, 2, what="flows")
    assert writer.write({"a": 1})
    assert os.listdir(tmp_path) == ["flows.jsonl"]
