"""A device's login question put to the user (gateway.targets.prompts), byte by byte."""

from __future__ import annotations

import pytest

from gateway.targets.prompts import MAX_ANSWER, TerminalQuestion, shown_prompt
from gateway.upstream_errors import UpstreamFailure


def question(echo: bool):
    shown = bytearray()
    q = TerminalQuestion(echo, shown.extend)
    answers = []
    q.deferred.addCallbacks(answers.append, answers.append)
    return q, shown, answers


def test_hidden_answer_is_not_echoed_and_the_rest_is_kept():
    q, shown, answers = question(echo=False)
    assert q.feed(b"12") == b""
    assert q.feed(b"34\r\nls\r") == b"ls\r"  # CR LF is one end of line
    assert answers == ["1234"] and shown == b"\r\n"


def test_echo_backspace_kill_line_and_utf8():
    q, shown, answers = question(echo=True)
    q.feed("ab\x7fé\x08ü\x15xy\x08z\x01\n".encode())
    assert answers == ["xz"]
    erase = b"\x08 \x08"  # one per character, however many bytes it had
    assert shown == (b"ab" + erase + "é".encode() + erase + "ü".encode() + erase * 2
                     + b"xy" + erase + b"z\r\n")  # fmt: skip


@pytest.mark.parametrize("key", [b"\x03", b"\x04"])
def test_ctrl_c_or_d_on_an_empty_line_cancels(key):
    q, shown, answers = question(echo=True)
    assert q.feed(key + b"more") == b"more"
    [failure] = answers
    assert failure.check(UpstreamFailure)
    assert failure.getErrorMessage() == "login cancelled at the device's prompt"


def test_answers_are_bounded_and_prompts_made_safe():
    q, shown, answers = question(echo=False)
    q.feed(b"x" * (MAX_ANSWER + 50) + b"\r")
    assert answers == ["x" * MAX_ANSWER]
    assert shown_prompt("Code\x1b[31m:\nnext \x07line") == b"Code[31m:\r\nnext line"
