"""A langprune run's recipe.yaml, run through llm-compressor on the same tokens: masks and perplexity side by side.

llm-compressor lives in its own virtualenv (it pins other versions of
transformers and compressed-tensors than langprune):

    python -m venv /tmp/llmc && /tmp/llmc/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1 datasets
    .venv/bin/python benchmarks/prune_speed.py --cases floor --save-tokens /tmp/calib.pt
    .venv/bin/langprune prune --model gemma-3-270m --tokens /tmp/calib.pt --method wanda --sparsity 0.5 \\
        --eval-langs en,de,fr,zh,hi,sw --out /tmp/lp-wanda
    /tmp/llmc/bin/python benchmarks/llmcompressor_recipe.py run --model ~/.cache/langprune/models/gemma-3-270m \\
        --tokens /tmp/calib.pt --recipe /tmp/lp-wanda/recipe.yaml --out /tmp/llmc-wanda
    .venv/bin/python benchmarks/llmcompressor_recipe.py compare /tmp/lp-wanda /tmp/llmc-wanda
    .venv/bin/python benchmarks/quality.py --only-eval /tmp/llmc-wanda     # held-out perplexity, same evaluator

``run`` applies the recipe file as it is (llm-compressor's own parser reads
it) with ``oneshot`` and saves the model uncompressed; ``compare`` reads
both checkpoints' safetensors (no langprune or llm-compressor import, so it
runs in either virtualenv) and prints, per layer kind and overall, the share
of weights whose kept/pruned state agrees, and the sparsity of each.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch


def oneshot_on_tokens(model_folder: str, tokens: str, recipe, out: str, compressed: bool = False) -> float:
    """llm-compressor's ``oneshot`` with ``recipe`` (a file or modifiers) on saved token ids, in their order; the
    model is saved with its tokenizer to ``out`` (plain weights unless ``compressed``). Returns oneshot's seconds."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    saved = torch.load(tokens, weights_only=True)
    ids = saved["input_ids"]
    mask = saved.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist()})
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    start = time.perf_counter()
    oneshot(
        model=model,
        dataset=dataset,
        recipe=recipe,
        num_calibration_samples=len(ids),
        max_seq_length=ids.shape[1],
        shuffle_calibration_samples=False,
    )
    seconds = time.perf_counter() - start
    model.save_pretrained(out, save_compressed=compressed)
    tokenizer.save_pretrained(out)
    return seconds


def run(args) -> None:
    seconds = oneshot_on_tokens(args.model, args.tokens, args.recipe, args.out, args.compressed)
    print(json.dumps({"tool": "llm-compressor oneshot", "recipe": args.recipe, "seconds": round(seconds, 1)}))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def compare(args) -> None:
    ours, theirs = _weights(Path(args.langprune_run)), _weights(Path(args.llmcompressor_out))
    layers = [name for name, w in ours.items() if w.dim() == 2 and name.endswith("proj.weight") and name in theirs]
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0])  # agree, total, zeros ours, zeros theirs
    for name in layers:
        a, b = ours[name] != 0, theirs[name] != 0
        kind = name.split(".")[-2]
        for key in (kind, "all"):
            tally = by_kind[key]
            tally[0] += (a == b).sum().item()
            tally[1] += a.numel()
            tally[2] += (~a).sum().item()
            tally[3] += (~b).sum().item()
    rows = {
        kind: {
            "mask_agreement": round(agree / total, 4),
            "sparsity_langprune": round(zeros_a / total, 4),
            "sparsity_llmcompressor": round(zeros_b / total, 4),
        }
        for kind, (agree, total, zeros_a, zeros_b) in sorted(by_kind.items())
    }
    print(json.dumps({"layers": len(layers), "by_kind": rows}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="apply a recipe.yaml with llm-compressor's oneshot")
    run_parser.add_argument("--model", required=True, help="a local Hugging Face folder")
    run_parser.add_argument("--tokens", required=True, help="the input_ids/attention_mask dict prune_speed.py saved")
    run_parser.add_argument("--recipe", required=True, help="a recipe.yaml from a langprune run folder")
    run_parser.add_argument("--out", required=True)
    run_parser.add_argument("--compressed", action="store_true", help="save packed (quantized recipes)")
    compare_parser = commands.add_parser("compare", help="mask agreement of a langprune run and llm-compressor's")
    compare_parser.add_argument("langprune_run")
    compare_parser.add_argument("llmcompressor_out")
    args = parser.parse_args()
    run(args) if args.command == "run" else compare(args)


if __name__ == "__main__":
    main()
