"""Property-based fuzzing of the model-file readers (GGUF, safetensors, config.json, tokenizer.json): a mutated file
loads exactly like the original or is refused with a clear error (a ValueError / OSError with a message), and never
crashes, hangs or allocates absurd memory. One tiny valid model per format; examples are derandomized."""
from __future__ import annotations

import contextlib
import json
import pickle
import re
import resource
import shutil
import signal
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.control import event as hypothesis_event
from safetensors.torch import save_file
from tokenizers import pre_tokenizers

from model import load_model
from model.loading.gguf_reader import GGUFFile, GGUFFormatError
from tests.conftest import write_tiny_tokenizer

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # numpy dequantizing garbage scales (NaN, overflow)
    pytest.mark.filterwarnings("ignore:unknown tokenizer.ggml.pre:UserWarning"),
]

HIDDEN, LAYERS, HEADS, KV_HEADS, FF, VOCAB = 32, 2, 4, 2, 64, 257
IDS = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]
SECONDS = 120.0  # per load + trace, a bound only a hang reaches (the tiny models take ~20 ms)
HEADROOM = 1 << 30  # bytes one load may allocate; the tiny models need a few MB
ALLOWED = (ValueError, OSError)  # FileNotFoundError, GGUFFormatError, WeightLoadError, ... are subclasses


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- guarded loading ------------------------------------------------------------------------------------------


def event(text: str) -> None:
    """Outcome statistics (pytest --hypothesis-show-statistics); a no-op outside a property."""
    if currently_in_test_context():
        hypothesis_event(text)


class LoadTimeout(Exception):
    """Not a ValueError/OSError: a hang must never pass for a clear error."""


def _vm_data() -> int | None:
    try:
        return int(re.search(r"VmData:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def bounded(seconds: float = SECONDS) -> Iterator[None]:
    """SIGALRM after `seconds`; RLIMIT_DATA at current use + HEADROOM, so that an absurd allocation fails loudly
    (MemoryError / RuntimeError, neither of them a clear error) instead of passing or swapping. The alarm repeats:
    one raised inside a gc callback or __del__ is swallowed."""
    armed = [True]

    def expire(signum, frame):
        if armed[0]:
            raise LoadTimeout(f"still loading after {seconds} s")

    old_handler = signal.signal(signal.SIGALRM, expire)
    old_limit = resource.getrlimit(resource.RLIMIT_DATA)
    used = _vm_data()
    if used is not None:
        soft = used + HEADROOM if old_limit[1] == resource.RLIM_INFINITY else min(used + HEADROOM, old_limit[1])
        resource.setrlimit(resource.RLIMIT_DATA, (soft, old_limit[1]))
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.05)
    try:
        yield
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_DATA, old_limit)


def test_the_bounds_catch_hangs_and_huge_allocations():
    with pytest.raises(LoadTimeout), bounded(0.2):
        while True:
            pass
    with pytest.raises(MemoryError), bounded():
        np.ones(2 * HEADROOM, dtype=np.uint8)


@dataclass
class Loaded:
    logits: torch.Tensor
    shapes: dict[str, tuple[int, ...]]


def attempt(source: Path, seconds: float = SECONDS) -> Loaded | Exception:
    """The loaded model's logits on IDS, or the clear error it was refused with. Anything else fails the test."""
    error = None
    with bounded(seconds):
        try:
            lm = load_model(source, device="cpu", dtype="float32")
        except ALLOWED as e:
            error = e
        else:
            logits = lm.trace(IDS).logits
    if error is not None:
        assert str(error).strip(), f"{type(error).__name__} without a message"
        event(f"refused: {type(error).__name__}")
        return error
    shapes = {k: tuple(v.shape) for k, v in lm.decoder.state_dict().items()}
    return Loaded(logits, shapes)


def identical_or_refused(result: Loaded | Exception, ref: Loaded) -> None:
    if isinstance(result, Loaded):
        assert result.shapes == ref.shapes
        assert torch.equal(result.logits, ref.logits), "loaded a different model without an error"
        event("loaded: identical")


def refused_or_well_shaped(result: Loaded | Exception, ref: Loaded, same_parameters: bool = True) -> None:
    """For changes no reader can detect without checksums: no crash, and a loaded model has the right shapes."""
    if isinstance(result, Loaded):
        if same_parameters:
            assert result.shapes == ref.shapes
        assert result.logits.shape == ref.logits.shape
        event("loaded: " + ("identical" if torch.equal(result.logits, ref.logits) else "different"))


# ---- the tiny model, as a GGUF file and as a Hugging Face directory ----------------------------------------------


def hf_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    d_head = HIDDEN // HEADS
    state = {"model.embed_tokens.weight": r(VOCAB, HIDDEN), "model.norm.weight": 1 + r(HIDDEN),
             "lm_head.weight": r(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        state |= {p + "input_layernorm.weight": 1 + r(HIDDEN), p + "post_attention_layernorm.weight": 1 + r(HIDDEN),
                  p + "self_attn.q_proj.weight": r(HEADS * d_head, HIDDEN),
                  p + "self_attn.k_proj.weight": r(KV_HEADS * d_head, HIDDEN),
                  p + "self_attn.v_proj.weight": r(KV_HEADS * d_head, HIDDEN),
                  p + "self_attn.o_proj.weight": r(HIDDEN, HEADS * d_head),
                  p + "mlp.gate_proj.weight": r(FF, HIDDEN), p + "mlp.up_proj.weight": r(FF, HIDDEN),
                  p + "mlp.down_proj.weight": r(HIDDEN, FF)}
    return state


# what transformers' LlamaConfig writes, less the keys the loader ignores
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
          "intermediate_size": FF, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
          "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "hidden_act": "silu", "rms_norm_eps": 1e-5,
          "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": False,
          "attention_bias": False, "torch_dtype": "float32"}
GGUF_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
GGUF_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}


def write_gguf(path: Path) -> None:
    """The same model in GGUF: attention matrices Q8_0, the rest F32 (both data paths of the reader)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(sorted(pre_tokenizers.ByteLevel.alphabet()) + ["<|endoftext|>"])
    w.add_token_types([1] * 256 + [3])
    w.add_token_merges([])
    w.add_eos_token_id(256)
    for name, t in hf_state().items():
        data = t.numpy()
        if name in GGUF_TOP:
            w.add_tensor(GGUF_TOP[name], data)
            continue
        i, rest = name.removeprefix("model.layers.").split(".", 1)
        module, kind = rest.rsplit(".", 1)
        if module in ("self_attn.q_proj", "self_attn.k_proj"):  # llama.cpp's convert-time row permutation
            n = HEADS if module == "self_attn.q_proj" else KV_HEADS
            data = data.reshape(n, 2, data.shape[0] // n // 2, HIDDEN).swapaxes(1, 2).reshape(data.shape)
        if module.startswith("self_attn."):
            q8 = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(f"blk.{i}.{GGUF_LAYER[module]}.{kind}", gguf.quants.quantize(data, q8), raw_dtype=q8)
        else:
            w.add_tensor(f"blk.{i}.{GGUF_LAYER[module]}.{kind}", data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@dataclass(frozen=True)
class Field:
    kind: str
    offset: int
    width: int
    owner: str  # the metadata key or tensor it belongs to


SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def header_fields(data: bytes) -> tuple[list[Field], int]:
    """Where each count, length, type id, dimension and offset of a GGUF header lives (written here independently
    of the reader under test), and where the header ends. Also u32 metadata values, as kind "u32"."""
    fields: list[Field] = []
    pos = 4

    def number(kind: str, width: int, owner: str = "") -> int:
        nonlocal pos
        fields.append(Field(kind, pos, width, owner))
        pos += width
        return int.from_bytes(data[pos - width : pos], "little")

    def string(kind: str, owner: str = "") -> str:
        nonlocal pos
        n = number(kind, 8, owner)
        pos += n
        return data[pos - n : pos].decode()

    number("version", 4)
    n_tensors, n_kv = number("tensor_count", 8), number("kv_count", 8)
    for _ in range(n_kv):
        key = string("key_length")
        vtype = number("value_type", 4, key)
        if vtype == 8:
            string("string_length", key)
        elif vtype == 9:
            itype, n = number("array_item_type", 4, key), number("array_length", 8, key)
            for _ in range(n):
                if itype == 8:
                    string("string_length", key)
                else:
                    pos += SCALAR_SIZES[itype]
        elif vtype == 4:
            number("u32", 4, key)
        else:
            pos += SCALAR_SIZES[vtype]
    for _ in range(n_tensors):
        name = string("name_length")
        for _ in range(number("n_dims", 4, name)):
            number("dim", 8, name)
        number("tensor_type", 4, name)
        number("tensor_offset", 8, name)
    return fields, pos


@dataclass(repr=False)
class GGUFCase:
    path: Path  # mutants are written here
    data: bytes
    fields: list[Field]
    header_end: int
    data_start: int
    ref: Loaded

    def __repr__(self) -> str:  # hypothesis prints the fixtures of a failing example
        return f"GGUFCase({self.path.parent})"


def load_reference(source: Path) -> Loaded:
    result = attempt(source)
    assert isinstance(result, Loaded), result
    return result


@pytest.fixture(scope="module")
def gguf_case(tmp_path_factory) -> GGUFCase:
    folder = tmp_path_factory.mktemp("fuzz_gguf")
    write_gguf(folder / "tiny.gguf")
    data = (folder / "tiny.gguf").read_bytes()
    fields, header_end = header_fields(data)
    data_start = min(t.offset for t in GGUFFile(folder / "tiny.gguf").tensors.values())
    return GGUFCase(folder / "mutant.gguf", data, fields, header_end, data_start,
                    load_reference(folder / "tiny.gguf"))


def attempt_gguf(case: GGUFCase, data: bytes | bytearray) -> Loaded | Exception:
    """Load a GGUF mutant (written to the case's path)."""
    case.path.write_bytes(bytes(data))
    return attempt(case.path)


# ---- 1. GGUF header --------------------------------------------------------------------------------------------

U64 = [0, 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 32, 2**64 - 1]
U32 = [0, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0xFFFF]
EXTREMES = {  # every value here is invalid for the field, or leaves the model as it is
    "version": U32 + [1, 4],
    "n_dims": U32 + [1, 3, 5],
    "value_type": U32 + [13],
    "array_item_type": U32 + [13],
    "tensor_type": U32 + [4, max(gguf.GGMLQuantizationType) + 1],  # 4: a removed type
}


@fuzz(500)
@given(data=st.data())
def test_gguf_header_counts_set_to_extremes(gguf_case, data):
    """Counts, lengths, dims, offsets and type ids overwritten with extreme values: identical load or clear error."""
    case = gguf_case
    kind = data.draw(st.sampled_from(sorted({f.kind for f in case.fields} - {"u32"})), label="field")
    field = data.draw(st.sampled_from([f for f in case.fields if f.kind == kind]))
    values = EXTREMES.get(kind, U64 + [len(case.data), len(case.data) + 1, case.data_start - 1])
    value = data.draw(st.sampled_from(values), label="value") % (1 << 8 * field.width)
    mutant = bytearray(case.data)
    mutant[field.offset : field.offset + field.width] = value.to_bytes(field.width, "little")
    identical_or_refused(attempt_gguf(case, mutant), case.ref)


@fuzz(200)
@given(data=st.data())
def test_gguf_truncated(gguf_case, data):
    case = gguf_case
    edges = sorted({0, 4, 8, 16, 23, 24, case.header_end, case.data_start}
                   | {f.offset + d for f in case.fields for d in (0, 1, f.width - 1)})
    n = data.draw(st.one_of(st.sampled_from(edges), st.integers(0, len(case.data) - 1)), label="length")
    identical_or_refused(attempt_gguf(case, case.data[:n]), case.ref)


@fuzz(500)
@given(data=st.data())
def test_gguf_header_bytes_changed(gguf_case, data):
    """Random bytes of the header changed. A changed metadata value (rope base, eps, a token's text, a tensor's
    type between two of the same size) is a different model no reader can tell from the original: those may load,
    provided the reader parsed something different; a header that parses the same must give the same model."""
    case = gguf_case
    edits = data.draw(st.lists(st.tuples(st.integers(0, case.data_start - 1), st.integers(0, 255)),
                               min_size=1, max_size=4), label="edits")
    mutant = bytearray(case.data)
    for pos, byte in edits:
        mutant[pos] = byte
    result = attempt_gguf(case, mutant)
    if isinstance(result, Loaded) and not torch.equal(result.logits, case.ref.logits):
        parsed, original = GGUFFile(case.path), GGUFFile(case.path.with_name("tiny.gguf"))
        assert (parsed.metadata, parsed.tensors) != (original.metadata, original.tensors)
    refused_or_well_shaped(result, case.ref)


@fuzz(200)
@given(data=st.data())
def test_gguf_header_bytes_inserted_or_deleted(gguf_case, data):
    """Everything after the change moves. In the padding before the data, the header still parses the same and
    the tensors read moved bytes, so that case only has to be crash-free; anywhere else: identical or refused."""
    case = gguf_case
    pos = data.draw(st.one_of(st.integers(0, case.data_start - 1),
                              st.sampled_from([f.offset for f in case.fields])), label="position")
    if data.draw(st.booleans(), label="insert"):
        mutant = case.data[:pos] + data.draw(st.binary(min_size=1, max_size=16)) + case.data[pos:]
    else:
        mutant = case.data[:pos] + case.data[pos + data.draw(st.integers(1, 16), label="deleted"):]
    result = attempt_gguf(case, mutant)
    if pos >= case.header_end - 8:  # the last field is a tensor offset whose high bytes are zero, as padding is
        refused_or_well_shaped(result, case.ref)
    else:
        identical_or_refused(result, case.ref)


@fuzz(120)
@given(data=st.data())
def test_gguf_tensor_type_swapped(gguf_case, data):
    """Any ggml type id on any tensor: refused, or (a type of the same size: undetectable) loaded with the right
    shapes; never an exception from the dequantizers."""
    case = gguf_case
    field = data.draw(st.sampled_from([f for f in case.fields if f.kind == "tensor_type"]))
    qtype = data.draw(st.sampled_from(list(gguf.GGMLQuantizationType)), label="type")
    mutant = bytearray(case.data)
    mutant[field.offset : field.offset + 4] = int(qtype).to_bytes(4, "little")
    refused_or_well_shaped(attempt_gguf(case, mutant), case.ref)


# ---- 2. GGUF tensor data ---------------------------------------------------------------------------------------


@fuzz(120)
@given(data=st.data())
def test_gguf_data_bytes_changed(gguf_case, data):
    """Tensor data has no checksum: changed weights (NaN, inf, garbage Q8_0 scales) cannot be detected. The
    property is only: no crash, and a loaded model has the right shapes."""
    case = gguf_case
    edits = data.draw(st.lists(st.tuples(st.integers(case.data_start, len(case.data) - 1), st.integers(0, 255)),
                               min_size=1, max_size=16), label="edits")
    mutant = bytearray(case.data)
    for pos, byte in edits:
        mutant[pos] = byte
    refused_or_well_shaped(attempt_gguf(case, mutant), case.ref)


# ---- model sizes the metadata declares wrongly (once crashes or hangs past the reader) --------------------------


def set_u32(data: bytes, fields: list[Field], key: str, value: int) -> bytes:
    field = next(f for f in fields if f.kind == "u32" and f.owner == key)
    return data[: field.offset] + struct.pack("<I", value) + data[field.offset + 4 :]


def set_dim(data: bytes, fields: list[Field], tensor: str, index: int, value: int) -> bytes:
    field = [f for f in fields if f.kind == "dim" and f.owner == tensor][index]
    return data[: field.offset] + struct.pack("<Q", value) + data[field.offset + 8 :]


def rename_key(data: bytes, fields: list[Field], key: str) -> bytes:
    """The key spelled with its last letter changed: to the loader, the key is missing."""
    end = next(f for f in fields if f.kind == "value_type" and f.owner == key).offset
    return data[: end - 1] + b"#" + data[end:]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the alarm, raised in a gc hook
@pytest.mark.parametrize("mutation", ["no head_count", "head_count 0", "head_count_kv 3", "block_count 2**31",
                                      "no tokens", "attn_q rows 1"])
def test_gguf_wrong_model_sizes_are_refused(gguf_case, mutation):
    case, f = gguf_case, gguf_case.fields
    data = {
        "no head_count": lambda: rename_key(case.data, f, "llama.attention.head_count"),
        "head_count 0": lambda: set_u32(case.data, f, "llama.attention.head_count", 0),
        "head_count_kv 3": lambda: set_u32(case.data, f, "llama.attention.head_count_kv", 3),
        "block_count 2**31": lambda: set_u32(case.data, f, "llama.block_count", 2**31),
        "no tokens": lambda: rename_key(case.data, f, "tokenizer.ggml.tokens"),
        "attn_q rows 1": lambda: set_dim(case.data, f, "blk.0.attn_q.weight", 1, 1),  # reshaped before checked
    }[mutation]()
    case.path.write_bytes(data)
    assert isinstance(attempt(case.path, seconds=1.0), ALLOWED)


def test_gguf_deeply_nested_arrays_are_refused(tmp_path):
    """Was a RecursionError: arrays of arrays, nested 5000 deep in 60 kB."""
    nested = struct.pack("<IQ", 9, 1) * 5000 + struct.pack("<IQ", 0, 0)
    path = tmp_path / "deep.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9)
                     + nested)
    with pytest.raises(GGUFFormatError, match="nested"):
        GGUFFile(path)


# ---- 3. safetensors --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class DirCase:
    original: Path  # the valid directory, never changed
    path: Path  # a copy: each example changes one file and puts it back
    ref: Loaded

    def __repr__(self) -> str:
        return f"DirCase({self.original})"

    @contextlib.contextmanager
    def mutant(self, name: str, content: bytes | str) -> Iterator[Path]:
        target = self.path / name
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        try:
            yield self.path
        finally:
            if (self.original / name).exists():
                shutil.copyfile(self.original / name, target)
            else:
                target.unlink()

    def attempt(self, name: str, content: bytes | str) -> Loaded | Exception:
        with self.mutant(name, content) as folder:
            return attempt(folder)


@pytest.fixture(scope="module")
def dir_case(tmp_path_factory) -> DirCase:
    original = tmp_path_factory.mktemp("fuzz_hf") / "tiny"
    original.mkdir()
    save_file(hf_state(), str(original / "model.safetensors"), metadata={"format": "pt"})
    (original / "config.json").write_text(json.dumps(CONFIG, indent=2))
    write_tiny_tokenizer(original)
    copy = original.with_name("mutant")
    shutil.copytree(original, copy)
    return DirCase(original, copy, load_reference(original))


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_safetensors(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def st_bytes(case: DirCase) -> bytes:
    return (case.original / "model.safetensors").read_bytes()


@fuzz(250)
@given(data=st.data())
def test_safetensors_bytes_changed(dir_case, data):
    """Header bytes (length or JSON): identical or refused. Data bytes: undetectable, only crash-free."""
    original = st_bytes(dir_case)
    header_end = 8 + struct.unpack("<Q", original[:8])[0]
    in_header = data.draw(st.booleans(), label="in header")
    span = (0, header_end - 1) if in_header else (header_end, len(original) - 1)
    edits = data.draw(st.lists(st.tuples(st.integers(*span), st.integers(0, 255)), min_size=1, max_size=4))
    mutant = bytearray(original)
    for pos, byte in edits:
        mutant[pos] = byte
    result = dir_case.attempt("model.safetensors", bytes(mutant))
    (identical_or_refused if in_header else refused_or_well_shaped)(result, dir_case.ref)


@fuzz(100)
@given(data=st.data())
def test_safetensors_header_length_and_truncation(dir_case, data):
    original = st_bytes(dir_case)
    header_len = struct.unpack("<Q", original[:8])[0]
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.one_of(st.sampled_from([0, 1, 7, 8, 9, 8 + header_len - 1, 8 + header_len]),
                                  st.integers(0, len(original) - 1)), label="length")
        mutant = original[:cut]
    else:
        value = data.draw(st.one_of(st.sampled_from(U64 + [header_len - 1, header_len + 1, len(original)]),
                                    st.integers(0, 2**64 - 1)), label="header length")
        mutant = struct.pack("<Q", value) + original[8:]
    identical_or_refused(dir_case.attempt("model.safetensors", mutant), dir_case.ref)


DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "F8_E4M3",
          "F8_E5M2", "F8_E8M0", "F4", "", "f32", "float32", "F32 "]
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=6),
                 st.lists(st.integers(-2, 2**64), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                                max_size=2))


@fuzz(300)
@given(data=st.data())
def test_safetensors_header_entries_changed(dir_case, data):
    """Structured changes of the JSON header: dtypes, shapes that do not match the byte ranges, data_offsets out
    of range or overlapping, missing and extra tensors. Identical or refused."""
    header, body = split_safetensors(st_bytes(dir_case))
    names = [k for k in header if k != "__metadata__"]
    name = data.draw(st.sampled_from(names), label="tensor")
    entry = header[name]
    change = data.draw(st.sampled_from(["dtype", "shape", "offsets", "entry", "drop", "drop+cut", "copy", "add",
                                        "rename", "metadata"]), label="change")
    if change == "dtype":
        entry["dtype"] = data.draw(st.one_of(st.sampled_from(DTYPES), JUNK), label="dtype")
    elif change == "shape":
        entry["shape"] = data.draw(st.one_of(
            st.lists(st.sampled_from([0, 1, 2, 8, 16, 32, 64, 257, 2**31, 2**63, 2**64 - 1, -1]), max_size=4),
            st.just(entry["shape"][::-1]), JUNK), label="shape")
    elif change == "offsets":
        start, end = entry["data_offsets"]
        other = header[data.draw(st.sampled_from(names))]["data_offsets"]
        entry["data_offsets"] = data.draw(st.one_of(
            st.lists(st.sampled_from([0, start, end, start + 4, end - 4, len(body), len(body) + 4, 2**64 - 1, -4]),
                     min_size=2, max_size=2),
            st.just(other), st.just([end, start]), JUNK), label="offsets")
    elif change == "entry":
        header[name] = data.draw(JUNK, label="entry")
    elif change == "drop":  # leaves a hole in the data
        del header[name]
    elif change == "drop+cut":  # a valid file without that tensor
        start, end = header.pop(name)["data_offsets"]
        body = body[:start] + body[end:]
        for e in header.values():
            if "data_offsets" in e and e["data_offsets"][0] >= end:
                e["data_offsets"] = [e["data_offsets"][0] - (end - start), e["data_offsets"][1] - (end - start)]
    elif change == "copy":  # a second name for the same bytes: overlaps
        header[data.draw(st.text(min_size=1, max_size=8), label="new name")] = dict(entry)
    elif change == "add":  # a valid file with one more tensor
        extra = data.draw(st.sampled_from(["model.layers.2.mlp.up_proj.weight", "lm_head.bias", "x",
                                           "model.layers.0.self_attn.rotary_emb.inv_freq"]), label="extra")
        header[extra] = {"dtype": "F32", "shape": [4], "data_offsets": [len(body), len(body) + 16]}
        body += bytes(16)
    elif change == "rename":
        header[data.draw(st.text(max_size=40), label="new name")] = header.pop(name)
    else:
        header["__metadata__"] = data.draw(JUNK, label="metadata")
    mutant = join_safetensors(header, body)
    identical_or_refused(dir_case.attempt("model.safetensors", mutant), dir_case.ref)


@fuzz(50)
@given(content=st.one_of(st.binary(max_size=256), st.sampled_from([
    pickle.dumps({"model.embed_tokens.weight": [0.0] * 8}), b"\x80\x04K\x01.", b"PK\x03\x04" + bytes(60),
    b"GGUF" + bytes(60), struct.pack("<Q", 2) + b"{}", struct.pack("<Q", 2) + b"[]"])))
def test_not_a_safetensors_file(dir_case, content):
    """model.safetensors that is a pickle, a zip (torch.save), a GGUF file or random bytes: refused."""
    result = dir_case.attempt("model.safetensors", content)
    assert isinstance(result, ALLOWED)


def test_integer_tensor_where_floats_belong_is_refused(dir_case):
    """F32 relabelled I32 has the same byte size: was a RuntimeError from load_state_dict (first tensor) or its
    integer values converted to floats, a different model loaded without an error."""
    header, body = split_safetensors(st_bytes(dir_case))
    header["model.norm.weight"]["dtype"] = "I32"
    result = dir_case.attempt("model.safetensors", join_safetensors(header, body))
    assert isinstance(result, ValueError) and "floating" in str(result)


# ---- 4. config.json, tokenizer files ---------------------------------------------------------------------------

# keys that fix tensor shapes: any other value than the original's must be refused
SHAPE_KEYS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size", "head_dim", "model_type"]
SIZES = st.sampled_from([0, -1, -32, 10**12, 2**63, 2**64, 2**70, 10**6, 1.5, float("inf"), float("nan"), "three",
                         "32", True])


@fuzz(300)
@given(data=st.data())
def test_config_values_changed(dir_case, data):
    """A key set to garbage or removed. Keys that fix shapes: identical or refused. Others (eps, rope base, tied
    head, max positions): those loads are other models, not errors; only crash-free."""
    key = data.draw(st.sampled_from(sorted(set(CONFIG) | set(SHAPE_KEYS) | {"rope_scaling", "sliding_window"})),
                    label="key")
    config = dict(CONFIG)
    if data.draw(st.booleans(), label="remove"):
        config.pop(key, None)
    else:
        config[key] = data.draw(st.one_of(SIZES, JUNK), label="value")
    result = dir_case.attempt("config.json", json.dumps(config))
    if key in SHAPE_KEYS:
        identical_or_refused(result, dir_case.ref)
    else:  # a truthy tie_word_embeddings drops lm_head: another model, with the same logits shape
        refused_or_well_shaped(result, dir_case.ref, same_parameters=False)


@fuzz(100)
@given(data=st.data())
def test_config_cut_short_or_garbage(dir_case, data):
    text = json.dumps(CONFIG)
    content = data.draw(st.one_of(st.builds(lambda n: text[:n], st.integers(0, len(text) - 1)),
                                  st.binary(max_size=64), JUNK.map(json.dumps)), label="config.json")
    assert isinstance(dir_case.attempt("config.json", content), ALLOWED)


@pytest.mark.parametrize("content", ["", "[]", "null", "3", '"llama"', b"\xff\xfe{}", "[" * 100_000])
def test_config_not_an_object(dir_case, content):
    """Were a RecursionError from json (100,000 nested brackets) and an AttributeError (a list, null)."""
    result = dir_case.attempt("config.json", content)
    assert isinstance(result, ALLOWED) and "config.json" in str(result)


def test_absurd_config_sizes_are_refused_without_building(dir_case):
    """Were a 10**9-block decoder being built (a hang), a TypeError from torch for 2**70, a RuntimeError for a
    negative size, and an OverflowError in the attention mask of the first forward for a 2**70 window. A decoder that
    were built after all would hang past attempt()'s bound or fail its memory bound."""
    for key, value in [("num_hidden_layers", 10**9), ("hidden_size", 10**12), ("intermediate_size", 2**70),
                       ("num_key_value_heads", -1), ("sliding_window", 2**70)]:
        result = dir_case.attempt("config.json", json.dumps(CONFIG | {key: value}))
        assert isinstance(result, ValueError) and "do not fit the checkpoint" in str(result), (key, result)


@fuzz(200)
@given(data=st.data())
def test_tokenizer_files_changed(dir_case, data):
    """tokenizer.json / tokenizer_config.json cut short, bytes changed, or a top-level value replaced. The logits
    of fixed ids do not depend on the tokenizer: identical or refused."""
    name = data.draw(st.sampled_from(["tokenizer.json", "tokenizer_config.json"]), label="file")
    text = (dir_case.original / name).read_text()
    how = data.draw(st.sampled_from(["cut", "bytes", "value"]), label="change")
    if how == "cut":
        content: bytes | str = text[: data.draw(st.integers(0, len(text) - 1), label="length")]
    elif how == "bytes":
        mutant = bytearray(text.encode())
        byte = st.one_of(st.integers(32, 126), st.integers(0, 255))  # mostly still UTF-8
        for pos, byte in data.draw(st.lists(st.tuples(st.integers(0, len(mutant) - 1), byte),
                                            min_size=1, max_size=4), label="edits"):
            mutant[pos] = byte
        content = bytes(mutant)
    else:
        spec = json.loads(text)
        key = data.draw(st.sampled_from(sorted(spec) + ["added_tokens_decoder", "chat_template"]), label="key")
        spec[key] = data.draw(JUNK, label="value")
        content = json.dumps(spec)
    identical_or_refused(dir_case.attempt(name, content), dir_case.ref)


@pytest.mark.parametrize("content", ["{", "[]", '{"weight_map": 3}', '{"weight_map": {"a": 5}}', '{"x": {}}',
                                     '{"weight_map": {"a": "missing.safetensors"}}'])
def test_shard_index_garbage_is_refused(dir_case, content):
    assert isinstance(dir_case.attempt("model.safetensors.index.json", content), ALLOWED)
