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


def wandb_records(path: Path) -> list:
    """The protobuf records of a wandb offline run file (``run-<id>.wandb``: a 7-byte header, then LevelDB-style
    32 KiB blocks of (crc32, length, type, data) chunks), parsed with wandb's own ``Record`` message."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    records, pending, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start, MIDDLE/LAST continue
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_logged(run_folder: Path) -> dict:
    """What an offline wandb run logged: its group, job type, config and the last value of every metric."""
    import json

    (path,) = Path(run_folder).glob("run-*.wandb")
    found = {"config": {}, "metrics": {}, "group": None, "job_type": None}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found.update(group=record.run.run_group, job_type=record.run.job_type)
            found["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            found["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            found["metrics"].update({i.key: json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            found["metrics"].update({i.key: json.loads(i.value_json) for i in record.summary.update})
    return found
