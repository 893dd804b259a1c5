"""`chex serve` probed on loopback the way a careful user (or an attacker) would: raw sockets, slow senders,
many connections, oversized, malformed and smuggled requests, a full model queue, clients that leave.

The server runs in this process with short limits (ServeLimits) so that each probe takes about a second.
"""

import json
import socket
import threading
import time

import numpy as np
import pytest

from chexcli.serve.app import ServeLimits
from chexcli.serve.examples import example_path
from chexcli.serve.server import ChexServer
from chexcli.serve.session import ServeSession

from .conftest import request

LIMITS = ServeLimits(head_timeout=1.0, body_timeout=1.0, keep_alive=1, max_waiting=1, decode_workers=1,
                     max_decoding=1, poll_interval=0.05, retry_after=7)


@pytest.fixture(scope="module")
def session(tiny_bundle):
    s = ServeSession.load(tiny_bundle, max_new_tokens=2, max_upload_bytes=2**20)
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(session):
    server = ChexServer("127.0.0.1", 0, limits=LIMITS)
    server.attach(session)
    server.start_in_thread()
    yield server
    server.stop()


def connect(server, timeout=5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return sock


def read_all(sock, seconds=5.0) -> bytes:
    """Everything the server sends until it closes the connection (or `seconds` pass)."""
    sock.settimeout(seconds)
    data, deadline = b"", time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def exchange(server, raw: bytes, seconds=5.0) -> bytes:
    with connect(server) as sock:
        sock.sendall(raw)
        return read_all(sock, seconds)


def statuses(answer: bytes) -> list[int]:
    return [int(line.split()[1]) for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def body_of(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_a_slow_request_head_is_cut_off(server):
    with connect(server) as sock:
        started = time.monotonic()
        with pytest.raises(OSError):
            for byte in b"GET /api/info HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 40:
                sock.send(bytes([byte]))  # one byte every 0.1 s: each arrives well within any read timeout
                time.sleep(0.1)
            assert read_all(sock, 3) == b""  # closed, with no answer
            raise OSError("closed")
        assert time.monotonic() - started < LIMITS.head_timeout + 2.5


def test_a_slow_body_gets_408(server):
    with connect(server) as sock:
        sock.sendall(b"POST /api/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n")
        started = time.monotonic()
        try:
            for _ in range(40):
                sock.send(b"x")
                time.sleep(0.1)
        except OSError:
            pass
        answer = read_all(sock, 3)
    assert statuses(answer) == [408] and "did not arrive within" in body_of(answer)["error"]
    assert time.monotonic() - started < LIMITS.body_timeout + 4


def test_200_half_open_connections_hold_no_threads_and_block_no_one(server):
    threads_before = threading.active_count()
    socks = []
    try:
        for _ in range(200):
            sock = connect(server)
            sock.sendall(b"GET /api/info HTTP/1.1\r\nHost: local")  # never finished
            socks.append(sock)
        time.sleep(0.2)
        assert threading.active_count() == threads_before  # one event loop, no thread per connection
        assert request(server.url + "api/info")[0] == 200  # others are still served
        time.sleep(LIMITS.head_timeout + 1.0)
        closed = 0
        for sock in socks:
            sock.settimeout(2)
            try:
                closed += sock.recv(1) == b""
            except (ConnectionResetError, socket.timeout):
                closed += 1
        assert closed == 200  # the head deadline closed every one of them
    finally:
        for sock in socks:
            sock.close()


def test_an_oversized_upload_is_refused_before_it_is_read(server):
    head = b"POST /api/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1073741824\r\n"
    answer = exchange(server, head + b"Expect: 100-continue\r\n\r\n")  # curl's way: wait for the go-ahead
    assert statuses(answer) == [413] and b"100 Continue" not in answer
    assert "the limit is 1 MB" in body_of(answer)["error"]
    with connect(server) as sock:  # a client that sends at once: the answer comes before the body is read
        sock.sendall(head + b"\r\n")
        sock.settimeout(5)
        first = sock.recv(65536)
        assert statuses(first) == [413]
        sent, started = 0, time.monotonic()
        try:
            while time.monotonic() - started < 10:  # the server drops the rest and closes within its linger time
                sent += sock.send(b"\0" * 65536)
        except OSError:
            pass
        assert time.monotonic() - started < 10 and sent < 64 * 2**20
    chunked = b"POST /api/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (2**19, b"\0" * 2**19)
    answer = exchange(server, chunked + chunk * 3 + b"0\r\n\r\n")  # no length given: counted as it arrives
    assert statuses(answer) == [413]


def test_a_body_is_never_read_as_the_next_request(server):
    smuggled = b"GET /api/example/normal.png HTTP/1.1\r\nHost: localhost\r\n\r\n"
    answer = exchange(server, b"GET /api/info HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(smuggled), smuggled))
    assert statuses(answer) == [200] and b"\x89PNG" not in answer
    both = b"GET /api/info HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n"
    answer = exchange(server, both % (5 + len(smuggled)) + b"0\r\n\r\n" + smuggled)  # a proxy may frame it by
    assert statuses(answer) == [400] and b"\x89PNG" not in answer                     # length: refused, closed
    answer = exchange(server, b"POST /api/example?name=normal HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5"
                              b"\r\n\r\nhello")  # one answer, and the action does not run
    assert statuses(answer) == [400] and body_of(answer)["error"] == "this action takes no body"


@pytest.mark.parametrize("raw", [
    b"POST /api/ask HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n",
    b"POST /api/ask HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    b"GET /api/info HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",  # headers over 16 KB
    b"GARBAGE\r\n\r\n",
])
def test_malformed_requests_get_400(server, raw):
    assert statuses(exchange(server, raw))[:1] in ([400], [431])


def test_deeply_nested_json_gets_400(server):
    deep = b"[" * 200_000 + b"]" * 200_000
    status, _, body = request(server.url + "api/ask", deep, {"Content-Type": "application/json"})
    assert status == 400 and json.loads(body)["error"] == "the question is not valid JSON"


def test_a_format_outside_the_allow_list_is_refused_by_name(server):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(buf, format="TIFF")
    status, _, body = request(server.url + "api/upload", buf.getvalue(), {"X-File-Name": "scan.tif"})
    assert status == 400
    assert json.loads(body)["error"] == ("scan.tif: TIFF images are not supported (supported: PNG, JPEG, DICOM); "
                                         "convert it to PNG first")


def slow_model(session, monkeypatch, seconds=0.6):
    """Make each model call take `seconds`; returns the list of prompts the model was called with."""
    calls, original = [], session.predictor.predict

    def predict(grays, names, prompts, boxes):
        calls.append(prompts[0])
        time.sleep(seconds)
        return original(grays, names, prompts, boxes)

    monkeypatch.setattr(session.predictor, "predict", predict)
    return calls


def ask_body(image_id, prompt, ticket=None) -> bytes:
    return json.dumps({"image": image_id, "prompts": [prompt], "ticket": ticket}).encode()


def test_a_full_queue_answers_503_and_positions_are_reported(server, session, monkeypatch):
    image = session.add_upload(example_path("normal").read_bytes(), "q.png")
    calls = slow_model(session, monkeypatch)
    results = {}

    def ask(prompt, ticket):
        results[prompt] = request(server.url + "api/ask", ask_body(image.id, prompt, ticket),
                                  {"Content-Type": "application/json"})

    running = threading.Thread(target=ask, args=("left lung", "t-run"))
    running.start()
    time.sleep(0.3)
    waiting = threading.Thread(target=ask, args=("right lung", "t-wait"))
    waiting.start()
    time.sleep(0.2)
    position = lambda ticket: json.loads(request(server.url + f"api/queue?ticket={ticket}")[2])["position"]
    assert (position("t-run"), position("t-wait"), position("nobody")) == (0, 1, None)
    status, headers, body = request(server.url + "api/ask", ask_body(image.id, "heart"),
                                    {"Content-Type": "application/json"})
    assert status == 503 and headers["Retry-After"] == "7" and "already waiting" in json.loads(body)["error"]
    running.join()
    waiting.join()
    assert [results[p][0] for p in ("left lung", "right lung")] == [200, 200] and calls == ["left lung", "right lung"]


def test_questions_of_clients_that_left_or_cancelled_are_dropped(server, session, monkeypatch):
    image = session.add_upload(example_path("normal").read_bytes(), "c.png")
    calls = slow_model(session, monkeypatch)
    running = threading.Thread(target=request, args=(server.url + "api/ask", ask_body(image.id, "left lung"),
                                                     {"Content-Type": "application/json"}))
    running.start()
    time.sleep(0.2)
    body = ask_body(image.id, "gone")  # a client that gives up while its question waits
    with connect(server) as sock:
        sock.sendall(b"POST /api/ask HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(0.2)
    running.join()
    time.sleep(0.3)
    assert calls == ["left lung"]

    running = threading.Thread(target=request, args=(server.url + "api/ask", ask_body(image.id, "right lung"),
                                                     {"Content-Type": "application/json"}))
    running.start()
    time.sleep(0.2)
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(request(
        server.url + "api/ask", ask_body(image.id, "cancelled", "t-cancel"), {"Content-Type": "application/json"})))
    waiting.start()
    time.sleep(0.2)
    status, _, body = request(server.url + "api/cancel?ticket=t-cancel", b"", method="POST")
    assert status == 200 and json.loads(body) == {"cancelled": True}
    waiting.join()
    running.join()
    assert answers[0][0] == 409 and calls == ["left lung", "right lung"]


def test_uploads_are_decoded_in_a_bounded_pool(server, session, monkeypatch):
    original = session.add_upload

    def slow_upload(data, name):
        time.sleep(0.5)
        return original(data, name)

    monkeypatch.setattr(session, "add_upload", slow_upload)
    png = example_path("normal").read_bytes()
    first = []
    thread = threading.Thread(target=lambda: first.append(request(server.url + "api/upload", png)))
    thread.start()
    time.sleep(0.2)
    status, headers, body = request(server.url + "api/upload", png)  # max_decoding=1: the line is full
    assert status == 503 and headers["Retry-After"] == "7" and "busy" in json.loads(body)["error"]
    thread.join()
    assert first[0][0] == 200
