"""Gateway events are ordinary log events with a name the audit trail and metrics select."""

from __future__ import annotations

import pytest
from twisted.logger import Logger, formatEvent

from gateway.events import EVENT_KEY, LOGIN, emit, event_of


def test_an_event_is_a_readable_log_line_that_carries_its_name_and_fields():
    seen = []
    log = Logger(observer=seen.append)
    emit(log, LOGIN, "login: {user} from {source}", user="alice", source="127.0.0.1:5")
    [event] = seen
    assert event_of(event) == LOGIN and event[EVENT_KEY] == LOGIN
    assert event["user"] == "alice" and formatEvent(event) == "login: alice from 127.0.0.1:5"


def test_an_ordinary_log_event_is_no_gateway_event():
    seen = []
    Logger(observer=seen.append).info("hello")
    assert event_of(seen[0]) is None


def test_an_unknown_event_name_is_a_bug():
    with pytest.raises(ValueError):
        emit(Logger(observer=lambda e: None), "logn", "typo")
