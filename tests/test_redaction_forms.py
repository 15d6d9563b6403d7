"""Redaction covers every encoding of a secret we hold (issue "A hostile server must not reach…", item 3).

A realistic HS256 JWT and its signing key, sent raw, as base64 or base64url (with and without padding, alone or
inside a longer base64 text), JSON-\\u-escaped in whole or in part, percent-encoded in either hex case, mixed, a
level of escaping deeper (a JSON string in a JSON string), in text and in binary data: `Redactor.text` and
`Redactor.bytes_` replace all of it. The check is independent of how the redactor decodes: every way the output
can be read (\\u escapes, %XX, \\/, doubled backslashes, and every base64 run at every offset, in any combination)
must hold no 8 characters in a row of the token past its public first 10, and none of the key.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from urllib.parse import unquote

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.redact import HIDDEN, Redactor, redact_token

SECRET = "hs256-signing-key-9fK2pQ7xW4mZ8vR1tL6n"
TOKEN = jwt.encode({"iss": "https://auth.staging.example.com/", "sub": "staging-e2e-user-002",
                    "aud": "agent-gateway", "scope": "agent:run agent:read", "iat": 1717000000,
                    "exp": 1717003600, "jti": "7d1c2f0e-5b8a-4e0c-9a51-3f6e2b7d9c41"},
                   SECRET, algorithm="HS256", headers={"kid": "staging-2024-06"})
SIGNATURE = base64.urlsafe_b64decode(TOKEN.rsplit(".", 1)[1] + "==")


# --- encodings ---------------------------------------------------------------------------------------------------
def b64(text: str, *, url: bool = False, pad: bool = True) -> str:
    encoded = (base64.urlsafe_b64encode if url else base64.b64encode)(text.encode()).decode()
    return encoded if pad else encoded.rstrip("=")


def u_escape(text: str, which: Callable[[int], bool] = lambda i: True, upper: bool = False) -> str:
    return "".join((f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}") if which(i) else c
                   for i, c in enumerate(text))


def pct(text: str, which: Callable[[int], bool] = lambda i: True, upper: bool = True) -> str:
    return "".join((f"%{ord(c):02X}" if upper else f"%{ord(c):02x}") if which(i) else c for i, c in enumerate(text))


def mixed(text: str) -> str:
    """Every third character \\u-escaped, every third %-encoded (lower case), the rest as they are."""
    return "".join(u_escape(c) if i % 3 == 0 else pct(c, upper=False) if i % 3 == 1 else c
                   for i, c in enumerate(text))


ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "b64 std padded": lambda s: b64(s),
    "b64 std unpadded": lambda s: b64(s, pad=False),
    "b64url padded": lambda s: b64(s, url=True),
    "b64url unpadded": lambda s: b64(s, url=True, pad=False),
    "\\u all": u_escape,
    "\\u all upper hex": lambda s: u_escape(s, upper=True),
    "\\u first char": lambda s: u_escape(s, lambda i: i == 0),  # "\u0065yJ..."
    "\\u every other": lambda s: u_escape(s, lambda i: i % 2 == 1),
    "\\u last 6": lambda s: u_escape(s, lambda i: i >= len(s) - 6),
    "% all upper hex": pct,
    "% all lower hex": lambda s: pct(s, upper=False),
    "% some": lambda s: pct(s, lambda i: i % 7 == 3),
    "mixed \\u % raw": mixed,
    "b64url, \\u-escaped": lambda s: u_escape(b64(s, url=True, pad=False)),
    "b64 std, %-encoded": lambda s: pct(b64(s), lambda i: b64(s)[i] in "+/="),  # as in a query string
    "b64 std, slashes \\/": lambda s: b64(s).replace("/", "\\/"),
    "JSON string in a JSON string": lambda s: json.dumps(u_escape(s, lambda i: i % 2 == 0))[1:-1],
    "%-encoded twice": lambda s: pct(s, lambda i: i % 2 == 0).replace("%", "%25"),  # quote(quote(s))
}


# --- the leak check ----------------------------------------------------------------------------------------------
_U = re.compile(r"\\u([0-9a-fA-F]{4})")
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{6,}={0,2}")


def _readings(text: str) -> set[str]:
    """`text` and everything it reads as with \\u escapes, %XX, \\/ and doubled backslashes decoded, in any order."""
    steps: list[Callable[[str], str]] = [
        lambda t: _U.sub(lambda m: chr(int(m[1], 16)), t), unquote,
        lambda t: t.replace("\\/", "/").replace('\\"', '"'), lambda t: t.replace("\\\\", "\\")]
    seen = {text}
    frontier = [text]
    for _ in range(4):
        frontier = [d for t in frontier for step in steps if (d := step(t)) not in seen]
        seen.update(frontier)
    return seen


def _with_base64(texts: set[str]) -> set[str]:
    """`texts` and the latin-1 reading of every base64 run in them, decoded from each of its first 4 offsets."""
    out = set(texts)
    for text in texts:
        for run in _B64_RUN.findall(text):
            for offset in range(4):
                body = run[offset:].rstrip("=").replace("-", "+").replace("_", "/")
                body = body[:len(body) - len(body) % 4] if len(body) % 4 == 1 else body
                try:
                    out.add(base64.b64decode(body + "=" * (-len(body) % 4)).decode("latin-1"))
                except (binascii.Error, ValueError):
                    pass
    return out


def _grams(text: str, n: int) -> set[str]:
    return {text[i:i + n] for i in range(len(text) - n + 1)}


TOKEN_GRAMS = _grams(TOKEN[3:], 8)  # the first 10 characters are shown on purpose (the public header)
SECRET_GRAMS = _grams(SECRET, 8)


def assert_clean(shown: str | bytes, context: str = "") -> None:
    """No reading of `shown` holds 8 characters in a row of the token (past its first 10) or of the key."""
    text = shown.decode("latin-1") if isinstance(shown, bytes) else shown
    for reading in _with_base64(_readings(text)):
        grams = _grams(reading, 8)
        assert not grams & TOKEN_GRAMS, f"token leaks {sorted(grams & TOKEN_GRAMS)[:3]} in {reading!r} {context}"
        assert not grams & SECRET_GRAMS, f"key leaks {sorted(grams & SECRET_GRAMS)[:3]} in {reading!r} {context}"
    if isinstance(shown, bytes):
        assert not _grams(shown.decode("latin-1"), 6) & _grams(SIGNATURE.decode("latin-1"), 6)


@pytest.fixture
def redactor() -> Redactor:
    return Redactor([SECRET, TOKEN])


def test_the_check_sees_every_encoding_unredacted() -> None:
    """The leak check itself: every encoding of the token and of the key is caught when nothing is redacted."""
    for name, encode in ENCODINGS.items():
        for value in (TOKEN, SECRET):
            with pytest.raises(AssertionError):
                assert_clean(f'{{"v":"{encode(value)}"}}', name)


# --- text ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_encoding_of_the_token_is_redacted_in_text(redactor: Redactor, encoding: str) -> None:
    encoded = ENCODINGS[encoding](TOKEN)
    shown = redactor.text(f"token={encoded}; next")
    assert_clean(shown, encoding)
    assert shown.startswith("token=") and shown.endswith("; next")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_encoding_of_the_key_is_hidden_entirely(redactor: Redactor, encoding: str) -> None:
    shown = redactor.text(f"key {ENCODINGS[encoding](SECRET)} end")
    assert shown == f"key {HIDDEN} end"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_encoding_inside_a_json_document(redactor: Redactor, encoding: str) -> None:
    doc = ('{"type":"connection_established","payload":{"echo":"' + ENCODINGS[encoding](TOKEN)
           + '","key":"' + ENCODINGS[encoding](SECRET) + '","n":1}}')
    shown = redactor.text(doc)
    assert_clean(shown, encoding)
    value = json.loads(shown)  # still JSON: escapes are replaced whole
    assert value["payload"]["key"] == HIDDEN and value["payload"]["n"] == 1
    assert "…" in value["payload"]["echo"]


def test_a_raw_token_shows_its_ends_and_an_escaped_one_the_same(redactor: Redactor) -> None:
    assert redactor.text(TOKEN) == redact_token(TOKEN)
    assert redactor.text(u_escape(TOKEN)) == redact_token(TOKEN)
    assert redactor.text(pct(TOKEN)) == redact_token(TOKEN)
    assert redactor.text(mixed(TOKEN)) == redact_token(TOKEN)


def test_the_token_inside_a_longer_base64_text_at_every_alignment(redactor: Redactor) -> None:
    for before in (b"", b"x", b"xy", b"xyz"):
        for after in (b"", b"!", b"!?", b"!?#"):
            blob = before + TOKEN.encode() + after
            for encoded in (base64.b64encode(blob).decode(), base64.urlsafe_b64encode(blob).decode().rstrip("=")):
                assert_clean(redactor.text(f"data:{encoded}"), f"{before!r} {after!r}")
                assert_clean(redactor.bytes_(encoded.encode()), f"{before!r} {after!r}")


def test_the_subprotocol_form_escaped(redactor: Redactor) -> None:
    for value in (f"jwt.{b64(TOKEN, url=True, pad=False)}", u_escape(f"jwt.{b64(TOKEN, url=True, pad=False)}"),
                  "jwt." + pct(b64(TOKEN, url=True, pad=False), lambda i: i % 2 == 0)):
        assert_clean(redactor.text(value))


def test_text_before_the_token_cannot_take_its_first_digits_into_an_escape(redactor: Redactor) -> None:
    """'\\u006' + 'eyJ…' reads 'nyJ…' once decoded: the token is still found as it is."""
    for head in ("\\u006", "\\u00", "%6", "\\\\u006"):
        for encoded in (TOKEN, TOKEN[:-9] + u_escape(TOKEN[-9:])):
            assert_clean(redactor.text(f'{{"v":"{head}{encoded}"}}'), head)


def test_a_secret_that_itself_reads_as_escapes() -> None:
    key = "p%41ss\\u0057ord-secret-value-0042"
    r = Redactor([key])
    for value in (key, json.dumps(key)[1:-1], pct(key), u_escape(key), "pAssWord-secret-value-0042"):
        assert r.text(f"[{value}]") == f"[{HIDDEN}]", value


def test_ordinary_text_is_unchanged(redactor: Redactor) -> None:
    ordinary = [
        '{"type":"agent_progress","payload":{"step":12,"message":"working on the request","ts":1717000000.25}}',
        json.dumps({"message": "café – “déjà vu” … 日本語 🎉"}),  # \u escapes of non-ASCII
        '{"html":"\\u003cb\\u003eGo\\u0026co\\u003c/b\\u003e"}',  # Go's HTML-safe escapes
        '{"url":"https://example.com/a%20b/c%2Fd?q=x%3Dy&r=%E2%82%AC","n":3}',
        '{"inner":"{\\"a\\": \\"b\\\\nc\\"}","path":"C:\\\\Users\\\\agent\\\\u","slash":"a\\/b"}',
        "100% done, 50%off, %zz, \\u12, \\x41",
        "see jwt.io or eyJ-docs; ZXlK is base64 of eyJ",
        TOKEN[:10], TOKEN.split(".")[0],  # the public header alone
        base64.b64encode(bytes(range(256))).decode(),
        "",
    ]
    for text in ordinary:
        assert redactor.text(text) == text
        assert redactor.bytes_(text.encode()) == text.encode()


def test_jwt_shaped_strings_never_held_are_still_redacted_by_shape() -> None:
    other = jwt.encode({"sub": "someone-else", "iat": 1}, "another-signing-key-of-32-bytes-or-more", algorithm="HS256")
    r = Redactor()
    assert r.text(f"x {other} y") == f"x {redact_token(other)} y"
    assert other not in r.text(f"x {u_escape(other, lambda i: i % 2 == 0)} y")
    assert r.text("jwt." + "A" * 40) == "jwt." + redact_token("A" * 40)
    assert r.bytes_(other.encode()) == redact_token(other).encode()


# --- binary data ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_encoding_is_redacted_in_binary_data(redactor: Redactor, encoding: str) -> None:
    data = b"\x00\x01frame:" + ENCODINGS[encoding](TOKEN).encode() + b"\xff|" + ENCODINGS[encoding](SECRET).encode()
    shown = redactor.bytes_(data)
    assert_clean(shown, encoding)
    assert shown.startswith(b"\x00\x01frame:") and shown.endswith(HIDDEN.encode())


def test_binary_marks_are_the_utf8_of_the_text_marks(redactor: Redactor) -> None:
    assert redactor.bytes_(TOKEN.encode()) == redactor.text(TOKEN).encode() == redact_token(TOKEN).encode()
    assert redactor.bytes_(SECRET.encode()) == HIDDEN.encode()


def test_binary_data_with_the_bytes_a_base64_secret_decodes_to(redactor: Redactor) -> None:
    """A recording shows binary data as base64: the raw signature (or a base64 key's bytes) would read as it."""
    shown = redactor.bytes_(b"\x89PNG" + SIGNATURE + b"\x00tail")
    assert shown == b"\x89PNG" + HIDDEN.encode() + b"\x00tail"
    key_bytes = bytes(range(7, 7 + 24))
    r = Redactor([base64.b64encode(key_bytes).decode()])
    for before in (b"", b"a", b"ab"):
        shown = r.bytes_(before + key_bytes + b"z")
        assert key_bytes[2:-2] not in shown
        assert base64.b64encode(key_bytes).decode()[4:-4] not in base64.b64encode(shown).decode()


def test_binary_data_without_secrets_is_returned_as_it_is(redactor: Redactor) -> None:
    for data in (b"", bytes(range(256)) * 4, b'{"type":"ping"}', "é%41\\u0041".encode(), b"%" * 100):
        assert redactor.bytes_(data) is data


# --- tree ----------------------------------------------------------------------------------------------------------
def test_tree_redacts_keys_values_and_bytes(redactor: Redactor) -> None:
    value = {u_escape(TOKEN): [pct(SECRET), {"k": (TOKEN, b"raw " + TOKEN.encode())}], 7: None,
             TOKEN.encode(): 1.5}
    shown = redactor.tree(value)
    assert shown == {redact_token(TOKEN): [HIDDEN, {"k": [redact_token(TOKEN),
                                                             b"raw " + redact_token(TOKEN).encode()]}],
                     7: None, redact_token(TOKEN).encode(): 1.5}


# --- properties ----------------------------------------------------------------------------------------------------
_settings = settings(max_examples=300, deadline=None)
REDACTOR = Redactor([SECRET, TOKEN])


# Text around the secret, rich in what could run into an escape: backslashes, '%', hex digits, 'u', quotes.
_around = st.text(st.one_of(st.sampled_from(list('\\%u0256eEfFJ"/=+-_. ')), st.characters()), max_size=30)
_BASES = ("raw", "b64 std padded", "b64 std unpadded", "b64url padded", "b64url unpadded")
_CHAR_FORMS: list[Callable[[str], str]] = [lambda c: c, u_escape, lambda c: u_escape(c, upper=True), pct,
                                          lambda c: pct(c, upper=False), lambda c: pct(c).replace("%", "%25"),
                                          lambda c: u_escape(c).replace("\\", "\\\\")]


@st.composite
def _encoded(draw: st.DrawFn, value: str) -> str:
    """`value` in one of the named encodings, or a base form (raw, base64) with each character written its own way:
    as it is, \\u-escaped (either hex case, or nested), %-encoded (either case, or twice)."""
    if draw(st.booleans()):
        return ENCODINGS[draw(st.sampled_from(sorted(ENCODINGS)))](value)
    base = ENCODINGS[draw(st.sampled_from(_BASES))](value)
    ways = draw(st.lists(st.integers(0, len(_CHAR_FORMS) - 1), min_size=len(base), max_size=len(base)))
    return "".join(_CHAR_FORMS[way](c) for way, c in zip(ways, base))


@_settings
@given(data=st.data(), before=_around, after=_around, which=st.sampled_from(["token", "key"]))
def test_any_text_with_a_secret_in_any_encoding_is_redacted(data: st.DataObject, before: str, after: str,
                                                            which: str) -> None:
    encoded = data.draw(_encoded(TOKEN if which == "token" else SECRET))
    text = before + encoded + after
    assert_clean(REDACTOR.text(text), repr(text))
    assert_clean(REDACTOR.bytes_(text.encode("utf-8", "surrogatepass")), repr(text))


@_settings
@given(text=st.text(max_size=200), data=st.binary(max_size=200))
def test_text_without_secrets_is_unchanged(text: str, data: bytes) -> None:
    assert REDACTOR.text(text) == text
    assert REDACTOR.bytes_(data) == data
