"""MIMIC-CXR report text: sections, substring removal, sentence splitting and cleaning.

Follows docs/data.md#report-text. Sentence splitting differs from the reference, which
uses the Stanza neural tokenizer (its models cannot be downloaded here): ``split_sentences``
is a rule-based splitter that runs offline; docs/deviations.md describes the difference.
"""

from __future__ import annotations

import re
from typing import Iterable

REMOVED_SUBSTRINGS = [
    'WET READ VERSION', 'WET READ', 'UPRIGHT PORTABLE AP CHEST RADIOGRAPH:',
    'UPRIGHT AP VIEW OF THE CHEST:', 'UPRIGHT AP AND LATERAL VIEWS OF THE CHEST:',
    "TECHNOLOGIST'S NOTE:", 'TECHNIQUE:', 'SUPINE PORTABLE RADIOGRAPH:',
    'SUPINE PORTABLE CHEST RADIOGRAPHS:', 'SUPINE PORTABLE CHEST RADIOGRAPH:',
    'SUPINE PORTABLE AP CHEST RADIOGRAPH:', 'SUPINE FRONTAL CHEST RADIOGRAPH:',
    'SUPINE CHEST RADIOGRAPH:', 'SUPINE AP VIEW OF THE CHEST:',
    'SINGLE SUPINE PORTABLE VIEW OF THE CHEST:',
    'SINGLE SEMI-ERECT AP PORTABLE VIEW OF THE CHEST:',
    'SINGLE PORTABLE UPRIGHT CHEST RADIOGRAPH:', 'SINGLE PORTABLE CHEST RADIOGRAPH:',
    'SINGLE PORTABLE AP CHEST RADIOGRAPH:', 'SINGLE FRONTAL VIEW OF THE CHEST:',
    'SINGLE FRONTAL PORTABLE VIEW OF THE CHEST:', 'SINGLE AP UPRIGHT PORTABLE CHEST RADIOGRAPH:',
    'SINGLE AP UPRIGHT CHEST RADIOGRAPH:', 'SINGLE AP PORTABLE CHEST RADIOGRAPH:',
    'SEMIERECT PORTABLE RADIOGRAPH OF THE CHEST:', 'SEMIERECT AP VIEW OF THE CHEST:',
    'SEMI-UPRIGHT PORTABLE RADIOGRAPH OF THE CHEST:', 'SEMI-UPRIGHT PORTABLE CHEST RADIOGRAPH:',
    'SEMI-UPRIGHT PORTABLE AP RADIOGRAPH OF THE CHEST:', 'SEMI-UPRIGHT AP VIEW OF THE CHEST:',
    'SEMI-ERECT PORTABLE FRONTAL CHEST RADIOGRAPH:', 'SEMI-ERECT PORTABLE CHEST:',
    'SEMI-ERECT PORTABLE CHEST RADIOGRAPH:', 'REPORT:', 'PORTABLES SEMI-ERECT CHEST RADIOGRAPH:',
    'PORTABLE UPRIGHT FRONTAL VIEW OF THE CHEST:', 'PORTABLE UPRIGHT AP VIEW OF THE CHEST:',
    'PORTABLE UPRIGHT AP VIEW OF THE ABDOMEN:', 'PORTABLE SUPINE FRONTAL VIEW OF THE CHEST:',
    'PORTABLE SUPINE FRONTAL CHEST RADIOGRAPH:', 'PORTABLE SUPINE CHEST RADIOGRAPH:',
    'PORTABLE SEMI-UPRIGHT RADIOGRAPH:', 'PORTABLE SEMI-UPRIGHT FRONTAL CHEST RADIOGRAPH:',
    'PORTABLE SEMI-UPRIGHT CHEST RADIOGRAPH:', 'PORTABLE SEMI-UPRIGHT AP CHEST RADIOGRAPH:',
    'PORTABLE SEMI-ERECT FRONTAL CHEST RADIOGRAPHS:',
    'PORTABLE SEMI-ERECT FRONTAL CHEST RADIOGRAPH:', 'PORTABLE SEMI-ERECT CHEST RADIOGRAPH:',
    'PORTABLE SEMI-ERECT AP AND PA CHEST RADIOGRAPH:', 'PORTABLE FRONTAL VIEW OF THE CHEST:',
    'PORTABLE FRONTAL CHEST RADIOGRAPH:', 'PORTABLE ERECT RADIOGRAPH:',
    'PORTABLE CHEST RADIOGRAPH:', 'PORTABLE AP VIEW OF THE CHEST:',
    'PORTABLE AP UPRIGHT CHEST RADIOGRAPH:', 'PORTABLE AP CHEST RADIOGRAPH:',
    'PA AND LATERAL VIEWS OF THE CHEST:', 'PA AND LATERAL CHEST RADIOGRAPHS:',
    'PA AND LATERAL CHEST RADIOGRAPH:', 'PA AND LAT CHEST RADIOGRAPH:',
    'PA AND AP CHEST RADIOGRAPH:', 'NOTIFICATION:', 'IMPRESSON:', 'IMPRESSION: AP CHEST:',
    'IMPRESSION: AP', 'IMPRESSION:', 'IMPRESSION AP', 'IMPRESSION',
    'FRONTAL UPRIGHT PORTABLE CHEST:', 'FRONTAL UPRIGHT PORTABLE CHEST:',
    'FRONTAL UPPER ABDOMINAL RADIOGRAPH, TWO IMAGES:', 'FRONTAL SUPINE PORTABLE CHEST:',
    'FRONTAL SEMI-UPRIGHT PORTABLE CHEST:', 'FRONTAL RADIOGRAPH OF THE CHEST:',
    'FRONTAL PORTABLE SUPINE CHEST:', 'FRONTAL PORTABLE CHEST:',
    'FRONTAL PORTABLE CHEST RADIOGRAPH:', 'FRONTAL LATERAL VIEWS CHEST:',
    'FRONTAL LATERAL CHEST RADIOGRAPH:', 'FRONTAL CHEST RADIOGRAPHS:', 'FRONTAL CHEST RADIOGRAPH:',
    'FRONTAL CHEST RADIOGRAPH WITH THE PATIENT IN SUPINE AND UPRIGHT POSITIONS:',
    'FRONTAL AND LATERAL VIEWS OF THE CHEST:', 'FRONTAL AND LATERAL FRONTAL CHEST RADIOGRAPH:',
    'FRONTAL AND LATERAL CHEST RADIOGRAPHS:', 'FRONTAL AND LATERAL CHEST RADIOGRAPH:', 'FRONTAL',
    'FINIDNGS:', 'FINDNGS:', 'FINDINGS:', 'FINDINGS/IMPRESSION:', 'FINDINGS AND IMPRESSION:',
    'FINDINGS', 'FINDING:', 'FINAL REPORT FINDINGS:', 'FINAL REPORT EXAMINATION:', 'FINAL REPORT',
    'FINAL ADDENDUM ADDENDUM:', 'FINAL ADDENDUM ADDENDUM',
    'FINAL ADDENDUM **********ADDENDUM***********', 'FINAL ADDENDUM',
    'EXAMINATION: DX CHEST PORT LINE/TUBE PLCMT 1 EXAM', 'CONCLUSION:', 'COMPARISONS:',
    'COMPARISON:', 'COMPARISON.', 'CHEST:', 'CHEST/ABDOMEN RADIOGRAPHS:', 'CHEST, TWO VIEWS:',
    'CHEST, SINGLE AP PORTABLE VIEW:', 'CHEST, PA AND LATERAL:', 'CHEST, AP:',
    'CHEST, AP UPRIGHT:', 'CHEST, AP UPRIGHT AND LATERAL:', 'CHEST, AP SUPINE:',
    'CHEST, AP SEMI-UPRIGHT:', 'CHEST, AP PORTABLE, UPRIGHT:', 'CHEST, AP AND LATERAL:',
    'CHEST SUPINE:', 'CHEST RADIOGRAPH:', 'CHEST PA AND LATERAL RADIOGRAPH:', 'CHEST AP:',
    'BEDSIDE UPRIGHT FRONTAL CHEST RADIOGRAPH:', 'AP:', 'AP,', 'AP VIEW OF THE CHEST:',
    'AP UPRIGHT PORTABLE CHEST RADIOGRAPH:', 'AP UPRIGHT CHEST RADIOGRAPH:',
    'AP UPRIGHT AND LATERAL CHEST RADIOGRAPHS:', 'AP PORTABLE SUPINE CHEST RADIOGRAPH:',
    'AP PORTABLE CHEST RADIOGRAPH:', 'AP FRONTAL CHEST RADIOGRAPH:', 'AP CHEST:',
    'AP CHEST RADIOGRAPH:', 'AP AND LATERAL VIEWS OF THE CHEST:',
    'AP AND LATERAL CHEST RADIOGRAPHS:', 'AP AND LATERAL CHEST RADIOGRAPH:', '5. ', '4. ', '3. ',
    '2. ', '1. ', '#1 ', '#2 ', '#3 ', '#4 ', '#5 ',
]
SECTION_NAMES = {
    'preamble': 'preamble',
    'impression': 'impression',
    'comparison': 'comparison',
    'indication': 'indication',
    'findings': 'findings',
    'examination': 'examination',
    'technique': 'technique',
    'history': 'history',
    'comparisons': 'comparison',
    'clinical history': 'history',
    'reason for examination': 'indication',
    'notification': 'notification',
    'reason for exam': 'indication',
    'clinical information': 'history',
    'exam': 'examination',
    'clinical indication': 'indication',
    'conclusion': 'impression',
    'chest, two views': 'findings',
    'recommendation(s)': 'recommendations',
    'type of examination': 'examination',
    'reference exam': 'comparison',
    'patient history': 'history',
    'addendum': 'addendum',
    'comparison exam': 'comparison',
    'date': 'date',
    'comment': 'comment',
    'findings and impression': 'impression',
    'wet read': 'wet read',
    'comparison film': 'comparison',
    'recommendations': 'recommendations',
    'findings/impression': 'impression',
    'pfi': 'history',
    'recommendation': 'recommendations',
    'wetread': 'wet read',
    'ndication': 'impression',
    'impresson': 'impression',
    'imprression': 'impression',
    'imoression': 'impression',
    'impressoin': 'impression',
    'imprssion': 'impression',
    'impresion': 'impression',
    'imperssion': 'impression',
    'mpression': 'impression',
    'impession': 'impression',
    'findings/ impression': 'impression',
    'finding': 'findings',
    'findins': 'findings',
    'findindgs': 'findings',
    'findgings': 'findings',
    'findngs': 'findings',
    'findnings': 'findings',
    'finidngs': 'findings',
    'idication': 'indication',
    'reference findings': 'findings',
    'comparision': 'comparison',
    'comparsion': 'comparison',
    'comparrison': 'comparison',
    'comparisions': 'comparison',
}
SKIPPED_STUDIES = frozenset({
    's50913680', 's59363654', 's59279892', 's59768032', 's57936451', 's50058765', 's53356173',
    's53202765', 's50808053', 's51966317', 's50743547', 's56451190', 's59067458', 's59215320',
    's55124749', 's54365831', 's59087630', 's58157373', 's56482935', 's58375018', 's54654948',
    's55157853', 's51491012', 's50525523', 's57564132', 's59982525', 's53488209', 's54875119',
    's50196495', 's56579911', 's52648681', 's59889364', 's53514462', 's59505494', 's53182247',
    's51410602', 's56412866', 's54986978', 's59003148', 's57150433', 's56760320', 's59562049',
    's52674888', 's55258338', 's59330497', 's52119491', 's58235663', 's50798377', 's54168089',
    's53071062', 's56724958', 's54231141', 's53607029', 's52035334',
})

_FINDINGS_KEYWORDS = (
    "chest", "portable", "pa and lateral", "lateral and pa", "ap and lateral", "lateral and ap",
    "frontal and", "two views", "frontal view", "pa view", "ap view", "one view", "lateral view",
    "bone window", "frontal upright", "frontal semi-upright", "ribs", "pa and lat",
)

_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")
# The Appendix-B entries are regular-expression alternatives as in the reference ("." is
# any character, quirk 5); only the asterisks of entry 100 are taken literally.
_REMOVE = re.compile("|".join(s.replace("*", r"\*") for s in REMOVED_SUBSTRINGS), re.DOTALL)
_SPACES = re.compile(r"[ \t]+")
_LINEBREAKS = re.compile(r"(?:[ \t]*\n+)+")
_DOTS = re.compile(r"(?:\. ?)+")


def normalise_section_name(name: str) -> str:
    name = name.lower().strip()
    if name in SECTION_NAMES:
        return SECTION_NAMES[name]
    for word in ("impression", "findings", "history", "comparison", "addendum"):
        if word in name:
            return word
    if any(k in name for k in _FINDINGS_KEYWORDS):
        return "findings"
    return name


def split_sections(text: str) -> list[tuple[str, str]]:
    """(normalised name, body) for every section of a report, in text order."""
    m = _HEADER.search(text)
    if m is None:
        return [("full report", text)]
    sections = [("preamble", text[: m.start(1)])]
    while m is not None:
        name = normalise_section_name(m.group(1))
        body_start = m.end()
        nl = text.find("\n", body_start)
        m_next = _HEADER.search(text, nl if nl >= 0 else body_start)
        body_end = m_next.start() if m_next is not None else len(text)
        sections.append((name, text[body_start:body_end]))
        m = m_next
    return [(n, b) for n, b in sections if not (n in ("findings", "impression") and not b.strip())]


# ----------------------------------------------------------------------------- sentences
_ABBREVIATIONS = frozenset({
    "dr", "mr", "mrs", "ms", "st", "vs", "v", "e.g", "i.e", "eg", "ie", "approx", "etc", "cf",
    "fig", "no", "nos", "resp", "incl", "min", "max", "prof", "jr", "sr", "mt", "ca", "al",
})
_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*(?=\s)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")


def split_sentences(text: str) -> list[str]:
    """Rule-based offline sentence splitter (stands in for Stanza's English tokenizer).

    Boundaries: a blank line, or ``.``/``!``/``?`` (plus closing quotes or brackets)
    followed by whitespace, unless the word before the period is a common abbreviation
    ("Dr.", "e.g.", "vs.", ...) or a single letter (initials). Returns the original text
    spans, stripped.
    """
    out: list[str] = []
    for para in _PARAGRAPH.split(text):
        start = 0
        for m in _BOUNDARY.finditer(para):
            if para[m.start()] == ".":
                word = re.search(r"([A-Za-z.]+)$", para[start:m.start()])
                w = word.group(1).lower().strip(".") if word else ""
                if w in _ABBREVIATIONS or (len(w) == 1 and w.isalpha()):
                    continue
            span = para[start:m.end()].strip()
            if span:
                out.append(span)
            start = m.end()
        tail = para[start:].strip()
        if tail:
            out.append(tail)
    return out


def remove_substrings(text: str) -> str:
    """Delete the Appendix-B substrings, then collapse spaces/tabs and trim."""
    text = _REMOVE.sub("", text)
    return _SPACES.sub(" ", text).strip()


def clean_sentence(s: str) -> str:
    s = _LINEBREAKS.sub("\n", s)
    s = s.replace("\n", " ")
    s = _SPACES.sub(" ", s)
    s = _DOTS.sub(".", s)
    s = _SPACES.sub(" ", s).strip()
    return s[:1].upper() + s[1:]


def _keep(sentences: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for s in sentences:
        if len(s.split()) >= 2 and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def section_sentences(body: str) -> list[str]:
    """One findings/impression body -> cleaned, kept, de-duplicated sentences (steps 4.1-4.7)."""
    # step 4.1 (wet-read time removal) is a no-op in the reference (quirk 4)
    text = remove_substrings(body)
    return _keep(clean_sentence(s) for s in split_sentences(text))


def clean_phrases(phrases: Iterable[str]) -> list[str]:
    """Chest ImaGenome phrases: the same cleaning without splitting (one phrase = one sentence)."""
    return _keep(clean_sentence(remove_substrings(p)) for p in phrases)


def report_sentences(text: str, study: str | None = None) -> list[str] | None:
    """Report text -> findings sentences then impression sentences, or None (no report).

    ``study`` is the id with its ``s`` prefix (``s50414267``); studies of the skip lists
    (Appendix C) yield None as in the reference.
    """
    if study is not None and study in SKIPPED_STUDIES:
        return None
    sections: dict[str, str] = {}
    for name, body in split_sections(text):
        sections[name] = body  # a later section with the same name wins
    if "findings" not in sections and "impression" not in sections:
        return None
    sentences: list[str] = []
    for name in ("findings", "impression"):
        if name in sections:
            sentences.extend(section_sentences(sections[name]))
    return sentences or None
