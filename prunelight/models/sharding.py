"""FSDP2 (``fully_shard``) for models that do not fit one GPU: each decoder layer is one shard unit.

Why FSDP2 and not Lightning's ``FSDPStrategy`` (FSDP1): FSDP1 flattens a unit's weights into one buffer and
reduce-scatters the gradient before any per-weight hook can see it, so Taylor importance, which needs each
rank's own ``|W * g|`` of the full weight, would have to unflatten FSDP internals. FSDP2 all-gathers each
weight into a plain, persistent ``nn.Parameter`` for the forward and backward of its layer; a gradient hook
on that parameter sees the rank's full local gradient next to the full weight, exactly as on one process,
and the score is folded in and the gradient dropped before FSDP2 would reduce-scatter it (no gradient
communication at all). FSDP2 also runs on CPU with gloo, which is how the test suite proves that N sharded
processes give the scores and the plan of one.

Usage: ``trainer.strategy: fsdp2`` (registered with Lightning below) and ``trainer.devices: N``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn
from torch.distributed.tensor import DTensor

from prunelight.errors import ConfigError
from prunelight.models.adapters import FamilyAdapter


class FullyShardedStrategy(ModelParallelStrategy):
    """Lightning's :class:`ModelParallelStrategy` as pure FSDP2: every process is one data-parallel shard.

    ``ModelParallelStrategy`` defaults to tensor parallelism across a node's devices; prunelight shards the
    model only along the data-parallel dimension (each rank calibrates on its share of the windows), so both
    sizes are fixed here and the user names just the strategy and the devices.

    Args:
        prefetch: how many decoder layers ahead each layer's forward (and behind, its backward) asks FSDP2 to
            all-gather, so that the gathers run under the compute of the layer before. 0 leaves FSDP2's own
            scheduling (it issues the next gather only when the CPU reaches the next layer).
        resident_layers: the last N decoder layers are not resharded after their forward: their backward
            follows at once (gradient criteria), and forward-only windows find them gathered already. Each
            costs one layer's whole weights in GPU memory per rank and saves one all-gather per window.
        **kwargs: Lightning's ``ModelParallelStrategy`` arguments (not its parallel sizes).
    """

    def __init__(self, prefetch: int = 1, resident_layers: int = 1, **kwargs: Any) -> None:
        for fixed in ("data_parallel_size", "tensor_parallel_size"):
            if fixed in kwargs:
                raise ConfigError(
                    f"FullyShardedStrategy shards over all processes and takes no {fixed}; set "
                    "trainer.devices (and num_nodes) instead"
                )
        for name, value in (("prefetch", prefetch), ("resident_layers", resident_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"FullyShardedStrategy {name} must be a whole number >= 0, got {value!r}")
        super().__init__(data_parallel_size=1, tensor_parallel_size=1, **kwargs)
        self.prefetch, self.resident_layers = prefetch, resident_layers

    def setup_environment(self) -> None:
        # the world size is known only once the devices are: every process is a data-parallel rank
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


if "fsdp2" not in StrategyRegistry:
    StrategyRegistry.register(
        "fsdp2", FullyShardedStrategy, description="prunelight: FSDP2, each decoder layer one shard unit"
    )


def is_fully_sharded(strategy: object) -> bool:
    """Whether ``strategy`` shards models with FSDP2 (prunelight's ``fsdp2`` or ModelParallelStrategy)."""
    return isinstance(strategy, ModelParallelStrategy)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``model`` or any of its submodules."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def shard(model: nn.Module, adapter: FamilyAdapter, strategy: object) -> None:
    """``fully_shard`` each decoder layer, then the root (embeddings, final norm, head), once.

    The strategy's ``resident_layers`` last layers stay gathered after their forward, and each layer asks
    for the gathers of its ``prefetch`` next (in the backward, previous) layers when it starts, so that
    the communication runs under compute (docs/performance.md, two GPUs).

    Called from ``configure_model`` on every stage; a model that is sharded already is left alone, and any
    strategy other than FSDP2, or FSDP2 over a single process (whose one shard would be the whole model),
    leaves the model as it is.
    """
    if not is_fully_sharded(strategy) or is_sharded(model):
        return
    mesh = strategy.device_mesh
    if mesh["tensor_parallel"].size() != 1:
        raise ConfigError(
            "prunelight shards models with FSDP2 only (no tensor parallelism); use "
            "prunelight.models.sharding.FullyShardedStrategy, or ModelParallelStrategy with "
            "tensor_parallel_size: 1"
        )
    from torch.distributed.fsdp import fully_shard

    data_parallel = mesh["data_parallel"]
    if data_parallel.size() == 1:  # one shard is the whole model: FSDP2 would only add its copies (+6-10%)
        return
    layers = list(adapter.decoder_layers(model))
    resident = len(layers) - getattr(strategy, "resident_layers", 0)
    for index, layer in enumerate(layers):
        fully_shard(layer, mesh=data_parallel, reshard_after_forward=index < resident)
    fully_shard(model, mesh=data_parallel)
    ahead = getattr(strategy, "prefetch", 0)
    if ahead:
        for index, layer in enumerate(layers):
            layer.set_modules_to_forward_prefetch(layers[index + 1 : index + 1 + ahead])
            layer.set_modules_to_backward_prefetch(layers[max(index - ahead, 0) : index][::-1])


def refuse_sharding(strategy: object, what: str) -> None:
    """Fail early, with the way out, for a stage that does not run under FSDP2 yet."""
    if is_fully_sharded(strategy):
        raise ConfigError(
            f"{what} does not run under FSDP2 (FullyShardedStrategy) yet; only structured pruning "
            "(prune without a sparsity section) and perplexity evaluation do. Run it with strategy: ddp "
            "or auto on a model that fits one device"
        )


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a sharded ``DTensor`` is all-gathered (a collective: every rank must call it)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def unsharded_copy(model: nn.Module, keep: bool = True) -> nn.Module | None:
    """A plain copy of a sharded model on the CPU, every weight whole; None where ``keep`` is False.

    A collective: every rank must call it (each weight is all-gathered in turn, so a rank that does not
    keep the copy holds one weight at a time). The apply stage changes weight shapes, which a sharded
    model cannot take, so it works on this copy; host memory is one whole model per rank that keeps it.
    """
    from torch.distributed.fsdp import FSDPModule

    state = {}
    for name, tensor in model.state_dict().items():
        whole = full_tensor(tensor.detach())
        if keep:
            state[name] = whole.cpu()
        del whole
    if not keep:
        return None
    # fully_shard swapped the model's class for an FSDP subclass; the copy is of the original class
    original = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        plain = original._from_config(model.config, dtype=next(iter(state.values())).dtype)
    plain.load_state_dict(state, assign=True, strict=False)
    plain.tie_weights()
    # what is not in the state dict (rotary inv_freq buffers, tensors kept as plain attributes) is
    # computed at construction, so on meta here: it is taken from the model, which is not sharded there
    for name, sub in plain.named_modules():
        source = model.get_submodule(name)
        for attr, buffer in list(sub.named_buffers(recurse=False)):
            if buffer.is_meta:
                sub.register_buffer(attr, source.get_buffer(attr).detach().cpu().clone(), persistent=False)
        for attr, value in list(vars(sub).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(sub, attr, getattr(source, attr).detach().cpu().clone())
    missing = [name for name, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"unsharding left weights on the meta device: {missing[:5]}")
    return plain.eval()


def shard_loadable(source: object) -> bool:
    """Whether each rank can read just its shards: a local folder of ``.safetensors`` files (a stock
    checkpoint, or a pruned one, whose config builds its per-layer shapes); GGUF files and hub ids are
    loaded whole on every rank, then sharded."""
    location = Path(getattr(source, "location", ""))
    return (
        getattr(source, "local", False)
        and not getattr(source, "gguf_file", None)
        and bool(checkpoint_files(location))
    )


def checkpoint_files(folder: Path) -> list[Path]:
    """The model's safetensors files: those of the shard index if there is one, else ``model.safetensors``
    (adapter or stale files lying next to them are not the model)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def load_shards(
    config: Any,
    dtype: torch.dtype | str,
    folder: str,
    adapter: FamilyAdapter,
    strategy: Any,
    trust_remote_code: bool = False,
) -> nn.Module:
    """Build the model with its weights on the meta device, shard it, and read into each rank only the
    rows of every weight that the rank holds (``safe_open(...).get_slice``: the other rows are never read).

    Host memory per rank is then one shard of the model, where ``from_pretrained`` on every rank would need
    the whole model N times in host memory (a 70B model is 140 GB in bf16). ``dtype="auto"`` is the
    checkpoint's, as ``from_pretrained`` reads it.
    """
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    files = checkpoint_files(Path(folder))
    if dtype == "auto":
        with safe_open(str(files[0]), framework="pt", device="cpu") as f:
            stored = f.get_slice(next(iter(f.keys()))).get_dtype()  # noqa: SIM118
        dtype = _SAFETENSORS_DTYPES.get(stored, torch.float32)
    with init_empty_weights(include_buffers=False):  # buffers (rotary tables) are computed, and small
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()  # the empty-weights context gives the head its own parameter; tie it again
    model.eval()
    shard(model, adapter, strategy)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    device = strategy.root_device
    model.to_empty(device=device)
    params = dict(model.named_parameters())  # tied weights appear once, under the name the file uses
    loaded: set[str] = set()
    with torch.no_grad():
        for name, buffer in buffers.items():
            model.get_buffer(name).copy_(buffer)
        for file in files:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    param = params.get(key)
                    if param is None:
                        continue
                    stored = f.get_slice(key).get_shape()
                    if list(stored) != list(param.shape):
                        raise ConfigError(
                            f"{file}: {key} is {list(stored)} in the checkpoint but {list(param.shape)} "
                            "in the model its config builds; the config does not match the weights"
                        )
                    local = param.to_local() if isinstance(param, DTensor) else param
                    start = _shard_start(param) if isinstance(param, DTensor) else 0
                    local.copy_(f.get_slice(key)[start : start + local.shape[0]])
                    loaded.add(key)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ConfigError(
            f"{folder}: no weights for {missing[:3]} ({len(missing)} in all) under the names the model "
            "uses; FSDP2 reads shards of checkpoints written by save_pretrained (or save_pruned) only. "
            "Save the model with save_pretrained, or run with strategy: ddp or auto"
        )
    return model


def _shard_start(param: DTensor) -> int:
    """First row of this rank's shard (FSDP2 shards dim 0 in ``torch.chunk`` pieces)."""
    mesh = param.device_mesh
    rows, ranks = param.shape[0], mesh.size()
    return min(mesh.get_local_rank() * -(-rows // ranks), rows)
