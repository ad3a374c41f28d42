"""Bad model sources give clear errors: pickle checkpoints, unknown architectures, missing files, broken GGUF,
hub ids without a network."""
from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys

import pytest

from model import UnsupportedModelError, load_model
from model.loading.embedded import embedded_gguf_path
from model.loading.gguf_reader import GGUFFile, GGUFFormatError
from model.loading.hf_dir import PickleRefusedError


def test_pickle_file_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    payload = tmp_path / "model.bin"
    # a pickle that would create a file if anything unpickled it
    payload.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(PickleRefusedError, match="pickle"):
        load_model(payload)
    assert not marker.exists()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_directory_with_only_pickle_weights_refused(tmp_path):
    from tests.conftest import write_tiny_tokenizer

    cfg = dict(model_type="llama", vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
               num_attention_heads=4)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    write_tiny_tokenizer(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(PickleRefusedError, match="pytorch_model.bin"):
        load_model(tmp_path)


def test_unknown_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(UnsupportedModelError) as e:
        load_model(tmp_path)
    message = str(e.value)
    assert "MambaForCausalLM" in message
    for name in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GPT2LMHeadModel"):
        assert name in message


def test_missing_file_and_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model"):
        load_model(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


def test_hub_id_offline_fails_with_advice(tmp_path):
    code = ("from model import load_model\n"
            "try:\n    load_model('some-org/some-model-that-is-not-cached')\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")}
    # a bound only a hang reaches (retrying a network that is not there, say)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.startswith("HubUnavailableError"), out.stdout + out.stderr
    assert "hf download some-org/some-model-that-is-not-cached" in out.stdout


def _header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


@pytest.mark.parametrize("content,message", [
    (b"", "too short"),
    (b"NOTGGUF" + bytes(40), "bad magic"),
    (_header(10**15, 0), "absurd counts"),
    (_header(0, 1) + struct.pack("<Q", 10**12) + b"key", "cannot fit"),
    (_header(1, 0) + struct.pack("<Q", 1) + b"w" + struct.pack("<I", 1) + struct.pack("<Q", 8)
     + struct.pack("<IQ", 0, 0), "outside"),
])
def test_broken_gguf_headers_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFFormatError, match=message):
        GGUFFile(path)
    with pytest.raises(ValueError):
        load_model(path)


def test_truncated_real_gguf_is_refused(tmp_path):
    data = embedded_gguf_path().read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFFormatError, match="outside"):
        GGUFFile(path)
