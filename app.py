"""Entry point: parse options, load the model, generate. (The Gradio explorer replaces this CLI in the next step.)"""
from __future__ import annotations

import argparse
import sys

from model import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description="Generate with the explorer's model core")
    ap.add_argument("--model", default=None, help="GGUF file, Hugging Face directory or hub id (default: embedded)")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--chat", action="store_true")
    args = ap.parse_args()
    lm = load_model(args.model)
    print(lm, file=sys.stderr)
    print(args.prompt, end="", flush=True)
    for step in lm.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            chat=args.chat):
        print(step.text, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
