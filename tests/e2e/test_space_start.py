"""Started as a Hugging Face Space starts app.py: the platform's variables (SPACE_ID, SYSTEM=spaces,
GRADIO_SERVER_NAME=0.0.0.0, GRADIO_SERVER_PORT), no command-line options, offline with the embedded model. Where it
listens is read from the kernel's socket table, without sending it anything; then /generate must answer."""
from __future__ import annotations

import importlib.util
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from gradio_client import Client

from app import options
from tests.e2e.conftest import HANG, ROOT, free_port, server_log, tracebacks

# On a Space the platform installs the `spaces` package, with which Gradio runs its reload watcher; without it that
# watcher's thread logs this and the app serves on (a rehearsal here may lack the package)
SPACES_MISSING = "`spaces` package is required to run hot-reloading in Spaces"
NO_SPACES = importlib.util.find_spec("spaces") is None
WHERE = ("EXPLORER_HOST", "EXPLORER_PORT", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "PORT")


@pytest.fixture()
def clean_env(monkeypatch):
    for name in WHERE:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_loopback_is_the_local_default(clean_env):
    args = options([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)


def test_gradio_server_variables_are_honoured_and_explicit_choices_win(clean_env):
    clean_env.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    clean_env.setenv("GRADIO_SERVER_PORT", "7861")
    assert (options([]).host, options([]).port) == ("0.0.0.0", 7861)
    clean_env.setenv("EXPLORER_HOST", "127.0.0.2")
    clean_env.setenv("EXPLORER_PORT", "7862")
    assert (options([]).host, options([]).port) == ("127.0.0.2", 7862)
    args = options(["--host", "127.0.0.3", "--port", "7863"])
    assert (args.host, args.port) == ("127.0.0.3", 7863)


def listening(pid: int, port: int) -> list[str]:
    """The addresses ("0.0.0.0", "127.0.0.1", "::", ...) on which the process holds a listening TCP socket on port:
    its socket inodes (/proc/<pid>/fd) matched against the LISTEN rows of /proc/<pid>/net/tcp and tcp6."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port and fields[9] in inodes:  # 0A: LISTEN
                found.append(_address(address))
    return found


def _address(hex_address: str) -> str:
    """The kernel's hex of an address (IPv4: one little-endian word; IPv6: four) as text."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def test_started_as_a_space_it_listens_on_every_interface_and_serves():
    port = free_port()
    env = {**os.environ, "SPACE_ID": "teacher/llm-explorer", "SYSTEM": "spaces", "GRADIO_SERVER_NAME": "0.0.0.0",
           "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("EXPLORER_HOST", "EXPLORER_PORT", "PORT"):
        env.pop(name, None)
    log = tempfile.TemporaryFile()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    proc.log = log
    try:
        while not (where := listening(proc.pid, port)):
            assert proc.poll() is None, f"the app exited: {server_log(proc)}"
            assert time.monotonic() - started < HANG, f"not listening on {port} after {HANG:.0f} s"
            time.sleep(0.2)
        print(f"\nlistening after {time.monotonic() - started:.1f} s on {where}")
        assert where == ["0.0.0.0"]
        result = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            prompt="The capital of France is", max_new_tokens=3, greedy=True, api_name="/generate")
        print(f"first /generate answered {time.monotonic() - started:.1f} s after the start")
        assert result["text"].strip().startswith("Paris") and result["finish_reason"] == "length"
        assert not [t for t in tracebacks(server_log(proc)) if not (NO_SPACES and SPACES_MISSING in t)], server_log(proc)
    finally:
        proc.terminate()
        proc.wait(timeout=HANG)
        log.close()
