"""The open-file limit at start (issue 11): the soft RLIMIT_NOFILE is raised to the hard
one and both are logged; a limit that cannot be raised is logged, never fatal. Once with
fakes, once for a real gateway process started with a low soft limit."""

from __future__ import annotations

import re
import resource
from pathlib import Path

import pytest
from twisted.logger import globalLogPublisher

from gateway.fd_limit import raise_open_file_limit
from tests.support.clients import keyed_config
from tests.support.gateway_helpers import LogCapture
from tests.support.gateway_process import GatewayProcess


@pytest.fixture
def logs():
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


class Limits:
    def __init__(self, soft: int, hard: int, refuse: Exception | None = None) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def set(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if self.refuse is not None:
            raise self.refuse
        self.limits = limits


def test_soft_limit_is_raised_to_the_hard_one_and_both_are_logged(logs):
    limits = Limits(1024, 524288)
    assert raise_open_file_limit(limits.get, limits.set) == (524288, 524288)
    assert limits.limits == (524288, 524288)
    assert "open file limit: soft 524288 (raised from 1024), hard 524288" in logs.text()


def test_limit_already_at_the_hard_one_is_left_alone(logs):
    limits = Limits(4096, 4096, refuse=AssertionError("setrlimit must not be called"))
    assert raise_open_file_limit(limits.get, limits.set) == (4096, 4096)
    assert "open file limit: soft 4096, hard 4096" in logs.text()


@pytest.mark.parametrize("error", [OSError(1, "Operation not permitted"), ValueError("no")])
def test_a_limit_that_cannot_be_raised_is_logged_not_fatal(logs, error):
    limits = Limits(1024, 2**62, refuse=error)
    assert raise_open_file_limit(limits.get, limits.set) == (1024, 2**62)
    assert f"cannot raise the open file limit from 1024 to {2**62}" in logs.text()
    assert f"open file limit: soft 1024, hard {2**62}" in logs.text()


def test_a_gateway_started_with_a_low_soft_limit_runs_with_the_hard_one(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    if low == hard:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    config, _ = keyed_config(tmp_path)
    (tmp_path / "gw").mkdir()
    # The gateway inherits the limits of the process that starts it.
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        gw = GatewayProcess(tmp_path / "gw", config).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = Path(f"/proc/{gw.pid}/limits").read_text()
        found = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.M)
        assert found and (int(found.group(1)), int(found.group(2))) == (hard, hard), limits
        gw.wait_for_log(rf"open file limit: soft {hard} \(raised from {low}\), hard {hard}")
    finally:
        gw.stop()
    gw.assert_no_traceback()
