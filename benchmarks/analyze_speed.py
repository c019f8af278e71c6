"""Wall time of each analysis' collection pass against one bare dense pass of the same tokens, and of mask IoU.

    python benchmarks/analyze_speed.py [--model gemma-3-270m] [--langs en,de,fr,zh,hi,sw] [--repeat 3]

The tokens are the held-out UDHR texts of the chosen languages, one row
per text, in batches that never mix languages. ``features`` treats each
language as a set; ``lape`` and ``lsar`` tag batches by language. The bare
pass is ``sweep`` with no visitor: the floor every analysis pays. Cases
interleave within one process after a warm-up pass; medians are reported.
Mask IoU runs on 8 synthetic run folders whose bit-packed masks have the
model's own layer shapes (random, 50% pruned), 4 languages x 2 seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def synthetic_runs(model, folder: Path, count: int = 8) -> list[Path]:
    from safetensors.torch import save_file

    from langprune.engine import find_blocks, prunable_layers
    from langprune.engine.architecture import LayerFilter, weight_matrix
    from langprune.runs.folder import MASKS_DIR, MASKS_INDEX, PACKED, pack_bits

    blocks_name, blocks = find_blocks(model)
    runs = []
    for k in range(count):
        run = folder / f"run{k}"
        (run / MASKS_DIR).mkdir(parents=True)
        generator = torch.Generator().manual_seed(k)
        index = {}
        for b, block in enumerate(blocks):
            layers = prunable_layers(block, f"{blocks_name}.{b}", LayerFilter())
            keep = {
                name: torch.rand(weight_matrix(layer).shape, generator=generator) >= 0.5
                for name, layer in layers.items()
            }
            shard = f"block-{b:05d}.safetensors"
            save_file(
                {n: pack_bits(v) for n, v in keep.items()},
                str(run / MASKS_DIR / shard),
                metadata={PACKED: json.dumps({n: list(v.shape) for n, v in keep.items()})},
            )
            index.update({name: shard for name in keep})
        (run / MASKS_DIR / MASKS_INDEX).write_text(json.dumps(index))
        report = {
            "model": "bench",
            "method": "wanda",
            "seed": k % 2,
            "calibration": {"recipe": "mono", "languages": [["en", "de", "fr", "zh"][k // 2 % 4]]},
        }
        (run / "report.json").write_text(json.dumps(report))
        runs.append(run)
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--langs", default="en,de,fr,zh,hi,sw")
    parser.add_argument("--corpus", default="udhr")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    from langprune import load_model
    from langprune.analysis.features import feature_norms
    from langprune.analysis.inputs import sentence_batches
    from langprune.analysis.lape import count_neurons
    from langprune.analysis.lsar import sentence_embeddings
    from langprune.analysis.masks import analyze_masks
    from langprune.engine import Tag, TokenBatch, sweep

    model, tokenizer = load_model(args.model, dtype=args.dtype)
    languages = args.langs.split(",")
    batches = sentence_batches(tokenizer, languages, args.corpus, None, 512, args.batch_size)
    as_sets = [TokenBatch(b.input_ids, b.attention_mask, Tag(b.tag.language)) for b in batches]
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    print(f"{args.model}: {len(batches)} batches, {tokens} real tokens in {len(languages)} languages")
    cases = {
        "dense pass": lambda: sweep(model, batches),
        "features": lambda: feature_norms(model, as_sets),
        "lape": lambda: count_neurons(model, batches, languages),
        "lsar": lambda: sentence_embeddings(model, batches, set(tokenizer.all_special_ids)),
    }
    sweep(model, batches)  # warm-up: first-call allocations and thread pools are nobody's cost
    seconds = {case: [] for case in cases}
    with tempfile.TemporaryDirectory() as scratch:
        runs = synthetic_runs(model, Path(scratch))
        cases["masks IoU, 8 runs"] = lambda: analyze_masks(runs)
        seconds["masks IoU, 8 runs"] = []
        for _ in range(args.repeat):
            for case, work in cases.items():
                start = time.perf_counter()
                work()
                seconds[case].append(time.perf_counter() - start)
    floor = statistics.median(seconds["dense pass"])
    for case, values in seconds.items():
        median = statistics.median(values)
        ratio = f"   {median / floor:.3f}x of the dense pass" if case != "masks IoU, 8 runs" else ""
        print(f"{case:20s} {median:8.2f} s{ratio}")


if __name__ == "__main__":
    main()
