"""The engine and pruning loop on a tiny model of every supported architecture."""

import pytest
import torch
from conftest import tiny_model, token_ids
from test_kernels import brute_force_mask

from langprune.calibration import CalibrationSet
from langprune.compress import Sparsity
from langprune.compress import prune_model as prune
from langprune.engine import BlockEngine, LayerFilter, find_blocks, prunable_layers, weight_matrix
from langprune.engine.statistics import SquaredNorms


def dense_layer_inputs(model, ids, mask=None):
    """Brute force: sum of squared inputs of every prunable layer during plain full-model forwards."""
    name, blocks = find_blocks(model)
    sums, handles = {}, []
    for i, block in enumerate(blocks):
        for lname, layer in prunable_layers(block, f"{name}.{i}", LayerFilter()).items():

            def hook(module, args, lname=lname):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                if mask is not None:
                    x = x[mask.reshape(-1).bool()]
                sums[lname] = sums.get(lname, 0) + (x * x).sum(0)

            handles.append(layer.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask if mask is not None else torch.ones_like(ids), use_cache=False)
    for h in handles:
        h.remove()
    return sums


@pytest.mark.parametrize("spec", ["0.5", "2:4"])
def test_wanda_dense_propagation_equals_brute_force(arch, spec):
    spec = Sparsity.parse(spec)
    model, reference = tiny_model(arch), tiny_model(arch)
    ids = token_ids()
    sums = dense_layer_inputs(reference, ids)
    result = prune(model, ids, "wanda", spec, propagate="dense", batch_size=4)
    modules = dict(reference.named_modules())
    assert set(result.masks) == set(sums)
    for name, keep in result.masks.items():
        weight = weight_matrix(modules[name])
        scores = weight.abs() * sums[name].float().sqrt()
        assert torch.equal(keep, brute_force_mask(scores, spec)), name


def test_every_method_prunes_exactly_and_zeroes_weights(arch):
    for method in ("magnitude", "random", "wanda", "sparsegpt"):
        model = tiny_model(arch)
        result = prune(model, token_ids(), method, "0.5", batch_size=4)
        modules = dict(model.named_modules())
        for name, keep in result.masks.items():
            weight = weight_matrix(modules[name])
            assert ((~keep).sum(1) == weight.shape[1] // 2).all(), (method, name)
            assert (weight[~keep] == 0).all()
        assert result.summary["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)
        assert 0 < result.summary["sparsity_all_parameters"] < 0.5


def test_propagation_modes_agree_on_first_block_only():
    ids = token_ids(n=8, seqlen=16)
    pruned = prune(tiny_model("llama"), ids, "wanda", "0.5", propagate="pruned").masks
    dense = prune(tiny_model("llama"), ids, "wanda", "0.5", propagate="dense").masks
    first = [n for n in pruned if ".layers.0." in n]
    later = [n for n in pruned if ".layers.0." not in n]
    assert all(torch.equal(pruned[n], dense[n]) for n in first)
    assert any(not torch.equal(pruned[n], dense[n]) for n in later)


def test_padding_never_changes_a_statistic(arch):
    model = tiny_model(arch)
    long, short = token_ids(1, 12, seed=1), token_ids(1, 7, seed=2)
    padded = torch.cat([long, torch.cat([short, torch.zeros(1, 5, dtype=torch.long)], 1)])
    mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5])

    def block_norms(calibration):
        engine = BlockEngine(model, calibration.batches(2))
        engine.capture()
        stats = {}

        def collect(name, x, batch):
            stats.setdefault(name, SquaredNorms(x.shape[1], name)).add_batch(x)

        engine.run_block(0, collect)
        return {n: s.value for n, s in stats.items()}, {n: s.tokens for n, s in stats.items()}

    together, tokens = block_norms(CalibrationSet.from_tokens(padded, mask))
    alone = [block_norms(CalibrationSet.from_tokens(x)) for x in (long, short)]
    for name in together:
        assert tokens[name] == 19
        assert torch.allclose(together[name], alone[0][0][name] + alone[1][0][name], rtol=1e-5, atol=1e-6), name


def test_layers_sharing_an_input_share_one_statistic():
    model = tiny_model("llama")
    engine = BlockEngine(model, CalibrationSet.from_tokens(token_ids()).batches(3))
    engine.capture()
    leaders = []
    groups = engine.run_block(0, lambda name, x, b: leaders.append(name))
    assert sorted(set(groups.leader.values())) == sorted(
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.o_proj",
            "model.layers.0.mlp.gate_proj",
            "model.layers.0.mlp.down_proj",
        ]
    )
    assert groups.members("model.layers.0.self_attn.q_proj")[1:] == [
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj",
    ]
    assert len(leaders) == 4 * 2  # four distinct inputs, two batches


def test_the_widest_input_is_compressed_first_and_freed_before_the_rest(monkeypatch):
    """The down projection (widest input) is solved first and its Hessian freed before the other groups solve, so
    at most one wide statistic is alive during a solve; the result keeps the layers' own order."""
    from langprune.compress.loop import Compressor
    from langprune.engine.statistics import Hessian

    events = []
    compress, free = Compressor.compress, Hessian.free
    monkeypatch.setattr(
        Compressor,
        "compress",
        lambda self, group, *a: events.append(("solve", next(iter(group)))) or compress(self, group, *a),
    )
    monkeypatch.setattr(Hessian, "free", lambda self: events.append(("free", self.name)) or free(self))
    model = tiny_model("llama")
    assert model.config.intermediate_size > model.config.hidden_size
    result = prune(model, token_ids(), "sparsegpt", 0.5)
    block = [event for event in events if ".layers.0." in event[1]]
    assert block[:2] == [("solve", "model.layers.0.mlp.down_proj"), ("free", "model.layers.0.mlp.down_proj")]
    assert len(block) == 8  # four groups, each solved then freed
    names = [name for name in result.changes if ".layers.0." in name]
    assert names[0].endswith("q_proj") and names[-1].endswith("down_proj")


def test_same_seed_gives_bit_identical_masks():
    for method in ("random", "wanda", "sparsegpt"):
        a = prune(tiny_model("gpt2"), token_ids(), method, "0.5", seed=3).masks
        b = prune(tiny_model("gpt2"), token_ids(), method, "0.5", seed=3).masks
        assert all(torch.equal(a[n], b[n]) for n in a), method
    c = prune(tiny_model("gpt2"), token_ids(), "random", "0.5", seed=4).masks
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_include_exclude_patterns():
    result = prune(tiny_model("llama"), token_ids(), "magnitude", "0.5", include=("*mlp*",), exclude=("*down_proj",))
    assert result.masks and all("mlp" in n and "down_proj" not in n for n in result.masks)


def test_pruned_model_still_runs_and_gets_worse_not_nan(arch):
    model = tiny_model(arch)
    ids = token_ids()
    with torch.no_grad():
        before = model(input_ids=ids, labels=ids).loss
        prune(model, ids, "sparsegpt", "2:4")
        after = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(after) and after != before
