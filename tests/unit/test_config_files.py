"""Config paths typed by a user (explorer/config_files.py): symlinks out of an allowed folder, FIFOs, devices, large
files, other files and refused files' contents, each refused with a sentence that names no absolute path."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from explorer.config_files import MAX_CONFIG_BYTES, config_name, read_config_json

CONFIG = {"model_type": "llama", "hidden_size": 32}
SECRET = "outside-model-type-7f3a"  # what a file outside the allowed folder holds; no message may show it


@pytest.fixture()
def folders(tmp_path) -> tuple[Path, Path]:
    """(allowed, outside): the operator allows the first; the second holds a JSON config no user may read."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"model_type": SECRET}))
    return allowed.resolve(), outside.resolve()


def refusal(path: Path | str, roots: list[Path]) -> str:
    with pytest.raises(ValueError) as e:
        read_config_json(str(path), roots)
    message = str(e.value)
    assert SECRET not in message and "/" not in message.replace("assets/", ""), message  # no absolute path
    return message


def test_a_file_or_a_folder_in_an_allowed_folder_is_read(folders):
    allowed, _ = folders
    (allowed / "m").mkdir()
    (allowed / "m" / "config.json").write_text(json.dumps(CONFIG))
    (allowed / "other.config.json").write_text(json.dumps(CONFIG))
    assert read_config_json(str(allowed / "m"), [allowed]) == CONFIG
    assert read_config_json(str(allowed / "m" / "config.json"), [allowed]) == CONFIG
    assert read_config_json(str(allowed / "m" / ".." / "other.config.json"), [allowed]) == CONFIG


def test_a_symlinked_config_json_pointing_outside_is_refused_unread(folders):
    allowed, outside = folders
    (allowed / "m").mkdir()
    (allowed / "m" / "config.json").symlink_to(outside / "config.json")
    (allowed / "linked.json").symlink_to(outside / "config.json")
    (allowed / "linked-folder").symlink_to(outside, target_is_directory=True)
    for typed in (allowed / "m", allowed / "m" / "config.json", allowed / "linked.json", allowed / "linked-folder",
                  allowed / ".." / "outside" / "config.json", outside):
        assert "only opens configs under" in refusal(typed, [allowed])


def test_a_symlink_that_stays_inside_is_followed(folders):
    allowed, _ = folders
    (allowed / "real.json").write_text(json.dumps(CONFIG))
    (allowed / "alias.json").symlink_to(allowed / "real.json")
    assert read_config_json(str(allowed / "alias.json"), [allowed]) == CONFIG


def test_a_fifo_is_refused_without_blocking(folders):
    """A FIFO with no writer blocks whoever opens it for reading; the reader runs on a thread the test can abandon."""
    allowed, _ = folders
    os.mkfifo(allowed / "fifo.json")
    (allowed / "pipe").mkdir()
    os.mkfifo(allowed / "pipe" / "config.json")
    outcomes: list[str] = []

    def read_both() -> None:
        for typed in (allowed / "fifo.json", allowed / "pipe"):
            try:
                read_config_json(str(typed), [allowed])
                outcomes.append("read")
            except ValueError as e:
                outcomes.append(str(e))

    reader = threading.Thread(target=read_both, daemon=True)
    reader.start()
    reader.join(timeout=60)  # only a blocked open reaches this bound
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert outcomes == ["that is not a regular file"] * 2


def test_other_files_and_folders_named_as_configs_are_refused(folders):
    allowed, _ = folders
    (allowed / "notes.txt").write_text(json.dumps(CONFIG))
    (allowed / "folder.json").mkdir()
    assert refusal(allowed / "notes.txt", [allowed]) == "expected a .json file (or a folder holding config.json)"
    assert "no such file" in refusal(allowed / "folder.json", [allowed])  # a folder: its config.json is missing


def test_a_file_over_the_size_cap_is_refused_unread(folders):
    allowed, _ = folders
    big = allowed / "big.json"
    big.write_text(json.dumps({"model_type": SECRET, "pad": "x" * MAX_CONFIG_BYTES}))
    assert "too large" in refusal(big, [allowed])


def test_bad_contents_of_an_allowed_file_get_a_sentence(folders):
    allowed, _ = folders
    cases = {"broken.json": b"{not json", "list.json": b"[1, 2]", "latin.json": '{"a": "\xe9"}'.encode("latin-1")}
    for name, content in cases.items():
        (allowed / name).write_bytes(content)
    assert "not valid JSON (Expecting property name" in refusal(allowed / "broken.json", [allowed])
    assert refusal(allowed / "list.json", [allowed]) == "the file does not hold a JSON object"
    assert refusal(allowed / "latin.json", [allowed]) == "the file is not UTF-8 text"
    assert "no such file" in refusal(allowed / "missing.json", [allowed])
    assert "type the path" in refusal("  ", [allowed])


def test_config_name_comes_from_the_typed_path():
    assert config_name("models/tiny-llama") == "tiny-llama"
    assert config_name("models/tiny-llama/config.json") == "tiny-llama"
    assert config_name("assets/kimi-k2-instruct.config.json") == "kimi-k2-instruct"
    assert config_name("other.json") == "other"


def test_the_architecture_tab_reads_through_the_checks(folders):
    """The tab's reader: a symlinked config.json once made it echo the outside file's model_type."""
    from explorer.ui.architecture_tab import read_config

    allowed, outside = folders
    (allowed / "m").mkdir()
    (allowed / "m" / "config.json").symlink_to(outside / "config.json")
    with pytest.raises(ValueError) as e:
        read_config(str(allowed / "m"), [allowed])
    assert SECRET not in str(e.value) and "only opens configs under" in str(e.value)
