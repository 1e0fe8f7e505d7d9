"""Issue 15: a bridged download from an SSH-1 device that sends in bursts and pauses under
back-pressure must never stall. In memory (tests/support/ssh1/throttled.py): the gateway's
SSH-1 client, the bridge and a front end with an SSH-2 window, against the gateway's own
SSH-1 server as the device, whose program writes in bursts while it is not paused, all
under seeded random schedules of who moves how many bytes when."""

from __future__ import annotations

import pytest

from gateway.known_hosts import KnownHosts
from protocols.session import ExitInfo
from tests.support.ssh1.throttled import run_schedule


@pytest.mark.parametrize("seed", range(8))
def test_bursty_download_under_back_pressure_completes(tmp_path, seed):
    outcome = run_schedule(tmp_path, KnownHosts(tmp_path / "known_hosts"), seed)
    assert not outcome.stalled, outcome.stalled
    assert outcome.exit == ExitInfo(status=0)
    assert len(outcome.received) == outcome.total
    chunk = bytes(range(256))
    assert outcome.received[:4096] == (chunk * 16)[: min(4096, outcome.total)]
