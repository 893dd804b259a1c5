"""uvicorn's HTTP/1.1 protocol (h11) with the two connection rules it leaves out.

1. **A deadline for the request head.** uvicorn times out idle keep-alive
   connections, but not a client that sends its request line and headers one
   byte at a time (slowloris): each byte restarts nothing and the connection
   stays forever. Here a connection must complete each request head within
   `head_timeout` seconds of connecting (or of the previous response), or it is
   closed.
2. **No reading of a body the app refused.** When the app answers before the
   whole request body has arrived (an upload refused with 413 from its
   Content-Length, a body that came too slowly), uvicorn keeps the connection for
   the next request and reads and discards the rest of the body first, however
   large (a 1 GiB Content-Length means 1 GiB read). Here such a connection is
   closed once the answer is out. (app.py's refusal drains a few MB for a moment
   before it ends its answer, so that a client still sending reads the 413 rather
   than a reset.)

Use it as `uvicorn.Config(..., http=LimitedH11Protocol.configured(head_timeout=10))`.
"""

from __future__ import annotations

import asyncio
import functools

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class LimitedH11Protocol(H11Protocol):
    """H11Protocol plus a deadline for each request head, and no reuse of a connection whose body is unread."""

    @classmethod
    def configured(cls, head_timeout: float = 10.0):
        """A protocol factory with this deadline (uvicorn builds one protocol per connection)."""
        return functools.partial(cls, _head_timeout=head_timeout)

    def __init__(self, *args, _head_timeout: float = 10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout = _head_timeout
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():  # rule 2
            self.transport.close()
        super().on_response_complete()  # does nothing more on a closing transport
        if not self.transport.is_closing():
            self._arm_head_deadline()

    def connection_lost(self, exc) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

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
