"""NIH ChestX-ray14 from Kaggle: one archive, downloaded resumably, extracted with CRC checks.

Kaggle publishes no SHA-256 list; a finished extraction leaves ``.chex-kaggle-extracted``.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

from chexcli.data.fetch.archives import extract_zip
from chexcli.data.fetch.credentials import Credentials
from chexcli.data.fetch.download import download_file
from chexcli.data.fetch.errors import AuthError, LocalWriteError, PermanentError, Stopped, auth_refused
from chexcli.data.fetch.http_client import server_root
from chexcli.data.fetch.options import FetchOptions
from chexcli.data.fetch.report import FetchReport, make_dest_folder
from chexcli.data.processed.files import atomic_write_text
from chexcli.data.sources import KAGGLE, Source
from chexcli.errors import ChexError

MARKER = ".chex-kaggle-extracted"


def fetch_kaggle(source: Source, dest: Path, creds: Credentials, base_url: str | None = None,
                 opts: FetchOptions | None = None) -> FetchReport:
    """Download the Kaggle archive (resumable), check every member's CRC while extracting."""
    opts = opts or FetchOptions()
    base = server_root(base_url, "CHEX_KAGGLE_URL", KAGGLE)
    dest = make_dest_folder(dest)
    report = FetchReport()
    if (dest / MARKER).is_file():
        report.skipped.append(source.project)
        return report
    archive = dest / (source.project.replace("/", "_") + ".zip")
    _download(source, f"{base}/api/v1/datasets/download/{source.project}", archive, creds, opts)
    _extract(archive, dest)
    atomic_write_text(dest / MARKER, "ok\n")
    archive.unlink()
    report.downloaded.append(source.project)
    return report


def _download(source: Source, url: str, archive: Path, creds: Credentials, opts: FetchOptions) -> None:
    """The archive, unless it is already complete (a rerun after a failed extraction)."""
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, desc=source.name, disable=not opts.progress or None)
    try:
        if not archive.is_file():
            download_file(url, archive, None, creds, opts, lambda n: bar.update(n), what=archive.name)
    except AuthError as err:
        raise auth_refused(source, creds.user, err.status) from None
    except PermanentError as err:
        hint = "; run the same command again to resume" if err.rerun_helps else ""
        raise ChexError(f"{source.title}: {err}{hint}", exit_code=1) from None
    except LocalWriteError as err:
        raise ChexError(f"{err}; the partial download is kept, run the same command again",
                        exit_code=1) from None
    except Stopped:
        raise KeyboardInterrupt from None
    finally:
        bar.close()


def _extract(archive: Path, dest: Path) -> None:
    try:
        extract_zip(archive, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as err:
        archive.unlink(missing_ok=True)
        raise ChexError(f"{archive.name} is damaged ({err}); it was removed, run fetch again",
                        exit_code=1) from None
    except OSError as err:  # a local problem (disk full...): keep the archive
        raise ChexError(f"cannot extract {archive.name}: {err.strerror or err}; the archive is kept, "
                        "run the same command again", exit_code=1) from None
