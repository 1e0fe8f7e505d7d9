"""The index of recordings in the shared store: :class:`RecordingIndex`, a session tap
(gateway.session_tap) after the recorder's, writes one ``recordings`` row (path, session,
user, target, size) for each session that left a recording, when it ends. The recordings
themselves stay files (``[recording] dir``, which the instances may share).
"""

from __future__ import annotations

import os
from typing import Any

from zope.interface import implementer

from gateway.session_tap import EndObserver, ISessionObserver, ISessionTap, LiveSession
from gateway.store.worker import IStoreWorker
from protocols.session import ExitInfo


@implementer(ISessionTap)
class RecordingIndex:
    """Indexes every recorded session in the store when it ends."""

    def __init__(self, store: IStoreWorker) -> None:
        self.store = store

    def session_started(self, session: LiveSession) -> ISessionObserver:
        return _Indexed(self.store, session)


class _Indexed(EndObserver):
    def __init__(self, store: IStoreWorker, session: LiveSession) -> None:
        self.store = store
        self.session = session

    def ended(self, info: ExitInfo | None) -> None:
        path = self.session.recording
        if not path:
            return
        try:
            size = os.stat(path).st_size  # as of the session's end
        except OSError:
            size = 0
        session: Any = self.session.info
        self.store.write(
            "recording", str(path), session.session_id, session.username, session.target, size
        )


__all__ = ["RecordingIndex"]
