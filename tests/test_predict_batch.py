"""`chex predict` as a batch job: per-image queries (CSV, JSONL, stdin), image lists on stdin, --resume after
SIGKILL, --shard (and torchrun's ranks), and the queries table's error messages."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from chexcli.errors import ChexError
from chexcli.predict_jobs import ImageJob, ResumeState, annotated_names, parse_shard, read_queries, shard_jobs

N_IMAGES = 24


def chex(*args, cwd, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "chexcli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, input=stdin, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """24 small grayscale PNGs in scans/ (two share a stem in a subfolder)."""
    root = tmp_path_factory.mktemp("batch")
    rng = np.random.default_rng(0)
    (root / "scans" / "more").mkdir(parents=True)
    for k in range(N_IMAGES - 1):
        Image.fromarray(rng.integers(0, 255, (120 + k, 110), dtype=np.uint8), "L").save(root / f"scans/s{k:02d}.png")
    Image.fromarray(rng.integers(0, 255, (130, 130), dtype=np.uint8), "L").save(root / "scans/more/s00.png")
    return root


def queries_csv(root, rows=None):
    rows = rows or [(f"scans/s{k:02d}.png", "left lung|cardiomegaly" if k % 2 else "right lung",
                     "10,10,60,60" if k % 3 == 0 else "", f"study-{k}") for k in range(N_IMAGES - 1)]
    path = root / "q.csv"
    path.write_text("image,prompts,boxes,id\n" + "".join(f"{a},{b},\"{c}\",{d}\n" for a, b, c, d in rows))
    return path


def lines(run):
    return (run / "predictions.jsonl").read_text().splitlines()


def test_queries_from_csv_jsonl_and_stdin_give_per_image_prompts_and_ids(tiny_bundle, scans, tmp_path):
    table = queries_csv(scans)
    r = chex("predict", "--queries", table, "--model", tiny_bundle, "--max-new-tokens", "3", "--no-images",
             "--out", tmp_path / "runs", "--name", "csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in lines(tmp_path / "runs/csv")]
    assert [rec["id"] for rec in records] == [f"study-{k}" for k in range(N_IMAGES - 1)]
    assert [q["prompt"] for q in records[1]["queries"] if q["type"] == "prompt"] == ["left lung", "cardiomegaly"]
    assert [q["type"] for q in records[0]["queries"]] == ["prompt", "box"]  # row 0: one prompt and its box
    assert records[0]["image"] == str(scans / "scans/s00.png")  # relative to the table's folder

    jsonl = "".join(json.dumps({"image": f"scans/s{k:02d}.png", "prompts": ["left lung", "cardiomegaly"]
                                if k % 2 else "right lung", "boxes": [[10, 10, 60, 60]] if k % 3 == 0 else [],
                                "id": f"study-{k}"}) + "\n" for k in range(N_IMAGES - 1))
    (scans / "q.jsonl").write_text(jsonl)
    for source, stdin, name in ((scans / "q.jsonl", None, "jsonl"), ("-", jsonl, "stdin")):
        r = chex("predict", "--queries", source, "--model", tiny_bundle, "--max-new-tokens", "3", "--no-images",
                 "--out", tmp_path / "runs", "--name", name, cwd=scans, stdin=stdin)
        assert r.returncode == 0, r.stderr
        assert lines(tmp_path / f"runs/{name}") == lines(tmp_path / "runs/csv")  # the same lines, byte for byte


def test_image_paths_from_standard_input(tiny_bundle, scans, tmp_path):
    listing = "\n".join(str(p) for p in sorted((scans / "scans").glob("*.png"))[:3]) + "\n\n"
    r = chex("predict", "-", "--model", tiny_bundle, "--prompt", "left lung", "--no-sentences", "--json",
             "--out", tmp_path, cwd=tmp_path, stdin=listing)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["image"] for line in r.stdout.splitlines()] == listing.split()


def test_bad_rows_are_listed_with_file_line_and_column(tiny_bundle, scans, tmp_path):
    bad = scans / "bad.csv"
    bad.write_text("image,prompts,boxes,id\n"
                   "scans/s00.png,left lung,,a\n"
                   "scans/s01.png,,\"1,2,3\",b\n"
                   ",left lung,,c\n"
                   "scans/s02.png,left lung,\"50,50,10,10\",a\n"
                   "scans/s03.png,,,d\n")
    r = chex("predict", "--queries", bad, "--model", tiny_bundle, "--out", tmp_path / "runs", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"error: {bad}:3: column boxes: box 1: give four numbers x1,y1,x2,y2",
        f"{bad}:4: column image: give the image's path",
        f"{bad}:5: column boxes: box 1: need x2 > x1 and y2 > y1 (corners x1,y1,x2,y2)",
        f"{bad}:6: no query: the row has no prompts or boxes (and no --prompt/--box was given)",
        f"{bad}: 4 problems; fix the rows above (columns: image, prompts, boxes, id)"]
    assert not (tmp_path / "runs").exists()  # nothing written
    (scans / "typo.csv").write_text("image,promts\nscans/s00.png,left lung\n")
    r = chex("predict", "--queries", scans / "typo.csv", "--model", tiny_bundle, cwd=tmp_path)
    assert r.returncode == 2 and "typo.csv:1: unknown column 'promts'" in r.stderr
    (scans / "dup.jsonl").write_text('{"image": "scans/s00.png", "prompts": ["x"], "id": 7}\n[1]\n'
                                     '{"image": "scans/s01.png", "prompts": ["x"], "id": "7"}\n')
    r = chex("predict", "--queries", scans / "dup.jsonl", "--model", tiny_bundle, cwd=tmp_path)
    assert r.returncode == 2 and "dup.jsonl:2: not a JSON object" in r.stderr
    assert "dup.jsonl:3: column id: '7' is also on line 1; ids must be unique" in r.stderr


def run_until_lines(args, cwd, predictions, n_lines):
    """Start `chex predict`, SIGKILL it once `predictions` has at least n_lines lines."""
    proc = subprocess.Popen([sys.executable, "-m", "chexcli", *map(str, args)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if predictions.exists() and predictions.read_bytes().count(b"\n") >= n_lines:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc


def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_bundle, scans, tmp_path):
    table = queries_csv(scans)
    common = ["--queries", table, "--model", tiny_bundle, "--max-new-tokens", "4", "--batch-size", "4",
              "--workers", "1", "--out", tmp_path / "runs"]  # a decoding process, killed with its parent
    r = chex("predict", *common, "--name", "whole", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    whole = tmp_path / "runs/whole"

    run = tmp_path / "runs/killed"
    for kill_after in (3, 13):  # killed twice at different points, resumed each time
        run_until_lines(["predict", *common, "--name", "killed"] + (["--resume"] if run.exists() else []), tmp_path,
                        run / "predictions.jsonl", kill_after)
    with open(run / "predictions.jsonl", "a") as f:
        f.write('{"id": "study-9", "image": "half a li')  # a line cut off by the kill
    r = chex("predict", *common, "--name", "killed", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert lines(run) == lines(whole)  # every line once, in order, with the same numbers
    assert sorted(p.name for p in run.glob("*.png")) == sorted(p.name for p in whole.glob("*.png"))
    assert not list(run.glob(".tmp-*"))

    r = chex("predict", *common, "--name", "killed", "--resume", cwd=tmp_path)  # all done: nothing to do
    assert r.returncode == 0 and f"resuming: {N_IMAGES - 1} of {N_IMAGES - 1} images already done" in r.stderr
    assert lines(run) == lines(whole)
    r = chex("predict", *common, "--name", "killed", "--resume", "--box-format", "normalized", cwd=tmp_path)
    assert r.returncode == 2 and "was started with other options (box_format)" in r.stderr


def test_shards_cover_the_input_once_and_concatenate_in_order(tiny_bundle, scans, tmp_path):
    common = ["scans", "--model", tiny_bundle, "--prompt", "left lung", "--max-new-tokens", "3", "--no-images",
              "--out", tmp_path / "runs", "--name", "job"]
    r = chex("predict", *common[:-1], "whole", cwd=scans)
    assert r.returncode == 0, r.stderr
    for k in (1, 2, 3):
        r = chex("predict", *common, "--shard", f"{k}/3", cwd=scans)
        assert r.returncode == 0, r.stderr
    r = chex("predict", *common, cwd=scans, env={"RANK": "3", "WORLD_SIZE": "4"})  # torchrun rank 3 of 4
    assert r.returncode == 0, r.stderr
    r = chex("predict", *common, "--shard", "2/3", cwd=scans)  # a shard's file is never overwritten
    assert r.returncode == 2 and "predictions.shard-2-of-3.jsonl already exists; add --resume" in r.stderr
    shard_files = sorted((tmp_path / "runs/job").glob("predictions.shard-*-of-3.jsonl"))
    assert [p.name for p in shard_files] == [f"predictions.shard-{k}-of-3.jsonl" for k in (1, 2, 3)]
    merged = [line for p in shard_files for line in p.read_text().splitlines()]  # `cat predictions.shard-*`
    assert merged == lines(tmp_path / "runs/whole")
    rank3 = (tmp_path / "runs/job/predictions.shard-4-of-4.jsonl").read_text().splitlines()
    assert rank3 == lines(tmp_path / "runs/whole")[3 * (N_IMAGES - 1) // 4:]


def test_jobs_shards_and_resume_state_as_functions(tmp_path):
    jobs = [ImageJob(i, tmp_path / f"x{i}.png", ("p",)) for i in range(10)]
    for n in (1, 3, 4, 10, 13):
        parts = [shard_jobs(jobs, k, n) for k in range(1, n + 1)]
        assert [j.index for part in parts for j in part] == list(range(10))  # disjoint, complete, in order
    assert parse_shard("3/8") == (3, 8)
    for bad in ("0/3", "4/3", "3", "a/b", "-1/2"):
        with pytest.raises(ChexError, match="give K/N"):
            parse_shard(bad)
    twins = [ImageJob(0, tmp_path / "a/x.png"), ImageJob(1, tmp_path / "b/x.png"), ImageJob(2, tmp_path / "x.png")]
    assert annotated_names(twins) == {0: "x.png", 1: "x_2.png", 2: "x_3.png"}
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"image": str(jobs[0].path)}) + "\n" + '{"image": "cut')
    state = ResumeState.read(predictions)
    assert predictions.read_text().count("\n") == 1 and not predictions.read_text().endswith("cut")
    assert state.take(jobs[0]) and not state.take(jobs[0]) and not state.take(jobs[1])
    (tmp_path / "q.jsonl").write_text('{"image": "x0.png", "prompt": "left lung"}\n')
    assert read_queries(str(tmp_path / "q.jsonl"))[0] == ImageJob(0, tmp_path / "x0.png", ("left lung",))
