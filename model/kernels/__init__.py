"""CPU kernels that compute straight from weights as stored, GGUF's blocks or bf16 (blockquant.cpp), built once with
the machine's C++ compiler through torch.utils.cpp_extension and cached in torch's extensions folder, under a name
of the source's hash (checkouts with other sources never rebuild each other's). The fast paths (model/fast) use
them; the reference decoder never does.

Without a compiler, or with EXPLORER_KERNELS=0 (which turns every fast path off), everything still works: decoding
then runs the reference on the float32 weights (about 5x the bytes for a Q4_1 model, so about a third of the
speed). `python -m model.kernels` builds the extension ahead of time (`make setup` does) and prints what it uses."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterator

SOURCE = Path(__file__).with_name("blockquant.cpp")
_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None


def enabled() -> bool:
    return os.environ.get("EXPLORER_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def extension() -> ModuleType | None:
    """The compiled kernels, building them on first use; None (and `error()` says why) where they cannot be."""
    global _module, _error
    if _module is not None or not enabled():
        return _module
    with _lock:
        if _module is None and _error is None:
            try:
                from torch.utils.cpp_extension import load

                _put_ninja_on_path()

                digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
                name = f"explorer_blockquant_{digest}"
                with _building(name) as folder:
                    module = load(name, [str(SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                                  extra_ldflags=["-fopenmp"], build_directory=str(folder), verbose=False)
                module.use_helpers(default_helpers())
                _module = module
            except Exception as e:  # no compiler, no ninja, a read-only cache...: fall back to float32 weights
                lines = str(e).strip().splitlines() or [""]
                _error = f"{type(e).__name__}: " + next((ln for ln in lines if "error:" in ln), lines[-1])
                warnings.warn(f"the block-quantized kernels could not be built ({_error}); decoding reads the "
                              "float32 weights instead (about a third of the speed)", RuntimeWarning, stacklevel=2)
    return _module


@contextlib.contextmanager
def _building(name: str) -> Iterator[Path]:
    """The extension's build folder (torch's usual one), held under an OS file lock: the OS lets go of it when a
    process dies, whereas the 'lock' file torch leaves behind a build killed midway (Ctrl+C at a first start) would
    make every later start wait for it forever. Whoever holds our lock is the only one building, so such a file is
    stale, and goes."""
    from torch.utils.cpp_extension import _get_build_directory  # per Python and torch build, as load() picks it

    folder = Path(_get_build_directory(name, verbose=False))
    with open(folder / "explorer.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process building waits here, and only as long as it lives
        (folder / "lock").unlink(missing_ok=True)
        yield folder


def _put_ninja_on_path() -> None:
    """torch runs `ninja` from PATH; the pip package (requirements.txt) installs it next to this Python, which is
    not on PATH when the venv is not activated (as in `make`)."""
    try:
        import ninja
    except ImportError:
        return
    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def default_helpers() -> int:
    """The helper threads the kernels' loops use beside the calling thread: one for each other CPU this process may
    run on, or as OMP_NUM_THREADS asks (the same count torch's own loops use, less the caller)."""
    asked = os.environ.get("OMP_NUM_THREADS", "").strip()
    threads = int(asked) if asked.isdigit() and int(asked) > 0 else len(os.sched_getaffinity(0))
    return max(0, threads - 1)


def loaded() -> ModuleType | None:
    """The extension where a model has already built or loaded it; never builds it (a model without blocks to read
    needs no compiler, and its first token should not wait for one)."""
    return _module


def helpers() -> int:
    """How many helper threads the kernels' loops use now (0 where the kernels are not loaded)."""
    return _module.helpers() if _module is not None else 0


def error() -> str | None:
    return _error if enabled() else "disabled by EXPLORER_KERNELS=0"

