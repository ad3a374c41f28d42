"""Entry point: options -> load the model -> build the explorer -> launch."""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing about users leaves the machine
from concurrent.futures import ThreadPoolExecutor

from explorer.ui.blocks import build_app, css, head_html
from explorer.ui.common import Limits
from model import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description="LLM Explorer: watch a language model work, token by token")
    ap.add_argument("--model", default=os.environ.get("EXPLORER_MODEL"),
                    help="GGUF file, Hugging Face model directory or hub id (default: the embedded SmolLM2-135M)")
    ap.add_argument("--host", default=os.environ.get("EXPLORER_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("EXPLORER_PORT", os.environ.get("PORT", 7860))))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--share", action="store_true", help="also serve through a public Gradio link (off by default)")
    args = ap.parse_args()
    limits = Limits.from_env()
    # Load and build off the main thread: once the main thread has run an OpenMP parallel region, libgomp makes
    # every other thread's torch ops (Gradio runs handlers in worker threads) about 2x slower on small matrices
    # (measured: 18 vs 32 tok/s decoding SmolLM2 on 2 cores). Never touching OpenMP from main avoids it.
    with ThreadPoolExecutor(1) as pool:
        lm = pool.submit(load_model, args.model, args.device, args.dtype).result()
        app = pool.submit(build_app, lm, limits).result()
    app.queue(default_concurrency_limit=limits.max_concurrent, max_size=limits.max_queue)
    app.launch(server_name=args.host, server_port=args.port, share=args.share, css=css(), head=head_html(),
               theme="default", show_error=True)


if __name__ == "__main__":
    main()
