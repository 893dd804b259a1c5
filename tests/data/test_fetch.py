import os
import subprocess
import sys
import time

import pytest

from chexcli.data.fetch import checksums, download
from chexcli.data.fetch.credentials import Credentials, physionet_credentials
from chexcli.data.fetch.download import download_file
from chexcli.data.fetch.errors import PermanentError
from chexcli.data.fetch.options import FetchOptions
from chexcli.data.fetch.physionet import fetch_physionet
from chexcli.data.fetch.run import fetch
from chexcli.data.sources import get_source
from chexcli.errors import ChexError
from fakeserver import FakeServer

PW = "s3cret-pw"
BIG = os.urandom(300_000)
FILES = {
    "mimic-cxr-reports.zip": BIG,
    "cxr-study-list.csv.gz": b"study list" * 100,
    "files/p10/p10000032/s50414267/a.dcm": b"dicom" * 1000,
}


def make_server(**kw):
    srv = FakeServer(dict(FILES), password=PW, **kw)
    srv.publish_sums()
    return srv


def opts():
    return FetchOptions(workers=2, retries=3, backoff=0.01, timeout=5, progress=False, log=lambda m: None)


def creds(pw=PW):
    return Credentials("alice", pw)


def test_fetch_default_include_verifies_and_skips(tmp_path):
    with make_server() as srv:
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, None, opts())
        # default include for the reports project: the zip and the csv.gz, not the DICOM files
        assert sorted(rep.downloaded) == ["cxr-study-list.csv.gz", "mimic-cxr-reports.zip"]
        assert (tmp_path / "mimic-cxr-reports.zip").read_bytes() == BIG
        assert not (tmp_path / "files").exists()
        assert not list(tmp_path.rglob("*.part"))
        n_before = len(srv.requests)
        rep2 = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, None, opts())
        assert rep2.downloaded == [] and sorted(rep2.skipped) == sorted(rep.downloaded)
        assert len(srv.requests) == n_before + 1  # only SHA256SUMS.txt was requested again


def test_include_glob(tmp_path):
    with make_server() as srv:
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, ["files/*"], opts())
        assert rep.downloaded == ["files/p10/p10000032/s50414267/a.dcm"]
        assert (tmp_path / "files/p10/p10000032/s50414267/a.dcm").read_bytes() == FILES["files/p10/p10000032/s50414267/a.dcm"]
        with pytest.raises(ChexError, match="matches --include"):
            fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, ["nothing*"], opts())


def test_resume_after_dropped_connection(tmp_path):
    with make_server() as srv:
        srv.drop_after["mimic-cxr-reports.zip"] = 100_000
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
                                ["mimic-cxr-reports.zip"], opts())
        assert rep.downloaded == ["mimic-cxr-reports.zip"]
        assert (tmp_path / "mimic-cxr-reports.zip").read_bytes() == BIG
        heads = srv.gets("mimic-cxr-reports.zip")
        assert len(heads) == 2
        assert "Range" not in heads[0] and heads[1]["Range"] == "bytes=100000-"


def test_interrupted_file_never_under_final_name(tmp_path):
    with make_server() as srv:
        srv.drop_after["mimic-cxr-reports.zip"] = 50_000
        o = opts()
        o.retries = 0
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
                                ["mimic-cxr-reports.zip"], o)
        assert rep.failed and not (tmp_path / "mimic-cxr-reports.zip").exists()
        assert (tmp_path / "mimic-cxr-reports.zip.part").stat().st_size == 50_000
        # a second run resumes from the partial file
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
                                ["mimic-cxr-reports.zip"], opts())
        assert rep.downloaded == ["mimic-cxr-reports.zip"]
        assert srv.gets("mimic-cxr-reports.zip")[-1]["Range"] == "bytes=50000-"
        assert (tmp_path / "mimic-cxr-reports.zip").read_bytes() == BIG


def test_corrupted_download_and_corrupted_local_file_refetched(tmp_path):
    with make_server() as srv:
        srv.corrupt_once.add("cxr-study-list.csv.gz")
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
                                ["cxr-study-list.csv.gz"], opts())
        assert rep.downloaded == ["cxr-study-list.csv.gz"]
        assert len(srv.gets("cxr-study-list.csv.gz")) == 2  # digest mismatch -> fetched again
        target = tmp_path / "cxr-study-list.csv.gz"
        assert target.read_bytes() == FILES["cxr-study-list.csv.gz"]
        # damage the local file: the next run notices (size/mtime changed) and re-fetches
        target.write_bytes(b"x" * len(FILES["cxr-study-list.csv.gz"]))
        os.utime(target, ns=(1, 1))
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
                                ["cxr-study-list.csv.gz"], opts())
        assert rep.downloaded == ["cxr-study-list.csv.gz"]
        assert target.read_bytes() == FILES["cxr-study-list.csv.gz"]


def test_bad_credentials_one_message_no_retry_storm(tmp_path):
    with make_server() as srv:
        with pytest.raises(ChexError) as ei:
            fetch_physionet(get_source("mimic-cxr"), tmp_path, creds("Wr0ngPw-xyz"), srv.url, None, opts())
        msg = str(ei.value)
        assert "HTTP 401" in msg and "https://physionet.org/content/mimic-cxr/2.0.0/" in msg
        assert "Wr0ngPw-xyz" not in msg and ei.value.exit_code == 2  # a credential error
        assert len(srv.requests) == 1


def test_403_on_a_file_stops_all_jobs(tmp_path):
    with make_server() as srv:
        srv.status_override[srv.prefix + "mimic-cxr-reports.zip"] = 403
        o = opts()
        o.workers = 1
        with pytest.raises(ChexError, match="HTTP 403.*data use agreement"):
            fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, ["*"], o)
        assert len(srv.gets("mimic-cxr-reports.zip")) == 1


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.txt", "files/../../x", "C:\\x"])
def test_traversal_entries_refused(tmp_path, bad):
    with make_server() as srv:
        srv.publish_sums(extra=f"{'0' * 64} {bad}\n")
        with pytest.raises(ChexError, match="unsafe path"):
            fetch_physionet(get_source("mimic-cxr"), tmp_path / "t", creds(), srv.url, ["*"], opts())
        assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "SHA256SUMS.txt"]
        assert not (tmp_path / "outside.txt").exists()


def test_network_error_bounded_retries(tmp_path):
    o = opts()
    o.retries = 2
    t0 = time.monotonic()
    with pytest.raises(PermanentError, match="giving up after 3 attempts: network error: Connection refused"):
        download_file("http://127.0.0.1:9/x", tmp_path / "x", None, None, o)
    assert time.monotonic() - t0 < 5
    assert not (tmp_path / "x").exists()


def test_credentials_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("PHYSIONET_USER", "bob")
    monkeypatch.setenv("PHYSIONET_PASSWORD", "pw1")
    c = physionet_credentials("physionet.org", interactive=False)
    assert (c.user, c.password) == ("bob", "pw1") and "pw1" not in repr(c)
    monkeypatch.delenv("PHYSIONET_PASSWORD")
    monkeypatch.delenv("PHYSIONET_USER")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text("machine physionet.org login carol password pw2\n")
    (tmp_path / ".netrc").chmod(0o600)
    c = physionet_credentials("physionet.org", interactive=False)
    assert (c.user, c.password) == ("carol", "pw2")
    with pytest.raises(ChexError, match="PHYSIONET_USER"):
        physionet_credentials("other.host", interactive=False)


def test_password_not_in_process_list_logs_or_files(tmp_path):
    """Run the real CLI in a subprocess; inspect its (and its children's) argv while it runs."""
    with make_server() as srv:
        srv.delay = 1.5
        env = dict(os.environ, PHYSIONET_USER="alice", PHYSIONET_PASSWORD=PW)
        proc = subprocess.Popen(
            [sys.executable, "-m", "chexcli", "data", "fetch", "mimic-cxr", "--to", str(tmp_path / "d"),
             "--base-url", srv.url, "--workers", "2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.0)
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    assert "chexcli" in ps and PW not in ps
    assert PW.encode() not in out and PW.encode() not in err
    for f in (tmp_path / "d").rglob("*"):
        if f.is_file():
            assert PW.encode() not in f.read_bytes()
    assert (tmp_path / "d" / "mimic-cxr-reports.zip").read_bytes() == BIG
    # the password travelled only in the Authorization header, never in a URL
    assert all(PW not in p for _, p, _ in srv.requests)


def test_kaggle_download_resume_and_extract(tmp_path, monkeypatch):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("Data_Entry_2017.csv", "Image Index,Finding Labels\n")
        zf.writestr("images_001/images/00000001_000.png", os.urandom(5000))
    data = buf.getvalue()
    srv = FakeServer({"nih-chest-xrays/data": data}, user="kuser", password="kkey",
                     prefix="/api/v1/datasets/download/")
    srv.drop_after["nih-chest-xrays/data"] = len(data) // 2
    monkeypatch.setenv("KAGGLE_USERNAME", "kuser")
    monkeypatch.setenv("KAGGLE_KEY", "kkey")
    with srv:
        rep = fetch("nih-cxr14", tmp_path, base_url=srv.url, progress=False, backoff=0.01)
        assert rep.downloaded == ["nih-chest-xrays/data"]
        assert (tmp_path / "images_001/images/00000001_000.png").stat().st_size == 5000
        assert srv.gets("nih-chest-xrays/data")[-1]["Range"] == f"bytes={len(data) // 2}-"
        assert not list(tmp_path.glob("*.zip"))
        assert fetch("nih-cxr14", tmp_path, base_url=srv.url, progress=False).skipped
        monkeypatch.setenv("KAGGLE_KEY", "bad")
        with pytest.raises(ChexError, match="HTTP 401"):
            fetch("nih-cxr14", tmp_path / "other", base_url=srv.url, progress=False)


# ----------------------------------------------------------------------------- network faults
def fast_opts(**kw):
    """Small limits so that every fault below costs well under a second per attempt."""
    o = FetchOptions(workers=2, retries=3, backoff=0.01, timeout=0.5, stall_timeout=0.6,
                       stall_bytes=1000, progress=False, log=lambda m: None)
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def test_checksum_list_retried_after_500_close_and_silence(tmp_path):
    with make_server() as srv:
        srv.faults["SHA256SUMS.txt"] = ["500", "close", "silence"]
        logs = []
        t0 = time.monotonic()
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
                                ["cxr-study-list.csv.gz"], fast_opts(stall_timeout=0, log=logs.append))
        assert time.monotonic() - t0 < 5
        assert rep.downloaded == ["cxr-study-list.csv.gz"]
        assert len(srv.gets("SHA256SUMS.txt")) == 4
        assert (tmp_path / "SHA256SUMS.txt").read_bytes() == srv.files["SHA256SUMS.txt"]
        text = "\n".join(logs)
        assert "SHA256SUMS.txt: HTTP 500" in text and "retry 1 of 3" in text
        assert "closed the connection" in text and "nothing from the server for 0.5 s" in text


def test_checksum_list_gives_up_with_one_line(tmp_path):
    with make_server() as srv:
        srv.faults["SHA256SUMS.txt"] = ["503"] * 10
        with pytest.raises(ChexError) as ei:
            fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, None, fast_opts(retries=2))
        msg = str(ei.value)
        assert ei.value.exit_code == 1 and "\n" not in msg
        assert "SHA256SUMS.txt: giving up after 3 attempts: HTTP 503" in msg
        assert len(srv.gets("SHA256SUMS.txt")) == 3
        assert not list(tmp_path.iterdir())


def test_silent_server_bounded_and_announced(tmp_path):
    with make_server() as srv:
        srv.faults["cxr-study-list.csv.gz"] = ["silence"] * 10
        logs = []
        t0 = time.monotonic()
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, ["cxr-study-list.csv.gz"],
                                fast_opts(retries=1, stall_timeout=0, log=logs.append))
        assert time.monotonic() - t0 < 5  # two attempts of 0.5 s, not minutes
        assert rep.failed == [("cxr-study-list.csv.gz", "giving up after 2 attempts: nothing from the server for 0.5 s (--timeout)")]
        assert rep.rerun_helps and not (tmp_path / "cxr-study-list.csv.gz").exists()
        waits = [m for m in logs if m.startswith("still waiting for cxr-study-list.csv.gz")]
        assert waits and "(waiting for the server to answer): nothing received for" in waits[0]
        assert "a read gives up after 0.5 s without data" in waits[0]


def test_trickling_server_abandoned_and_resumed(tmp_path):
    with make_server() as srv:
        srv.faults["mimic-cxr-reports.zip"] = ["trickle"]  # 20 bytes/s: never a 0.5 s silence
        logs = []
        t0 = time.monotonic()
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, ["mimic-cxr-reports.zip"],
                                fast_opts(log=logs.append))
        assert time.monotonic() - t0 < 5
        assert rep.downloaded == ["mimic-cxr-reports.zip"]
        assert (tmp_path / "mimic-cxr-reports.zip").read_bytes() == BIG
        heads = srv.gets("mimic-cxr-reports.zip")
        assert len(heads) == 2 and int(heads[1]["Range"][6:-1]) > 0  # the trickled bytes were kept
        assert any("fewer than 1000 bytes arrived in 0.6 s" in m for m in logs)


def test_trickle_without_retries_fails_with_the_rule(tmp_path):
    with make_server() as srv:
        srv.faults["mimic-cxr-reports.zip"] = ["trickle"]
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, ["mimic-cxr-reports.zip"],
                                fast_opts(retries=0))
        assert rep.failed == [("mimic-cxr-reports.zip", "giving up after 1 attempt: fewer than 1000 bytes "
                               "arrived in 0.6 s (--stall-bytes/--stall-timeout)")]
        assert 0 < (tmp_path / "mimic-cxr-reports.zip.part").stat().st_size < 1000  # kept for a resume


def test_headers_trickled_forever_are_cut_off(tmp_path):
    with make_server() as srv:
        srv.faults["SHA256SUMS.txt"] = ["slow-headers"]
        t0 = time.monotonic()
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, ["cxr-study-list.csv.gz"],
                                fast_opts(timeout=5))
        assert time.monotonic() - t0 < 5
        assert rep.downloaded == ["cxr-study-list.csv.gz"] and len(srv.gets("SHA256SUMS.txt")) == 2


def test_listing_with_file_and_folder_of_same_name(tmp_path):
    files = {"a": b"file a", "a/b": b"file a/b", "c.txt": b"c"}
    with FakeServer(files, password=PW) as srv:
        srv.publish_sums()
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, ["*"], fast_opts())
        assert sorted(rep.downloaded) == ["a/b", "c.txt"]
        assert rep.failed == [("a", "SHA256SUMS.txt lists it both as a file and as a folder of other files")]
        assert rep.final == ["a"] and not rep.rerun_helps
        assert (tmp_path / "a" / "b").read_bytes() == b"file a/b"


def test_local_write_error_is_one_line_and_keeps_the_rest(tmp_path):
    with make_server() as srv:
        (tmp_path / "cxr-study-list.csv.gz").mkdir()  # a folder where the file must go
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, None, fast_opts())
        assert rep.downloaded == ["mimic-cxr-reports.zip"]
        (rel, why), = rep.failed
        assert rel == "cxr-study-list.csv.gz" and why == f"cannot write {tmp_path / rel}: Is a directory"
        assert len(srv.gets(rel)) == 1  # a local error is not retried
        assert (tmp_path / "mimic-cxr-reports.zip").read_bytes() == BIG


def test_full_disk_stops_everything_and_keeps_parts(tmp_path, monkeypatch):
    import errno

    def no_space(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download, "sha256_file", no_space)
    with make_server() as srv:
        with pytest.raises(ChexError) as ei:
            fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, None, fast_opts())
        msg = str(ei.value)
        assert ei.value.exit_code == 1 and "No space left on device" in msg and "kept" in msg
        assert (tmp_path / "mimic-cxr-reports.zip.part").read_bytes() == BIG


def test_unexpected_worker_error_is_one_line(tmp_path, monkeypatch):
    def broken(self, rel, digest, path):
        raise RuntimeError("state exploded")

    monkeypatch.setattr(checksums.VerifiedFiles, "mark", broken)
    with make_server() as srv:
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
                                ["cxr-study-list.csv.gz"], fast_opts())
        assert rep.failed == [("cxr-study-list.csv.gz", "unexpected error: RuntimeError: state exploded")]
        assert (tmp_path / "cxr-study-list.csv.gz").read_bytes() == FILES["cxr-study-list.csv.gz"]


def test_server_file_not_matching_its_checksum(tmp_path):
    with make_server() as srv:
        srv.files["cxr-study-list.csv.gz"] = b"not what SHA256SUMS.txt says"
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
                                ["cxr-study-list.csv.gz"], fast_opts(retries=5))
        (rel, why), = rep.failed
        assert why.startswith("the server's file does not match its published checksum")
        assert "rerunning will not help" in why and rel not in why and "Mismatch" not in why
        assert len(srv.gets(rel)) == 2  # the same wrong digest twice: no more downloads
        assert rep.final == [rel] and not list(tmp_path.glob("cxr-study-list*"))


def test_checksum_list_that_is_not_text(tmp_path):
    with make_server() as srv:
        srv.files["SHA256SUMS.txt"] = b"\xff\xfe\x00binary"
        with pytest.raises(ChexError, match="is not a checksum list"):
            fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, None, fast_opts())



def test_https_stall_and_silence_cut_off(tmp_path, monkeypatch):
    """The watchdog also wakes a read blocked on a TLS socket (as on physionet.org)."""
    import shutil

    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate
    with FakeServer(dict(FILES), password=PW, tls=(str(cert), str(key))) as srv:
        srv.publish_sums()
        srv.faults["mimic-cxr-reports.zip"] = ["trickle", "silence"]
        t0 = time.monotonic()
        rep = fetch_physionet(get_source("mimic-cxr"), tmp_path / "d", creds(), srv.url,
                                ["mimic-cxr-reports.zip"], fast_opts(timeout=5))
        assert time.monotonic() - t0 < 5
        assert rep.downloaded == ["mimic-cxr-reports.zip"] and len(srv.gets("mimic-cxr-reports.zip")) == 3
        assert (tmp_path / "d" / "mimic-cxr-reports.zip").read_bytes() == BIG



def test_tls_handshake_that_never_ends_is_cut_off(tmp_path):
    """A port that accepts TCP and never answers the TLS hello: bounded by the stall rule."""
    import socket

    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)  # never accepted: the kernel completes TCP, nobody speaks TLS
        url = f"https://127.0.0.1:{lsock.getsockname()[1]}/x"
        t0 = time.monotonic()
        with pytest.raises(PermanentError, match="giving up after 1 attempt: fewer than 1000 bytes"):
            download_file(url, tmp_path / "x", None, None, fast_opts(timeout=10, retries=0))
        assert time.monotonic() - t0 < 5



@pytest.mark.parametrize("bad", ["physionet.org", "ftp://host/x", "http://", "http://host:99999"])
def test_bad_base_url_is_an_input_error(tmp_path, bad):
    with pytest.raises(ChexError, match="--base-url must be an http:// or https:// URL") as ei:
        fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), bad, None, fast_opts())
    assert ei.value.exit_code == 2


# ----------------------------------------------------------------------------- through the CLI
def chex(args, tmp_path, pw=PW, timeout=30):
    env = dict(os.environ, PHYSIONET_USER="alice", PHYSIONET_PASSWORD=pw, HOME=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "chexcli", "data", "fetch", "mimic-cxr", *args],
                          env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_cli_exit_codes_and_one_line_failures(tmp_path):
    with make_server() as srv:
        srv.files["cxr-study-list.csv.gz"] = b"tampered"  # published checksum no longer matches
        srv.faults["SHA256SUMS.txt"] = ["500"]
        srv.faults["mimic-cxr-reports.zip"] = ["silence"]
        base = ["--to", str(tmp_path / "d"), "--base-url", srv.url, "--retries", "1",
                "--timeout", "0.5", "--stall-timeout", "1", "--stall-bytes", "100"]
        r = chex(base, tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.splitlines()
        assert "  failed: cxr-study-list.csv.gz: the server's file does not match its published checksum" \
            in "\n".join(lines)
        assert not any("cxr-study-list.csv.gz: cxr-study-list.csv.gz" in ln for ln in lines)
        assert lines[-1].startswith("error: 1 file(s) could not be fetched") and "run the same command" not in lines[-1]
        assert (tmp_path / "d" / "mimic-cxr-reports.zip").read_bytes() == BIG  # silence, then retried
        assert any("still waiting for mimic-cxr-reports.zip" in ln for ln in lines)

        r = chex(base, tmp_path, pw="Wr0ngPw-xyz")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("error: MIMIC-CXR 2.0.0 (reports): access refused")
        assert "Wr0ngPw-xyz" not in r.stderr + r.stdout


def test_cli_retryable_failure_suggests_rerun(tmp_path):
    with make_server() as srv:
        srv.faults["cxr-study-list.csv.gz"] = ["close"] * 3
        r = chex(["--to", str(tmp_path / "d"), "--base-url", srv.url, "--retries", "0"], tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "  failed: cxr-study-list.csv.gz: giving up after 1 attempt: the server closed the connection " \
               "without answering" in r.stderr
        assert r.stderr.splitlines()[-1] == "error: 1 file(s) could not be fetched; run the same command again to resume"


def test_cli_interrupt_during_a_silent_download(tmp_path):
    import signal

    with make_server() as srv:
        srv.faults["mimic-cxr-reports.zip"] = ["drop:1000", "silence"]
        env = dict(os.environ, PHYSIONET_USER="alice", PHYSIONET_PASSWORD=PW, HOME=str(tmp_path))
        proc = subprocess.Popen([sys.executable, "-m", "chexcli", "data", "fetch", "mimic-cxr", "--to",
                                 str(tmp_path / "d"), "--base-url", srv.url, "--timeout", "60"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while len(srv.gets("mimic-cxr-reports.zip")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 5
        assert proc.returncode != 0 and "Traceback" not in err, err
        assert (tmp_path / "d" / "mimic-cxr-reports.zip.part").stat().st_size == 1000  # kept for a resume
