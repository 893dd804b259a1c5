"""`chex data fetch NAME`: check the options, find the credentials, fetch from the source's host."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from chexcli.data.fetch.credentials import kaggle_credentials, physionet_credentials
from chexcli.data.fetch.http_client import server_root
from chexcli.data.fetch.kaggle import fetch_kaggle
from chexcli.data.fetch.options import FetchOptions
from chexcli.data.fetch.physionet import fetch_physionet
from chexcli.data.fetch.report import FetchReport
from chexcli.data.sources import KAGGLE, PHYSIONET, get_source
from chexcli.errors import ChexError


def fetch(name: str, dest: Path, workers: int = 4, include: list[str] | None = None,
          base_url: str | None = None, progress: bool = True, retries: int = 5,
          backoff: float = 1.0, timeout: float = 30.0, stall_timeout: float = 60.0,
          stall_bytes: int = 16384) -> FetchReport:
    if not timeout > 0:
        raise ChexError("--timeout must be more than 0 seconds")
    if stall_timeout < 0 or stall_bytes < 1:
        raise ChexError("--stall-timeout must be 0 (off) or more, --stall-bytes at least 1")
    source = get_source(name)
    opts = FetchOptions(workers=workers, progress=progress, retries=retries, backoff=backoff,
                        timeout=timeout, stall_timeout=stall_timeout, stall_bytes=stall_bytes)
    if source.host == "kaggle":
        server_root(base_url, "CHEX_KAGGLE_URL", KAGGLE)  # check before credentials
        return fetch_kaggle(source, dest, kaggle_credentials(), base_url, opts)
    host = urllib.parse.urlsplit(server_root(base_url, "CHEX_PHYSIONET_URL", PHYSIONET)).hostname
    creds = physionet_credentials(host)
    return fetch_physionet(source, dest, creds, base_url, include, opts)
