"""The web app of `chex serve`: a Starlette application around a ServeSession.

Routes (JSON answers carry `{"error": "one line"}` with a 4xx/5xx status on bad input):

    GET  /                          the page (static/index.html, app.js, style.css: no CDN, works offline)
    GET  /api/info                  model name, examples, limits
    GET  /api/example/NAME.png      thumbnail of an example image
    POST /api/example?name=NAME     open a packaged example image -> image info (no body)
    POST /api/upload                body: the file's bytes; header X-File-Name (URL-encoded) -> image info
    GET  /api/image/ID.png          preview of an image
    POST /api/ask                   {"image", "prompts": [...], "boxes": [[x1, y1, x2, y2], ...], "report",
                                     "ticket"} -> answer (waits in the model queue)
    GET  /api/queue?ticket=T        {"position": k} while the ticket's question waits (0: running)
    POST /api/cancel?ticket=T       drop the ticket's question if it still waits
    GET  /api/answer/ID.png|.json   annotated image / the `chex predict --json` line (?download=1: as a file)

Limits (`ServeLimits`): bodies are refused from their Content-Length before they are
read (413) and read against a deadline (408); uploads are decoded in a small thread
pool with a bounded line (503 + Retry-After when full); model calls go through one
bounded `ModelQueue` (503 + Retry-After when full) and a question whose client has gone
is dropped before it runs. Connection-level limits are in `server.py` and `protocol.py`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chexcli.errors import ChexError
from chexcli.serve.examples import EXAMPLES, example_path
from chexcli.serve.model_queue import ModelQueue, QueueFull
from chexcli.serve.session import MAX_BOXES, MAX_PROMPTS, ServeSession

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/static/style.css": ("style.css", "text/css; charset=utf-8")}
THUMBNAIL_SIZE = 96


@dataclass(frozen=True)
class ServeLimits:
    """Every bound of `chex serve` in one place (seconds, bytes, counts)."""

    max_json_bytes: int = 2**20  # a question
    body_timeout: float = 60.0  # to receive a whole request body
    head_timeout: float = 10.0  # to receive a request line and headers (protocol.py)
    keep_alive: int = 5  # an idle connection between requests
    max_connections: int = 256  # open connections and running requests; beyond: 503
    max_waiting: int = 8  # questions waiting for the model; beyond: 503
    decode_workers: int = 2  # uploads decoded at once
    max_decoding: int = 6  # uploads decoding or waiting to; beyond: 503
    auth_failure_delay: float = 1.0  # before the answer to wrong credentials
    retry_after: int = 5  # seconds, in 503 answers
    poll_interval: float = 0.2  # how often a waiting question checks that its client is still there


class Problem(Exception):
    """An HTTP answer other than 200: status, one-line message, extra headers; `unread_body`: the
    request body was refused unread (the answer then drains it for a moment, see BodyRefusal)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 unread_body: bool = False):
        super().__init__(message)
        self.status, self.message, self.headers, self.unread_body = status, message, headers or {}, unread_body


class BodyRefusal(JSONResponse):
    """The answer to a request whose body is refused unread (413).

    The whole answer is sent first; then what the client still sends is dropped, at most
    `DRAIN_BYTES` or `DRAIN_SECONDS`, before the response ends and uvicorn closes the connection.
    Closing at once would reset a connection with unread data, and a client still sending
    would see "connection reset" instead of the 413. A client that waits for `100 Continue`
    (curl does for large uploads) sends nothing, so nothing is drained.
    """

    DRAIN_BYTES = 4 * 2**20
    DRAIN_SECONDS = 2.0

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        if Headers(scope=scope).get("expect", "").lower() != "100-continue":
            await drain(receive, self.DRAIN_BYTES, self.DRAIN_SECONDS)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def drain(receive, max_bytes: int, seconds: float) -> None:
    """Receive and drop request body messages until the body ends, `max_bytes` or `seconds`."""
    dropped = 0
    try:
        async with asyncio.timeout(seconds):
            while dropped <= max_bytes:
                message = await receive()
                if message["type"] != "http.request":
                    return
                dropped += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        pass


class ClientGone(Exception):
    """The client closed the connection; nothing can be answered."""


class DecodePool:
    """Decodes uploads on a few threads; refuses new ones (503) when too many are in line."""

    def __init__(self, workers: int, max_pending: int, retry_after: int):
        self.executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="chex-decode")
        self.max_pending, self.retry_after = max_pending, retry_after
        self.pending = 0  # changed on the event loop's thread only

    async def run(self, fn, *args):
        if self.pending >= self.max_pending:
            raise Problem(503, "the app is busy reading other uploads; try again in a moment",
                          {"Retry-After": str(self.retry_after)})
        self.pending += 1
        try:
            return await asyncio.wrap_future(self.executor.submit(fn, *args))
        finally:
            self.pending -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------- request helpers


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, refused with 413 from its Content-Length (before reading), or as soon as it
    passes `limit`; 408 when it takes longer than `timeout` seconds."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise Problem(413, f"the upload is {int(length) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB",
                      unread_body=True)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Problem(413, f"the upload is over the limit of {limit / 2**20:.0f} MB", unread_body=True)
                chunks.append(chunk)
    except TimeoutError:
        raise Problem(408, f"the request body did not arrive within {timeout:.0f} s; try again") from None
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


def parse_question(data: bytes) -> dict:
    """The JSON object of /api/ask; 400 for anything else (including absurdly deep nesting)."""
    try:
        question = json.loads(data or b"{}")
    except (ValueError, RecursionError):
        raise ChexError("the question is not valid JSON") from None
    if not isinstance(question, dict):
        raise ChexError("the question must be a JSON object")
    prompts, boxes = question.get("prompts") or [], question.get("boxes") or []
    if not isinstance(prompts, list) or not isinstance(boxes, list):
        raise ChexError("prompts and boxes must be lists")
    return question


def ticket_of(value) -> str | None:
    """A client's ticket for its queue position: a short printable string, or None."""
    text = "".join(ch for ch in str(value or "") if ch.isalnum() or ch in "-_")[:64]
    return text or None


async def wait_for_job(request: Request, queue: ModelQueue, job, poll: float):
    """The job's result; drops the job (ClientGone) when the client disconnects while it waits."""
    result = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({result}, timeout=poll)
        if done:
            if result.cancelled():
                raise Problem(409, "the question was cancelled")
            return result.result()
        if await request.is_disconnected():
            queue.cancel(job)
            raise ClientGone()


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def thumbnail(name: str) -> bytes:
    """A small PNG of a packaged example image."""
    with Image.open(example_path(name), formats=["PNG"]) as im:
        im.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# ---------------------------------------------------------------------- the app


class ServeApp:
    """The routes, bound to one session, one model queue and one decode pool."""

    def __init__(self, session: ServeSession, limits: ServeLimits = ServeLimits()):
        self.session = session
        self.limits = limits
        self.queue = ModelQueue(limits.max_waiting)
        self.decoder = DecodePool(limits.decode_workers, limits.max_decoding, limits.retry_after)
        self.thumbnails = {name: thumbnail(name) for name in EXAMPLES}

    def routes(self) -> list[Route]:
        static = [Route(path, self.static_file, methods=["GET"]) for path in STATIC_FILES]
        return static + [
            Route("/api/info", self.info, methods=["GET"]),
            Route("/api/example/{name}.png", self.example_thumbnail, methods=["GET"]),
            Route("/api/example", self.open_example, methods=["POST"]),
            Route("/api/upload", self.upload, methods=["POST"]),
            Route("/api/image/{image_id}.png", self.preview, methods=["GET"]),
            Route("/api/ask", self.ask, methods=["POST"]),
            Route("/api/queue", self.queue_position, methods=["GET"]),
            Route("/api/cancel", self.cancel, methods=["POST"]),
            Route("/api/answer/{answer_id}.png", self.answer_png, methods=["GET"]),
            Route("/api/answer/{answer_id}.json", self.answer_json, methods=["GET"]),
        ]

    def close(self) -> None:
        self.queue.close()
        self.decoder.close()

    # ------------------------------------------------------------------ pages and images
    async def static_file(self, request: Request) -> Response:
        name, media_type = STATIC_FILES[request.url.path]
        return Response((STATIC / name).read_bytes(), media_type=media_type)

    async def info(self, request: Request) -> Response:
        return JSONResponse({
            "model": self.session.model_name,
            "examples": [{"name": k, "label": label, "title": title, "thumbnail": f"/api/example/{k}.png"}
                         for k, (_, label, title) in EXAMPLES.items()],
            "max_upload_bytes": self.session.max_upload_bytes, "max_pixels": self.session.max_pixels,
            "max_prompts": MAX_PROMPTS, "max_boxes": MAX_BOXES})

    async def example_thumbnail(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.thumbnails:
            raise Problem(404, f"no example named {name!r}")
        return Response(self.thumbnails[name], media_type="image/png")

    async def preview(self, request: Request) -> Response:
        entry = self.session.image(request.path_params["image_id"])
        return file_response(entry.preview, "image/png")

    # ------------------------------------------------------------------ images in
    async def open_example(self, request: Request) -> Response:
        if request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers:
            raise ChexError("this action takes no body")
        name = request.query_params.get("name", "")
        entry = await self.decoder.run(self.session.add_example, name)
        return JSONResponse({"image": entry.info()})

    async def upload(self, request: Request) -> Response:
        data = await read_body(request, self.session.max_upload_bytes, self.limits.body_timeout)
        name = unquote(request.headers.get("x-file-name", "upload"))
        entry = await self.decoder.run(self.session.add_upload, data, name)
        return JSONResponse({"image": entry.info()})

    # ------------------------------------------------------------------ questions
    async def ask(self, request: Request) -> Response:
        question = parse_question(await read_body(request, self.limits.max_json_bytes, self.limits.body_timeout))
        checked = self.session.prepare_question(str(question.get("image", "")), question.get("prompts") or [],
                                                question.get("boxes") or [], report=bool(question.get("report")))
        try:
            job = self.queue.submit(self.session.run_question, checked, ticket=ticket_of(question.get("ticket")))
        except QueueFull as err:
            raise Problem(503, str(err), {"Retry-After": str(self.limits.retry_after)}) from None
        answer = await wait_for_job(request, self.queue, job, self.limits.poll_interval)
        return JSONResponse({**answer.to_dict(), "png_url": f"/api/answer/{answer.id}.png",
                             "json_url": f"/api/answer/{answer.id}.json"})

    async def queue_position(self, request: Request) -> Response:
        ticket = ticket_of(request.query_params.get("ticket"))
        position = self.queue.position(ticket) if ticket else None
        return JSONResponse({"position": position, "waiting": self.queue.waiting})

    async def cancel(self, request: Request) -> Response:
        ticket = ticket_of(request.query_params.get("ticket"))
        job = self.queue.find(ticket) if ticket else None
        return JSONResponse({"cancelled": bool(job is not None and self.queue.cancel(job))})

    # ------------------------------------------------------------------ answers out
    def _download_headers(self, request: Request, answer, ext: str) -> dict[str, str]:
        if "download" not in request.query_params:
            return {}
        name = f"{Path(answer.record['image']).stem}_chex.{ext}"
        return {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"}

    async def answer_png(self, request: Request) -> Response:
        answer = self.session.answer(request.path_params["answer_id"])
        return file_response(answer.png, "image/png", self._download_headers(request, answer, "png"))

    async def answer_json(self, request: Request) -> Response:
        answer = self.session.answer(request.path_params["answer_id"])
        return Response((answer.json_line + "\n").encode(), media_type="application/json",
                        headers=self._download_headers(request, answer, "json"))


def file_response(path: Path, media_type: str, headers: dict[str, str] | None = None) -> Response:
    try:
        body = path.read_bytes()
    except OSError:
        raise Problem(404, "this file is no longer available") from None
    return Response(body, media_type=media_type, headers=headers)


# ---------------------------------------------------------------------- errors as JSON


async def on_problem(request: Request, exc: Problem) -> Response:
    if exc.unread_body:
        return BodyRefusal({"error": exc.message}, status_code=exc.status, headers=exc.headers)
    return json_error(exc.status, exc.message, exc.headers)


async def on_chex_error(request: Request, exc: ChexError) -> Response:
    return json_error(400, str(exc))


async def on_http_exception(request: Request, exc: HTTPException) -> Response:
    message = {404: f"no such page: {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return json_error(exc.status_code, message, exc.headers)


async def on_client_gone(request: Request, exc: ClientGone) -> Response:
    return Response(status_code=499)  # nobody reads it; uvicorn drops it


async def on_unexpected(request: Request, exc: Exception) -> Response:
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    return json_error(500, f"internal error: {first}")


def create_app(app: ServeApp) -> Starlette:
    """The Starlette application of a ServeApp (guards are added by the server)."""
    return Starlette(routes=app.routes(), exception_handlers={
        Problem: on_problem, ChexError: on_chex_error, HTTPException: on_http_exception,
        ClientGone: on_client_gone, Exception: on_unexpected})
