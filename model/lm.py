"""LanguageModel: a decoder with its tokenizer; one-pass tracing and token-by-token generation that yields
a Step per new token (what was chosen, from which distribution, and the Trace of the context so far)."""
from __future__ import annotations

from typing import Generator, Iterator, Sequence

import torch

from .batch import PREFILL_CHUNK, Decoding, Step, advance
from .cache import KVCache
from .config import ModelConfig
from .decoder import Decoder
from .interventions import Intervention, Interventions, Patch
from .sampling import SamplerSettings
from .tokenizer import Tokenizer
from .trace import Trace, TraceRecorder


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (tensor cores, half the memory traffic); float32 on the CPU, where it is exact and fastest
    for a model of this size (bf16 matmuls are not faster on CPUs without AMX)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class LanguageModel:
    def __init__(self, decoder: Decoder, tokenizer: Tokenizer, name: str, source: str,
                 random_weights: bool = False, fast_paths: Sequence[str] = ()) -> None:
        self.decoder = decoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.random_weights = random_weights  # no checkpoint: the text is noise, the mechanics are real
        self.fast_paths = tuple(fast_paths)  # what model/fast swapped in, in words (empty: the reference alone)

    @property
    def config(self) -> ModelConfig:
        return self.decoder.config

    @property
    def device(self) -> torch.device:
        return self.decoder.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed.weight.dtype

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.decoder.parameters())

    def __repr__(self) -> str:
        return (f"LanguageModel({self.name!r}, {self.config.family}, {self.n_params / 1e6:.0f}M params, "
                f"{self.device}, {str(self.dtype).removeprefix('torch.')})")

    def prompt_ids(self, prompt: str | Sequence[int], chat: bool = False) -> list[int]:
        """Token ids of a prompt; with chat, the text is wrapped as a user message in the chat template."""
        if not isinstance(prompt, str):
            return [int(i) for i in prompt]
        if chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(prompt)

    def _tensor(self, ids: Sequence[int]) -> torch.Tensor:
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range 0..{self.config.vocab_size - 1}: {bad[:5]}")
        return torch.tensor([list(ids)], dtype=torch.long, device=self.device)

    def _interventions(self, items: Interventions | Sequence[Intervention] | None, length: int | None = None
                       ) -> Interventions:
        """items checked against this model (ValueError in a sentence); with length, a Patch must fall inside it."""
        checked = Interventions.of(items, self.config)
        for item in checked:
            if length is not None and isinstance(item, Patch) and item.positions[-1] >= length:
                raise ValueError(f"cannot patch position {item.positions[-1]} of a sequence of {length} tokens")
        return checked

    @torch.inference_mode()
    def trace(self, ids: Sequence[int], interventions: Interventions | Sequence[Intervention] | None = None
              ) -> Trace:
        """One forward pass over ids with recording, edited by the interventions (the Trace keeps them)."""
        if len(ids) == 0:
            raise ValueError("cannot trace an empty sequence")
        interventions = self._interventions(interventions, len(ids))
        recorder = TraceRecorder(self.decoder, capacity=len(ids), interventions=interventions)
        x = self._tensor(ids)
        self.decoder(x, recorder=recorder, last_only=True, interventions=interventions)
        recorder.commit(x[0])
        return recorder.trace()

    @torch.inference_mode()
    def trace_in_chunks(self, ids: Sequence[int], chunk: int = 128,
                        interventions: Interventions | Sequence[Intervention] | None = None
                        ) -> Iterator[Trace | None]:
        """The Trace of trace(ids, interventions), computed `chunk` tokens at a time over a KV cache (as a prompt is
        read before generating): each next() runs one chunk and yields None, the last yields the Trace. A server can
        run each chunk as a task of its own, so other work goes between them."""
        if len(ids) == 0:
            raise ValueError("cannot trace an empty sequence")
        interventions = self._interventions(interventions, len(ids))
        cache = KVCache(self.config.n_layers, initial_capacity=len(ids))
        recorder = TraceRecorder(self.decoder, capacity=len(ids), interventions=interventions)
        for start in range(0, len(ids), chunk):
            x = self._tensor(ids[start : start + chunk])
            self.decoder(x, cache=cache, recorder=recorder, last_only=True, interventions=interventions)
            recorder.commit(x[0])
            yield recorder.trace() if start + chunk >= len(ids) else None

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        greedy: bool = False,
        record: bool = False,
        chat: bool = False,
        top_n: int = 20,
        stop_at_eos: bool = True,
        interventions: Interventions | Sequence[Intervention] | None = None,
    ) -> Generator[Step, None, Trace | None]:
        """Yield one Step per new token. temperature 0 or greedy=True picks the most likely token. With record, a
        next() after the last Step (an end-of-text token or max_new_tokens) returns the Trace of the whole context,
        the last token included, as the generator's return value (StopIteration.value).

        The interventions edit every forward pass, the prompt's and each new token's: a Patch acts on each of its
        positions when that position is computed, in the prompt or among the generated tokens (all of them lie
        inside its source; positions the generation never reaches are left alone).

        The prompt is read PREFILL_CHUNK tokens at a time, as a server reads it between other sequences' tokens: a
        generation computes the same numbers alone here and batched there (model/batch.py)."""
        return self._generate(self.decoding(prompt, max_new_tokens, temperature, top_k, top_p, seed, greedy, record,
                                            chat, top_n, stop_at_eos, interventions))

    def decoding(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        greedy: bool = False,
        record: bool = False,
        chat: bool = False,
        top_n: int = 20,
        stop_at_eos: bool = True,
        interventions: Interventions | Sequence[Intervention] | None = None,
        chunk: int = PREFILL_CHUNK,
    ) -> Decoding:
        """The generation generate() runs, as state that a server advances itself, with other sequences in one
        forward pass per token (model/batch.py); the prompt is read `chunk` tokens at a time."""
        settings = SamplerSettings(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        ids = self.prompt_ids(prompt, chat)
        if not ids:
            raise ValueError("the prompt has no tokens")
        return Decoding(self, ids, max_new_tokens, settings, seed, record, top_n, stop_at_eos,
                        self._interventions(interventions), chunk)

    @staticmethod
    def _generate(decoding: Decoding) -> Generator[Step, None, Trace | None]:
        """decoding alone, a Step per token (see generate)."""
        try:
            while not decoding.finished:
                while decoding.prefilling:
                    decoding.prefill()
                if decoding.ready:
                    advance([decoding])
                step = decoding.sample()
                yield step
            return decoding.context_trace()  # asked for once more after the last step
        finally:
            decoding.close()
