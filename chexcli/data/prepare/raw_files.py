"""The raw downloads a preparer reads: required files, raw CSV tables, source digests.

A raw table that cannot be used stops prepare with one line naming the file (and the column
and line), before anything is written (docs/data.md#chex-data-prepare).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from chexcli.errors import ChexError
from chexcli.hashing import sha256_file


def require_file(path: Path, what: str, hint: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ChexError(f"{what} not found: {path} ({hint})")
    return path


def require_dir(path: Path, what: str, hint: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ChexError(f"{what} not found: {path} ({hint})")
    return path


def source_digests(raw: Path, files: Iterable[Path]) -> dict[str, str]:
    """SHA-256 of the raw files a step read (relative names), plus SHA256SUMS.txt if present."""
    out = {}
    for p in files:
        p = Path(p)
        if p.is_file():
            try:
                name = str(p.relative_to(raw))
            except ValueError:
                name = p.name
            out[name] = sha256_file(p)
    sums = Path(raw) / "SHA256SUMS.txt"
    if sums.is_file() and "SHA256SUMS.txt" not in out:
        out["SHA256SUMS.txt"] = sha256_file(sums)
    return out


def read_raw_csv(path: Path, columns: Iterable[str], dtype: dict | None = None, numeric: Iterable[str] = (),
                 numeric_or_empty: Iterable[str] = (), allow_no_rows: bool = False,
                 all_columns: bool = False) -> pd.DataFrame:
    """Read the ``columns`` (or, with ``all_columns``, every column) of a raw CSV (plain or
    ``.gz``), requiring ``columns``, with one-line errors naming the file.

    Column names are compared with surrounding spaces removed. ``numeric`` columns must hold
    a finite number in every row, ``numeric_or_empty`` columns a number or nothing. Refuses
    an empty file, a ``.gz`` that is not gzip, text that is not UTF-8, a missing column and
    (unless ``allow_no_rows``) a table without rows.
    """
    path = Path(path)
    wanted = list(dict.fromkeys(columns))
    df = _read_csv(path, None if all_columns else (lambda c: str(c).strip() in wanted), dtype)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise ChexError(f"{path} lacks the column(s) {', '.join(repr(c) for c in missing)}; "
                        "is it the file of the release? download it again")
    if not allow_no_rows and df.empty:
        raise ChexError(f"{path} has a header but no rows; download it again")
    require_numeric(df, numeric, path)
    require_numeric(df, numeric_or_empty, path, allow_empty=True)
    return df


def _read_csv(path: Path, usecols, dtype: dict | None) -> pd.DataFrame:
    try:
        return pd.read_csv(path, usecols=usecols, dtype=dtype, low_memory=False)
    except pd.errors.EmptyDataError:
        raise ChexError(f"{path} is empty; download it again") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ChexError(f"{path} is not a complete gzip file ({_short(err)}); download it again") from None
    except UnicodeDecodeError:
        raise ChexError(f"{path} is not UTF-8 text (is it the right file?); download it again") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise ChexError(f"{path} is not a readable CSV table ({_short(err)}); download it again") from None
    except OSError as err:
        raise ChexError(f"cannot read {path} ({_short(err)})") from None


def require_numeric(df: pd.DataFrame, columns: Iterable[str], path: Path, allow_empty: bool = False) -> None:
    """Convert ``columns`` to numbers in place (int64 when every value is whole, else float);
    refuse the first cell that is not a finite number.

    Line numbers count the header as line 1 (row ``i`` of the table is on line ``i + 2``).
    """
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce").astype(float)
        bad = ~np.isfinite(values.to_numpy())
        if allow_empty:
            bad &= df[col].notna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            cell = df[col].iloc[row]
            what = "is empty" if pd.isna(cell) else f"holds {cell!r}" if isinstance(cell, str) else f"holds {cell}"
            raise ChexError(f"{path} line {row + 2}: column {col!r} {what}, not a number")
        whole = values.notna().all() and bool(((values == values.round()) & (values.abs() < 2**53)).all())
        df[col] = values.astype("int64") if whole else values


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."
