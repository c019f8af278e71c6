"""Reference code the tests compare against, and helpers kept out of the package because only tests use them."""

from __future__ import annotations

from pathlib import Path

import torch

from langprune.compress.kernels import obs_sweep
from langprune.compress.quantization import QuantSpec, group_grid, snap_to_grid
from langprune.compress.result import LayerChange
from langprune.compress.sparsity import Sparsity
from langprune.engine.placement import placement_of
from langprune.runs.folder import RunWriter


def sparsegpt_prune(
    weight,
    hessian,
    sparsity: Sparsity,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "layer",
    inner: int = 16,
    selection: str = "row",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh, 2023): ``obs_sweep`` pruning only; returns the float32 weight and keep mask."""
    result = obs_sweep(
        weight,
        hessian,
        sparsity=sparsity,
        selection=selection,
        blocksize=blocksize,
        percdamp=percdamp,
        name=name,
        inner=inner,
    )
    return result.weight, result.keep


def round_to_nearest(weight: torch.Tensor, spec: QuantSpec, keep: torch.Tensor | None = None):
    """Plain round-to-nearest on the same grid (no error feedback): the baseline GPTQ must beat.

    Returns the dequantized weight, scales and zero points (rows, groups).
    """
    w = weight.detach().float() * (keep if keep is not None else 1)
    scale, zero_point = group_grid(w, spec)
    return snap_to_grid(w, scale, zero_point, spec.maxq), scale, zero_point


def save_run(
    out: Path, model, tokenizer, changes: dict[str, LayerChange], report: dict, overwrite: bool = False
) -> Path:
    """Write checkpoint, changes held in memory and report in one go."""
    placement = placement_of(model)
    with RunWriter(out, overwrite) as run:
        for index in range(len(placement.blocks)):
            prefix = placement.block_prefix(index) + "."
            with placement.hold(index):
                run.add_block(model, index, {n: c for n, c in changes.items() if n.startswith(prefix)})
        return run.finish(model, tokenizer, report)


HARNESS_TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def harness_task_folder(folder: Path, n: int) -> list[dict]:
    """An lm-eval task file ``tiny_choice`` over ``n`` local three-way questions in ``folder``; returns the rows."""
    import json

    rows = [{"question": "the of and", "choices": ["to in", "a is", "that for"], "answer": i % 3} for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny_choice.yaml").write_text(HARNESS_TASK.format(data=data))
    return rows
