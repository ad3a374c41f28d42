"""Core benchmark on the embedded SmolLM2-135M-Instruct: cold load, prefill, decode with and without recording,
against transformers (eager, output_attentions + output_hidden_states) on the same GGUF weights, in one run.
Run: make bench   (or .venv/bin/python -m bench.core --tokens 64 --repeats 3)"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import torch
import transformers

from model import kernels, load_model
from model.fast import packed_matrices
from model.loading.embedded import embedded_gguf_path

PROMPT = "The history of the printing press begins in"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_bandwidth(size: int = 512 * 2**20, repeats: int = 5) -> float:
    """Bytes per second the CPU streams from memory: the median of summing a buffer far larger than the caches."""
    buf = torch.ones(size // 4)
    buf.sum()
    return size / median_time(lambda: buf.sum(), repeats)


def decode_bytes(lm) -> int:
    """Bytes of weights one decoded token reads: the quantized blocks where the fast path reads them, float32 for the
    rest (norms; every weight without the fast path); of the embedding only the token's row."""
    d = lm.decoder
    packed = packed_matrices(d)
    total = sum(packed[name].nbytes if name in packed else p.numel() * p.element_size()
                for name, p in d.named_parameters(remove_duplicate=False) if name != "embed.weight")
    if d.lm_head is None:  # tied and read as float32
        total += d.embed.weight.numel() * d.embed.weight.element_size()
    row = d.embed.weight[0]
    return total + row.numel() * row.element_size()


def cold_load(repeats: int) -> float:
    code = "from model import load_model; load_model()"
    return median_time(lambda: subprocess.run([sys.executable, "-c", code], check=True), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = args.tokens
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, transformers {transformers.__version__}")

    lm = load_model(device="cpu", dtype="float32")
    path = embedded_gguf_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32, attn_implementation="eager").eval()
    ids = lm.tokenizer.encode(PROMPT)

    def ours(record: bool):
        return lambda: sum(1 for _ in lm.generate(ids, max_new_tokens=n, greedy=True, record=record,
                                                  stop_at_eos=False))

    def theirs(record: bool):
        def run():
            with torch.no_grad():
                hf.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                            output_attentions=record, output_hidden_states=record, return_dict_in_generate=True,
                            pad_token_id=0)
        return run

    ours(False)(), theirs(False)()  # warm-up
    rows = []
    for label, record in (("decode, full recording", True), ("decode, no recording", False)):
        t_ours = median_time(ours(record), args.repeats)
        t_hf = median_time(theirs(record), args.repeats)
        rows.append((label, n / t_ours, n / t_hf))

    long_ids = (lm.tokenizer.encode(" the quick brown fox jumps over the lazy dog") * 40)[:256]
    t_prefill = median_time(lambda: lm.trace(long_ids), args.repeats)
    with torch.no_grad():
        t_hf_prefill = median_time(lambda: hf(torch.tensor([long_ids]), output_attentions=True,
                                               output_hidden_states=True), args.repeats)
    rows.append(("prefill 256 tokens, recording (tok/s)", 256 / t_prefill, 256 / t_hf_prefill))

    trace = lm.trace((long_ids * 4)[:1024])
    dense = sum(p.numel() * p.element_size() for p in lm.decoder.parameters())  # what transformers reads
    weights = decode_bytes(lm)
    bandwidth = read_bandwidth()
    bound, hf_bound = bandwidth / weights, bandwidth / dense  # tokens/s if a token only had to read each weight once

    print(f"\n{'measure':42} {'ours':>10} {'transformers':>13} {'ratio':>7}")
    for label, a, b in rows:
        print(f"{label + ' (tok/s)' if 'tok/s' not in label else label:42} {a:10.1f} {b:13.1f} {a / b:6.2f}x")
    print(f"{'time to first token, 256-token prompt (s)':42} {t_prefill:10.3f} {t_hf_prefill:13.3f}")
    print(f"{'trace of 1,024 tokens (MiB)':42} {trace.nbytes / 2**20:10.1f}")
    print(f"{'weights read per decoded token (MiB)':42} {weights / 2**20:10.1f} {dense / 2**20:13.1f}")
    print(f"{'memory read bandwidth (GB/s)':42} {bandwidth / 1e9:10.1f}")
    print(f"{'bandwidth bound (tok/s)':42} {bound:10.1f} {hf_bound:13.1f}")
    print(f"{'decode with recording / own bound':42} {rows[0][1] / bound:10.0%} {rows[0][2] / hf_bound:13.0%}")
    print(f"{'fast paths':42} {'; '.join(lm.fast_paths) or 'none: ' + str(kernels.error())}")
    print(f"{'peak process memory (MiB)':42} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:10.0f}  "
          "(this process holds both models)")
    print(f"{'cold load, new process (s)':42} {cold_load(args.repeats):10.2f}")


if __name__ == "__main__":
    main()
