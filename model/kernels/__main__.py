"""Build the kernels ahead of time: python -m model.kernels"""
import time

from model.kernels import error, extension

start = time.perf_counter()
ext = extension()
if ext is None:
    raise SystemExit(f"block-quantized kernels unavailable: {error()}")
print(f"block-quantized kernels ready ({ext.isa()}, helper threads: {ext.helpers()}) in {time.perf_counter() - start:.1f} s")
