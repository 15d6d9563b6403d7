"""Redaction: how a token or secret may be shown to a person or written to a file.

A JWT is shown as its first 10 characters (the public `eyJhbGciOi` header) and its last 4, so two runs can be
told apart without revealing a usable token. Any other secret (a signing key, an API key) is hidden entirely.
Anything shaped like a JWT is redacted even when it was never registered.

Every known value is also hidden in the forms it travels in, in text (`Redactor.text`) and in binary data
(`Redactor.bytes_`):

- raw, and JSON-escaped as `json.dumps` writes it;
- base64 and base64url, with and without padding (the `jwt.<b64url>` subprotocol), and the part of its base64 that
  shows inside a longer base64 text at each of the three byte alignments;
- any of these with some or all characters written as JSON `\\uXXXX` escapes, percent-encoded (`%XX`, either hex
  case) or as `\\/` and `\\"`, mixed as they come: text is searched as it reads once these escapes are decoded,
  and the escaped span of the original is what is replaced; escapes nested a level or more (a JSON string in a
  JSON string: `\\\\u0065`; `%2565`) count as well.
- in binary data also the UTF-8 of all the above, and the bytes a base64-looking secret (a JWT's signature, a
  base64 key) decodes to: a recording shows binary data as base64, where those bytes would read as the secret.

Cost: text that cannot hold any of these forms is let through after one C-level regex search (`_Space.scan`),
whose alternatives each start with a character that is rare in ordinary text; only text that may hold a form is
decoded and searched form by form.
"""

from __future__ import annotations

import binascii
import json
import re
from base64 import b64decode, standard_b64encode
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"})
_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})  # "<scheme> <credentials>"
HIDDEN = "…(hidden)"
MIN_SECRET = 4  # shorter values are too common to replace without mangling ordinary text
_SHOWN_MIN = 40  # values shorter than this are hidden entirely, never shown in part
_MIN_ENCODED = 12  # an encoded form (base64) shorter than this is not looked for: too likely by chance
_MIN_DECODED = 12  # the same for the bytes a base64-looking secret decodes to
_SIGNATURE_MIN = 16  # a JWT signature segment at least this long is hidden when it travels alone
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_JWT_SUBPROTOCOL_RE = re.compile(r"\bjwt\.([A-Za-z0-9_=-]{12,})")
_B64_TEXT = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_HEX = frozenset("0123456789abcdefABCDEF")
_TO_URLSAFE = str.maketrans("+/", "-_")
_FROM_URLSAFE = str.maketrans("-_", "+/")

# The pre-scan (`_Space.scan`). What every token-shaped form contains: a JWT ('eyJ', looked for from its rarer
# 'J'), its base64 ('ZXlK'), the subprotocol ('jwt.')...
_SHAPES = ("eyJ", "ZXlK", "jwt.")
_SHAPE_SCAN = (r"J(?<=eyJ)", r"ZXlK", r"jwt\.")
# ...a piece of each known form (`_window`), and the escapes that can spell a character of one: of the base64 and
# JWT alphabets and of the other forms' characters (`_hex_class`), or of any character when some form is not ASCII.
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=.")
_ESC_SCAN_ANY = (r"\\u[0-9a-fA-F]{4}", r"%[0-9a-fA-F]{2}")
_WINDOW = 8  # length of the piece of each form the pre-scan looks for
_WINDOW_HEAD = 40  # ...taken from the form's first characters: the same for every JWT with the same header, so
# the pre-scan pattern of a run is the same as the last run's and re's cache keeps one pattern, not one per token.
# re's scan stops at every occurrence of an alternative's first character: each piece starts at a rare one.
_COMMON = frozenset(' \t\r\n"\'.,:;!?{}[]()<>-_/=+*&#@%0123456789abcdefghiklmnoprstuvwy')

# Escapes, as decoded before known forms are looked for: one pattern for those that start with a backslash, one
# for %XX (each starts with a literal, which re finds fast). Named groups: `hi`+`lo` a UTF-16 surrogate pair, `u`
# one \uXXXX, `c` the character of \/ or \", `p` one %XX, `run` %XX bytes of UTF-8 beyond ASCII (text only). An
# escape is taken with every backslash before it (`\\u0065`: a JSON string inside a JSON string) and `%XX` with
# `25`s after its `%` (`%2565`: percent-encoded twice).
_BACKSLASH_ANY = (r"\\\\*(?:u(?P<hi>[dD][89abAB][0-9a-fA-F]{2})\\+u(?P<lo>[dD][c-fC-F][0-9a-fA-F]{2})"
                  r'|u(?P<u>[0-9a-fA-F]{4})|(?P<c>[/"]))')
_BACKSLASH_ASCII = r'\\\\*(?:u(?P<u>00[0-7][0-9a-fA-F])|(?P<c>[/"]))'
_PERCENT_ASCII = r"%(?:25)*(?P<p>[0-7][0-9a-fA-F])"
_PERCENT_TEXT = r"%(?:(?:25)*(?P<p>[0-7][0-9a-fA-F])|(?P<run>[89a-fA-F][0-9a-fA-F](?:%[89a-fA-F][0-9a-fA-F])*))"
_PERCENT_BYTES = r"%(?:25)*(?P<p>[0-9a-fA-F]{2})"  # bytes: one byte each


def _unescape_text(m: re.Match[str]) -> str:
    group = m.lastgroup
    if group == "u" or group == "p":
        return chr(int(m[group], 16))
    if group == "c":
        return m["c"]
    if group == "lo":
        return chr(0x10000 + ((int(m["hi"], 16) - 0xD800) << 10) + int(m["lo"], 16) - 0xDC00)
    return bytes.fromhex(m["run"].replace("%", "")).decode("utf-8", "replace")


def _unescape_bytes(m: re.Match[str]) -> str:
    """Bytes read as latin-1: an escaped character becomes its UTF-8 bytes, %XX the one byte."""
    if m.lastgroup == "p":
        return chr(int(m["p"], 16))
    return _latin(_unescape_text(m))


class _Decoder:
    """Decodes the escapes that can spell a known form, remembering where each came from."""

    __slots__ = ("backslash", "percent", "unescape")

    def __init__(self, backslash: str, percent: str, unescape: Callable[[re.Match[str]], str]) -> None:
        self.backslash = re.compile(backslash)
        self.percent = re.compile(percent)
        self.unescape = unescape

    def plain(self, value: str) -> str:
        """`value` decoded (`value` itself when it has no escapes): `decode` without the bookkeeping."""
        if "\\" in value:
            return self.decode(value)[0] if "%" in value else self.backslash.sub(self.unescape, value)
        return self.percent.sub(self.unescape, value) if "%" in value else value

    def decode(self, value: str) -> tuple[str, tuple[list[int], list[int], list[int], list[int]]]:
        """`value` decoded, and where each decoded escape starts and ends in the result (d_starts, d_ends) and in
        `value` (s_starts, s_ends)."""
        found = list(self.backslash.finditer(value)) if "\\" in value else []
        if "%" in value:
            more = list(self.percent.finditer(value))
            found = sorted(found + more, key=lambda m: m.start()) if found and more else found or more
        parts: list[str] = []
        d_starts: list[int] = []
        d_ends: list[int] = []
        s_starts: list[int] = []
        s_ends: list[int] = []
        last = d = 0
        unescape = self.unescape
        for m in found:
            s, e = m.span()
            parts.append(value[last:s])
            d += s - last
            ch = unescape(m)
            parts.append(ch)
            d_starts.append(d)
            s_starts.append(s)
            s_ends.append(e)
            d += len(ch)
            d_ends.append(d)
            last = e
        if not found:
            return value, (d_starts, d_ends, s_starts, s_ends)
        parts.append(value[last:])
        return "".join(parts), (d_starts, d_ends, s_starts, s_ends)


_DECODERS: dict[tuple[bool, bool, bool], _Decoder] = {}


def _decoder(text: bool, u_any: bool, pct_any: bool) -> _Decoder:
    """For text or bytes (read as latin-1); \\u escapes of any character or of ASCII only; %XX the same."""
    key = (text, u_any, pct_any)
    decoder = _DECODERS.get(key)
    if decoder is None:
        percent = (_PERCENT_TEXT if text else _PERCENT_BYTES) if pct_any else _PERCENT_ASCII
        decoder = _DECODERS[key] = _Decoder(_BACKSLASH_ANY if u_any else _BACKSLASH_ASCII, percent,
                                            _unescape_text if text else _unescape_bytes)
    return decoder


def _latin(text: str) -> str:
    """The UTF-8 bytes of `text`, one character a byte (how binary data is searched)."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


def redact_token(token: str) -> str:
    """'eyJhbGciOi…' + the last 4 characters; values under 40 characters are hidden entirely."""
    if not token:
        return ""
    if len(token) < _SHOWN_MIN:
        return HIDDEN
    return f"{token[:10]}…{token[-4:]}"


def looks_like_jwt(value: str) -> bool:
    return value.startswith("eyJ") and value.count(".") == 2


def _b64_cores(raw: bytes) -> list[str]:
    """How `raw` shows inside a longer base64 text (standard and url-safe), at each of the 3 byte alignments: the
    characters that depend on `raw` alone. At alignment 0 this is a prefix of its own base64."""
    out: list[str] = []
    for shift in (1, 2):
        encoded = standard_b64encode(b"\0" * shift + raw).decode("ascii")
        core = encoded[-(-8 * shift // 6):8 * (shift + len(raw)) // 6]
        out += [core, core.translate(_TO_URLSAFE)]
    encoded = standard_b64encode(raw).decode("ascii")
    core = encoded[:8 * len(raw) // 6]
    return out + [core, core.translate(_TO_URLSAFE)]


def _variants(secret: str) -> list[tuple[str, str]]:
    """(form, replacement) for every form in which `secret` may appear in text, escapes aside."""
    jwt_like = looks_like_jwt(secret)
    shown = redact_token(secret) if jwt_like else HIDDEN
    forms = [(secret, shown)]
    escaped = json.dumps(secret)[1:-1]
    if escaped != secret:
        forms.append((escaped, shown))
    raw = secret.encode("utf-8", "surrogatepass")
    std = standard_b64encode(raw).decode("ascii")
    url = std.translate(_TO_URLSAFE)
    for b64 in dict.fromkeys([url.rstrip("="), url, std.rstrip("="), std, *_b64_cores(raw)]):
        if len(b64) >= _MIN_ENCODED:
            forms.append((b64, redact_token(b64) if jwt_like else HIDDEN))
    if len(raw) >= _MIN_DECODED:  # hex of the secret's bytes, either case
        forms += [(raw.hex(), HIDDEN), (raw.hex().upper(), HIDDEN)]
    decoder = _decoder(True, True, True)
    for form, mark in list(forms):
        # A form holding what reads as an escape ('%41', '\\u0041') is looked for as it reads decoded, too.
        plain = decoder.decode(form)[0]
        if plain != form and len(plain) >= MIN_SECRET:
            forms.append((plain, mark))
        # Text just before a form can end in an escape that its first hex digits complete ('\\u006' + 'eyJ…'
        # reads 'nyJ…'): the form is looked for without those digits, too.
        for cut in range(1, 5):
            if form[cut - 1] not in _HEX or len(form) - cut < _MIN_ENCODED:
                break
            forms.append((form[cut:], mark))
    return forms


def _decoded(secret: str) -> list[bytes]:
    """The bytes a base64-looking secret (or a JWT's signature) decodes to, when long enough to be told apart."""
    piece = secret.rsplit(".", 1)[1] if looks_like_jwt(secret) else secret
    if len(piece) < 16 or _B64_TEXT.fullmatch(piece) is None:
        return []
    body = piece.rstrip("=")
    body = body[:len(body) - (len(body) % 4 == 1)]
    try:
        data = b64decode(body.translate(_FROM_URLSAFE) + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return []
    return [data] if len(data) >= _MIN_DECODED else []


def _window(form: str) -> str:
    """The piece of `form` the pre-scan looks for: from its first characters but the first 4 (which text before
    it may take into an escape), starting at the rarest in ordinary text."""
    if len(form) <= _WINDOW:
        return form
    first = min(4, len(form) - _WINDOW)
    last = max(first, min(len(form), _WINDOW_HEAD) - _WINDOW)
    best = min(range(first, last + 1), key=lambda i: (_rank(form[i]), i))
    return form[best:best + _WINDOW]


def _rank(ch: str) -> int:
    """0 for a character rare in ordinary (English, JSON) text, 1 for an upper-case letter, 2 for a common one."""
    return 2 if ch in _COMMON else 1 if ch.isupper() and ch not in "JQXZ" else 0


def _hex_class(chars: Iterable[str]) -> str:
    """A pattern for the two hex digits (either case) of any of `chars` (ASCII)."""
    lows: dict[int, list[str]] = {}
    for c in sorted(chars, key=ord):
        digit = f"{ord(c) & 15:x}"
        lows.setdefault(ord(c) >> 4, []).append(digit + digit.upper() if digit.isalpha() else digit)
    return "(?:" + "|".join(f"{high:x}[{''.join(low)}]" for high, low in sorted(lows.items())) + ")"


class _Space:
    """Known forms in one representation (text, or bytes read as latin-1) and how to find them."""

    __slots__ = ("decoder", "mark", "groups", "found", "scan", "needles", "bneedles")

    def __init__(self, forms: dict[str, str], *, text: bool, unscanned: Collection[str] = ()) -> None:
        u_any = any(not f.isascii() for f in forms if f not in unscanned)  # \\uXXXX spells text, not bytes
        pct_any = any(not f.isascii() for f in forms)
        self.decoder = _decoder(text, u_any, pct_any)
        self.mark: Callable[[str], str] = str if text else _latin
        # Forms grouped under a piece that each member holds: where the piece is missing, so are they.
        groups: list[tuple[str, list[tuple[str, str]]]] = []
        for form in sorted(forms, key=len, reverse=True):
            for key, members in groups:
                if key in form:
                    members.append((form, forms[form]))
                    break
            else:
                groups.append((_window(form), [(form, forms[form])]))
        self.groups = tuple((key, tuple(members)) for key, members in groups)
        windows: set[str] = set()
        needles: set[str] = set()
        for key, members in groups:
            if any(form in unscanned for form, _ in members):
                needles.add(key)  # bytes of one token (a signature): looked for as they are, not in the pattern
            elif not all(any(shape in form for shape in _SHAPES) for form, _ in members):
                windows.add(re.escape(key))
        chars = set(_B64_CHARS)
        for form in forms:
            if form not in unscanned and not _B64_CHARS.issuperset(form):
                chars.update(form)
        escapes = {_ESC_SCAN_ANY[0] if u_any else r"\\u00" + _hex_class(chars),
                   _ESC_SCAN_ANY[1] if pct_any else "%" + _hex_class(chars | {"%"})}  # %25: percent-encoded twice
        if "/" in chars:
            escapes.add(r"\\/")
        if '"' in chars:
            escapes.add(r'\\"')
        # Sorted: the same forms make the same pattern strings, which re compiles (and caches) once.
        found = "|".join([*_SHAPE_SCAN, *sorted(windows)])
        scan = "|".join([found, *sorted(escapes)])
        # `found`: could this (decoded) text hold a form? `scan`: could this text, escapes and all?
        self.found = re.compile(found).search
        self.scan: Callable[[Any], object] = re.compile(scan).search if text else \
            re.compile(scan.encode("latin-1")).search
        self.needles = tuple(sorted(needles))
        self.bneedles = tuple(n.encode("latin-1") for n in self.needles)

    def _hits(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, mark) of every known form and JWT-shaped string in `text`."""
        hits: list[tuple[int, int, str]] = []
        for key, members in self.groups:
            if key in text:
                for form, mark in members:
                    i = text.find(form)
                    while i >= 0:
                        hits.append((i, i + len(form), mark))
                        i = text.find(form, i + 1)
        if "eyJ" in text:
            hits += [(m.start(), m.end(), self.mark(redact_token(m[0]))) for m in _JWT_RE.finditer(text)]
        if "jwt." in text:
            hits += [(m.start(1), m.end(1), self.mark(redact_token(m[1])))
                     for m in _JWT_SUBPROTOCOL_RE.finditer(text)]
        return hits

    def redact(self, value: str) -> str:
        """`value` with every known form, escaped or not, and every JWT-shaped string replaced."""
        decoded = self.decoder.plain(value)
        found = self.found
        if found(decoded) is None and (decoded is value or found(value) is None):
            for needle in self.needles:
                if needle in decoded or needle in value:
                    break
            else:
                return value
        if decoded is value:
            spans = self._hits(value)
        else:
            # Back to positions in `value`: a span that starts or ends inside an escape takes all of it...
            decoded, (d_starts, d_ends, s_starts, s_ends) = self.decoder.decode(value)
            spans = []
            for a, b, mark in self._hits(decoded):
                i = bisect_right(d_starts, a) - 1
                sa = a if i < 0 else s_starts[i] if a < d_ends[i] else s_ends[i] + a - d_ends[i]
                i = bisect_right(d_starts, b - 1) - 1
                sb = b if i < 0 else s_ends[i] if b - 1 < d_ends[i] else s_ends[i] + b - d_ends[i]
                spans.append((sa, sb, mark))
            # ...and the text as it is: what reads as an escape may belong to a form, or take a form's first digits
            spans += self._hits(value)
        if not spans:
            return value
        # Overlapping spans are replaced together, by the mark of the earliest (the longest of those).
        spans.sort(key=lambda span: (span[0], span[0] - span[1]))
        out: list[str] = []
        pos = 0
        for a, b, mark in spans:
            if a < pos:  # overlaps the span replaced last
                pos = max(pos, b)
                continue
            out += (value[pos:a], mark)
            pos = b
        out.append(value[pos:])
        return "".join(out)


class Redactor:
    """Replaces every known secret value, in every form it travels in, and anything shaped like a JWT, in text
    (`text`, `tree`, `headers`) and in binary data (`bytes_`)."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._known: set[str] = set()
        self._forms: dict[str, str] = {}
        self._raw: dict[bytes, str] = {}
        self._text = _Space({}, text=True)
        self._bytes = _Space({}, text=False)
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        """Hide `secret` (and its encoded forms) from now on. Values under 4 characters are ignored."""
        if not secret or len(secret) < MIN_SECRET or secret in self._known:
            return
        self._known.add(secret)
        if looks_like_jwt(secret):
            # The header and payload can be rebuilt from public facts (claims, the second it was issued): the
            # signature segment alone is the credential, so it is hidden wherever it travels alone.
            signature = secret.rsplit(".", 1)[1]
            if len(signature) >= _SIGNATURE_MIN:
                self.add(signature)
        for form, shown in _variants(secret):
            self._forms.setdefault(form, shown)
        for data in _decoded(secret):
            self._raw.setdefault(data, HIDDEN)
        in_bytes = {_latin(form): _latin(shown) for form, shown in self._forms.items()}
        raw = {data.decode("latin-1"): _latin(shown) for data, shown in self._raw.items()}
        # Each space is built whole and then swapped in: a reader on another thread sees the old or the new one.
        self._text = _Space(dict(self._forms), text=True)
        self._bytes = _Space({**raw, **in_bytes}, text=False, unscanned=raw)

    def __contains__(self, secret: str) -> bool:
        return secret in self._known

    def text(self, value: str) -> str:
        """`value` with secrets and JWT-shaped strings redacted. Cheap when there is nothing to hide."""
        space = self._text
        if not value or space.scan(value) is None:  # one C scan: the common case (a flood's frames)
            return value
        return space.redact(value)

    def bytes_(self, data: bytes) -> bytes:
        """Binary data with every form of a secret (and JWT-shaped text) replaced by the UTF-8 of the mark `text`
        would show; `data` itself when there is nothing to hide."""
        space = self._bytes
        if not data:
            return data
        if space.scan(data) is None:  # the same C scan, then the bytes of a signature, if any
            for needle in space.bneedles:
                if needle in data:
                    break
            else:
                return data
        text = bytes(data).decode("latin-1")
        shown = space.redact(text)
        return data if shown is text else shown.encode("latin-1")

    def tree(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string (keys included) redacted; bytes as by `bytes_`."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.tree(k) if isinstance(k, (str, bytes)) else k: self.tree(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.tree(v) for v in value]
        if isinstance(value, (bytes, bytearray)):
            return self.bytes_(bytes(value))
        return value

    def headers(self, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
        """Headers for display: credentials headers hidden whatever their value, the rest redacted as text."""
        items = headers.items() if isinstance(headers, Mapping) else headers
        out: dict[str, str] = {}
        for name, value in items:
            lower = name.lower()
            if lower in _AUTH_HEADERS and " " in value.strip():
                scheme, _, cred = value.strip().partition(" ")
                shown = f"{scheme} {redact_token(cred.strip())}"
            elif lower in SENSITIVE_HEADERS:
                shown = redact_token(value) if looks_like_jwt(value) else HIDDEN
            else:
                shown = self.text(value)
            out[name] = f"{out[name]}, {shown}" if name in out else shown
        return out


_JWT_FRAGMENT_RE = re.compile(r"eyJ[A-Za-z0-9_\-.…]{8,}")


def scrub_jwt_fragments(text: str) -> str:
    """Every run that starts like a JWT (`eyJ` + base64url, dots, ellipses) shown as its first 10 characters and
    `…(hidden)`: for text that may hold a token nobody told us about, cut or reshaped (a traceback's repr)."""
    if "eyJ" not in text:
        return text
    return _JWT_FRAGMENT_RE.sub(lambda m: m.group(0)[:10] + HIDDEN, text)
