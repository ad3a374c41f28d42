"""Computations behind the views that are not views themselves: a text's log-probability under the model, the
model's distribution at one given token, PCA projections, nearest tokens by cosine similarity, a fixed sample of the vocabulary."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from model.layers import rope_inv_freq
from model.trace import Trace

# rows of logits computed at once: [chunk, vocab] float32 is 50 MB for a 49k vocabulary, never [T, vocab]
_LOGIT_CHUNK = 256


@torch.inference_mode()
def sequence_logprobs(trace: Trace, start: int = 1, stop: int | None = None) -> list[float]:
    """log p(x_t | x_<t) in nats for t = start .. stop-1 (default: to the end), read from the logits at t-1."""
    if start < 1:
        raise ValueError("the first token has no prediction: start must be >= 1")
    ids = trace.ids
    end = len(ids) if stop is None else min(stop, len(ids))
    out: list[float] = []
    for lo in range(start, end, _LOGIT_CHUNK):
        hi = min(lo + _LOGIT_CHUNK, end)
        logits = trace.logits_at(slice(lo - 1, hi - 1))  # [n, vocab]
        logp = torch.log_softmax(logits.float(), dim=-1)
        out.extend(logp.gather(1, ids[lo:hi, None]).squeeze(1).tolist())
    return out


@dataclass(frozen=True)
class Prediction:
    """What the model expected at one position of a given text: its top tokens there, and the token that came."""

    position: int
    top_ids: list[int]  # most likely first
    top_probs: list[float]
    token_id: int  # the token actually at `position`
    prob: float  # its probability
    rank: int  # 1 = the most likely
    entropy: float  # of the whole distribution, nats


@torch.inference_mode()
def prediction_at(trace: Trace, position: int, k: int = 20) -> Prediction:
    """The model's distribution for the token at `position` (>= 1), read from the logits at position - 1: one row,
    so cheap for any given token, e.g. a prompt token that was not sampled."""
    if not 1 <= position < len(trace):
        raise ValueError(f"position must be 1..{len(trace) - 1}: the first token has no prediction")
    logp = torch.log_softmax(trace.logits_at([position - 1])[0].float(), dim=-1)  # [vocab]
    probs = logp.exp()
    token_id = int(trace.ids[position])
    top = torch.topk(probs, min(k, probs.shape[0]))
    prob = float(probs[token_id])
    return Prediction(position=position, top_ids=top.indices.tolist(), top_probs=top.values.tolist(),
                      token_id=token_id, prob=prob, rank=int((probs > probs[token_id]).sum()) + 1,
                      entropy=float(-(probs * logp).sum()))


@dataclass(frozen=True)
class Projection:
    """A fitted PCA: y -> (y - mean) @ components.T."""

    mean: torch.Tensor  # [d]
    components: torch.Tensor  # [k, d], orthonormal rows, largest variance first
    explained_variance_ratio: torch.Tensor  # [k], share of the total variance along each component

    def project(self, y: torch.Tensor) -> torch.Tensor:
        """[m, d] -> [m, k] float32."""
        return ((y.float() - self.mean) @ self.components.T).float()


_PCA_ITERATIONS = 20
_PCA_EXTRA = 16  # extra directions carried along: convergence goes as (lambda_{k+extra+1} / lambda_k) ** iterations


@torch.inference_mode()
def pca(x: torch.Tensor, k: int) -> Projection:
    """Principal components of the rows of x [n, d]; each component's sign is fixed so that its largest-magnitude
    loading is positive, so the same data always gives the same picture."""
    x = x.detach().float().cpu()
    n, d = x.shape
    k = min(k, d)
    mean = x.mean(dim=0)
    centred = x - mean
    cov = (centred.T @ centred).double() / max(n - 1, 1)  # [d, d]
    # Subspace iteration on the covariance, then the exact eigenproblem inside the subspace. A full SVD / eigh
    # was measured on this 2-core CPU while other work ran at 60 ms median but 1-18 s worst case (LAPACK
    # threads contending); this uses only small matmuls and QRs: about 5 ms, worst case under 10 ms.
    width = min(d, k + _PCA_EXTRA)
    start = torch.randn(d, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    basis, _ = torch.linalg.qr(start)
    for _ in range(_PCA_ITERATIONS if width < d else 0):
        basis, _ = torch.linalg.qr(cov @ basis)
    ritz_values, ritz_vectors = torch.linalg.eigh(basis.T @ cov @ basis)  # ascending
    eigenvalues = ritz_values.flip(0)[:k].clamp_min(0)
    components = (basis @ ritz_vectors.flip(1)[:, :k]).T  # [k, d]
    biggest = components.abs().argmax(dim=1)
    signs = components.gather(1, biggest[:, None]).sign()
    components = components * torch.where(signs == 0, 1.0, signs)
    total = cov.diagonal().sum()
    ratio = eigenvalues / total if total > 0 else torch.zeros(k, dtype=eigenvalues.dtype)
    return Projection(mean=mean, components=components.float(), explained_variance_ratio=ratio.float())


@torch.inference_mode()
def nearest_tokens(
    embedding_matrix: torch.Tensor, vector: torch.Tensor, k: int, exclude: Iterable[int] | None = None
) -> tuple[list[int], list[float]]:
    """The k rows of embedding_matrix [V, d] most similar to vector [d] by cosine similarity, most similar first."""
    e = embedding_matrix.float()
    v = vector.float().reshape(-1)
    sims = (e @ v) / (e.norm(dim=1) * v.norm()).clamp_min(1e-12)  # [V]
    excluded = [int(i) for i in exclude] if exclude is not None else []
    if excluded:
        sims[torch.tensor(excluded, dtype=torch.long)] = -float("inf")
    k = min(k, e.shape[0] - len(set(excluded)))
    values, ids = torch.topk(sims, k)
    return ids.tolist(), values.tolist()


def vocabulary_sample(vocab_size: int, n: int, seed: int = 0) -> list[int]:
    """n distinct token ids drawn uniformly from the vocabulary, sorted; the same for the same arguments."""
    generator = torch.Generator().manual_seed(seed)
    n = max(0, min(n, vocab_size))
    return sorted(torch.randperm(vocab_size, generator=generator)[:n].tolist())


@torch.inference_mode()
def stage_values(trace: Trace, position: int) -> dict:
    """The token at `position` through every block, as the Architecture view shows it: the residual stream's norm
    entering and leaving, the norms before and after each RMSNorm, the attention and MLP outputs, the top experts
    of MoE layers, and the RoPE angles (fastest and slowest frequency) at that position."""
    decoder = trace.decoder
    layers = []
    for layer in range(trace.n_layers):
        inside = trace.internals(layer)
        h_in = trace.residual[layer, position].float()
        mid = h_in + inside.attn_out[0, position].float().cpu()
        entry = dict(
            resid_norm_in=float(h_in.norm()), attn_norm_out_norm=float(inside.attn_in[0, position].float().norm()),
            attn_out_norm=float(inside.attn_out[0, position].float().norm()), mid_norm=float(mid.norm()),
            mlp_norm_out_norm=float(inside.mlp_in[0, position].float().norm()),
            mlp_out_norm=float(inside.mlp_out[0, position].float().norm()),
            resid_norm_out=float(trace.residual[layer + 1, position].float().norm()),
        )
        if inside.experts is not None:
            entry["top_experts"] = [(int(e), float(w)) for e, w in
                                    zip(inside.experts[position].tolist(), inside.expert_weights[position].tolist())]
        layers.append(entry)
    rope = None
    if decoder.config.rope is not None:
        inv_freq = rope_inv_freq(decoder.config.rope, decoder.d_rope)
        rope = dict(position=position, angles_first_last=(float(position * inv_freq[0]), float(position * inv_freq[-1])),
                    d_rope=decoder.d_rope)
    return dict(layers=layers, rope=rope)
