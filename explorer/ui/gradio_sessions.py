"""What Gradio does for every new session, made cheap: a class whose students arrive together waits for it.

Gradio (6.31, pinned) builds a SessionState for each session at its first request, on the server's event loop. That
builds the configuration of every component of the app up front (this app has 215), though a session only ever
reads the few its events touch, and a deep link (which this app does not offer) reads them all. It took 11 ms in
a quiet process and 33 ms in a busy server (py-spy on bench.serving). The event loop holds the GIL meanwhile, so
16 sessions arriving together waited 0.5 s for the last one's first answer, and 32 sessions waited a second.
lazy_session_configs() makes SessionState compute each configuration when it is first read. Each is still
computed from the session's own copy of the app's blocks, as before.

Gradio also switches matplotlib's backend around every event it runs. Without matplotlib, each switch is a failed
import that searches sys.path, twice an event: 5% of the event loop's time in that profile. without_matplotlib()
makes the failed import immediate."""
from __future__ import annotations

import importlib.util
import sys
from typing import Any, Callable, Iterable

from gradio.state_holder import SessionState

_GRADIO_INIT = SessionState.__init__


class LazyConfigs(dict):
    """SessionState.config_values (a block's id -> its configuration), each entry computed when first read. Reading
    the whole (items, values, iteration, a copy, a comparison) computes the rest, in the blocks' order."""

    def __init__(self, ids: Iterable[int], compute: Callable[[int], dict]) -> None:
        super().__init__()
        self._order = list(ids)  # Gradio's order: the blocks'
        self._pending = set(self._order)  # ids not computed yet
        self._compute = compute

    def _fill(self, key: Any) -> None:
        if key in self._pending:
            self._pending.discard(key)
            super().__setitem__(key, self._compute(key))

    def _fill_all(self) -> None:
        if self._pending:
            for key in list(self._pending):
                self._fill(key)
            done = dict(super().items())
            super().clear()
            super().update({k: done.pop(k) for k in self._order if k in done} | done)

    def __getitem__(self, key: Any) -> dict:
        self._fill(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __setitem__(self, key: Any, value: dict) -> None:
        self._pending.discard(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        if key in self._pending:
            self._pending.discard(key)
        else:
            super().__delitem__(key)

    def __contains__(self, key: Any) -> bool:
        return key in self._pending or super().__contains__(key)

    def __len__(self) -> int:
        return len(self._pending) + super().__len__()



def _reading_the_whole(name: str) -> Callable:
    """dict's method `name`, after every configuration is computed (it reads them all)."""
    method = getattr(dict, name)

    def whole(self: LazyConfigs, *args: Any) -> Any:
        self._fill_all()
        return method(self, *args)

    whole.__name__ = name
    return whole


for _name in ("__iter__", "keys", "values", "items", "copy", "__eq__", "__repr__"):
    setattr(LazyConfigs, _name, _reading_the_whole(_name))


def _lazy_init(self: SessionState, blocks: Any) -> None:
    """SessionState.__init__ with config_values lazy: everything else as Gradio sets it (test_gradio_sessions checks
    that against Gradio's own)."""
    _GRADIO_INIT(self, _NoBlocks(blocks))  # its own copy of the app's blocks, no configuration built
    config = self.blocks_config
    self.config_values = LazyConfigs((k for k in config.blocks if k in blocks.blocks),
                                     lambda k: config.config_for_block(k, [], config.blocks[k]))


class _NoBlocks:
    """The app as Gradio's own SessionState.__init__ sees it under _lazy_init: the app's configuration (which Gradio
    copies for the session), but no blocks to build a configuration for (the lazy ones replace its empty ones)."""

    def __init__(self, blocks: Any) -> None:
        self.default_config = blocks.default_config
        self.blocks: dict = {}


def lazy_session_configs() -> None:
    """From now on, every SessionState computes its components' configurations when first read (idempotent)."""
    SessionState.__init__ = _lazy_init


def without_matplotlib() -> None:
    """Where matplotlib is not installed, `import matplotlib` fails at once instead of searching sys.path again."""
    if "matplotlib" not in sys.modules and importlib.util.find_spec("matplotlib") is None:
        sys.modules["matplotlib"] = None  # type: ignore[assignment]
