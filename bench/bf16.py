"""What a Space decodes: the hub's SmolLM2 bf16 safetensors, loaded as float32 on the CPU. Made here from the
embedded model's weights in bf16 (no hub), decoded from its bf16 values (model/fast: bf16_weights) and by the float32
reference (EXPLORER_KERNELS=0), both in this run: tokens/s, the ratio, and whether the tokens are identical.
Run: PYTHONPATH=. .venv/bin/python -m bench.bf16 --tokens 64 --repeats 3"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from model import load_model
from model.fast import packed_matrices

PROMPT = "The history of the printing press begins in"


def embedded_bf16_folder(folder: Path) -> Path:
    """The embedded GGUF's weights saved as the hub stores SmolLM2: a transformers folder of bf16 safetensors with
    the tokenizer files. transformers reads the GGUF but will not save a GGUF-loaded model, so its weights go into
    a model built from the config."""
    import transformers

    from model.loading.embedded import embedded_gguf_path

    path = embedded_gguf_path()
    gguf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             dtype=torch.float32, local_files_only=True)
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict())
    model.to(torch.bfloat16).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(folder)
    return folder


def load(folder: Path, kernels_on: bool):
    """The folder loaded as a Space loads it (float32 on the CPU), with the fast paths or with EXPLORER_KERNELS=0."""
    before = os.environ.get("EXPLORER_KERNELS")
    os.environ["EXPLORER_KERNELS"] = "1" if kernels_on else "0"
    try:
        return load_model(folder, device="cpu", dtype="float32")
    finally:
        os.environ.pop("EXPLORER_KERNELS") if before is None else os.environ.__setitem__("EXPLORER_KERNELS", before)


def decode_rate(lm, tokens: int, repeats: int, record: bool) -> tuple[float, list[int]]:
    """Median tokens/s of a greedy generation of `tokens` tokens, and its tokens."""
    times, ids = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ids = [s.token_id for s in lm.generate(PROMPT, max_new_tokens=tokens, greedy=True, record=record,
                                               stop_at_eos=False)]
        times.append(time.perf_counter() - start)
    return tokens / statistics.median(times), ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--folder", type=Path, help="an existing bf16 folder (default: made from the embedded model)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or embedded_bf16_folder(Path(tmp))
        fast, reference = load(folder, True), load(folder, False)
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; {folder}")
        print(f"fast paths: {'; '.join(fast.fast_paths) or 'none'}")
        stored = sum(p.nbytes for p in packed_matrices(fast.decoder).values())
        print(f"matrices read per token: {stored / 2**20:.0f} MiB as bf16 (float32: {2 * stored / 2**20:.0f} MiB)")
        for lm in (fast, reference):
            decode_rate(lm, 4, 1, False)  # warm-up
        print(f"\n{'decode, greedy (tok/s)':32} {'bf16 path':>10} {'float32':>10} {'ratio':>7} {'same tokens':>12}")
        for record in (False, True):
            a, ids_a = decode_rate(fast, args.tokens, args.repeats, record)
            b, ids_b = decode_rate(reference, args.tokens, args.repeats, record)
            label = "full recording" if record else "no recording"
            print(f"{label:32} {a:10.1f} {b:10.1f} {a / b:6.2f}x {str(ids_a == ids_b):>12}")


if __name__ == "__main__":
    main()
