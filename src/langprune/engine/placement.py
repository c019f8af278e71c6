"""Where a model's weights live while it runs: the execution device, the compute dtype, and offloading.

- ``none``: the whole model sits on the execution device.
- ``cpu``: the weights stay in host memory; each decoder block moves to the
  execution device only while it runs (a GPU holds one block at a time, two
  while the next one is copied in).
- ``disk``: only what lies outside the decoder blocks (embeddings, final
  norm) is loaded; each block is read from the checkpoint's safetensors
  files when it runs and dropped afterwards. Once a block is pruned and
  saved, later reads of it come from the saved file. A separate (untied)
  output head is read the first time it runs: pruning never does, so it
  costs no memory there (1 GB for a Llama-3-8B head in bfloat16). The input
  embedding is set aside while the engine runs the blocks, from the moment
  its batches are embedded until it is released (or until something embeds
  tokens meanwhile): the block loop never reads it. Where it is a real copy
  (computed in another dtype than the checkpoint's, or on a GPU) that is its
  whole size, 2 GB for a Llama-3-8B in float32; a checkpoint's own dtype on
  the CPU is mapped from the file, and only its looked-up rows are resident.

The block engine asks for a block with ``hold(index)`` (nested holds load it
once) and pauses the placement while it only records calls (``paused``), so
its capture coexists with offloading. With ``disk``, reading and writing
overlap with computing: while block k runs, block k+1 is read on a
background I/O thread (``prefetch``), and a pruned block is written there
too (``behind``), while the next one computes. The thread runs its tasks in
the order given, so block k+2 is read only once block k is written: at most
two blocks are resident. With ``cpu`` on a GPU, the same thread copies block
k+1 to the device on a CUDA stream of its own while block k computes; the
block's first kernel waits on that copy's event, not the host. Its copy
back to host memory stays synchronous (tens of milliseconds a block over
PCIe, and the pruned weights must be in host memory before anything reads
them). A plain forward pass (scoring, generation, lm-evaluation-harness)
streams the blocks through forward hooks, reading one block ahead too. Every model that langprune loads carries its placement
(``placement_of``); a model built in code gets a resident one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..settings import setting
from .architecture import find_blocks
from .checkpoint import Checkpoint

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DTYPE_CHOICES = ("auto", *DTYPES)
OFFLOADS = ("auto", "none", "cpu", "disk")
ATTRIBUTE = "langprune_placement"


DEVICE_HELP = "Where the model runs: auto (a GPU when there is one), cpu, cuda or cuda:N."
DTYPE_HELP = "Compute dtype: auto (the checkpoint's own), bfloat16, float16 or float32; statistics stay float32."
OFFLOAD_HELP = (
    "auto (only when the model does not fit), none, cpu (weights in host memory, one block on the device "
    "at a time) or disk (blocks read from the safetensors files as they run)."
)


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``; a GPU that is not there is a user error."""
    if isinstance(spec, torch.device):
        return spec
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise UserError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise UserError(f"--device {text}: {build}; use --device cpu (or auto, which picks a GPU when there is one)")
    number = int(match.group(1) or 0)
    if number >= torch.cuda.device_count():
        raise UserError(
            f"--device {text}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device("cuda", number)


def check_dtype(spec: str) -> None:
    if spec not in DTYPE_CHOICES:
        raise UserError(f"unknown dtype {spec!r}: use {', '.join(DTYPE_CHOICES)}")


def check_offload(spec: str) -> None:
    if spec not in OFFLOADS:
        raise UserError(f"unknown offload {spec!r}: use {', '.join(OFFLOADS)}")


def compute_dtype(spec: str, source: torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype a model computes in: as asked, or (``auto``) the checkpoint's own.

    float16 checkpoints compute in float32 on a CPU, where float16 matrix
    products are slow and overflow easily; bfloat16 stays bfloat16 (fast on
    CPUs with AMX or avx512_bf16).
    """
    check_dtype(spec)
    if spec != "auto":
        return DTYPES[spec]
    if source == torch.float16 and device.type == "cpu":
        return torch.float32
    return source if source in DTYPES.values() else torch.float32


def available_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now (host memory for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def choose_offload(spec: str, model_bytes: int, device: torch.device, headroom: float = 0.8) -> str:
    """``auto`` keeps the model on the device when it fits in ``headroom`` of the free memory, else offloads."""
    check_offload(spec)
    if spec != "auto":
        return spec
    if model_bytes <= headroom * available_memory(device):
        return "none"
    if device.type == "cuda" and model_bytes <= headroom * available_memory(torch.device("cpu")):
        return "cpu"
    return "disk"


def _missing(names: list[str]) -> UserError:
    return UserError(
        f"the checkpoint has no tensor for {', '.join(names)}: --offload disk needs every weight in the "
        "model folder's safetensors files"
    )


def _set_parameter(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    target = module.get_submodule(owner) if owner else module
    target._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


class Placement:
    """A model's execution device, compute dtype, offloading mode and (when known) its source checkpoint."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        offload: str = "none",
        checkpoint: Checkpoint | None = None,
        save_dtype: torch.dtype | None = None,
    ):
        self.model, self.device, self.dtype, self.offload = model, torch.device(device), dtype, offload
        self.checkpoint = checkpoint if checkpoint else None
        self.save_dtype = save_dtype or dtype  # what the pruned checkpoint is written in: the source's dtype
        self.blocks_name, self.blocks = find_blocks(model)
        self.prefix = getattr(model, "base_model_prefix", "")
        self._holds = [0] * len(self.blocks)
        self._paused = 0
        self._io: ThreadPoolExecutor | None = None  # the background reader and writer (disk offloading)
        self._queued: list[Future] = []
        self._prefetched: dict[int, Future] = {}
        # offload cpu on a GPU: block k+1's copy to the device runs on this stream while block k computes
        self._copies = torch.cuda.Stream(self.device) if offload == "cpu" and self.device.type == "cuda" else None
        self._host: dict[int, dict[str, torch.Tensor]] = {}  # a resident block's weights in host memory
        if offload != "none":
            for index, block in enumerate(self.blocks):
                block.register_forward_pre_hook(self._streaming_enter(index))
                block.register_forward_hook(self._streaming_leave(index))
        head = model.get_output_embeddings()
        if head is not None and _on_meta(head):
            head.register_forward_pre_hook(self._read_on_entry)  # left unread by ``load_skeleton``
        self._embedding_hooked = False
        setattr(model, ATTRIBUTE, self)

    def describe(self) -> dict:
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "offload": self.offload,
            "saved_dtype": str(self.save_dtype).removeprefix("torch."),
        }

    def key(self, name: str) -> str | None:
        """The checkpoint key of a model tensor, or None (no checkpoint, or not in it)."""
        return self.checkpoint.key_for(name, self.prefix) if self.checkpoint else None

    def block_prefix(self, index: int) -> str:
        return f"{self.blocks_name}.{index}"

    @contextmanager
    def hold(self, index: int):
        """Block ``index`` on the execution device for the duration; nested holds load it once."""
        self._acquire(index)
        try:
            yield self.blocks[index]
        finally:
            self._release(index)

    @contextmanager
    def paused(self):
        """Forward hooks do not stream blocks in (the engine's capture replaces the blocks' forward)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def set_aside_embedding(self) -> None:
        """With disk offloading, drop the input embedding's weights (and a head tied to them): the batches are
        embedded, and blocks never read it. The next forward pass that embeds tokens reads it again."""
        embedding = self.model.get_input_embeddings() if self.offload == "disk" else None
        if embedding is None or _on_meta(embedding):
            return
        tied = self._tied_head(embedding)
        for name, param in list(embedding.named_parameters()):
            _set_parameter(embedding, name, torch.empty(param.shape, dtype=param.dtype, device="meta"))
        if tied is not None:
            tied._parameters["weight"] = embedding.weight
        if not self._embedding_hooked:
            embedding.register_forward_pre_hook(self._read_on_entry)
            self._embedding_hooked = True

    def restore_embedding(self) -> None:
        """Read a set-aside input embedding back, so that outside the engine the model is whole again."""
        embedding = self.model.get_input_embeddings()
        if embedding is not None and _on_meta(embedding) and self._embedding_hooked:
            self._read_on_entry(embedding, ())

    def _tied_head(self, embedding: nn.Module) -> nn.Module | None:
        """The output head when it shares the input embedding's weight (one tensor, kept one), else None."""
        head = self.model.get_output_embeddings()
        shared = head is not None and getattr(head, "weight", None) is getattr(embedding, "weight", 0)
        return head if shared else None

    def saved(self, path) -> None:
        """Tensors just written to ``path`` (a pruned block) are read from there from now on."""
        if self.offload == "disk":
            self.checkpoint.add_file(path)

    def saved_folder(self, folder) -> None:
        """The pruned checkpoint moved into ``folder``: an offloaded model reads it from there."""
        self.drain()
        if self.offload == "disk":
            self._prefetched.clear()  # read from the old files
            self.checkpoint = Checkpoint(folder)

    def prefetch(self, index: int) -> None:
        """Start bringing block ``index`` in the background (read from disk, or copied from host memory to a GPU),
        unless it is resident or on its way; otherwise nothing."""
        if not 0 <= index < len(self.blocks) or self._holds[index] or index in self._prefetched:
            return
        if self.offload == "disk":
            self._prefetched[index] = self._submit(lambda: self._read(index))
        elif self._copies is not None:
            self._prefetched[index] = self._submit(lambda: self._copy_in(index))

    def behind(self, task: Callable[[], None]) -> None:
        """Run ``task`` (writing a finished block) on the I/O thread after what is queued, so the next block computes
        meanwhile; without disk offloading, at once. Its error is raised by the next ``behind`` or ``drain``."""
        if self.offload != "disk":
            task()
            return
        self._raise_finished()
        self._queued.append(self._submit(task))

    def drain(self) -> None:
        """Wait for every queued write; raise the first error one of them met."""
        while self._queued:
            self._queued.pop(0).result()

    def _submit(self, task) -> Future:
        if self._io is None:
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="langprune-io")
        return self._io.submit(task)

    def _raise_finished(self) -> None:
        while self._queued and self._queued[0].done():
            self._queued.pop(0).result()

    def _acquire(self, index: int) -> None:
        if self._holds[index] == 0 and self.offload != "none":
            self._load(index)
        self._holds[index] += 1

    def _release(self, index: int) -> None:
        self._holds[index] -= 1
        if self._holds[index] == 0 and self.offload != "none":
            self._unload(index)

    def _load(self, index: int) -> None:
        block = self.blocks[index]
        if self.offload == "cpu":
            if self._copies is not None:
                pending = self._prefetched.pop(index, None)
                if pending is None:  # a copy left by a forward pass cut short may predate edits to the host weights
                    self._prefetched.clear()
                tensors, copied = pending.result() if pending is not None else self._copy_in(index)
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(copied)  # the GPU waits for the copy; the host goes on queueing work
                self._host[index] = {name: p.data for name, p in block.named_parameters()}
                for name, tensor in tensors.items():
                    tensor.record_stream(stream)  # made on the copy stream, used and freed on this one
                    _set_parameter(block, name, tensor)
            block.to(self.device)  # buffers (and, without a copy stream, the weights)
            return
        pending = self._prefetched.pop(index, None)
        for name, tensor in (pending.result() if pending is not None else self._read(index)).items():
            _set_parameter(block, name, tensor)

    def _read(self, index: int) -> dict[str, torch.Tensor]:
        """Block ``index``'s parameters from the checkpoint, by their names in the block, on the device."""
        names = [name for name, _ in self.blocks[index].named_parameters()]
        keys = {name: self.key(f"{self.block_prefix(index)}.{name}") for name in names}
        missing = [f"{self.block_prefix(index)}.{name}" for name, key in keys.items() if key is None]
        if missing:
            raise _missing(missing)
        tensors = self.checkpoint.read_many(list(keys.values()), self.dtype, self.device)
        return {name: tensors[key] for name, key in keys.items()}

    def _copy_in(self, index: int) -> tuple[dict[str, torch.Tensor], torch.cuda.Event]:
        """Block ``index``'s weights copied to the GPU on the copy stream, and the event that marks the copy done."""
        with torch.cuda.stream(self._copies):
            tensors = {
                name: p.data.to(self.device, non_blocking=True) for name, p in self.blocks[index].named_parameters()
            }
            copied = torch.cuda.Event()
            copied.record(self._copies)
        return tensors, copied

    def _unload(self, index: int) -> None:
        block = self.blocks[index]
        if self.offload == "cpu":
            host = self._host.pop(index, {})
            for name, param in list(block.named_parameters()):
                if name in host and host[name].shape == param.shape and host[name].dtype == param.dtype:
                    host[name].copy_(param.data)  # the pruned weights, back where they live
                    _set_parameter(block, name, host[name])
            block.to("cpu")
            return
        for name, param in list(block.named_parameters()):
            _set_parameter(block, name, torch.empty(param.shape, dtype=param.dtype, device="meta"))

    def _read_on_entry(self, module, args) -> None:
        """Read a module left on the meta device (the output head, the input embedding set aside) from the checkpoint
        when it runs; a head tied to the embedding takes the embedding's weight again."""
        if not _on_meta(module):
            return
        embedding = self.model.get_input_embeddings()
        tied = self._tied_head(embedding)
        target = embedding if module is tied else module
        prefix = _module_name(self.model, target)
        for name, _param in list(target.named_parameters()):
            key = self.key(f"{prefix}.{name}")
            if key is None:
                raise _missing([f"{prefix}.{name}"])
            _set_parameter(target, name, self.checkpoint.read(key, self.dtype, self.device))
        if tied is not None:
            tied._parameters["weight"] = embedding.weight  # both modules hold the one tensor just read

    def _streaming_enter(self, index):
        def hook(module, args):
            if not self._paused:
                self._acquire(index)
                self.prefetch(index + 1)  # brought in while this block computes

        return hook

    def _streaming_leave(self, index):
        def hook(module, args, output):
            if not self._paused:
                self._release(index)

        return hook


def _on_meta(module: nn.Module) -> bool:
    return any(p.device.type == "meta" for p in module.parameters())


def placement_of(model: nn.Module) -> Placement:
    """The placement a model was loaded with, or a resident one on the device of its first parameter."""
    placement = getattr(model, ATTRIBUTE, None)
    if placement is None:
        first = next(model.parameters())
        placement = Placement(model, first.device, first.dtype)
    return placement


def outside_blocks(model: nn.Module, blocks_name: str) -> list[tuple[str, nn.Parameter]]:
    """Parameters outside the decoder blocks, each once (a tied head is its embedding)."""
    return [(name, p) for name, p in model.named_parameters() if not name.startswith(blocks_name + ".")]


def move_outside_blocks(model: nn.Module, device: torch.device) -> None:
    """Everything but the decoder blocks to ``device``, in place (tied weights stay one parameter)."""
    blocks_name, _ = find_blocks(model)
    for name, module in model.named_modules():
        if name == blocks_name or name.startswith(blocks_name + "."):
            continue
        for tensor in [*module._parameters.values(), *module._buffers.values()]:
            if tensor is not None:
                tensor.data = tensor.data.to(device)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def load_skeleton(config, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A model whose decoder blocks hold no memory (meta tensors) and whose other weights come from ``checkpoint``.

    Built with accelerate's ``init_empty_weights``, so buffers computed at
    construction (rotary frequencies, embedding scales) are real.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    blocks_name, _ = find_blocks(model)
    prefix = getattr(model, "base_model_prefix", "")
    head = model.get_output_embeddings()
    head_name = _module_name(model, head) if head is not None else None
    in_head = lambda name: head_name is not None and name.startswith(head_name + ".")  # noqa: E731
    for name, _param in outside_blocks(model, blocks_name):
        key = checkpoint.key_for(name, prefix)
        if key is not None and not in_head(name):  # the head: read when it first runs (Placement._read_on_entry)
            _set_parameter(model, name, checkpoint.read(key, dtype, device))
    model.tie_weights()  # a tied head is the embedding, read above
    missing = [
        name
        for name, p in outside_blocks(model, blocks_name)
        if p.device.type == "meta" and not (in_head(name) and checkpoint.key_for(name, prefix) is not None)
    ]
    if missing:
        raise _missing(missing)
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.to(device)
    return model.eval()


def check_placement(device: str, dtype: str, offload: str) -> None:
    """Refuse a device that is not there, an unknown dtype or offload mode, before anything loads."""
    resolve_device(device)
    check_dtype(dtype)
    check_offload(offload)


@dataclass(kw_only=True)
class PlacementSettings:
    """Where a model runs: the options every command that loads a model shares. On the command line each may also
    come from the environment (``LANGPRUNE_DEVICE``, ``LANGPRUNE_DTYPE``, ``LANGPRUNE_OFFLOAD``)."""

    device: str = setting("auto", DEVICE_HELP, envvar="LANGPRUNE_DEVICE")
    dtype: str = setting("auto", DTYPE_HELP, envvar="LANGPRUNE_DTYPE")
    offload: str = setting("auto", OFFLOAD_HELP, envvar="LANGPRUNE_OFFLOAD")

    def check_placement(self) -> None:
        check_placement(self.device, self.dtype, self.offload)
