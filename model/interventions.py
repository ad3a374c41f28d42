"""Interventions: typed edits of one forward pass, passed in like the recorder (never global hooks or hook names). The
decoder asks them at the few points where they act: each head's output before the output projection, the experts a
router may choose, a block's attention and MLP outputs, and the residual stream leaving a block."""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral
from typing import TYPE_CHECKING, Iterable, Iterator

import torch

from .config import ModelConfig

if TYPE_CHECKING:
    from .trace import Trace


class Intervention:
    """One edit at one layer. A subclass overrides the points where it acts; every other point passes its input on
    unchanged. A new kind of intervention is a new subclass: the decoder already asks at every point."""

    layer: int

    def heads(self, out: torch.Tensor) -> torch.Tensor:
        """out [B, H, T, D]: each head's output, before the output projection mixes the heads."""
        return out

    def experts(self, allowed: torch.Tensor) -> torch.Tensor:
        """allowed [E] bool: the routed experts this MoE layer's router may choose."""
        return allowed

    def attention(self, out: torch.Tensor) -> torch.Tensor:
        """out [B, T, d_model]: the attention's output, before it is added to the residual stream."""
        return out

    def mlp(self, out: torch.Tensor) -> torch.Tensor:
        """out [B, T, d_model]: the MLP's (or MoE's) output, before it is added to the residual stream."""
        return out

    def block(self, h: torch.Tensor, start: int) -> torch.Tensor:
        """h [B, T, d_model]: the residual stream leaving the block, for positions start..start+T-1."""
        return h

    def check(self, cfg: ModelConfig) -> None:
        """Raise ValueError, in a sentence, where this does not fit the model."""
        _check_layer(self.layer, cfg)


def _is_index(x: object, n: int) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool) and 0 <= x < n


def _check_layer(layer: int, cfg: ModelConfig) -> None:
    if not _is_index(layer, cfg.n_layers):
        raise ValueError(f"layer {layer} is out of range: this model's layers are 0..{cfg.n_layers - 1}")


@dataclass(frozen=True)
class HeadAblation(Intervention):
    """Head `head` of layer `layer` is silenced: its output is zeroed before the output projection (MHA, GQA, MLA)."""

    layer: int
    head: int

    def heads(self, out: torch.Tensor) -> torch.Tensor:
        return out.index_fill(1, torch.tensor([self.head], device=out.device), 0.0)

    def check(self, cfg: ModelConfig) -> None:
        _check_layer(self.layer, cfg)
        if not _is_index(self.head, cfg.n_heads):
            raise ValueError(f"head {self.head} is out of range: this model's heads are 0..{cfg.n_heads - 1}")

    def __str__(self) -> str:
        return f"head {self.head} of layer {self.layer} ablated"


@dataclass(frozen=True)
class ExpertAblation(Intervention):
    """Routed expert `expert` of MoE layer `layer` may not be chosen: the router picks its top-k among the others,
    with scores, groups and weights computed as usual."""

    layer: int
    expert: int

    def experts(self, allowed: torch.Tensor) -> torch.Tensor:
        return allowed.index_fill(0, torch.tensor([self.expert], device=allowed.device), False)

    def check(self, cfg: ModelConfig) -> None:
        _check_layer(self.layer, cfg)
        if not cfg.is_moe_layer(self.layer):
            moe = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
            raise ValueError(f"layer {self.layer} has no experts to ablate"
                             + (f" (the Mixture-of-Experts layers are {moe})" if moe else ": this model has none"))
        n = cfg.moe.n_routed_experts
        if not _is_index(self.expert, n):
            raise ValueError(f"expert {self.expert} is out of range: this model's routed experts are 0..{n - 1}")

    def __str__(self) -> str:
        return f"expert {self.expert} of layer {self.layer} ablated"


@dataclass(frozen=True)
class AttentionAblation(Intervention):
    """Layer `layer`'s whole attention output is zeroed: the residual stream passes the attention by unchanged."""

    layer: int

    def attention(self, out: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(out)

    def __str__(self) -> str:
        return f"attention of layer {self.layer} ablated"


@dataclass(frozen=True)
class MLPAblation(Intervention):
    """Layer `layer`'s whole MLP (or MoE) output is zeroed."""

    layer: int

    def mlp(self, out: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(out)

    def __str__(self) -> str:
        return f"MLP of layer {self.layer} ablated"


@dataclass(frozen=True, eq=False)
class Steering(Intervention):
    """scale * vector [d_model] is added to the residual stream leaving block `layer`, at every position."""

    layer: int
    vector: torch.Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector", torch.as_tensor(self.vector, dtype=torch.float32))

    def block(self, h: torch.Tensor, start: int) -> torch.Tensor:
        return h + self.scale * self.vector.to(device=h.device, dtype=h.dtype)

    def check(self, cfg: ModelConfig) -> None:
        _check_layer(self.layer, cfg)
        if tuple(self.vector.shape) != (cfg.d_model,):
            raise ValueError(f"a steering vector has the model's width {cfg.d_model}, not shape "
                             f"{tuple(self.vector.shape)}")

    def __str__(self) -> str:
        return f"layer {self.layer} steered (scale {self.scale:g})"


@dataclass(frozen=True, eq=False)
class Patch(Intervention):
    """The residual stream leaving block `layer` (Trace.hidden_states[layer + 1]) is replaced, at `positions`, by the
    `source` Trace's values at the same positions (activation patching). A position is patched whenever a forward
    pass computes it: in the prompt, or later in a generation (it must lie inside the source)."""

    layer: int
    positions: tuple[int, ...]
    source: Trace = field(repr=False)

    def __post_init__(self) -> None:
        if not hasattr(self.source, "residual"):
            raise ValueError(f"a Patch's source is a Trace (of the run to copy from), not {type(self.source).__name__}")
        positions = (self.positions,) if isinstance(self.positions, Integral) else tuple(self.positions)
        if not positions:
            raise ValueError("a Patch needs at least one position")
        if any(isinstance(p, bool) or not isinstance(p, Integral) or p < 0 for p in positions):
            raise ValueError(f"Patch positions are token indices 0, 1, ...; got {list(positions)[:8]}")
        positions = tuple(int(p) for p in positions)
        if max(positions) >= len(self.source):
            raise ValueError(f"cannot patch position {max(positions)} from a source of {len(self.source)} tokens "
                             f"(its positions are 0..{len(self.source) - 1})")
        object.__setattr__(self, "positions", tuple(sorted(set(positions))))

    def block(self, h: torch.Tensor, start: int) -> torch.Tensor:
        inside = [p for p in self.positions if start <= p < start + h.shape[1]]
        if not inside:
            return h
        values = self.source.residual[self.layer + 1, inside].to(device=h.device, dtype=h.dtype)  # [n, d]
        rows = torch.tensor(inside, device=h.device) - start
        return h.index_copy(1, rows, values.expand(h.shape[0], *values.shape))

    def check(self, cfg: ModelConfig) -> None:
        _check_layer(self.layer, cfg)
        if self.source.residual.shape[0] != cfg.n_layers + 1 or self.source.residual.shape[-1] != cfg.d_model:
            raise ValueError("a Patch's source must be a Trace of a model of the same shape (layers and width)")

    def __str__(self) -> str:
        where = ", ".join(map(str, self.positions[:6])) + (", ..." if len(self.positions) > 6 else "")
        return f"layer {self.layer} patched at position{'s' if len(self.positions) > 1 else ''} {where}"


class Interventions:
    """The interventions of a forward pass, grouped by layer: what the decoder asks at each point. Empty, every point
    passes its input through; the decoder's default is NO_INTERVENTIONS."""

    def __init__(self, items: Iterable[Intervention] = (), config: ModelConfig | None = None) -> None:
        self.items = tuple(items)
        for item in self.items:
            if not isinstance(item, Intervention):
                raise ValueError(f"{item!r} is not an intervention (HeadAblation, ExpertAblation, Patch, ...)")
            if config is not None:
                item.check(config)
        self._by_layer: dict[int, list[Intervention]] = {}
        for item in self.items:
            self._by_layer.setdefault(item.layer, []).append(item)
        if config is not None and config.moe is not None:
            for layer, items in self._by_layer.items():
                banned = {i.expert for i in items if isinstance(i, ExpertAblation)}
                if config.moe.n_routed_experts - len(banned) < config.moe.n_experts_per_tok:
                    raise ValueError(f"layer {layer} would keep fewer experts than the {config.moe.n_experts_per_tok} "
                                     "the router chooses per token")

    @classmethod
    def of(cls, items: "Interventions | Iterable[Intervention] | None", config: ModelConfig) -> "Interventions":
        """items checked against the model's config (an Interventions, a list of interventions, or None)."""
        return cls(items.items if isinstance(items, Interventions) else items or (), config)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Intervention]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"Interventions({list(self.items)!r})"

    def __str__(self) -> str:
        return "; ".join(map(str, self.items)) or "no interventions"

    def touches(self, layer: int) -> bool:
        return layer in self._by_layer

    def heads(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        for item in self._by_layer.get(layer, ()):
            out = item.heads(out)
        return out

    def allowed_experts(self, layer: int, n_experts: int, device: torch.device) -> torch.Tensor | None:
        """[E] bool, the experts layer's router may choose; None where nothing restricts them (the usual routing)."""
        if layer not in self._by_layer:
            return None
        allowed = torch.ones(n_experts, dtype=torch.bool, device=device)
        for item in self._by_layer[layer]:
            allowed = item.experts(allowed)
        return None if bool(allowed.all()) else allowed

    def attention(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        for item in self._by_layer.get(layer, ()):
            out = item.attention(out)
        return out

    def mlp(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        for item in self._by_layer.get(layer, ()):
            out = item.mlp(out)
        return out

    def block(self, layer: int, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """h [B, T, d_model] leaving block `layer`, at positions [T] (consecutive)."""
        for item in self._by_layer.get(layer, ()):
            h = item.block(h, int(positions[0]))
        return h


NO_INTERVENTIONS = Interventions()
