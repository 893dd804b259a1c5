"""Finding names of a custom processed folder and the prompts the model gets for them
(docs/custom-data.md#finding-names).

A finding name of a custom table becomes the class ``custom/<name>``. ``custom_findings.json``
in the folder lists the classes and three prompt sets in the layout of the model's
``prompts`` (``prompts_and_names.yaml``)::

    {"class_names": ["custom/Pleural nodule", ...],
     "new": ["Pleural nodule"], "known": {"Cardiomegaly": "vindrcxr/Cardiomegaly"},
     "prompts": {"prompt_sets": {"custom_pos": {...}, "custom_neg": {...}, "custom_box": {...}},
                 "model_prompt_assembly": {"pathology_pos_prompts": ["custom_pos"],
                                           "pathology_neg_prompts": ["custom_neg"]}}}

A name that matches a packaged class (the part after the last ``/``, case-insensitive) takes
that class's synonym prompts; a new name gets itself as its prompt and ``No <name>`` as its
negative, the same strings the training prompt banks fall back to for names without prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

from chexcli.data.names import name_lists
from chexcli.data.processed.files import write_json
from chexcli.data.processed.layout import CUSTOM_FINDINGS_FILE
from chexcli.errors import ChexError

PREFIX = "custom"
POS, NEG, BOX = "custom_pos", "custom_neg", "custom_box"
#: packaged prompt sets searched for a known name, in this order: (positive, negative, box)
KNOWN_SETS = [("vindrcxr_pos", "vindrcxr_neg", "vindrcxr_box"), ("mscxr_pos", "mscxr_neg", "mscxr_box"),
              ("cigcls_pos", "cigcls_neg", None), ("nih8_pos", "nih8_neg", "nih8_box"),
              ("chexpert_pos", "chexpert_neg", None)]


def class_name(name: str) -> str:
    """The class of a finding name: ``custom/<name>``."""
    return f"{PREFIX}/{name}"


def known_class(name: str) -> tuple[str, str, str | None] | None:
    """(positive set, class key, box set) of the packaged class ``name`` matches, or None."""
    sets = name_lists()["prompt_sets"]
    wanted = name.lower()
    for pos, _neg, box in KNOWN_SETS:
        for key in sets.get(pos, {}):
            if key.rsplit("/", 1)[-1].lower() == wanted:
                return pos, key, box
    return None


def finding_prompts(names: list[str]) -> dict:
    """The ``prompts`` fragment (prompt sets and their assembly) for the finding ``names``."""
    sets = name_lists()["prompt_sets"]
    pos: dict[str, list[str]] = {}
    neg: dict[str, list[str]] = {}
    box: dict[str, list[str]] = {}
    for name in names:
        cls = class_name(name)
        known = known_class(name)
        if known is None:
            pos[cls] = box[cls] = [name[:1].upper() + name[1:]]
            neg[cls] = ["No " + name.lower()]
            continue
        pos_set, key, box_set = known
        neg_set = next(n for p, n, _ in KNOWN_SETS if p == pos_set)
        pos[cls] = list(sets[pos_set][key])
        neg[cls] = list(sets.get(neg_set, {}).get(key) or ["No " + name.lower()])
        box[cls] = list(sets.get(box_set, {}).get(key) or pos[cls]) if box_set else list(pos[cls])
    return {"prompt_sets": {POS: pos, NEG: neg, BOX: box},
            "model_prompt_assembly": {"pathology_pos_prompts": [POS], "pathology_neg_prompts": [NEG]}}


def findings_record(names: list[str]) -> dict:
    """The content of ``custom_findings.json`` for the finding ``names`` (in class order)."""
    known = {n: k[1] for n in names if (k := known_class(n)) is not None}
    return {"class_names": [class_name(n) for n in names], "new": [n for n in names if n not in known],
            "known": known, "prompts": finding_prompts(names)}


def write_findings(folder: Path, names: list[str]) -> None:
    write_json(Path(folder) / CUSTOM_FINDINGS_FILE, findings_record(names))


def read_findings(folder: Path) -> dict | None:
    """``custom_findings.json`` of a processed folder, or None when it has none."""
    path = Path(folder) / CUSTOM_FINDINGS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ChexError(f"{path} cannot be read ({err}); run `chex data prepare custom` again") from None
    if not isinstance(record, dict) or not isinstance(record.get("class_names"), list):
        raise ChexError(f"{path} has no class_names list; run `chex data prepare custom` again")
    return record


def folder_class_names(folder: Path) -> list[str]:
    """The finding classes of a custom folder (``custom/<name>``, in table order)."""
    record = read_findings(folder)
    if record is None:
        raise ChexError(f"{folder} has no {CUSTOM_FINDINGS_FILE}: not a folder of `chex data prepare custom`, "
                        "or its table has no finding boxes")
    return [str(c) for c in record["class_names"]]
