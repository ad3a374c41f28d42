"""Decoding several sequences at once. A Decoding is one sequence's generation as state (its KV cache, sampler and
seed, recorder, the ids still to go through the model); `advance` moves many of them on by one token in one forward
pass, each over its own cache at its own length (ragged caches: no padding, no mask), reading the weights once."""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from . import kernels
from .cache import KVCache
from .decoder import Attention, Block, Decoder
from .fast.llama_block import OneCallBlock, step_all
from .fast.packed import MAX_PACKED_ROWS
from .interventions import NO_INTERVENTIONS, Interventions
from .layers import apply_rope, attention
from .sampling import SamplerSettings, Samples
from .trace import Trace, TraceRecorder

if TYPE_CHECKING:
    from .lm import LanguageModel

# A prompt goes through the model this many tokens at a time, so that a long one does not stall other sequences'
# tokens (a server runs each chunk as a step of its own); alone or in a batch, a prompt is read in the same chunks.
PREFILL_CHUNK = 128
# At most this many sequences share a forward pass (more are split in several): up to this many rows, products read
# the packed kernels, which compute each row alike whatever its companions (model/fast/packed.py)
MAX_ROWS = MAX_PACKED_ROWS


@dataclass(frozen=True)
class Step:
    """One generated token and the distribution it was drawn from."""

    index: int  # 0 for the first new token
    position: int  # its position in the context
    token_id: int
    text: str  # the new text this token completes (may be "" while a UTF-8 character is still partial)
    prob: float  # its probability under the model's distribution (before temperature and cuts)
    sampled_prob: float  # its probability in the distribution it was actually drawn from
    entropy: float  # of the model's distribution, nats
    top_ids: list[int]  # the model's most likely tokens, most likely first
    top_probs: list[float]  # their probabilities before temperature / top-k / top-p
    top_sampled_probs: list[float]  # after (0 where cut)
    top_kept: list[bool]  # whether the sampler kept each
    n_kept: int  # how many tokens of the vocabulary the sampler kept
    kept_mass: float  # model probability mass of the kept tokens
    finish_reason: str | None  # "stop" (an end-of-generation token), "length", or None while going on
    trace: Trace | None = None



class Decoding:
    """One sequence being generated, as LanguageModel.generate's settings made it. It reads its prompt in chunks
    (prefill, or prefill_all with other prompts), then takes a token at a time (advance, alone or with others),
    sampled with its own torch.Generator."""

    def __init__(self, lm: "LanguageModel", ids: list[int], max_new_tokens: int, settings: SamplerSettings,
                 seed: int | None, record: bool, top_n: int, stop_at_eos: bool, interventions: Interventions,
                 chunk: int = PREFILL_CHUNK) -> None:
        self.lm, self.settings, self.top_n, self.interventions, self.chunk = lm, settings, top_n, interventions, chunk
        self.max_new_tokens = max_new_tokens
        self.generator = torch.Generator(device="cpu")
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        capacity = len(ids) + max_new_tokens
        self.cache = KVCache(lm.config.n_layers, initial_capacity=capacity)
        self.recorder = (TraceRecorder(lm.decoder, capacity=capacity, interventions=interventions)
                         if record else None)
        self.stream = lm.tokenizer.text_stream()
        self.stop_ids = lm.tokenizer.stop_ids if stop_at_eos else frozenset()
        self.pending = list(ids)  # ids not yet through the model: the prompt, then each sampled token
        self.logits: torch.Tensor | None = None  # [vocab] float32 of the last id through the model, not yet sampled
        self.n_steps = 0
        self.finished = max_new_tokens == 0  # no room for a single new token: nothing to compute

    @property
    def prefilling(self) -> bool:
        """Prompt tokens still to read before the first new token (one prefill() each chunk)."""
        return not self.finished and len(self.pending) > 1

    @property
    def ready(self) -> bool:
        """One id to put through the model for the next token (advance, with others)."""
        return not self.finished and len(self.pending) == 1 and self.logits is None

    @property
    def short_chunk(self) -> bool:
        """Its next chunk of prompt goes through the model as rows of one compiled call (prefill_all: with other
        prompts' chunks): at most MAX_PACKED_ROWS ids, and every block has the compiled step (one_call)."""
        return self.prefilling and len(self.pending[: self.chunk]) <= MAX_PACKED_ROWS and one_call(self.lm.decoder,
                                                                                                   [self])

    def prefill(self) -> None:
        """The next chunk of the prompt through the model (alone: prefill_all of this one); after the last one, the
        logits to sample from."""
        prefill_all([self])

    def _forward(self, ids: list[int]) -> torch.Tensor:
        """ids through the reference forward (with its fast blocks) over this sequence's cache: the last logits."""
        x = self.lm._tensor(ids)  # noqa: SLF001: its range check
        logits = self.lm.decoder(x, cache=self.cache, recorder=self.recorder, last_only=True,
                                 interventions=self.interventions)[0, -1].cpu()
        if self.recorder is not None:
            self.recorder.commit(x[0])
        return logits

    def sample(self) -> Step:
        """The next token from the logits, as a Step; after the last one (an end-of-text token or the token limit)
        the sequence is finished."""
        return sample_all([self])[0]

    def _took(self, token: int) -> str | None:
        """The sampled token becomes the next id through the model; returns its finish reason."""
        index = self.n_steps
        finish = "stop" if token in self.stop_ids else "length" if index == self.max_new_tokens - 1 else None
        self.logits, self.pending, self.n_steps = None, [token], index + 1
        self.finished = finish is not None
        return finish

    @torch.inference_mode()
    def context_trace(self) -> Trace | None:
        """A recording sequence once finished: its last token through the model too (one token's work), so the Trace
        covers the whole context; None when not recording."""
        if self.recorder is None or self.n_steps == 0:
            return None
        self._forward(self.pending)
        return self.recorder.trace()

    def close(self) -> None:
        """Frees the cache and the recorder now, not at garbage collection."""
        self.cache = self.recorder = None  # type: ignore[assignment]
        self.finished = True


# Up to this many rows, a step's sampling takes one OpenMP thread beside the kernels' helpers (_beside_helpers); more
# rows are worth torch's team (16 rows: 6.1 ms with two threads, 10.5 with one)
FEW_ROWS = 4


@contextlib.contextmanager
def _beside_helpers(split: bool) -> Iterator[None]:
    """Torch's ops on one OpenMP thread while `split` and the compiled kernels split their loops with helper threads
    (model/kernels): a team's second thread spins on a core for a while after each of torch's parallel ops (a step's
    sampling over the vocabulary, a short prompt's norms and attention), taking it from the helper that the next loop
    needs (one sequence decoded at 83-90 tok/s so, 106-114 with one; 16 short prompts read with two threads cost 16
    sequences a tenth of their rate). A decoding step's numbers are the same with any count; a short prompt's chunk
    always takes one, whoever reads it."""
    before = torch.get_num_threads()
    if not split or not kernels.helpers() or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def sample_all(decodings: Sequence[Decoding]) -> list[Step]:
    """Each decoding's next token from its logits (all have some), as a Step, the rows sampled together: the
    sampler's and the Step's numbers in one set of operations for all (model/sampling.py: Samples), each row's the
    same as alone."""
    with _beside_helpers(len(decodings) < FEW_ROWS):
        return _sample_all(decodings)


def _sample_all(decodings: Sequence[Decoding]) -> list[Step]:
    s = Samples.of(torch.stack([d.logits for d in decodings]), [d.settings for d in decodings],
                   [d.generator for d in decodings], [d.top_n for d in decodings])
    steps = []
    for d, row in zip(decodings, s.rows):
        position, text, index = d.cache.length, d.stream.push(row.token_id), d.n_steps
        finish = d._took(row.token_id)  # noqa: SLF001
        steps.append(Step(
            index=index, position=position, token_id=row.token_id, text=text, finish_reason=finish,
            trace=d.recorder.trace() if d.recorder is not None else None, prob=row.prob,
            sampled_prob=row.sampled_prob, entropy=row.entropy, top_ids=row.top_ids, top_probs=row.top_probs,
            top_sampled_probs=row.top_sampled_probs, top_kept=row.top_kept, n_kept=row.n_kept,
            kept_mass=row.kept_mass))
    return steps


@torch.inference_mode()
def prefill_all(decodings: Sequence[Decoding]) -> None:
    """The next chunk of each decoding's prompt (all prefilling) through the model: the short chunks (short_chunk)
    together, as rows of one compiled call (each row's numbers the same whatever its companions: a prompt reads
    alike alone and with others), each other chunk alone through the reference forward (its products, with many
    rows, bound by arithmetic: torch's float32 matmul). A chunk of 9 tokens took 32 ms through the reference forward
    and 24 ms as rows (bench.serving: 16 new prompts of 9 tokens read one after the other held every session's next
    token for about a second)."""
    short = [d for d in decodings if d.short_chunk]
    for start in range(0, len(short), MAX_ROWS):  # at most MAX_ROWS prompts a call (their chunks' rows: 16 each)
        rows = short[start : start + MAX_ROWS]
        chunks = [d.pending[: d.chunk] for d in rows]
        with _beside_helpers(True):
            logits = forward_rows(rows[0].lm.decoder, rows, chunks)
        for d, chunk, last in zip(rows, chunks, logits):
            d.pending = d.pending[len(chunk):]
            if not d.pending:
                d.logits = last
    for d in decodings:
        if d not in short and d.prefilling:
            ids, d.pending = d.pending[: d.chunk], d.pending[d.chunk:]
            with _beside_helpers(len(ids) <= MAX_PACKED_ROWS):  # a short chunk's products read the packed kernels
                logits = d._forward(ids)  # noqa: SLF001
            if not d.pending:
                d.logits = logits


@torch.inference_mode()
def advance(decodings: Sequence[Decoding]) -> None:
    """Each decoding's pending id through the model (all ready, of one LanguageModel), for its next logits: one
    forward pass for all (MAX_ROWS at a time); alone, exactly the reference forward."""
    for start in range(0, len(decodings), MAX_ROWS):
        rows = decodings[start : start + MAX_ROWS]
        split = one_call(rows[0].lm.decoder, rows)
        if len(rows) == 1 and not split:
            rows[0].logits = rows[0]._forward(rows[0].pending)  # noqa: SLF001
        else:
            with _beside_helpers(split):
                for d, logits in zip(rows, forward_rows(rows[0].lm.decoder, rows)):
                    d.logits = logits
        for d in rows:
            d.pending = []


def forward_rows(decoder: Decoder, rows: Sequence[Decoding],
                 chunks: Sequence[Sequence[int]] | None = None) -> list[torch.Tensor]:
    """Decoder.forward for B sequences, each over its own cache from its own length (and, where it records, into its
    own recorder): the logits [vocab] of each one's last id. chunks: each sequence's ids, by default its one pending
    id (a decoding step); several only where one_call (a short chunk of prompt: its ids are rows of the call, each at
    its position, attending to the keys the rows before it wrote). In a layer that a row's interventions touch, that
    row goes through the reference block alone, with them (as Decoder.forward would take it); the other rows go on
    together. What it records is handed to the recorders once the pass succeeded (a pass that fails leaves them as
    they were, to be run again)."""
    caches = [d.cache for d in rows]
    chunks = [d.pending[:1] for d in rows] if chunks is None else chunks
    counts = [len(chunk) for chunk in chunks]
    ids = rows[0].lm._tensor([i for chunk in chunks for i in chunk]).view(-1, 1)  # noqa: SLF001  [N, 1]
    starts = [c.length for c in caches]
    at = [start + j for start, n in zip(starts, counts) for j in range(n)]  # each row's position
    positions = torch.tensor(at, device=ids.device)  # [N]
    h = decoder.embed_tokens(ids, positions[:, None])  # [N, 1, d]
    rope = decoder.rope(positions, h.dtype)  # cos, sin [N, d_rot]
    recording = any(d.recorder is not None for d in rows)
    routings: list[list] = [[] for _ in rows]  # each row's MoE choices: (layer, experts [1, k], weights [1, k])
    if one_call(decoder, rows):  # every block in one compiled call, writing each block's output into `recorded`
        recorded = h.new_empty(len(decoder.blocks) + 1, len(at), h.shape[-1]) if recording else None
        if recording:
            recorded[0] = h[:, 0]
        row_caches = [c for c, n in zip(caches, counts) for _ in range(n)]
        h = step_all(list(decoder.blocks), h, rope, row_caches, at, None if recorded is None else recorded[1:])
    else:
        if any(n != 1 for n in counts):
            raise ValueError("several ids of one sequence take the compiled step (one_call)")
        residuals = [h]  # [B, 1, d] after the embedding, then after each block
        for block in decoder.blocks:
            h = _block_rows(block, h, positions, rope, caches, rows, routings)
            residuals.append(h)
        recorded = torch.stack(residuals)[:, :, 0] if recording else None  # [L + 1, B, d]
    for cache, n in zip(caches, counts):
        cache.advance(n)
    ends = list(itertools.accumulate(counts))
    if len(ends) < len(at):  # a sequence with several rows: each one's last
        h = h[torch.tensor([end - 1 for end in ends], device=h.device)]
    logits = decoder.unembed(h)[:, 0].cpu()  # [B, vocab]
    for r, (d, end, n) in enumerate(zip(rows, ends, counts)):
        if d.recorder is not None:
            for layer, experts, weights in routings[r]:
                d.recorder.routing(layer, experts, weights)
            d.recorder.residuals(recorded[:, end - n : end])
            d.recorder.commit(ids[end - n : end, 0])
    return list(logits)


def _block_rows(block: Block, h: torch.Tensor, positions: torch.Tensor, rope, caches: list[KVCache],
                rows: Sequence[Decoding], routings: list[list]) -> torch.Tensor:
    """One block of forward_rows: a row whose interventions touch this layer goes through the reference block alone,
    with them; the other rows together."""
    alone = [r for r, d in enumerate(rows) if d.interventions.touches(block.layer)]
    if not alone:
        return _rows_through(block, h, positions, rope, caches, routings)
    together = [r for r in range(len(rows)) if r not in alone]
    out = torch.empty_like(h)
    if together:
        out[together] = _rows_through(block, h[together], positions[together], _rows(rope, together),
                                      [caches[r] for r in together], [routings[r] for r in together])
    for r in alone:
        out[r : r + 1] = block(h[r : r + 1], positions[r : r + 1], _rows(rope, [r]), caches[r],
                               _RoutingOf(routings[r]), rows[r].interventions)
    return out


def one_call(decoder: Decoder, rows: Sequence[Decoding]) -> bool:
    """Whether a decoding step of these rows runs every block in one compiled call (step_all): all blocks have the
    compiled step (float32, RoPE) and no row's interventions touch any layer. Alone or batched, such a row's numbers
    are the same: the same call, row by row."""
    blocks = decoder.blocks
    return (all(isinstance(b, OneCallBlock) for b in blocks) and decoder.embed.weight.dtype == torch.float32
            and decoder.config.rope is not None and not any(len(d.interventions) for d in rows))


def _rows(rope: tuple[torch.Tensor, torch.Tensor] | None, rows: list[int]):
    """The rows' cos and sin [len(rows), d_rot] (None without RoPE)."""
    return None if rope is None else (rope[0][rows], rope[1][rows])


class _RoutingOf:
    """A recorder for one row through Block.forward: keeps the MoE choices it reports."""

    def __init__(self, routing: list) -> None:
        self._routing = routing

    def routing(self, layer: int, experts: torch.Tensor, weights: torch.Tensor) -> None:
        self._routing.append((layer, experts, weights))


def _rows_through(block: Block, h: torch.Tensor, positions: torch.Tensor, rope, caches: list[KVCache],
                  routings: list[list]) -> torch.Tensor:
    """Block.forward without interventions for B sequences of one token each (h [B, 1, d]): the compiled step where
    the block has one, else the reference modules with the matrices of all rows together; each row's attention over
    its own cache, each row's MoE choices appended to its routings."""
    if isinstance(block, OneCallBlock) and h.dtype == torch.float32 and rope is not None:
        return block.step_rows(h, rope, caches)
    attn_out = _attention_rows(block.attn, block.attn_norm(h), positions, rope, caches)
    h = h + attn_out
    record: dict = {}
    mlp_out = block._mlp(block.mlp_norm(h), record, NO_INTERVENTIONS)  # noqa: SLF001
    if record:  # [B, k] each: a row apiece
        for r, routing in enumerate(routings):
            routing.append((block.layer, record["experts"][r : r + 1], record["expert_weights"][r : r + 1]))
    return h + mlp_out


def _attention_rows(attn: torch.nn.Module, x: torch.Tensor, positions: torch.Tensor, rope,
                    caches: list[KVCache]) -> torch.Tensor:
    """The attention output [B, 1, d] of x [B, 1, d] (normed), row r at positions[r] over caches[r]."""
    b = x.shape[0]
    if not isinstance(attn, Attention):  # latent attention: row by row, as the reference computes it
        return torch.cat([attn(x[r : r + 1], positions[r : r + 1],
                               None if rope is None else (rope[0][r : r + 1], rope[1][r : r + 1]), caches[r])[0]
                          for r in range(b)])
    q = attn.wq(x).view(b, 1, attn.n_heads, attn.d_head).transpose(1, 2)  # [B, H, 1, D]
    k = attn.wk(x).view(b, 1, attn.n_kv_heads, attn.d_head).transpose(1, 2)  # [B, Hkv, 1, D]
    v = attn.wv(x).view(b, 1, attn.n_kv_heads, attn.d_head).transpose(1, 2)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:  # each row's angles: cos, sin [B, 1, 1, D] against [B, H, 1, D]
        cos, sin = rope[0][:, None, None], rope[1][:, None, None]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    outs = []
    for r, cache in enumerate(caches):
        keys, values = cache.update(attn.layer, k[r : r + 1], v[r : r + 1])  # [1, Hkv, past + 1, D]
        outs.append(attention(q[r : r + 1], keys, values, positions[r : r + 1], attn.scale, attn.window)[0])
    out = torch.cat(outs)  # [B, H, 1, D]
    return attn.wo(out.transpose(1, 2).reshape(b, 1, -1))
