"""PhysioNet and Kaggle credentials: environment, netrc / kaggle.json, or a prompt.

The password only ever goes into the ``Authorization`` header of this process's requests.
"""

from __future__ import annotations

import base64
import json
import netrc
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from chexcli.errors import ChexError


@dataclass
class Credentials:
    user: str
    password: str = field(repr=False)

    def header(self) -> str:
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return f"Basic {token}"

    def __repr__(self) -> str:  # never show the password
        return f"Credentials(user={self.user!r})"


def physionet_credentials(host: str, interactive: bool | None = None) -> Credentials:
    user = os.environ.get("PHYSIONET_USER")
    password = os.environ.get("PHYSIONET_PASSWORD") or os.environ.get("PHYSIONET_PW")
    if user and password:
        return Credentials(user, password)
    try:
        auth = netrc.netrc().authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        auth = None
    if auth and auth[2] and (not user or auth[0] == user):
        return Credentials(auth[0], auth[2])
    if interactive is None:
        interactive = sys.stdin.isatty()
    if interactive:
        import getpass

        if not user:
            user = input("PhysioNet user: ").strip()
        password = getpass.getpass(f"PhysioNet password for {user}: ")
        if user and password:
            return Credentials(user, password)
    raise ChexError("no PhysioNet credentials: set PHYSIONET_USER and PHYSIONET_PASSWORD, "
                    f"or add a netrc entry for {host}")


def kaggle_credentials() -> Credentials:
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if user and key:
        return Credentials(user, key)
    cfg = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if cfg.is_file():
        try:
            d = json.loads(cfg.read_text())
            return Credentials(d["username"], d["key"])
        except (ValueError, KeyError, TypeError) as err:
            raise ChexError(f"{cfg} is not a valid kaggle.json (needs username and key)") from err
        except OSError as err:
            raise ChexError(f"cannot read {cfg}: {err.strerror or err}") from None
    raise ChexError("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or create "
                    "~/.kaggle/kaggle.json (Kaggle > Settings > API > Create New Token)")
