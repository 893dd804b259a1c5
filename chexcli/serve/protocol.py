"""uvicorn's HTTP/1.1 protocol (h11) with the two connection rules it leaves out.

1. **A deadline for the request head.** uvicorn times out idle keep-alive
   connections, but not a client that sends its request line and headers one
   byte at a time (slowloris): each byte restarts nothing and the connection
   stays forever. Here a connection must complete each request head within
   `head_timeout` seconds of connecting (or of the previous response), or it is
   closed.
2. **No reading of a body the app did not want.** When the app answers before
   reading the whole body (an oversized upload refused with 413 from its
   Content-Length, a GET with a body), the connection is not reused: the rest of
   the body is never parsed as a next request and never stored. The server
   half-closes and drops what the client still sends, up to `linger_bytes` or
   `linger` seconds (so that a client still sending reads the answer instead of
   a connection reset), then closes.

Use it as `uvicorn.Config(..., http=LimitedH11Protocol.configured(head_timeout=10))`.
"""

from __future__ import annotations

import asyncio
import functools

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class LimitedH11Protocol(H11Protocol):
    """H11Protocol plus a request-head deadline and no reuse of a connection with an unread body."""

    head_timeout: float = 10.0
    linger: float = 2.0
    linger_bytes: int = 4 * 2**20

    @classmethod
    def configured(cls, head_timeout: float = 10.0, linger: float = 2.0):
        """A protocol factory with these limits (uvicorn builds one protocol per connection)."""
        return functools.partial(cls, _limits=(head_timeout, linger))

    def __init__(self, *args, _limits: tuple[float, float] = (10.0, 2.0), **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout, self.linger = _limits
        self._head_deadline: asyncio.TimerHandle | None = None
        self._lingering = False
        self._dropped = 0

    # ------------------------------------------------------------------ rule 1
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_deadline_passed)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():  # no complete request head
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ rule 2
    def data_received(self, data: bytes) -> None:
        if self._lingering:  # the rest of a refused body: dropped unparsed
            self._dropped += len(data)
            if self._dropped > self.linger_bytes:
                self.transport.close()
            return
        super().data_received(data)

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._linger_then_close()
            return
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()

    def _linger_then_close(self) -> None:
        self._lingering = True
        self._cancel_head_deadline()
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(self.linger, self.transport.close)

    def eof_received(self) -> bool | None:
        if self._lingering:  # the client has read our answer and closed its side
            self.transport.close()
        return super().eof_received()
