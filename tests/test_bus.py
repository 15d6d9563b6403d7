"""The event bus: a listener that raises is removed and reported once as an error Notice; the run goes on."""

from __future__ import annotations

import io

from probes.bus import EventBus
from probes.events import Event, Notice, ProbeStarted, RunFinished
from probes.headless import Printer


class Recorder:
    """A consumer with a bug: it breaks on the first event it sees."""

    def __init__(self) -> None:
        self.seen: list[Event] = []

    def handle(self, event: Event) -> None:
        self.seen.append(event)
        raise ValueError("disk on fire\nsecond line of the message")


def _started(t: float = 1.5) -> ProbeStarted:
    return ProbeStarted(t, "golden-path", "Golden path", 0, ("health", "handshake"))


def test_a_raising_listener_is_reported_to_the_others_and_removed():
    bus = EventBus()
    before: list[Event] = []
    after: list[Event] = []
    broken = Recorder()
    bus.subscribe(before.append)
    bus.subscribe(broken.handle)
    bus.subscribe(after.append)

    first = _started()
    bus.publish(first)

    # the event itself still reached everyone, then one Notice naming the listener and the error, in one line
    for seen in (before, after):
        assert seen[0] is first
        notices = [e for e in seen if isinstance(e, Notice)]
        assert len(notices) == 1, seen
        notice = notices[0]
        assert notice.level == "error" and notice.t == first.t
        assert "Recorder.handle" in notice.message
        assert "ValueError: disk on fire second line of the message" in notice.message
        assert "\n" not in notice.message
    assert before == after
    assert broken.seen == [first]  # never shown its own Notice
    assert [listener for listener, _ in bus.failures] == [broken.handle]

    # removed: the run goes on without it, and no second Notice
    second = _started(2.0)
    bus.publish(second)
    assert broken.seen == [first]
    assert before[-1] is second and after[-1] is second
    assert sum(isinstance(e, Notice) for e in before) == 1
    assert len(bus.failures) == 1


def test_a_listener_that_raises_on_the_notice_does_not_loop():
    bus = EventBus()
    calls: list[Event] = []
    received: list[Event] = []

    def fails_on_notices(event: Event) -> None:
        calls.append(event)
        if isinstance(event, Notice):
            raise RuntimeError("cannot show notices")

    def always_fails(event: Event) -> None:
        raise KeyError("x")

    bus.subscribe(always_fails)
    bus.subscribe(fails_on_notices)
    bus.subscribe(received.append)

    bus.publish(_started())

    # always_fails → Notice → fails_on_notices raises on it → one more Notice, to the one listener left
    assert len(calls) == 2 and isinstance(calls[1], Notice)
    notices = [e for e in received if isinstance(e, Notice)]
    assert [("always_fails" in n.message, "fails_on_notices" in n.message) for n in notices] == \
        [(True, False), (False, True)]
    assert "KeyError: 'x'" in notices[0].message and "RuntimeError: cannot show notices" in notices[1].message
    assert len(bus.failures) == 2

    bus.publish(RunFinished(3.0, "pass", 3000.0))
    assert len(calls) == 2 and isinstance(received[-1], RunFinished)


def test_every_listener_failing_ends_quietly():
    bus = EventBus()
    calls: list[Event] = []

    def a(event: Event) -> None:
        calls.append(event)
        raise ValueError("a")

    def b(event: Event) -> None:
        calls.append(event)
        raise ValueError("b")

    bus.subscribe(a)
    bus.subscribe(b)
    bus.publish(_started())
    assert len(calls) == 2  # each saw the event once; nobody was left to hear the Notices
    assert [listener for listener, _ in bus.failures] == [a, b]
    bus.publish(_started(2.0))
    assert len(calls) == 2


def test_headless_printer_prints_the_notice_as_one_stderr_line(capsys):
    bus = EventBus()
    out = io.StringIO()
    printer = Printer(out=out, color=False)
    bus.subscribe(printer.handle)
    bus.subscribe(Recorder().handle)

    bus.publish(_started())
    bus.publish(_started(2.0))

    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stagewatch: error: event listener Recorder.handle failed (ValueError: disk on fire")
    assert lines[0].endswith("the run goes on")
    assert "Traceback" not in err and "Notice" not in out.getvalue()
