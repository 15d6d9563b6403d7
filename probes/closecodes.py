"""Everything known about WebSocket close codes: RFC 6455 §7.4 and the IANA registry, in one table."""

from __future__ import annotations

from dataclasses import dataclass

from websockets.frames import CloseCode


@dataclass(frozen=True)
class CloseCodeInfo:
    code: int
    name: str
    meaning: str
    on_wire: bool = True  # False: a peer must never send it; an endpoint reports it locally


# Names as in the IANA "WebSocket Close Code Number Registry"; 1004 is reserved, 1005/1006/1015 are local.
CLOSE_CODES: dict[int, CloseCodeInfo] = {
    info.code: info
    for info in (
        CloseCodeInfo(CloseCode.NORMAL_CLOSURE, "Normal Closure",
                      "the purpose of the connection was fulfilled: the side that closed first ended it on purpose"),
        CloseCodeInfo(CloseCode.GOING_AWAY, "Going Away",
                      "the endpoint is going away: server shutting down, pod draining, or a page navigated"),
        CloseCodeInfo(CloseCode.PROTOCOL_ERROR, "Protocol Error", "the peer broke the WebSocket protocol"),
        CloseCodeInfo(CloseCode.UNSUPPORTED_DATA, "Unsupported Data",
                      "the endpoint received a data type it cannot accept (e.g. binary where only text is)"),
        CloseCodeInfo(1004, "Reserved", "reserved; must not be used", on_wire=False),
        CloseCodeInfo(CloseCode.NO_STATUS_RCVD, "No Status Received",
                      "a close frame arrived without a status code", on_wire=False),
        CloseCodeInfo(CloseCode.ABNORMAL_CLOSURE, "Abnormal Closure",
                      "the connection dropped without a close frame (TCP reset, proxy idle timeout, crash)",
                      on_wire=False),
        CloseCodeInfo(CloseCode.INVALID_DATA, "Invalid Frame Payload Data",
                      "a message's data did not match its type (e.g. invalid UTF-8 in a text frame)"),
        CloseCodeInfo(CloseCode.POLICY_VIOLATION, "Policy Violation",
                      "the server refused the session under its policy; usually authentication"),
        CloseCodeInfo(CloseCode.MESSAGE_TOO_BIG, "Message Too Big", "a message exceeded the receiver's size limit"),
        CloseCodeInfo(CloseCode.MANDATORY_EXTENSION, "Mandatory Extension",
                      "the client needed an extension the server did not negotiate"),
        CloseCodeInfo(CloseCode.INTERNAL_ERROR, "Internal Error",
                      "the server hit an unexpected condition (an exception in its handler)"),
        CloseCodeInfo(CloseCode.SERVICE_RESTART, "Service Restart", "the server is restarting; reconnect later"),
        CloseCodeInfo(CloseCode.TRY_AGAIN_LATER, "Try Again Later",
                      "the server is overloaded or not ready; reconnect later"),
        CloseCodeInfo(CloseCode.BAD_GATEWAY, "Bad Gateway",
                      "a gateway or proxy got an invalid response from the upstream server"),
        CloseCodeInfo(CloseCode.TLS_HANDSHAKE, "TLS Handshake",
                      "the TLS handshake failed (certificate not verified)", on_wire=False),
    )
}

NOT_ON_WIRE = frozenset(code for code, info in CLOSE_CODES.items() if not info.on_wire)


def describe(code: int | None) -> CloseCodeInfo:
    """Name and meaning of any close code, including unregistered and out-of-range ones."""
    if code is None:
        return CLOSE_CODES[CloseCode.ABNORMAL_CLOSURE]
    if code in CLOSE_CODES:
        return CLOSE_CODES[code]
    if 0 <= code <= 999:
        return CloseCodeInfo(code, "Invalid", "codes 0–999 are not used; a peer sending one is broken", False)
    if 1000 <= code <= 2999:
        return CloseCodeInfo(code, "Unassigned", "reserved for the WebSocket protocol; not assigned by IANA")
    if 3000 <= code <= 3999:
        return CloseCodeInfo(code, "Registered (library/framework)",
                             "reserved for libraries, frameworks and applications registered with IANA")
    if 4000 <= code <= 4999:
        return CloseCodeInfo(code, "Application",
                             "private use: the application defines it (often auth or session errors)")
    return CloseCodeInfo(code, "Invalid", "outside the range a close frame can carry", False)


def label(code: int | None) -> str:
    """'1000 Normal Closure', with '(not sent by the peer)' for local-only codes."""
    info = describe(code)
    suffix = " (not sent by the peer)" if code in NOT_ON_WIRE or code is None else ""
    return f"{info.code} {info.name}{suffix}"


WHO_CLOSED = {"server": "server closed", "client": "client closed", "none": "connection dropped"}


def close_sentence(code: int, reason: str, by: str, after_ms: float) -> str:
    """"1000 Normal Closure — 'main cleanup' — server closed 51 ms after accept": every screen, report and
    diagnosis words a close this one way."""
    said = f"'{reason}'" if reason else "no reason given"
    return f"{label(code)} — {said} — {WHO_CLOSED.get(by, by)} {after_ms:.0f} ms after accept"


def close_meaning(code: int, by: str) -> str:
    """What the close means, from the side that closed: our own cleanup close is not the server's doing."""
    if by == "client" and code == 1000:
        return "the client (stagewatch, or the test) closed the connection itself once done with it: not a server close"
    if by == "client":  # the meanings are written from the server's side; the client chose this code itself
        return (f"the client (stagewatch, or the test's own code) closed it with {code} {describe(code).name}: "
                "its own doing, not the server's — e.g. an exception or timeout leaving the client's `with` block")
    return describe(code).meaning
