"""Reading a config.json whose path a user typed, as a public server must: only regular files inside the allowed
folders once every symlink is resolved, at most MAX_CONFIG_BYTES, never blocking, and errors that name no absolute
path and show nothing of a file that was refused."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

MAX_CONFIG_BYTES = 1_000_000  # Kimi-K2's config.json is 3.5 KB; a larger file is not a config
OUTSIDE = "this server only opens configs under assets/ and the folders its operator lists in EXPLORER_CONFIG_DIRS"
TOO_LARGE = f"the file is over {MAX_CONFIG_BYTES // 1_000_000} MB: too large to be a config.json"


def read_config_json(path_text: str, roots: list[Path]) -> dict[str, Any]:
    """The JSON object in the config file at path_text (a .json file, or a folder holding config.json), read only
    if its final file, after every symlink, lies inside one of the resolved folders `roots`. Raises ValueError with
    a sentence for the user."""
    if not path_text.strip():
        raise ValueError("type the path of a config.json (or of a folder holding one) in the box")
    path = _inside(Path(path_text.strip()).expanduser(), roots)
    if path.is_dir():
        path = _inside(path / "config.json", roots)  # config.json itself may be a symlink out of the folder
    if path.suffix != ".json":
        raise ValueError("expected a .json file (or a folder holding config.json)")
    try:
        data = json.loads(_read_regular_file(path).decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("the file is not UTF-8 text") from None
    except json.JSONDecodeError as e:  # its position in a file the user may read anyway, no path
        raise ValueError(f"the file is not valid JSON ({e.msg}: line {e.lineno} column {e.colno})") from None
    if not isinstance(data, dict):
        raise ValueError("the file does not hold a JSON object")
    return data


def config_name(path_text: str) -> str:
    """The model's name as the typed path gives it: the folder's name for a folder or a folder's config.json,
    else the file's name without .json (and without a .config before it, as in kimi-k2-instruct.config.json)."""
    path = Path(path_text.strip())
    if path.suffix != ".json":
        return path.name
    if path.name == "config.json" and path.parent.name:
        return path.parent.name
    return path.stem.removesuffix(".config")


def _inside(path: Path, roots: list[Path]) -> Path:
    """The path with every symlink and .. resolved, if that final path lies inside one of the roots."""
    final = path.resolve()
    if not any(final.is_relative_to(root) for root in roots):
        raise ValueError(OUTSIDE)
    return final


def _read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_CONFIG_BYTES. Anything else (a FIFO, a device, a socket, a folder) is
    refused before it is opened, and the file is opened without blocking and without following a symlink swapped in
    since, then checked again, so that a FIFO never stalls the thread that reads it."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError("that is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ValueError("no such file (or no config.json in that folder)") from None
    except OSError:
        raise ValueError("this server cannot open that file") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("that is not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ValueError(TOO_LARGE)
        data = f.read(MAX_CONFIG_BYTES + 1)  # a file that grew since fstat is still read no further
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(TOO_LARGE)
    return data
