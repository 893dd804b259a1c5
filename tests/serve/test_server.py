"""`chex serve` over HTTP without a browser: routes, checks, queueing, and the command's start-up errors.

The connection-level probes (slow senders, many connections, oversized and smuggled bodies)
are in test_probes.py."""

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from chexcli.errors import ChexError
from chexcli.serve.examples import example_path
from chexcli.serve.server import ChexServer
from chexcli.serve.session import ServeSession

from .conftest import free_port, request


def ask(base, image_id, **question):
    body = json.dumps({"image": image_id, **question}).encode()
    return request(base + "api/ask", body, {"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def session(tiny_bundle):
    s = ServeSession.load(tiny_bundle, max_new_tokens=4, max_upload_bytes=2**20)
    yield s
    s.close()


def start(session, auth=None, **kwargs):
    server = ChexServer("127.0.0.1", 0, auth, **kwargs)
    server.attach(session)
    return server.start_in_thread()


@pytest.fixture(scope="module")
def base(session):
    server = start(session)
    yield server.url
    server.stop()


def upload(base, data, name):
    return request(base + "api/upload", data, {"X-File-Name": urllib.request.quote(name),
                                               "Content-Type": "application/octet-stream"})


def test_page_is_self_contained(base):
    for path in ("", "static/app.js", "static/style.css"):
        status, headers, body = request(base + path)
        assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
        assert not re.search(rb"https?://|//cdn|@import|fonts\.g", body), path  # nothing from the network
    status, _, body = request(base + "api/info")
    info = json.loads(body)
    assert info["model"] == "tiny" and [e["name"] for e in info["examples"]] == ["normal", "opacity"]


def test_upload_ask_and_download(base, session):
    status, _, body = upload(base, example_path("opacity").read_bytes(), "my x-ray.png")
    assert status == 200, body
    image = json.loads(body)["image"]
    assert (image["name"], image["width"], image["height"]) == ("my x-ray.png", 448, 512)
    status, headers, preview = request(base + f"api/image/{image['id']}.png")
    assert status == 200 and headers["Content-Type"] == "image/png" and preview.startswith(b"\x89PNG")

    status, _, body = ask(base, image["id"], prompts=["left lung opacity"], boxes=[[100, 150, 300, 400]])
    assert status == 200, body
    answer = json.loads(body)
    assert [row["kind"] for row in answer["rows"]] == ["prompt", "box"] and answer["rows"][0]["sentence"]
    assert answer["record"]["image"] == "my x-ray.png"
    status, headers, png = request(base + answer["png_url"].lstrip("/"))
    assert status == 200 and png.startswith(b"\x89PNG") and "Content-Disposition" not in headers
    status, headers, line = request(base + answer["json_url"].lstrip("/") + "?download=1")
    assert status == 200 and json.loads(line) == answer["record"] and line.count(b"\n") == 1
    assert headers["Content-Disposition"] == "attachment; filename*=UTF-8''my%20x-ray_chex.json"

    status, _, body = request(base + "api/example?name=normal", b"", method="POST")
    assert status == 200 and json.loads(body)["image"]["name"] == "synthetic_normal.png"


def test_bad_requests_get_messages_and_the_app_keeps_working(base, session):
    status, _, body = upload(base, b"GIF89a nonsense", "notes.png")
    assert status == 400 and json.loads(body)["error"].startswith("notes.png: ")
    status, _, body = upload(base, bytes(2**20 + 1), "huge.dcm")  # over the session's 1 MB limit: not read
    assert status == 413 and "limit is 1 MB" in json.loads(body)["error"]
    status, _, body = request(base + "api/ask", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and json.loads(body)["error"] == "the question is not valid JSON"
    status, _, body = ask(base, "nope", prompts=["left lung"])
    assert status == 400 and "upload it again" in json.loads(body)["error"]
    status, _, body = request(base + "api/example?name=zzz", b"", method="POST")
    assert status == 400 and "unknown example" in json.loads(body)["error"]
    assert request(base + "api/answer/unknown.png")[0] == 400
    assert request(base + "etc/passwd")[0] == 404
    assert request(base + "static/../session.py")[0] == 404

    image = session.add_upload(example_path("normal").read_bytes(), "n.png")
    status, _, body = ask(base, image.id, prompts=[], boxes=[])
    assert status == 400 and json.loads(body)["error"].startswith("nothing to ask")
    status, _, body = ask(base, image.id, prompts=["cardiomegaly"])
    assert status == 200 and json.loads(body)["rows"][0]["query"] == "cardiomegaly"


def test_requests_for_other_hosts_and_cross_origin_posts_are_refused(base):
    port = base.rsplit(":", 1)[1].strip("/")
    assert request(base + "api/info", headers={"Host": f"localhost:{port}"})[0] == 200
    status, _, body = request(base + "api/info", headers={"Host": f"evil.example:{port}"})
    assert status == 403 and "--allowed-host" in json.loads(body)["error"]
    status, _, _ = request(base + "api/example?name=normal", b"", {"Origin": "http://evil.example"}, "POST")
    assert status == 403
    status, _, _ = request(base + "api/info", headers={"Origin": "null"})  # a sandboxed frame or a file:// page
    assert status == 403
    status, _, _ = request(base + "api/example?name=normal", b"", {"Origin": f"http://localhost:{port}"}, "POST")
    assert status == 200


def test_other_loopback_addresses_and_proxy_names(session):
    server = ChexServer("127.0.0.2", 0, allowed_hosts=["chex.example.org"])
    server.attach(session)
    server.start_in_thread()
    try:
        url = f"http://127.0.0.2:{server.port}/"
        assert request(url + "api/info")[0] == 200  # the address it listens on is one of its names
        proxied = {"Host": "chex.example.org", "Origin": "https://chex.example.org"}  # behind a TLS proxy
        assert request(url + "api/example?name=normal", b"", proxied, "POST")[0] == 200
        assert request(url + "api/info", headers={"Host": "other.example.org"})[0] == 403
    finally:
        server.stop()


def test_basic_auth(session):
    from chexcli.serve.app import ServeLimits

    server = start(session, auth=("alice", "s3cret"), limits=ServeLimits(auth_failure_delay=0.5))
    try:
        status, headers, _ = request(server.url)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        wrong = base64.b64encode(b"alice:guess").decode()
        started = time.monotonic()
        assert request(server.url, headers={"Authorization": f"Basic {wrong}"})[0] == 401
        assert time.monotonic() - started >= 0.5  # a wrong guess waits before its answer
        for garbage in ("Basic", "Basic !!!", "Bearer abc", f"Digest {wrong}"):
            assert request(server.url, headers={"Authorization": garbage})[0] == 401
        right = base64.b64encode(b"alice:s3cret").decode()
        for scheme in ("Basic", "basic", "BASIC"):  # the scheme name is case-insensitive (RFC 7617)
            assert request(server.url + "api/info", headers={"Authorization": f"{scheme} {right}"})[0] == 200
    finally:
        server.stop()


def test_two_tabs_never_run_the_model_at_once(base, session, monkeypatch):
    image = session.add_upload(example_path("normal").read_bytes(), "q.png")
    running, overlaps = [0], []
    original = session.predictor.predict

    def slow_predict(*args, **kwargs):
        running[0] += 1
        overlaps.append(running[0])
        time.sleep(0.3)
        try:
            return original(*args, **kwargs)
        finally:
            running[0] -= 1

    monkeypatch.setattr(session.predictor, "predict", slow_predict)
    results = []
    threads = [threading.Thread(target=lambda p=p: results.append(ask(base, image.id, prompts=[p])[0]))
               for p in ("left lung", "right lung", "cardiomegaly")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200, 200, 200] and overlaps == [1, 1, 1]


def test_port_in_use_is_a_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ChexError, match=f"port {port} on 127.0.0.1 is already in use; choose another with --port"):
            ChexServer("127.0.0.1", port)


def chex_serve(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "chexcli", "serve", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_command_start_up_errors(tiny_bundle, tmp_path):
    for args, message in [
        (["--model", tmp_path / "missing"], f"error: --model {tmp_path / 'missing'}: no such bundle folder"),
        (["--model", tiny_bundle, "--auth", "alice"], "error: --auth: give user:password"),
        (["--model", tiny_bundle, "--dtype", "bf16"], "error: unknown --dtype 'bf16'"),
    ]:
        proc = chex_serve(*args)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and err.startswith(message) and err.count("\n") == 1, err
    with socket.socket() as s:  # the port is checked before the model is loaded
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = chex_serve("--model", tiny_bundle, "--port", port)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err == f"error: port {port} on 127.0.0.1 is already in use; choose another with --port\n"


def test_command_warns_for_other_hosts_and_stops_cleanly(tiny_bundle, tmp_path):
    port = free_port()
    proc = chex_serve("--model", tiny_bundle, "--host", "0.0.0.0", "--port", port,
                      env={**os.environ, "CHEX_SERVE_AUTH": "bob:pw", "TMPDIR": str(tmp_path)})
    try:
        lines = [proc.stderr.readline() for _ in range(3)]
        assert lines[0].startswith("warning: --host 0.0.0.0 makes the app reachable from other machines")
        assert "--auth" not in lines[0]  # credentials were given (from the environment)
        assert lines[2] == f"chex serve: open http://0.0.0.0:{port}/ in a browser (Ctrl+C to stop)\n"
        token = base64.b64encode(b"bob:pw").decode()
        assert request(f"http://127.0.0.1:{port}/api/info", headers={"Authorization": f"Basic {token}"})[0] == 200
        assert request(f"http://127.0.0.1:{port}/api/info")[0] == 401
        evil = {"Authorization": f"Basic {token}", "Host": f"rebound.example:{port}"}
        assert request(f"http://127.0.0.1:{port}/api/info", headers=evil)[0] == 403  # names are checked on 0.0.0.0 too
        own = {"Authorization": f"Basic {token}", "Host": f"{socket.gethostname()}:{port}"}
        assert request(f"http://127.0.0.1:{port}/api/info", headers=own)[0] == 200  # the machine's own name
        status, _, body = request(f"http://127.0.0.1:{port}/api/example?name=normal", b"",
                                  {"Authorization": f"Basic {token}"}, "POST")
        assert status == 200 and len(list(tmp_path.glob("chex-serve-*/uploads/*"))) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err.endswith("stopped; uploads removed\n")
    assert not list(tmp_path.glob("chex-serve-*"))


def test_the_listening_socket_is_tcp_so_that_nagle_is_off():
    # asyncio disables Nagle's algorithm only on sockets whose protocol is IPPROTO_TCP; without it every
    # response on a reused keep-alive connection waited ~40 ms for the client's delayed ACK
    from chexcli.serve.server import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
