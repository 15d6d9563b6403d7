"""The fast JSON paths: frames recorded a block at a time (orjson, C-level column passes) write exactly the lines the
one-frame formatter writes, and orjson-backed `parse_json` reads exactly what `json.loads` reads."""

from __future__ import annotations

import json
import marshal
import math
import random
from pathlib import Path
from typing import Any

import pytest

from probes.events import Frame, Notice, RunStarted, StageFinished
from probes.frames import parse_json
from probes.recording import (Recorder, encode_frames, encode_items, encode_lines, frame_line, literal_cache,
                              pack_frames, read_recording, unpack_frames)

WALL0 = 1_700_000_000.123


def _reference(frames: list[Frame]) -> bytes:
    ids: dict[str, str] = {}
    return encode_lines([frame_line(f, WALL0, ids) for f in frames])


def _both(frames: list[Frame]) -> tuple[bytes, bytes]:
    """The block encoder's lines from plain columns and from a packed block that went through marshal."""
    plain = encode_frames(tuple(zip(*frames)), WALL0, literal_cache())
    packed = encode_frames(marshal.loads(marshal.dumps(pack_frames(frames))), WALL0, literal_cache())
    return plain, packed


def _random_frames(rng: random.Random, n: int) -> list[Frame]:
    chars = [chr(c) for c in range(0x250)] + ["\u2028", "\u2029", "\U0001f600", "%", "%s", "\\", '"', "\x7f"]
    mixed = rng.random() < 0.5
    frames = []
    for i in range(n):
        t = rng.choice([rng.uniform(1e-4, 1e4), rng.uniform(0, 1e-4), 0.0, rng.uniform(1e16, 1e18), 12.0])
        ms = rng.choice([rng.uniform(0, 1e6), 2.5 * i, 1e-7, 1e20])
        data = "".join(rng.choice(chars) for _ in range(rng.randint(0, 60)))
        frames.append(Frame(t, rng.choice(["p", 'odd "id" %d']) if mixed else "golden-path",
                            rng.choice(["in", "out"]) if mixed else "in", ms, rng.randint(0, 2**40), data,
                            rng.random() < 0.5 if mixed else False))
    return frames


def test_block_lines_are_byte_for_byte_the_one_frame_lines() -> None:
    rng = random.Random(1)
    for _ in range(300):
        frames = _random_frames(rng, rng.randint(1, 40))
        plain, packed = _both(frames)
        assert plain == packed == _reference(frames)


def test_flood_block_lines() -> None:
    frames = [Frame(0.5 + i * 1e-5, "golden-path", "in", 1234.5 + i * 0.01, 35, '{"type":"flood","payload":{"n":1}}',
                    False) for i in range(5000)]
    plain, packed = _both(frames)
    assert plain == packed == _reference(frames)
    first = json.loads(packed.split(b"\n")[0])
    assert list(first) == ["type", "t", "wall_ts", "probe_id", "direction", "ms", "size", "data", "truncated"]
    assert packed.count(b"\n") == 5000


@pytest.mark.parametrize("value", [1e-5, 5e-324, 0.0, -0.0, 1e16, 1.5e300, 123456.789, 1e-4, 9999999999999998.0])
def test_numbers_are_written_as_repr_writes_them(value: float) -> None:
    frames = [Frame(value, "p", "in", value, 1, "x", False), Frame(1.0, "p", "in", 2.0, 1, "y", True)]
    plain, packed = _both(frames)
    assert plain == packed == _reference(frames)
    assert f'"t":{value!r},'.encode() in packed


def test_lone_surrogates_give_valid_utf8_json_lines() -> None:
    frames = [Frame(1.0, "p", "in", 1.0, 9, 'a\ud800b "q" \udc00\U0001f600', False),
              Frame(2.0, "p", "in", 2.0, 3, "plain é", False),
              Frame(3.0, "p", "in", 3.0, 6, "\ud83d\ude00", False)]  # a pair written as two lone surrogates
    for raw in _both(frames):
        lines = raw.decode("utf-8").split("\n")  # strict: nothing unencodable reached the bytes
        assert lines.pop() == ""
        records = [json.loads(line) for line in lines]
        assert records[0]["data"] == 'a\ud800b "q" \udc00\U0001f600'
        assert records[1]["data"] == "plain é"
        assert records[2]["data"] == "\U0001f600"
        assert json.loads(raw.split(b"\n")[1]) == json.loads(_reference(frames).split(b"\n")[1])


def test_items_keep_their_order_and_odd_fields_fall_back_to_one_frame_lines() -> None:
    frames = [Frame(float(i), "p", "in", 1.0, 2, "{}", False) for i in range(3)]
    odd = [Frame(1.0, "p", "in", 1.0, 2, "{}", 1), Frame(2.0, "p", "in", 1.0, 2, "{}", None)]  # not bools
    bad = [Frame(3.0, "p", "in", 1.0, "2", "{}", False)]  # a size that is not a number: no line can hold it
    line = '{"type":"notice"}\n'
    items: list[Any] = [pack_frames(frames), line, tuple(zip(*odd)), line, pack_frames(bad), pack_frames(frames[:1])]
    out = encode_items(items, WALL0, literal_cache(), {})
    notice = b'{"type": "notice", "t": 3.0, "level": "warning", "message": "frame event not recorded: TypeError"}\n'
    assert out == (_reference(frames) + line.encode() + _reference(odd) + line.encode() + notice
                   + _reference(frames[:1]))
    assert unpack_frames(pack_frames(frames)) == [tuple(f) for f in frames]


@pytest.mark.parametrize("offload", [False, True], ids=["inline", "writer-process"])
def test_recorder_writes_the_reference_bytes(tmp_path: Path, offload: bool) -> None:
    """Frames among other events, through the recorder (batches, blocks, the writer process): the file holds the
    one-frame lines for the frames, in order, and reads back as the events."""
    rng = random.Random(7)
    events: list[Any] = [RunStarted(0.0, "t", "http://x", (("p", "p", 0),), WALL0)]
    frames = _random_frames(rng, 3000)
    events += frames[:1000] + [StageFinished(5.0, "p", "s", "pass", 1.0, "ok")] + frames[1000:]
    events += [Frame(9.0, "p", "in", 1.0, 3, b"\x00\xff", False), Notice(10.0, "info", "done")]
    path = tmp_path / "r.jsonl"
    recorder = Recorder(path, wall0=WALL0, offload=offload)
    assert (recorder._writer is not None) is offload
    for event in events:
        recorder.handle(event)
    recorder.close()
    assert recorder.error is None
    raw = path.read_bytes()
    frame_lines = [line + b"\n" for line in raw.split(b"\n") if line.startswith(b'{"type":"frame"')]
    assert b"".join(frame_lines) == _reference(frames)  # (the binary frame's line, from to_record, has spaces)
    assert read_recording(path).events == events


CORPUS = [
    '{"type":"flood","payload":{"n":1}}', '[1, 2.5, -0, -0.0, 1e5, 1E-7, true, false, null, "x"]',
    '{"a":1,"a":2}', '[123456789012345678901234567890]', '[-9223372036854775809]', '[18446744073709551616]',
    '[18446744073709551615]', '[9007199254740993]', '[NaN, Infinity, -Infinity]', '[1e400]', '["\\ud800"]',
    '["\\ud83d\\ude00"]', '{"é": "\u2028 ü"}', '["\\u0000"]', '{"a": [}', '{"a": 1}x', '[01]', ' \n [1] \t',
    '{"type": "agent_thinking", "payload": {"thought": "Looking…", "step": 3, "ts": 1718000000.123}}',
    "[" * 2000 + "]" * 2000, "[" * 200 + "]" * 200, '["a\x01"]', "[" + ",".join(["1.5"] * 3000) + "]",
]


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize("text", CORPUS)
def test_parse_json_reads_what_json_loads_reads(text: str) -> None:
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        expected = None
    if not isinstance(expected, (dict, list)):
        expected = None
    assert _same(parse_json(text), expected)


def test_a_frame_too_big_to_parse_still_has_its_type():
    """An 888 KiB agent_thinking: not parsed on the display path, but `type:agent_thinking` still finds it."""
    import json

    from probes.frames import classify

    info = classify(json.dumps({"type": "agent_thinking", "pad": "x" * 900_000}))
    assert info.type == "agent_thinking" and info.kind == "json" and info.value is None
    assert classify("x" * 300_000).type is None
