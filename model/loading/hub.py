"""Hub ids (e.g. HuggingFaceTB/SmolLM2-135M-Instruct): safetensors and tokenizer files through huggingface_hub,
from the local cache first; without a network it fails fast with a message saying how to get the files."""
from __future__ import annotations

from pathlib import Path

HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json"]


class HubUnavailableError(RuntimeError):
    """The files of a hub id are neither cached nor downloadable."""


def fetch(repo_id: str) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=HUB_FILES, etag_timeout=5))
    except Exception as e:  # offline, DNS failure, 404, gated repo: all end in the same advice
        raise HubUnavailableError(
            f"could not get {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). Without a network, "
            f"download it elsewhere with `hf download {repo_id} --include '*.json' '*.safetensors'` and pass the "
            "folder's path; or run without --model to use the embedded SmolLM2-135M-Instruct."
        ) from e
