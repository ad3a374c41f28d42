"""A new Gradio session builds no component configuration until one is read (explorer/ui/gradio_sessions.py), and is
otherwise Gradio's own."""
from __future__ import annotations

import importlib
import sys

import pytest
from gradio.blocks import BlocksConfig
from gradio.state_holder import SessionState

from explorer.ui import gradio_sessions


@pytest.fixture(scope="module")
def app(embedded_lm):
    from explorer.model_thread import MODEL_THREAD
    from explorer.ui.blocks import build_app

    return MODEL_THREAD.run(build_app, embedded_lm)


def gradios_own(app) -> SessionState:
    state = SessionState.__new__(SessionState)
    gradio_sessions._GRADIO_INIT(state, app)
    return state


def test_a_new_session_builds_no_configuration_until_one_is_read(app, monkeypatch):
    built = []
    config_for_block = BlocksConfig.config_for_block
    monkeypatch.setattr(BlocksConfig, "config_for_block",
                        staticmethod(lambda _id, *a, **kw: built.append(_id) or config_for_block(_id, *a, **kw)))
    state = SessionState(app)
    assert built == []
    prompt = next(k for k, b in app.blocks.items() if getattr(b, "elem_id", None) == "prompt")
    assert prompt in state.config_values and len(state.config_values) == len(gradios_own(app).config_values)
    built.clear()
    assert state.config_values[prompt]["props"]["elem_id"] == "prompt"
    assert built == [prompt]  # that one alone, once
    state.config_values[prompt]
    assert built == [prompt]


def test_a_session_is_gradios_own_once_its_configurations_are_read(app):
    ours, theirs = SessionState(app), gradios_own(app)
    assert sorted(vars(ours)) == sorted(vars(theirs))
    assert list(ours.components) == list(theirs.components)  # every one, in the blocks' order
    assert ours.STATE_TTL_WHEN_CLOSED == theirs.STATE_TTL_WHEN_CLOSED and ours.state_data == theirs.state_data


def test_a_value_set_in_one_session_stays_in_it(app):
    prompt = next(k for k, b in app.blocks.items() if getattr(b, "elem_id", None) == "prompt")
    one, other = SessionState(app), SessionState(app)
    one._update_value_in_config(prompt, "typed in one session")
    assert one.config_values[prompt]["props"]["value"] == "typed in one session"
    assert other.config_values[prompt]["props"]["value"] != "typed in one session"
    assert [c["props"].get("value") for c in one.components if c["id"] == prompt] == ["typed in one session"]
    del one.config_values[prompt]
    assert prompt not in one.config_values and prompt in other.config_values
    assert len(one.config_values) == len(other.config_values) - 1


def test_without_matplotlib_a_failed_import_is_immediate(monkeypatch):
    monkeypatch.delitem(sys.modules, "matplotlib", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    gradio_sessions.without_matplotlib()
    assert sys.modules["matplotlib"] is None
    with pytest.raises(ImportError):
        import matplotlib  # noqa: F401


def test_with_matplotlib_nothing_changes(monkeypatch):
    monkeypatch.delitem(sys.modules, "matplotlib", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # as if installed
    gradio_sessions.without_matplotlib()
    assert "matplotlib" not in sys.modules
