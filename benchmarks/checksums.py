"""SHA-256 of the masks and pruned weights for every method on every tiny architecture and on gemma-3-270m.

    python benchmarks/checksums.py [--real] > checksums.json

A refactoring that claims "behaviour unchanged" runs this before and after
and compares the two files: any bit that moved in any mask or weight changes
a digest. Only the public API is used (``langprune.prune``), so the script
runs on every version of the package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

METHODS = ("magnitude", "random", "wanda", "sparsegpt")


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def case(model, tokenizer, calibration, method: str, sparsity: str, **options) -> dict:
    from langprune import prune

    model, result = prune(model, tokenizer, calibration, method, sparsity, seed=3, **options)
    return {"masks": digest(result.masks), "weights": digest(dict(model.state_dict()))}


def tiny_cases() -> dict:
    from conftest import ARCHITECTURES, tiny_model, token_ids

    out = {}
    for arch in sorted(ARCHITECTURES):
        for method in METHODS:
            for sparsity in ("0.5", "2:4"):
                out[f"{arch}/{method}/{sparsity}"] = case(
                    tiny_model(arch), None, token_ids(), method, sparsity, batch_size=4
                )
        contrast = token_ids(seed=7)
        out[f"{arch}/wanda-contrastive/0.5"] = case(
            tiny_model(arch), None, token_ids(), "wanda", "0.5", contrast=contrast, batch_size=4
        )
        out[f"{arch}/wanda/0.5/dense"] = case(
            tiny_model(arch), None, token_ids(), "wanda", "0.5", propagate="dense", batch_size=4
        )
    return out


def real_cases() -> dict:
    from langprune import calibration, load_model

    out = {}
    for method, sparsity in (("wanda", "0.5"), ("sparsegpt", "2:4")):
        model, tokenizer = load_model("gemma-3-270m")
        calib = calibration.build("mix:en+de+zh", tokenizer, nsamples=8, seqlen=128, seed=0)
        out[f"gemma-3-270m/{method}/{sparsity}"] = case(model, tokenizer, calib, method, sparsity, batch_size=4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="also gemma-3-270m (wanda 0.5, sparsegpt 2:4)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    out = tiny_cases()
    if args.real:
        out.update(real_cases())
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
