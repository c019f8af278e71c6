"""Where a pruning run's peak RSS goes: RSS sampled every 5 ms beside the run's phases, measured per component.

    python benchmarks/llama8b.py --blocks 2 --methods wanda,sparsegpt --timeline DIR   # DIR/<method>.json and .png
    python benchmarks/rss_timeline.py DIR/wanda.json                                  # the PNG again, from the JSON

A peak RSS alone says how much, not what. ``probed()`` wraps the few
library functions that bring memory in or out (the skeleton's load, a
block's read from disk, a block's residency, one group of layers'
compression, one shard's write) and records each call's start and end with
the RSS at both; ``breakdown`` turns those intervals and the 5 ms samples
into measured components: the RSS before the model loads, what the weights
outside the blocks add, what one block's read adds, the transient of
compressing a group (scores, selection, Hessians) and of writing a shard,
and which intervals were open at the peak.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import statistics
import threading
import time
from array import array
from contextlib import contextmanager
from pathlib import Path

import psutil

# (label, module, attribute path): each call of the function is one interval of that label.
PROBES = [
    ("outside blocks", "langprune.models", "load_skeleton"),
    ("read", "langprune.engine.placement", "Placement._read"),
    ("compress", "langprune.compress.loop", "Compressor.compress"),
    ("write", "langprune.runs.folder", "RunWriter._save_weights"),
    ("finish", "langprune.runs.folder", "RunWriter.finish"),
]
LANES = ["outside blocks", "resident", "read", "compress", "write", "finish"]


class Timeline:
    """RSS samples (seconds, bytes, file-backed bytes) every ``period`` seconds and labelled intervals, one clock.

    The file-backed part is the RSS of mapped files (``shared`` in ``/proc/self/statm``): the shared libraries'
    code (torch's alone is a few hundred MB) and the checkpoint, which safetensors maps, so a block's weights read
    from disk count as file pages until they are written to. Those pages are clean: the kernel can drop them under
    pressure, unlike the anonymous rest.
    """

    def __init__(self, period: float = 0.005):
        self.process, self.period = psutil.Process(), period
        # flat arrays (24 bytes a sample), so an hour's samples add a few MB to the RSS they measure
        self.times, self.values, self.files = array("d"), array("q"), array("q")
        self.intervals: list[dict] = []
        self._stop, self._lock, self._open = threading.Event(), threading.Lock(), {}

    def now(self) -> float:
        return time.perf_counter() - self.start

    def rss(self) -> int:
        return self.process.memory_info().rss

    def _record(self, at: float) -> None:
        info = self.process.memory_info()
        self.times.append(at)
        self.values.append(info.rss)
        self.files.append(info.shared)

    def __enter__(self):
        self.start = time.perf_counter()
        self._record(0.0)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        while not self._stop.is_set():
            self._record(self.now())
            time.sleep(self.period)

    def begin(self, label: str, detail: str) -> dict:
        return {"label": label, "detail": detail, "start": self.now(), "rss_start": self.rss()}

    def end(self, interval: dict) -> None:
        interval.update(end=self.now(), rss_end=self.rss())
        with self._lock:
            self.intervals.append(interval)

    @property
    def peak(self) -> int:
        return max(self.values)

    def to_json(self) -> dict:
        samples = [[round(t, 4), rss, file] for t, rss, file in zip(self.times, self.values, self.files)]
        return {"samples": samples, "intervals": sorted(self.intervals, key=lambda i: i["start"])}


def _detail(label: str, args: tuple) -> str:
    """What a call was about: the block index, the group's first layer, the shard's file name."""
    if label == "read":
        return f"block {args[1]}"
    if label == "compress":
        return next(iter(args[1]), "")
    if label == "write":
        return Path(args[2]).name
    return ""


def _resolve(module_name: str, path: str):
    owner = importlib.import_module(module_name)
    *parents, leaf = path.split(".")
    for name in parents:
        owner = getattr(owner, name)
    return owner, leaf


@contextmanager
def probed(timeline: Timeline):
    """Every probe in ``PROBES`` records its calls into ``timeline``; a block is ``resident`` from the end of its load
    to its unload. The originals are put back on exit."""
    from langprune.engine.placement import Placement

    originals = []

    def wrap(label, function):
        @functools.wraps(function)
        def probe(*args, **kwargs):
            interval = timeline.begin(label, _detail(label, args))
            try:
                return function(*args, **kwargs)
            finally:
                timeline.end(interval)

        return probe

    resident: dict[int, dict] = {}
    load, unload = Placement._load, Placement._unload

    def load_probe(self, index):
        load(self, index)
        resident[index] = timeline.begin("resident", f"block {index}")

    def unload_probe(self, index):
        unload(self, index)
        if index in resident:
            timeline.end(resident.pop(index))

    for label, module_name, path in PROBES:
        owner, leaf = _resolve(module_name, path)
        originals.append((owner, leaf, getattr(owner, leaf)))
        setattr(owner, leaf, wrap(label, getattr(owner, leaf)))
    originals += [(Placement, "_load", load), (Placement, "_unload", unload)]
    Placement._load, Placement._unload = load_probe, unload_probe
    # run_prune reaches load_skeleton through langprune.models' own name for it, patched above.
    try:
        yield timeline
    finally:
        for owner, leaf, original in originals:
            setattr(owner, leaf, original)


def _max_within(samples, start: float, end: float, fallback: int) -> int:
    inside = [sample[1] for sample in samples if start <= sample[0] <= end]
    return max(inside, default=fallback)


def breakdown(record: dict) -> dict:
    """Measured components (MB) of a timeline's RSS, from its samples and intervals alone."""
    samples, intervals = record["samples"], record["intervals"]
    mb = 2**20
    by_label: dict[str, list[dict]] = {}
    for interval in intervals:
        by_label.setdefault(interval["label"], []).append(interval)

    def transient(label):
        rises = [
            (_max_within(samples, i["start"], i["end"], i["rss_end"]) - i["rss_start"], i["detail"])
            for i in by_label.get(label, [])
        ]
        return max(rises, default=(0, ""))

    peak_time, peak, *file_at_peak = max(samples, key=lambda s: s[1])
    # the file-backed column (absent in a two-column record): what of the RSS is mapped checkpoint pages
    anonymous = [s[1] - s[2] for s in samples if len(s) > 2]
    skeleton = by_label.get("outside blocks", [])
    reads = [i["rss_end"] - i["rss_start"] for i in by_label.get("read", [])]
    compress_rise, compress_group = transient("compress")
    write_rise, write_file = transient("write")
    return {
        "peak_mb": peak / mb,
        "peak_at_s": peak_time,
        "file_backed_at_peak_mb": file_at_peak[0] / mb if file_at_peak else None,
        "anonymous_peak_mb": max(anonymous) / mb if anonymous else None,
        "open_at_peak": [
            f"{i['label']} {i['detail']}".strip() for i in intervals if i["start"] <= peak_time <= i["end"]
        ],
        "before_model_mb": (skeleton[0]["rss_start"] if skeleton else samples[0][1]) / mb,
        "outside_blocks_mb": (skeleton[0]["rss_end"] - skeleton[0]["rss_start"]) / mb if skeleton else 0.0,
        "block_read_median_mb": statistics.median(reads) / mb if reads else 0.0,
        "reads": len(reads),
        "max_live_blocks": _max_overlap(_live_blocks(by_label)),
        "compress_transient_mb": compress_rise / mb,
        "compress_transient_group": compress_group,
        "write_transient_mb": write_rise / mb,
        "write_transient_file": write_file,
    }


def _live_blocks(by_label: dict[str, list[dict]]) -> list[dict]:
    """Each block's weights are alive from the start of its read to the end of its shard's write (the write task holds
    them after the block is unloaded), or to its unload when nothing is written."""
    ends = {i["detail"]: i["end"] for i in by_label.get("resident", [])}
    for write in by_label.get("write", []):
        name = write["detail"]
        if name.startswith("model-block-"):
            ends[f"block {int(name.removeprefix('model-block-').split('.')[0])}"] = write["end"]
    return [{"start": i["start"], "end": ends.get(i["detail"], i["end"])} for i in by_label.get("read", [])]


def _max_overlap(intervals: list[dict]) -> int:
    edges = sorted([(i["start"], 1) for i in intervals] + [(i["end"], -1) for i in intervals])
    count = best = 0
    for _, step in edges:
        count += step
        best = max(best, count)
    return best


def describe(parts: dict) -> str:
    """The breakdown in a few lines, GB where a reader compares with the 4 GB aim."""
    return "\n".join(
        [
            f"  peak RSS {parts['peak_mb'] / 1024:.2f} GB at {parts['peak_at_s']:.1f} s, open then: "
            f"{', '.join(parts['open_at_peak']) or 'nothing probed'}",
            *(
                [
                    f"  of the peak, file-backed pages (shared libraries, mapped checkpoint pages): "
                    f"{parts['file_backed_at_peak_mb']:.0f} MB; the anonymous RSS peaked at "
                    f"{parts['anonymous_peak_mb'] / 1024:.2f} GB"
                ]
                if parts.get("anonymous_peak_mb") is not None
                else []
            ),
            f"  before the model loads (python, torch, transformers, tokenizer): {parts['before_model_mb']:.0f} MB",
            f"  weights outside the blocks (embeddings, final norm): +{parts['outside_blocks_mb']:.0f} MB",
            f"  one block's read (median of {parts['reads']}): +{parts['block_read_median_mb']:.0f} MB; at most "
            f"{parts['max_live_blocks']} blocks alive at once (read to written)",
            f"  compressing a group of layers, transient: +{parts['compress_transient_mb']:.0f} MB "
            f"(largest: {parts['compress_transient_group']})",
            f"  writing a shard, transient: +{parts['write_transient_mb']:.0f} MB ({parts['write_transient_file']})",
        ]
    )


def draw(record: dict, path: Path) -> Path:
    """RSS over time, with one lane of bars per kind of interval beneath it (Agg, from the JSON record alone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, lanes) = plt.subplots(
        2, 1, sharex=True, figsize=(10, 5.5), gridspec_kw={"height_ratios": [3, 2]}, constrained_layout=True
    )
    times = [s[0] for s in record["samples"]]
    top.plot(times, [s[1] / 2**30 for s in record["samples"]], linewidth=0.8, label="RSS")
    if all(len(s) > 2 for s in record["samples"]):
        top.plot(times, [(s[1] - s[2]) / 2**30 for s in record["samples"]], linewidth=0.8, label="anonymous")
        top.legend(loc="upper left")
    top.set_ylabel("RSS (GB)")
    top.set_title(record.get("title", "RSS over a pruning run"))
    top.grid(alpha=0.3)
    for row, label in enumerate(LANES):
        spans = [(i["start"], i["end"] - i["start"]) for i in record["intervals"] if i["label"] == label]
        lanes.broken_barh(spans, (row - 0.4, 0.8), color=f"C{row}")
    lanes.set_yticks(range(len(LANES)), LANES)
    lanes.invert_yaxis()
    lanes.set_xlabel("seconds")
    path = Path(path)
    partial = path.with_name(path.name + ".partial.png")
    figure.savefig(partial, dpi=110)
    plt.close(figure)
    partial.rename(path)
    return path


def main():
    parser = argparse.ArgumentParser(description="Redraw a timeline's PNG and print its breakdown, from its JSON.")
    parser.add_argument("record", type=Path)
    args = parser.parse_args()
    record = json.loads(args.record.read_text())
    print(describe(breakdown(record)))
    print(draw(record, args.record.with_suffix(".png")))


if __name__ == "__main__":
    main()
