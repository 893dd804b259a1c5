import os
import subprocess
import sys
import time

import pytest

from chexcli.data import fetch as F
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
    return F.FetchOptions(workers=2, retries=3, backoff=0.01, timeout=5, progress=False, log=lambda m: None)


def creds(pw=PW):
    return F.Credentials("alice", pw)


def test_fetch_default_include_verifies_and_skips(tmp_path):
    with make_server() as srv:
        rep = F.fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, None, opts())
        # default include for the reports project: the zip and the csv.gz, not the DICOM files
        assert sorted(rep.downloaded) == ["cxr-study-list.csv.gz", "mimic-cxr-reports.zip"]
        assert (tmp_path / "mimic-cxr-reports.zip").read_bytes() == BIG
        assert not (tmp_path / "files").exists()
        assert not list(tmp_path.rglob("*.part"))
        n_before = len(srv.requests)
        rep2 = F.fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, None, opts())
        assert rep2.downloaded == [] and sorted(rep2.skipped) == sorted(rep.downloaded)
        assert len(srv.requests) == n_before + 1  # only SHA256SUMS.txt was requested again


def test_include_glob(tmp_path):
    with make_server() as srv:
        rep = F.fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, ["files/*"], opts())
        assert rep.downloaded == ["files/p10/p10000032/s50414267/a.dcm"]
        assert (tmp_path / "files/p10/p10000032/s50414267/a.dcm").read_bytes() == FILES["files/p10/p10000032/s50414267/a.dcm"]
        with pytest.raises(ChexError, match="matches --include"):
            F.fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, ["nothing*"], opts())


def test_resume_after_dropped_connection(tmp_path):
    with make_server() as srv:
        srv.drop_after["mimic-cxr-reports.zip"] = 100_000
        rep = F.fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
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
        rep = F.fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
                                ["mimic-cxr-reports.zip"], o)
        assert rep.failed and not (tmp_path / "mimic-cxr-reports.zip").exists()
        assert (tmp_path / "mimic-cxr-reports.zip.part").stat().st_size == 50_000
        # a second run resumes from the partial file
        rep = F.fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
                                ["mimic-cxr-reports.zip"], opts())
        assert rep.downloaded == ["mimic-cxr-reports.zip"]
        assert srv.gets("mimic-cxr-reports.zip")[-1]["Range"] == "bytes=50000-"
        assert (tmp_path / "mimic-cxr-reports.zip").read_bytes() == BIG


def test_corrupted_download_and_corrupted_local_file_refetched(tmp_path):
    with make_server() as srv:
        srv.corrupt_once.add("cxr-study-list.csv.gz")
        rep = F.fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
                                ["cxr-study-list.csv.gz"], opts())
        assert rep.downloaded == ["cxr-study-list.csv.gz"]
        assert len(srv.gets("cxr-study-list.csv.gz")) == 2  # digest mismatch -> fetched again
        target = tmp_path / "cxr-study-list.csv.gz"
        assert target.read_bytes() == FILES["cxr-study-list.csv.gz"]
        # damage the local file: the next run notices (size/mtime changed) and re-fetches
        target.write_bytes(b"x" * len(FILES["cxr-study-list.csv.gz"]))
        os.utime(target, ns=(1, 1))
        rep = F.fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url,
                                ["cxr-study-list.csv.gz"], opts())
        assert rep.downloaded == ["cxr-study-list.csv.gz"]
        assert target.read_bytes() == FILES["cxr-study-list.csv.gz"]


def test_bad_credentials_one_message_no_retry_storm(tmp_path):
    with make_server() as srv:
        with pytest.raises(ChexError) as ei:
            F.fetch_physionet(get_source("mimic-cxr"), tmp_path, creds("Wr0ngPw-xyz"), srv.url, None, opts())
        msg = str(ei.value)
        assert "HTTP 401" in msg and "https://physionet.org/content/mimic-cxr/2.0.0/" in msg
        assert "Wr0ngPw-xyz" not in msg and ei.value.exit_code == 1
        assert len(srv.requests) == 1


def test_403_on_a_file_stops_all_jobs(tmp_path):
    with make_server() as srv:
        srv.status_override[srv.prefix + "mimic-cxr-reports.zip"] = 403
        o = opts()
        o.workers = 1
        with pytest.raises(ChexError, match="HTTP 403.*data use agreement"):
            F.fetch_physionet(get_source("mimic-cxr"), tmp_path, creds(), srv.url, ["*"], o)
        assert len(srv.gets("mimic-cxr-reports.zip")) == 1


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.txt", "files/../../x", "C:\\x"])
def test_traversal_entries_refused(tmp_path, bad):
    with make_server() as srv:
        srv.publish_sums(extra=f"{'0' * 64} {bad}\n")
        with pytest.raises(ChexError, match="unsafe path"):
            F.fetch_physionet(get_source("mimic-cxr"), tmp_path / "t", creds(), srv.url, ["*"], opts())
        assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "SHA256SUMS.txt"]
        assert not (tmp_path / "outside.txt").exists()


def test_network_error_bounded_retries(tmp_path):
    o = opts()
    o.retries = 2
    t0 = time.monotonic()
    with pytest.raises(F.PermanentError, match="after 2 retries"):
        F.download_file("http://127.0.0.1:9/x", tmp_path / "x", None, None, o)
    assert time.monotonic() - t0 < 5
    assert not (tmp_path / "x").exists()


def test_credentials_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("PHYSIONET_USER", "bob")
    monkeypatch.setenv("PHYSIONET_PASSWORD", "pw1")
    c = F.physionet_credentials("physionet.org", interactive=False)
    assert (c.user, c.password) == ("bob", "pw1") and "pw1" not in repr(c)
    monkeypatch.delenv("PHYSIONET_PASSWORD")
    monkeypatch.delenv("PHYSIONET_USER")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text("machine physionet.org login carol password pw2\n")
    (tmp_path / ".netrc").chmod(0o600)
    c = F.physionet_credentials("physionet.org", interactive=False)
    assert (c.user, c.password) == ("carol", "pw2")
    with pytest.raises(ChexError, match="PHYSIONET_USER"):
        F.physionet_credentials("other.host", interactive=False)


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
        rep = F.fetch("nih-cxr14", tmp_path, base_url=srv.url, progress=False, backoff=0.01)
        assert rep.downloaded == ["nih-chest-xrays/data"]
        assert (tmp_path / "images_001/images/00000001_000.png").stat().st_size == 5000
        assert srv.gets("nih-chest-xrays/data")[-1]["Range"] == f"bytes={len(data) // 2}-"
        assert not list(tmp_path.glob("*.zip"))
        assert F.fetch("nih-cxr14", tmp_path, base_url=srv.url, progress=False).skipped
        monkeypatch.setenv("KAGGLE_KEY", "bad")
        with pytest.raises(ChexError, match="HTTP 401"):
            F.fetch("nih-cxr14", tmp_path / "other", base_url=srv.url, progress=False)
