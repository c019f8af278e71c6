"""The 8B-shaped benchmark's checkpoint writer, on a scaled-down shape: a folder transformers and langprune read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

SMALL = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 8,
         "num_key_value_heads": 2, "vocab_size": 300}  # fmt: skip


def test_the_shaped_checkpoint_is_complete_readable_and_prunable_offloaded(tmp_path, cli):
    from conftest import CALIBRATION_TEXT
    from llama8b import write_shaped_checkpoint
    from safetensors import safe_open
    from transformers import AutoConfig, LlamaForCausalLM

    folder = write_shaped_checkpoint(tmp_path / "shaped", SMALL)
    config = AutoConfig.from_pretrained(folder)
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (64, 3, 2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    with torch.device("meta"):
        expected = LlamaForCausalLM(config).state_dict()
    assert set(index) == set(expected)
    assert len(set(index.values())) == 4  # one shard per block, one outside them
    for name, file in index.items():
        with safe_open(folder / file, "pt") as shard:
            tensor = shard.get_tensor(name)
        assert tensor.shape == expected[name].shape and tensor.dtype == torch.bfloat16
    model = LlamaForCausalLM.from_pretrained(folder)
    assert torch.isfinite(model(torch.tensor([[1, 5, 7]])).logits).all()
    again = write_shaped_checkpoint(tmp_path / "again", SMALL)
    first = (folder / "model-block-00001.safetensors").read_bytes()
    assert first == (again / "model-block-00001.safetensors").read_bytes()  # seeded: the same bytes
    (tmp_path / "calib.txt").write_text(CALIBRATION_TEXT)
    done = cli("prune", "--model", folder, "--calib", f"file:{tmp_path / 'calib.txt'}",
               "--method", "wanda", "--offload", "disk", "--nsamples", "2", "--seqlen", "8", "--out", tmp_path / "run")  # fmt: skip
    assert done.returncode == 0, done.stderr
