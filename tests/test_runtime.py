"""chexcli.runtime: allocator settings made before PyTorch is imported."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = "import chexcli.cli.main, os, sys; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"


def _run(env: dict) -> str:
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_chex_asks_for_huge_pages_unless_the_user_decided():
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    assert _run(env) == "1"
    assert _run({**env, "THP_MEM_ALLOC_ENABLE": "0"}) == "0"


def test_too_late_once_torch_is_imported(monkeypatch):
    from chexcli.runtime import configure_allocator

    import torch  # noqa: F401

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert configure_allocator() is False and "THP_MEM_ALLOC_ENABLE" not in os.environ
