"""The RSS timeline benchmark's bookkeeping: a breakdown checked by hand on a made-up record, and probes that record a
real offloaded prune's phases and leave the library as they found it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

MB = 2**20


def _interval(label, detail, start, end, rss_start, rss_end):
    return {"label": label, "detail": detail, "start": start, "end": end,
            "rss_start": rss_start * MB, "rss_end": rss_end * MB}  # fmt: skip


def test_the_breakdown_of_a_made_up_record_matches_a_hand_count():
    from rss_timeline import breakdown

    # (seconds, RSS, of it file-backed): the anonymous part peaks at 6 s (1700 - 300), not at the RSS peak
    samples = [[t, rss * MB, file * MB] for t, rss, file in
               [(0, 400, 50), (1, 500, 60), (2, 900, 400), (3, 1300, 800), (4, 1800, 700), (5, 1500, 300),
                (6, 1700, 300), (7, 1350, 300), (8, 1300, 300)]]  # fmt: skip
    intervals = [
        _interval("outside blocks", "", 0.5, 1.5, 400, 900),
        _interval("read", "block 0", 1.8, 2.6, 900, 1300),
        _interval("read", "block 1", 2.9, 3.9, 1300, 1700),
        _interval("resident", "block 0", 2.6, 4.5, 1300, 1700),
        _interval("compress", "model.layers.0.mlp.down_proj", 3.5, 4.5, 1500, 1500),
        _interval("write", "model-block-00000.safetensors", 5.5, 6.5, 1500, 1400),
        _interval("resident", "block 1", 6.6, 7.5, 1400, 1350),
        _interval("write", "model-block-00001.safetensors", 7.6, 7.9, 1350, 1300),
    ]
    parts = breakdown({"samples": samples, "intervals": intervals})
    assert parts["peak_mb"] == 1800 and parts["peak_at_s"] == 4
    assert parts["open_at_peak"] == ["resident block 0", "compress model.layers.0.mlp.down_proj"]
    assert parts["file_backed_at_peak_mb"] == 700 and parts["anonymous_peak_mb"] == 1400
    assert breakdown({"samples": [s[:2] for s in samples], "intervals": intervals})["anonymous_peak_mb"] is None
    assert parts["before_model_mb"] == 400 and parts["outside_blocks_mb"] == 500
    assert parts["block_read_median_mb"] == 400 and parts["reads"] == 2
    assert parts["compress_transient_mb"] == 300  # the 4 s sample (1800) against the 1500 at its start
    assert parts["write_transient_mb"] == 200  # the 6 s sample (1700) against 1500
    assert parts["max_live_blocks"] == 2  # block 0 is alive until its write ends at 6.5 s, block 1 from 2.9 s


def test_probes_record_an_offloaded_prune_and_are_removed_afterwards(tmp_path):
    import llama8b
    from rss_timeline import breakdown

    from langprune.compress.loop import Compressor
    from langprune.engine.placement import Placement

    before = (Placement._read, Placement._load, Placement._unload, Compressor.compress)
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 300}  # fmt: skip
    folder = llama8b.write_shaped_checkpoint(tmp_path / "shaped", shape)
    result = llama8b.run_one(str(folder), "wanda", 2, 16, tmp_path / "timeline")
    assert (Placement._read, Placement._load, Placement._unload, Compressor.compress) == before
    record = json.loads((tmp_path / "timeline" / "wanda.json").read_text())
    assert (tmp_path / "timeline" / "wanda.png").stat().st_size > 0
    labels = [i["label"] for i in record["intervals"]]
    assert labels.count("read") == 3 and labels.count("resident") == 3 and labels.count("outside blocks") == 1
    assert labels.count("compress") == 3 * 4  # q/k/v share an input: qkv, o, gate/up, down per block
    assert {i["detail"] for i in record["intervals"] if i["label"] == "write"} >= {
        f"model-block-{k:05d}.safetensors" for k in range(3)
    }
    assert breakdown(record) == result["breakdown"] and result["breakdown"]["max_live_blocks"] <= 2
