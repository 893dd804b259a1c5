"""Every text of a synthetic folder, for training tokenizers from scratch."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from chexcli.data.names import name_lists
from chexcli.data.processed.layout import MIMIC_MSCXR, MIMIC_REPORTS_CIG, split_file
from chexcli.data.synthetic.report import CIG_LABELS
from chexcli.errors import ChexError


def synthetic_corpus(folder: str | Path) -> list[str]:
    """Every text a from-scratch tokenizer should know, each once (first-seen order).

    The report sentences, region sentences and box phrases of the folder, then the anatomy
    names, class names and prompt texts of the packaged name lists.
    """
    folder = Path(folder)
    seen: dict[str, None] = {}

    def add(texts) -> None:
        for t in texts:
            if isinstance(t, str) and t.strip():
                seen.setdefault(t, None)

    for path, col in ((folder / split_file(MIMIC_REPORTS_CIG, "all"), "report_sentences"),
                      (folder / split_file(MIMIC_REPORTS_CIG, "all"), "anat_sentences"),
                      (folder / split_file(MIMIC_MSCXR, "all"), "clsbboxphrases")):
        if not path.is_file():
            raise ChexError(f"{path} not found; run `chex data prepare synthetic --out {folder}` first")
        for cell in pd.read_csv(path, usecols=[col], keep_default_na=False)[col]:
            value = json.loads(cell)
            add(t for v in value.values() for t in v) if isinstance(value, dict) else add(value)
    names = name_lists()
    for group in ("anatomy_names", "class_names"):
        for items in names[group].values():
            add(items)
            add(str(c).split("/", 1)[-1] for c in items)
    for prompts in names["prompt_sets"].values():
        for texts in prompts.values():
            add(texts)
    add(sorted(set(sum(CIG_LABELS.values(), []))))
    return list(seen)
