"""Run folders: plain names only, never overwritten, removed again when a run produced nothing."""

import os

import pytest

from chexcli.errors import ChexError
from chexcli.runs import check_out_dir, check_run_name, new_run_dir, remove_if_unused, run_folder


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", "..", ".", "", ".hidden", "-x", "a\\b", "tab\there", " x"])
def test_names_must_be_plain(name):
    with pytest.raises(ChexError, match="plain folder name"):
        check_run_name(name)


def test_plain_names_pass():
    assert check_run_name("exp-1_2026.11") == "exp-1_2026.11"


def test_never_overwrites(tmp_path):
    assert [new_run_dir(tmp_path / "runs", "exp").name for _ in range(3)] == ["exp", "exp2", "exp3"]


def test_out_dir_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ChexError, match="is a file"):
        check_out_dir(tmp_path / "file")
    with pytest.raises(ChexError, match="cannot be created: .*file is a file"):
        check_out_dir(tmp_path / "file" / "sub")
    assert check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    with pytest.raises(ChexError, match="broken symbolic link"):
        check_out_dir(tmp_path / "dangling" / "x")


def test_failed_run_leaves_nothing(tmp_path):
    base = tmp_path / "runs" / "predict"
    with pytest.raises(RuntimeError):
        with run_folder(base, "exp") as run_dir:
            (run_dir / "args.json").write_text("{}")
            (run_dir / "predictions.jsonl").touch()  # empty: nothing produced yet
            raise RuntimeError("model failed")
    assert not (tmp_path / "runs").exists()  # the folders it created are gone too
    with pytest.raises(KeyboardInterrupt):
        with run_folder(base, "exp") as run_dir:
            (run_dir / "predictions.jsonl").write_text('{"image": "a.png"}\n')
            raise KeyboardInterrupt
    assert (base / "exp" / "predictions.jsonl").exists()  # partial results are kept


def test_remove_if_unused_keeps_subfolders(tmp_path):
    (tmp_path / "run" / "sub").mkdir(parents=True)
    assert not remove_if_unused(tmp_path / "run")
    assert (tmp_path / "run").exists()
