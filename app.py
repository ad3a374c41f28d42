"""Entry point: options -> load the model -> build the explorer -> launch."""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing about users leaves the machine


def main() -> None:
    ap = argparse.ArgumentParser(description="LLM Explorer: watch a language model work, token by token")
    ap.add_argument("--model", default=os.environ.get("EXPLORER_MODEL"),
                    help="GGUF file, Hugging Face model directory, hub id, or random:<config> "
                         "(default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--host", default=os.environ.get("EXPLORER_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("EXPLORER_PORT", os.environ.get("PORT", 7860))))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--share", action="store_true", help="also serve through a public Gradio link (off by default)")
    args = ap.parse_args()
    # The model loads on the model thread (explorer/model_thread.py: the only thread that runs torch, because
    # each extra OpenMP team halves decoding) while this one imports Gradio (about 2.5 s saved at start-up).
    from explorer.model_thread import MODEL_THREAD

    loading = MODEL_THREAD.submit(_load, args.model, args.device, args.dtype)
    from explorer.ui.blocks import build_app, css, head_html
    from explorer.ui.common import Limits

    limits = Limits.from_env()
    lm = loading.result()
    app = MODEL_THREAD.run(build_app, lm, limits)
    app.queue(default_concurrency_limit=limits.max_concurrent, max_size=limits.max_queue)
    app.launch(server_name=args.host, server_port=args.port, share=args.share, css=css(), head=head_html(),
               theme="default", show_error=True)


def _load(source: str | None, device: str | None, dtype: str | None):
    from model import load_model

    return load_model(source, device, dtype)


if __name__ == "__main__":
    main()
