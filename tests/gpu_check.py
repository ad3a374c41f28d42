"""The GPU path, checked where a GPU exists: `make gpu-check` (= python -m tests.gpu_check). The core defaults to CUDA
and bf16 when a GPU is present; this runs it against transformers on the same device: every tiny family in float32
and bf16, the embedded model, a greedy generation with recording, and cached against uncached decoding.
Without CUDA it says so and checks nothing (exit status 2); `--device cpu` runs the same checks on the CPU."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import transformers

from model import load_model
from model.loading.embedded import embedded_gguf_path
from tests.conftest import write_tiny_tokenizer
from tests.model.families import DEEPSEEK, FAMILIES, IDS, build_hf

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# largest logit error allowed, as a fraction of the largest logit: float32 differs only in the order of additions.
# bf16 keeps 8 bits of mantissa and the two implementations round at different places, so in bf16 the core must be
# no further from the float32 logits than transformers' own bf16 run is, with a margin (BF16_MARGIN times)
FLOAT32_TOLERANCE = 1e-4
BF16_MARGIN = 2.0


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float().cpu(), want.float().cpu()
    return float((got - want).abs().max() / want.abs().max())


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def row(self, what: str, value: str, ok: bool) -> None:
        print(f"{'ok ' if ok else 'FAIL'} {what:58} {value}", flush=True)
        if not ok:
            self.failures.append(what)


def cached_vs_uncached(lm, prompt: list[int], n: int) -> tuple[float, list[int]]:
    """Greedy decoding with recording through the KV cache, against one uncached pass over the whole text."""
    steps = list(lm.generate(prompt, max_new_tokens=n, greedy=True, record=True, stop_at_eos=False))
    tokens = [s.token_id for s in steps]
    full = lm.trace(prompt + tokens).logits  # [T, vocab]
    cached = torch.stack([s.trace.logits_at([-1])[0] for s in steps])
    return relative_error(cached, full[len(prompt) - 1: len(prompt) - 1 + n]), tokens


def tolerance(dtype: str, theirs: float = 0.0) -> float:
    return FLOAT32_TOLERANCE if dtype == "float32" else max(BF16_MARGIN * theirs, 1e-2)


def compare_logits(what: str, lm, hf32, hf_low, ids: list[int], device: str, dtype: str, report: Report) -> float:
    """The core's logits against transformers' float32 logits (hf32); in bf16, against how far transformers' own
    bf16 run (hf_low) is from them. Returns the tolerance that this dtype earned."""
    x = torch.tensor([ids], device=device)
    with torch.no_grad():
        exact = hf32(x).logits[0]
        theirs = relative_error(hf_low(x).logits[0], exact) if dtype != "float32" else 0.0
    ours = relative_error(lm.trace(ids).logits, exact)
    theirs_text = f" (transformers' {dtype}: {theirs:.1e})" if dtype != "float32" else ""
    report.row(f"{what}: logits vs transformers' float32", f"{ours:.1e}{theirs_text}", ours < tolerance(dtype, theirs))
    return tolerance(dtype, theirs)


def check_family(name: str, folder: Path, device: str, dtype: str, report: Report) -> None:
    hf = build_hf(name)
    hf.save_pretrained(folder)
    write_tiny_tokenizer(folder)
    hf = hf.to(device=device)
    lm = load_model(folder, device=device, dtype=dtype)
    low = build_hf(name).to(device=device, dtype=DTYPES[dtype]) if dtype != "float32" else hf
    allowed = compare_logits(f"{name} {dtype}", lm, hf, low, IDS, device, dtype, report)
    err, tokens = cached_vs_uncached(lm, IDS[:5], 8)
    report.row(f"{name} {dtype}: cached vs uncached decoding", f"{err:.1e}", err < allowed)
    if dtype == "float32":
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([IDS[:5]], device=device), max_new_tokens=8, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0, 5:].tolist()
        report.row(f"{name} {dtype}: greedy tokens vs transformers", f"{tokens} vs {theirs}", tokens == theirs)


def check_embedded(device: str, dtype: str, cpu_steps: list, report: Report) -> None:
    lm = load_model(device=device, dtype=dtype)
    path = embedded_gguf_path()
    # transformers keeps a GGUF model's weights packed and refuses to cast it: one load per dtype
    hf32, low = (transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                   dtype=DTYPES[d]).to(device).eval()
                 for d in ("float32", dtype))
    prompt = lm.tokenizer.encode("The capital of France is Paris. The capital of Italy is")
    allowed = compare_logits(f"SmolLM2 {dtype}", lm, hf32, low, prompt, device, dtype, report)
    err, tokens = cached_vs_uncached(lm, prompt, 32)
    report.row(f"SmolLM2 {dtype}: cached vs uncached decoding, 32 tokens", f"{err:.1e}", err < allowed)
    cpu_tokens = [s.token_id for s in cpu_steps]
    agree = lambda ts: next((i for i, (a, b) in enumerate(zip(ts, cpu_tokens)) if a != b), len(ts))
    text = repr(lm.tokenizer.decode(tokens[:16]))
    if dtype == "float32":
        report.row(f"SmolLM2 {dtype}: greedy tokens equal the CPU's float32 ({agree(tokens)}/32)", text,
                   agree(tokens) == len(tokens))
        return
    # in bf16 a greedy run parts from float32's where rounding flips a close call: the core must follow float32
    # at least as far as transformers' own bf16 run does
    with torch.no_grad():
        theirs = low.generate(torch.tensor([prompt], device=device), max_new_tokens=32, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    report.row(f"SmolLM2 {dtype}: greedy tokens follow float32's for {agree(tokens)}/32 (transformers' "
               f"{agree(theirs)})", text, agree(tokens) >= min(agree(theirs), len(tokens)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu, to try the checks themselves")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("No CUDA GPU on this machine: nothing was checked. Run `make gpu-check` where one is "
              "(or `make gpu-check ARGS=--device=cpu` to run the same checks on the CPU).")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32: TF32 rounds products to 10 bits
    torch.backends.cudnn.allow_tf32 = False
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.device}: {where}")
    report = Report()
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in DTYPES:
            for name in list(FAMILIES) + list(DEEPSEEK):
                check_family(name, Path(tmp) / f"{name}-{dtype}", args.device, dtype, report)
    cpu = load_model(device="cpu", dtype="float32")
    cpu_steps = list(cpu.generate(cpu.tokenizer.encode("The capital of France is Paris. The capital of Italy is"),
                                  max_new_tokens=32, greedy=True, stop_at_eos=False))
    for dtype in DTYPES:
        check_embedded(args.device, dtype, cpu_steps, report)
    if report.failures:
        print(f"\n{len(report.failures)} check(s) failed: " + "; ".join(report.failures))
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
