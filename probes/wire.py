"""The WebSocket connection the probes use: websockets' client connection with a synchronous message tap.

`websockets` hands each parsed frame to `process_event` while it handles a socket read. Instead of queuing data
messages for `recv()` (one future and one task wake-up per message), `TappedConnection` reassembles them here and
passes each whole message straight to a sink, so a probe consumes a flood in batches per socket read. Everything
else — the handshake, control frames, ping/pong, max_size (1009), the close handshake — stays websockets' own.
Text messages that are not valid UTF-8 fail the connection with 1007, as websockets' own `recv()` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.frames import CloseCode, Frame, Opcode

Sink = Callable[[str | bytes], None]
MAX_FRAGMENTS = 4096


class TappedConnection(ClientConnection):
    """Pass `create_connection=TappedConnection` to `websockets.asyncio.client.connect`; then set `sink`."""

    sink: Sink | None = None
    on_lost: Callable[[], None] | None = None
    accepted_at: float | None = None  # monotonic time the handshake response was parsed
    close_frame_at: float | None = None  # monotonic time the peer's close frame was parsed
    lost_at: float | None = None  # monotonic time the TCP connection ended
    failed_at: float | None = None  # monotonic time we failed the connection (sent a close the peer did not ask for)
    timing: dict[str, object] | None = None  # how long opening took: dns_ms, tcp_ms, tls_ms, upgrade_ms (+ TLS facts)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._early: list[str | bytes] = []  # messages that arrived before a sink was attached
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None

    def attach(self, sink: Sink, on_lost: Callable[[], None]) -> None:
        """Start delivering messages (first any that arrived with the handshake response)."""
        self.sink = sink
        self.on_lost = on_lost
        early, self._early = self._early, []
        for message in early:
            sink(message)
        if self.protocol.state.name == "CLOSED" and self.connection_lost_waiter.done():
            on_lost()

    def process_event(self, event: object) -> None:
        if type(event) is not Frame or self.response is None:
            if self.response is None and self.accepted_at is None:
                self.accepted_at = time.monotonic()  # the handshake answer, as read off the socket
            super().process_event(event)  # type: ignore[arg-type]
            return
        opcode = event.opcode
        if opcode is Opcode.TEXT and event.fin and self.sink is not None:  # the common case, inlined
            try:
                message = bytes(event.data).decode()
            except UnicodeDecodeError as exc:
                self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
            self.sink(message)
            return
        if opcode is not Opcode.TEXT and opcode is not Opcode.BINARY and opcode is not Opcode.CONT:
            if opcode is Opcode.CLOSE and self.close_frame_at is None:
                self.close_frame_at = time.monotonic()  # as read off the socket, not when a stage notices
            super().process_event(event)  # control frames: ping, pong, close
            return
        if opcode is not Opcode.CONT and event.fin:
            self._deliver(opcode, bytes(event.data))
            return
        if opcode is not Opcode.CONT:
            self._fragment_opcode, self._fragments = opcode, []
        self._fragments.append(bytes(event.data))
        if len(self._fragments) > MAX_FRAGMENTS:
            self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
            return
        if event.fin and self._fragment_opcode is not None:
            opcode, data = self._fragment_opcode, b"".join(self._fragments)
            self._fragment_opcode, self._fragments = None, []
            self._deliver(opcode, data)

    def _deliver(self, opcode: Opcode, data: bytes) -> None:
        message: str | bytes
        if opcode is Opcode.TEXT:
            try:
                message = data.decode()
            except UnicodeDecodeError as exc:
                self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
        else:
            message = data
        if self.sink is None:
            self._early.append(message)
        else:
            self.sink(message)

    def _fail(self, code: CloseCode, reason: str) -> None:
        self.protocol.fail(code, reason)
        try:
            self.send_data()
        except Exception as exc:  # the transport is gone: connection_lost follows
            self._note_connection_exc(exc)
        self._bound_failed_close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.failed_at is None and self.protocol.close_sent is not None and self.protocol.close_rcvd is None \
                and self.protocol.close_sent.code != CloseCode.NORMAL_CLOSURE:
            self._bound_failed_close()  # websockets failed it (1009 too big, 1002 protocol error…)

    def _bound_failed_close(self) -> None:
        """We failed the connection: the peer has `close_timeout` to answer our close, then TCP is dropped (a
        server that ignores it and keeps the socket open must not hold a stage for its whole limit)."""
        if self.failed_at is not None:
            return
        self.failed_at = time.monotonic()
        self.loop.call_later(self.close_timeout or 0.0, self._give_up)

    def _give_up(self) -> None:
        if self.protocol.close_rcvd is None and self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _note_connection_exc(self, exc: BaseException) -> None:
        """Record why the connection broke (the cause of the ConnectionClosed that `recv()`/`send()` raise).

        websockets >= 17.4 calls this `set_connection_exc`; 15.0-17.3 call the same "set it if not set yet"
        `set_recv_exc`. Without either, connection_lost() still records the transport's own error.
        """
        setter = getattr(self, "set_connection_exc", None) or getattr(self, "set_recv_exc", None)
        if setter is not None:
            setter(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost_at is None:
            self.lost_at = time.monotonic()
        super().connection_lost(exc)
        if self.on_lost is not None:
            self.on_lost()
