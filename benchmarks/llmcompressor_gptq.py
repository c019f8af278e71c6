"""llm-compressor's GPTQModifier (W4A16: 4 bits, groups of 128, symmetric) on the exact tokens langprune's gptq case used.

llm-compressor pins other versions of transformers and compressed-tensors
than langprune, so it lives in its own virtualenv and is not a dependency:

    python -m venv /tmp/llmc && /tmp/llmc/bin/pip install llmcompressor==0.14.0.1 torch==2.13.0
    .venv/bin/python benchmarks/prune_speed.py --cases floor,gptq --save-tokens /tmp/calib.pt
    /tmp/llmc/bin/python benchmarks/llmcompressor_gptq.py --model ~/.cache/langprune/models/gemma-3-270m \\
        --tokens /tmp/calib.pt --out /tmp/llmc-gptq
    .venv/bin/python benchmarks/quality.py --only-eval /tmp/llmc-gptq     # held-out perplexity, same evaluator

It prints the wall time of ``oneshot`` alone (model loaded, tokens ready),
measured like prune_speed's cases, and writes the compressed-tensors
checkpoint that langprune's evaluator then loads. Options: --actorder
(llm-compressor's default is static activation order; langprune's w4g128 is
without it, so this script turns it off unless asked).
"""

from __future__ import annotations

import argparse
import json

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="a local Hugging Face folder (e.g. the cached gemma-3-270m alias)"
    )
    parser.add_argument("--tokens", required=True, help="the dict of input_ids/attention_mask prune_speed.py saved")
    parser.add_argument("--out", required=True)
    parser.add_argument("--actorder", action="store_true", help="static activation order (llm-compressor's default)")
    args = parser.parse_args()

    from llmcompressor.modifiers.quantization import GPTQModifier
    from llmcompressor_recipe import oneshot_on_tokens  # the same oneshot call, beside this script

    recipe = GPTQModifier(
        targets="Linear",
        scheme="W4A16",
        ignore=["lm_head"],
        block_size=128,
        dampening_frac=0.01,
        actorder="static" if args.actorder else None,
    )
    seconds = oneshot_on_tokens(args.model, args.tokens, recipe, args.out, compressed=True)
    ids = torch.load(args.tokens, weights_only=True)["input_ids"]
    print(
        json.dumps(
            {
                "tool": "llm-compressor GPTQModifier W4A16",
                "seconds": round(seconds, 1),
                "sequences": int(ids.shape[0]),
                "seqlen": int(ids.shape[1]),
                "out": args.out,
            }
        )
    )


if __name__ == "__main__":
    main()
