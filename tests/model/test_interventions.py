"""Interventions (model/interventions.py) against transformers doing the same with forward hooks, on tiny random
models of the Llama family and DeepSeek-V3 initialised wide (families.py), in float32: a head ablated (its slice of
the output projection's input zeroed), an expert ablated (its correction bias set very negative), a layer's output
patched from another run, a block's attention or MLP zeroed, a steering vector added. Logits to 1e-4 of their scale;
the Trace recomputes the intervened run; cached decoding with interventions equals full recomputation."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from model import (AttentionAblation, ExpertAblation, HeadAblation, Interventions, MLPAblation, Patch, Steering,
                   load_model)
from tests.model.families import IDS, TOL, VOCAB, build_hf, close, hf_layers, save

IV_TOL = 1e-4
OTHER_IDS = torch.randint(0, VOCAB, (len(IDS),), generator=torch.Generator().manual_seed(2)).tolist()
MODELS = ["llama-gqa-untied", "llama-tied-llama3-rope", "kimi-k2-routing", "no-q-lora-grouped"]


@pytest.fixture(scope="module", params=MODELS)
def pair(request, tmp_path_factory):
    hf = build_hf(request.param)
    return hf, load_model(save(hf, tmp_path_factory.mktemp(request.param)), device="cpu", dtype="float32")


@contextmanager
def hooked(*hooks):
    """Each (module, kind, fn) registered as a forward hook ("post") or pre-hook ("pre") for the block's duration."""
    handles = [m.register_forward_pre_hook(fn) if kind == "pre" else m.register_forward_hook(fn)
               for m, kind, fn in hooks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def hf_logits(hf, ids: list[int], *hooks) -> torch.Tensor:
    with hooked(*hooks), torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


def replace_output(fn):
    """A forward hook returning fn(output) in place of a module's output (a tensor, or a tuple's first element)."""
    def hook(module, args, out):
        if isinstance(out, tuple):
            return (fn(out[0]), *out[1:])
        return fn(out)
    return hook


def zero_head(hf, lm, layer: int, head: int):
    """transformers' head ablation: that head's slice of o_proj's input zeroed by a forward pre-hook."""
    d = lm.config.mla.v_head_dim if lm.config.mla is not None else lm.config.d_head

    def hook(module, args):
        x = args[0].clone()
        x[..., head * d:(head + 1) * d] = 0
        return (x, *args[1:])
    return hf_layers(hf)[layer].self_attn.o_proj, "pre", hook


def layer_outputs(hf, ids: list[int]) -> list[torch.Tensor]:
    """What each decoder layer of transformers returned over ids: [T, d] per layer."""
    seen: list[torch.Tensor] = []
    keep = lambda m, args, out: seen.append((out[0] if isinstance(out, tuple) else out)[0].detach())
    with hooked(*[(layer, "post", keep) for layer in hf_layers(hf)]), torch.no_grad():
        hf(torch.tensor([ids]))
    return seen


def patch_layer(hf, layer: int, positions: list[int], values: torch.Tensor):
    """transformers' patch: a forward hook replacing decoder layer `layer`'s output at positions by values [T, d]."""
    def put(h):
        h = h.clone()
        h[0, positions] = values[positions]
        return h
    return hf_layers(hf)[layer], "post", replace_output(put)


def moe_layer(lm) -> int | None:
    layers = [i for i in range(lm.config.n_layers) if lm.config.is_moe_layer(i)]
    return layers[-1] if layers else None


def test_head_ablation_matches_a_hook_zeroing_the_heads_slice_of_o_proj(pair):
    hf, lm = pair
    clean = lm.trace(IDS).logits
    for heads in ([(1, 2)], [(0, 0), (0, 3), (2, 1)]):
        trace = lm.trace(IDS, [HeadAblation(layer, head) for layer, head in heads])
        ref = hf_logits(hf, IDS, *[zero_head(hf, lm, layer, head) for layer, head in heads])
        assert float((ref - clean).abs().max()) > 100 * IV_TOL * float(ref.abs().max()), "the ablation changes nothing"
        close(trace.logits, ref, IV_TOL, f"logits with heads {heads} ablated")


def test_expert_ablation_matches_a_very_negative_correction_bias(pair):
    hf, lm = pair
    layer = moe_layer(lm)
    if layer is None:
        pytest.skip("no experts in this family")
    clean = lm.trace(IDS)
    i = clean.moe_layers.index(layer)
    expert = int(clean.experts[i].flatten().bincount().argmax())  # the most chosen: its ablation reroutes most
    trace = lm.trace(IDS, [ExpertAblation(layer, expert)])
    assert not (trace.experts[i] == expert).any()
    gate = hf_layers(hf)[layer].mlp.gate
    seen = {}
    keep = lambda m, args, out: seen.update(chosen=out[2].detach())
    bias = gate.e_score_correction_bias
    saved = bias.clone()
    try:
        with torch.no_grad():
            bias[expert] = -1e4
        ref = hf_logits(hf, IDS, (gate, "post", keep))
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert torch.equal(trace.experts[i].sort(-1).values, seen["chosen"].sort(-1).values)
    assert float((ref - clean.logits).abs().max()) > 100 * IV_TOL * float(ref.abs().max())
    close(trace.logits, ref, IV_TOL, f"logits with expert {expert} of layer {layer} ablated")


@pytest.mark.parametrize("layer,positions", [(0, [5]), (1, [3, 9]), (2, [0, 13])])
def test_patch_matches_a_hook_replacing_a_layer_output(pair, layer, positions):
    hf, lm = pair
    source = lm.trace(OTHER_IDS)
    clean = lm.trace(IDS)
    trace = lm.trace(IDS, [Patch(layer, positions, source)])
    values = layer_outputs(hf, OTHER_IDS)[layer]  # transformers' own source run
    ref = hf_logits(hf, IDS, patch_layer(hf, layer, positions, values))
    close(trace.logits, ref, IV_TOL, f"logits patched at layer {layer}, positions {positions}")
    hidden = trace.hidden_states
    assert torch.equal(hidden[layer + 1, positions], source.hidden_states[layer + 1, positions])
    close(hidden[: layer + 1], clean.hidden_states[: layer + 1], TOL, "blocks before the patch")
    before = min(positions)  # and, everywhere, positions before the first patched one (attention is causal; MoE
    if before:  # batches other rows together, hence a tolerance)
        close(hidden[:, :before], clean.hidden_states[:, :before], TOL, "positions before")


def test_block_ablations_and_steering_match_hooks(pair):
    hf, lm = pair
    vector = torch.randn(lm.config.d_model, generator=torch.Generator().manual_seed(3))
    edits = [AttentionAblation(0), MLPAblation(1), Steering(2, vector, 0.5)]
    layers = hf_layers(hf)
    hooks = [(layers[0].self_attn, "post", replace_output(torch.zeros_like)),
             (layers[1].mlp, "post", replace_output(torch.zeros_like)),
             (layers[2], "post", replace_output(lambda h: h + 0.5 * vector))]
    close(lm.trace(IDS, edits).logits, hf_logits(hf, IDS, *hooks), IV_TOL, "logits")
    for edit, hook in zip(edits, hooks):  # each alone too
        close(lm.trace(IDS, [edit]).logits, hf_logits(hf, IDS, hook), IV_TOL, str(edit))


def mixed(lm, source) -> list:
    edits = [HeadAblation(0, 1), Patch(1, [4, 10], source), AttentionAblation(2)]
    if moe_layer(lm) is not None:
        edits.append(ExpertAblation(moe_layer(lm), 3))
    return edits


def test_a_trace_recomputes_the_run_its_interventions_made(pair):
    """Block internals, routing and attention recomputed from an intervened trace are those of the intervened run."""
    hf, lm = pair
    edits = mixed(lm, lm.trace(OTHER_IDS))
    trace = lm.trace(IDS, edits)
    assert list(trace.interventions) == edits
    assert "head 1 of layer 0 ablated" in str(trace.interventions)
    assert not lm.trace(IDS).interventions
    hidden = trace.hidden_states
    for layer in range(lm.config.n_layers):
        inside = trace.internals(layer, need_probs=True)
        close(inside.h_out[0], hidden[layer + 1], TOL, f"layer {layer} h_out")
        close(inside.attn_probs[0], trace.attention(layer), TOL, f"layer {layer} attention")
    assert torch.equal(trace.internals(2).attn_out, torch.zeros_like(trace.internals(2).attn_out))
    # layer 0's attention output is what o_proj makes of the heads with head 1's slice zeroed
    attn_out = o_proj_output(hf, IDS, zero_head(hf, lm, 0, 1))
    close(trace.internals(0).attn_out[0], attn_out, TOL, "layer 0 attn_out with head 1 ablated")
    if moe_layer(lm) is not None:
        routing = trace.routing(moe_layer(lm))
        assert torch.equal(routing.experts, trace.internals(moe_layer(lm)).experts)
        assert not (routing.experts == 3).any()


def o_proj_output(hf, ids: list[int], *hooks) -> torch.Tensor:
    """What layer 0's o_proj returned in transformers' forward over ids, with hooks on."""
    seen = {}
    keep = lambda m, args, out: seen.update(out=out[0].detach())
    hf_logits(hf, ids, *hooks, (hf_layers(hf)[0].self_attn.o_proj, "post", keep))
    return seen["out"]


def test_cached_decoding_with_interventions_equals_full_recomputation(pair):
    _, lm = pair
    source = lm.trace(OTHER_IDS)
    edits = mixed(lm, source) + [Patch(2, [7], source)]  # position 7 is generated, not in the prompt
    steps = list(lm.generate(IDS[:5], max_new_tokens=8, greedy=True, record=True, stop_at_eos=False,
                             interventions=edits))
    plain = [s.token_id for s in lm.generate(IDS[:5], max_new_tokens=8, greedy=True, stop_at_eos=False)]
    full = IDS[:5] + [s.token_id for s in steps]
    full_logits = lm.trace(full, edits).logits
    for s in steps:
        close(s.trace.logits_at([-1])[0], full_logits[s.position - 1], TOL, f"step {s.index}")
        assert s.token_id == int(full_logits[s.position - 1].argmax())
    last = steps[-1].trace
    assert list(last.interventions) == edits
    assert torch.equal(last.hidden_states[3, 7], source.hidden_states[3, 7])  # patched while generating
    close(last.hidden_states, lm.trace(full[:-1], edits).hidden_states, TOL, "hidden states")
    assert [s.token_id for s in steps] != plain  # the interventions changed the text


def test_bad_interventions_are_refused_in_a_sentence(pair):
    _, lm = pair
    cfg = lm.config
    source = lm.trace(OTHER_IDS[:6])
    cases = [
        ([HeadAblation(cfg.n_layers, 0)], f"layer {cfg.n_layers} is out of range"),
        ([HeadAblation(-1, 0)], "layer -1 is out of range"),
        ([HeadAblation(0, cfg.n_heads)], f"head {cfg.n_heads} is out of range"),
        ([AttentionAblation(7)], "layer 7 is out of range"),
        ([Steering(0, torch.zeros(3))], "width"),
        (["head 3"], "not an intervention"),
    ]
    if cfg.moe is None:
        cases.append(([ExpertAblation(0, 0)], "this model has none"))
    else:
        dense = next((i for i in range(cfg.n_layers) if not cfg.is_moe_layer(i)), None)
        layer = moe_layer(lm)
        cases += [([ExpertAblation(layer, cfg.moe.n_routed_experts)], "expert 16 is out of range"),
                  ([ExpertAblation(layer, e) for e in range(cfg.moe.n_routed_experts - cfg.moe.n_experts_per_tok + 1)],
                   "fewer experts")]
        if dense is not None:
            cases.append(([ExpertAblation(dense, 0)], f"layer {dense} has no experts"))
    for edits, message in cases:
        with pytest.raises(ValueError, match=message):
            lm.trace(IDS[:5], edits)
        with pytest.raises(ValueError, match=message):
            lm.generate(IDS[:5], max_new_tokens=2, interventions=edits)
    with pytest.raises(ValueError, match="position 5 of a sequence of 5 tokens"):
        lm.trace(IDS[:5], [Patch(0, [5], source)])  # (a generation may reach it: there it waits)
    with pytest.raises(ValueError, match="source of 6 tokens"):
        Patch(0, [2, 6], source)
    with pytest.raises(ValueError, match="at least one position"):
        Patch(0, [], source)
    with pytest.raises(ValueError, match="token indices"):
        Patch(0, [-1], source)
    with pytest.raises(ValueError, match="source is a Trace"):
        Patch(0, [1], OTHER_IDS)
    assert len(Interventions.of([HeadAblation(0, 0)], cfg)) == 1
