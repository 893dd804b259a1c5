"""Check (issue 25): a large `chex predict --queries` job killed at random points and resumed ends with exactly
one line per image, identical to an uninterrupted run.

Writes --images small PNGs and a JSONL queries table (an id and one or two prompts per image), runs the job
once uninterrupted, then runs it again, SIGKILLs it --kills times after a random number of new lines (and
once more in the middle of a line's write window, by appending half a line as a kill would leave it),
resuming with --resume each time, and compares the two predictions files byte for byte.

    python benchmarks/predict_resume.py [--images 10000] [--kills 5] [--seed 0] [--out FILE]

Prints one JSON object (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PROMPTS = ["left lung", "right lung", "cardiomegaly", "pleural effusion", "left lower lung zone"]


def write_job(folder: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    sources = []
    for k in range(8):
        path = folder / f"source{k}.png"
        Image.fromarray(rng.integers(0, 255, (96 + 4 * k, 96), dtype=np.uint8)).save(path)
        sources.append(path.read_bytes())
    rows = []
    for i in range(n):
        (folder / "images" / f"{i:05d}.png").write_bytes(sources[i % 8])
        rows.append({"image": f"images/{i:05d}.png", "id": f"study-{i}",
                     "prompts": PROMPTS[i % 5: i % 5 + 1 + i % 2]})
    table = folder / "queries.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return table


def command(table: Path, bundle: Path, out: Path, name: str, resume: bool) -> list[str]:
    return [sys.executable, "-m", "chexcli", "predict", "--queries", str(table), "--model", str(bundle),
            "--no-images", "--max-new-tokens", "2", "--batch-size", "16", "--out", str(out), "--name", name,
            "--json"] + (["--resume"] if resume else [])


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    from chexcli.model.tiny import save_tiny_bundle

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = write_job(tmp / "job", args.images)
        bundle = save_tiny_bundle(tmp / "bundle", seed=0)
        started = time.perf_counter()
        subprocess.run(command(table, bundle, tmp / "runs", "whole", False), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        whole_s = time.perf_counter() - started
        predictions = tmp / "runs" / "killed" / "predictions.jsonl"
        kills = []
        targets = sorted(rng.sample(range(1, args.images), args.kills))
        for target in targets:
            proc = subprocess.Popen(command(table, bundle, tmp / "runs", "killed", predictions.exists()),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while proc.poll() is None and line_count(predictions) < target:
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append(line_count(predictions))
        with open(predictions, "ab") as f:  # what a kill in the middle of a write would leave
            f.write(b'{"id": "study-0", "image": "images/000')
        subprocess.run(command(table, bundle, tmp / "runs", "killed", True), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        whole = (tmp / "runs" / "whole" / "predictions.jsonl").read_bytes()
        resumed = predictions.read_bytes()
        ids = [json.loads(line)["id"] for line in resumed.splitlines()]
        result = {"images": args.images, "uninterrupted_s": round(whole_s, 1), "killed_after_lines": kills,
                  "lines": len(ids), "distinct_ids": len(set(ids)), "identical_to_uninterrupted": resumed == whole}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result) + "\n")
    sys.exit(0 if result["identical_to_uninterrupted"] and result["distinct_ids"] == args.images else 1)


if __name__ == "__main__":
    main()
