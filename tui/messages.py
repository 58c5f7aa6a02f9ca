"""Messages from the engine's worker thread to the UI (the worker never touches widgets)."""

from __future__ import annotations

from textual.message import Message

from tracer.model import Stats


class PathsReady(Message):
    """New paths/flows wait in the feed's buffer; one pending message stands for any number."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PathsReady)


class SourceFailed(Message):
    """The engine raised: shown to the user; what was already collected stays browsable."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class EngineFinished(Message):
    """The input ended (end of file, --count, --duration) or the engine was stopped."""

    def __init__(self, stats: Stats | None) -> None:
        super().__init__()
        self.stats = stats
