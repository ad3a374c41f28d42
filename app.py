"""Entry point: options -> load the model -> build the explorer -> launch."""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing about users leaves the machine

MAX_UPLOAD_BYTES = 0  # nothing in the app takes a file: Gradio's /upload route refuses any file that is not empty


def options(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; where the app listens also from the environment: EXPLORER_HOST / EXPLORER_PORT, else
    Gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Hugging Face Space sets 0.0.0.0 and 7860 there and
    reaches the app through its proxy), else loopback, 127.0.0.1:7860."""
    env = os.environ.get
    ap = argparse.ArgumentParser(description="LLM Explorer: watch a language model work, token by token")
    ap.add_argument("--model", default=env("EXPLORER_MODEL"),
                    help="GGUF file, Hugging Face model directory, hub id, or random:<config> "
                         "(default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--host", default=env("EXPLORER_HOST") or env("GRADIO_SERVER_NAME") or "127.0.0.1")
    ap.add_argument("--port", type=int,
                    default=int(env("EXPLORER_PORT") or env("GRADIO_SERVER_PORT") or env("PORT") or 7860))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--share", action="store_true", help="also serve through a public Gradio link (off by default)")
    return ap.parse_args(argv)


def main() -> None:
    args = options()
    # The model loads on the model thread (explorer/model_thread.py: the only thread that runs torch, because
    # each extra OpenMP team halves decoding) while this one imports Gradio (about 2.5 s saved at start-up).
    from explorer.model_thread import MODEL_THREAD, freeze_startup_heap

    loading = MODEL_THREAD.submit(_load, args.model, args.device, args.dtype)
    from explorer.i18n import I18N
    from explorer.ui.blocks import build_app, css, head_html
    from explorer.ui.common import Limits

    limits = Limits.from_env()
    lm = loading.result()
    app = MODEL_THREAD.run(build_app, lm, limits)
    freeze_startup_heap()  # the collector never rescans the model's and the app's objects (explorer/model_thread.py)
    app.queue(default_concurrency_limit=limits.max_concurrent, max_size=limits.max_queue)
    app.launch(server_name=args.host, server_port=args.port, share=args.share, css=css(), head=head_html(),
               theme="default", show_error=True, max_file_size=MAX_UPLOAD_BYTES, i18n=I18N)


def _load(source: str | None, device: str | None, dtype: str | None):
    from model import load_model

    return load_model(source, device, dtype)


if __name__ == "__main__":
    main()
