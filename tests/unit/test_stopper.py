"""live's _Stopper: a stop signal that the run does not honour is escalated, and nothing
escalates once the run has ended."""

from __future__ import annotations

import signal
import threading
import time

from tracer.commands.live import _Stopper


class _Part:
    def __init__(self) -> None:
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


def _stopper(source: _Part, engine: _Part) -> _Stopper:
    box: list[_Stopper] = []
    t = threading.Thread(target=lambda: box.append(_Stopper(source)))  # no signal handlers
    t.start()
    t.join()
    s = box[0]
    s.ESCALATE_S = (0.1, 0.2)
    s.attach(engine)
    return s


def test_an_unhonoured_stop_signal_stops_the_engine_outright() -> None:
    source, engine = _Part(), _Part()
    s = _stopper(source, engine)
    s._on_signal(signal.SIGHUP, None)
    assert (source.stops, engine.stops) == (1, 0)
    deadline = time.monotonic() + 5
    while engine.stops == 0:
        assert time.monotonic() < deadline, "no escalation"
        time.sleep(0.02)
    time.sleep(0.3)  # without a TUI, the last step leaves nothing to do: the process lives on
    assert (source.stops, engine.stops) == (1, 1)
    s.close()


def test_nothing_escalates_after_the_run_ended() -> None:
    source, engine = _Part(), _Part()
    s = _stopper(source, engine)
    s._on_signal(signal.SIGTERM, None)
    s.close()
    time.sleep(0.4)
    assert (source.stops, engine.stops) == (1, 0)
