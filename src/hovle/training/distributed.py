"""Data-parallel training over several processes, with PyTorch's own engines.

The model code is single-device. Parallelism is applied from outside: processes are started by
``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), and the module to train is wrapped by :func:`wrap_model` with one of

* ``"fsdp"``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on every decoder layer of both
  stacks (the embedding module's ``encoder`` and the LLM's ``model.layers``), then on the wrapped
  module itself, whose group holds every other parameter (patch embedding, text table,
  projection, LLM token table / head / norm, a training head...). Parameters, gradients and
  optimizer state are sharded; the same object is returned, its class turned into an
  ``FSDPModule`` subclass;
* ``"ddp"``: ``DistributedDataParallel`` with ``find_unused_parameters=True``;
* ``"none"``: the module unchanged (also what every strategy gives in a single process).

Gradient convention. DDP and FSDP2 *average* gradients over processes. A training step computes,
on each process, ``loss = (sum of per-target losses of its micro-batches) / (global target count
over all processes)`` and calls ``(loss * gradient_scale(env)).backward()``: the average over
``world_size`` processes of ``world_size * local gradient`` is the sum of the local gradients,
which is the gradient one process computes on the whole batch with the same normalisation.

Parameters that no process used. A parameter that gets no gradient on any process (e.g. the
unused ``class_embedding`` of the vision embeddings, or the patch embedding in a step whose
micro-batches are all text-only) keeps ``grad is None``, as in a single process, so AdamW neither
decays it nor creates state for it. DDP does this itself; under FSDP2 every trainable parameter
is reduce-scattered (a zero gradient where a process did not use it, so that all processes issue
the same collectives) and, after each backward, gradients that are exactly zero on every process
are set back to ``None``. (A used parameter whose whole gradient is exactly zero on every process
is therefore treated as unused; with real data this does not happen.) Gradients must be cleared
with ``optimizer.zero_grad(set_to_none=True)`` (the default) for this to match one process.

State dicts use the wrapped module's own names (no ``module.`` prefix) and full, unsharded CPU
tensors, whatever the strategy and the number of processes: a checkpoint written by one layout
loads into another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, is_dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..devices import default_device
from ..errors import SettingsError

__all__ = [
    "STRATEGIES",
    "DistributedEnv",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "clip_grad_norm_",
    "full_optimizer_state",
    "full_state_dict",
    "gather_objects",
    "gradient_scale",
    "init_distributed",
    "load_full_optimizer_state",
    "load_full_state_dict",
    "shutdown_distributed",
    "unwrap",
    "wrap_model",
]

STRATEGIES = ("fsdp", "ddp", "none")


# ---------------------------------------------------------------------------------------------
# Process group
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"environment variable {name}={value!r} is not an integer") from None


def _resolve_device(device: str | torch.device | None, local_rank: int, distributed: bool) -> torch.device:
    wanted = torch.device(device if device is not None else default_device())
    if wanted.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"device {str(wanted)!r} was asked for but CUDA is not available")
        index = local_rank if distributed or wanted.index is None else wanted.index
        return torch.device("cuda", index)
    if distributed and wanted.type != "cpu":
        raise SettingsError(f"multi-process training runs on cuda (nccl) or cpu (gloo), not {wanted.type}")
    return wanted


def init_distributed(device: str | torch.device | None = None, *, timeout: timedelta | None = None) -> DistributedEnv:
    """Join the process group that ``torchrun`` describes in the environment.

    ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are read from the environment (``LOCAL_RANK``
    defaults to ``RANK``); without them, or with ``WORLD_SIZE=1``, no process group is made and
    this process is rank 0 of 1. Otherwise the default group is initialised with ``nccl`` when the
    device is CUDA (each process on ``cuda:LOCAL_RANK``, made the current device) and ``gloo`` on
    CPU. ``device`` is ``"cuda"``, ``"cpu"`` or None (CUDA when available). Calling it again
    while a group exists joins nothing and describes the existing group. ``timeout`` bounds each
    collective (the torch default when None).
    """
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank if world_size > 1 else 0)
        env_device = _resolve_device(device, local_rank, world_size > 1)
        if env_device.type == "cuda":
            torch.cuda.set_device(env_device)
        return DistributedEnv(rank, world_size, local_rank, env_device)

    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise SettingsError(f"RANK={rank} and WORLD_SIZE={world_size} do not describe a process of a group")
    local_rank = _env_int("LOCAL_RANK", rank if world_size > 1 else 0)
    distributed = world_size > 1
    env_device = _resolve_device(device, local_rank, distributed)
    if env_device.type == "cuda":
        torch.cuda.set_device(env_device)
    if distributed:
        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed")
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} but {' and '.join(missing)} unset: start the processes with torchrun"
            )
        kwargs: dict[str, Any] = {"backend": "nccl" if env_device.type == "cuda" else "gloo",
                                  "rank": rank, "world_size": world_size}
        if timeout is not None:
            kwargs["timeout"] = timeout
        if env_device.type == "cuda":
            kwargs["device_id"] = env_device
        dist.init_process_group(**kwargs)
    return DistributedEnv(rank, world_size, local_rank, env_device)


def shutdown_distributed() -> None:
    """Destroy the default process group, if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _group_ready(env: DistributedEnv) -> bool:
    if not env.is_distributed:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{env} describes {env.world_size} processes but no process group exists: "
                           "call init_distributed() first")
    return True


def all_reduce_sum(values: torch.Tensor, env: DistributedEnv) -> torch.Tensor:
    """The sum of ``values`` over all processes (a copy of ``values`` in a single process).

    The result has ``values``' device and dtype. Under nccl the tensor travels through
    ``env.device`` (so float64 / int64 CPU tensors work with both backends).
    """
    out = values.detach().clone()
    if not _group_ready(env):
        return out
    work_device = env.device if env.device.type == "cuda" else torch.device("cpu")
    buffer = out.to(work_device)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(values.device)


def barrier(env: DistributedEnv) -> None:
    """Wait until every process gets here (nothing in a single process)."""
    if not _group_ready(env):
        return
    if env.device.type == "cuda":
        dist.barrier(device_ids=[env.device.index])
    else:
        dist.barrier()


def broadcast_object(obj: Any, env: DistributedEnv, src: int = 0) -> Any:
    """Process ``src``'s ``obj`` (any picklable object) on every process; ``obj`` itself in one."""
    if not _group_ready(env):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, device=env.device if env.device.type == "cuda" else None)
    return holder[0]


def gather_objects(obj: Any, env: DistributedEnv) -> list:
    """Every process's ``obj`` (any picklable object), in rank order; ``[obj]`` in a single process."""
    if not env.is_distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def gradient_scale(env: DistributedEnv) -> float:
    """The factor (``world_size``) to multiply the loss by before ``backward``.

    Each process's loss is its share of the global sum divided by the *global* target count; DDP
    and FSDP2 average gradients over processes, so multiplying by ``world_size`` makes the
    averaged gradient equal to the gradient of the global loss, i.e. the gradient one process
    would compute on the whole batch. 1.0 in a single process.
    """
    return float(env.world_size)


# ---------------------------------------------------------------------------------------------
# Wrapping
# ---------------------------------------------------------------------------------------------


def _fsdp_module_class():
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def _is_fsdp(model: nn.Module) -> bool:
    return dist.is_available() and isinstance(model, _fsdp_module_class())


def _is_wrapped(model: nn.Module) -> bool:
    return _is_ddp(model) or _is_fsdp(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The module that was given to :func:`wrap_model` (DDP's ``.module``; FSDP2 keeps the object)."""
    return model.module if _is_ddp(model) else model


def decoder_stacks(model: nn.Module) -> list[nn.ModuleList]:
    """The decoder-layer stacks of every ``HoVLEModel`` inside ``model`` (``model`` included)."""
    from ..model.hovle import HoVLEModel

    stacks = []
    for module in model.modules():
        if isinstance(module, HoVLEModel):
            stacks.append(module.embedding_model.encoder)
            stacks.append(module.language_model.model.layers)
    return stacks


def wrap_model(model: nn.Module, env: DistributedEnv, strategy: str = "fsdp") -> nn.Module:
    """Move ``model`` to ``env.device`` and make it data-parallel with ``strategy``.

    ``"fsdp"``: FSDP2 ``fully_shard`` on each decoder layer of every ``HoVLEModel`` inside
    ``model`` (both stacks), then on ``model``; returns ``model`` itself (now an ``FSDPModule``).
    Only ``model``'s ``forward`` gathers the root group's parameters: call the wrapped module,
    not a method or a submodule of it. ``"ddp"``: ``DistributedDataParallel`` with
    ``find_unused_parameters=True`` (a text-only micro-batch leaves the vision parameters without
    gradient). ``"none"``, or any strategy in a single process: ``model`` unchanged.

    Both strategies start every process from rank 0's weights. Frozen parameters
    (``requires_grad=False``) are sharded or replicated like the others but get no gradient;
    tied weights (the LLM's output head on its token table) stay tied. Both strategies run on
    CPU processes (gloo) as well as on CUDA (nccl).
    """
    if strategy not in STRATEGIES:
        raise SettingsError(f"unknown distributed strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if _is_wrapped(model):
        raise ValueError(f"{type(model).__name__} is already wrapped for distributed training")
    model.to(env.device)
    if strategy == "none" or not env.is_distributed:
        return model
    _group_ready(env)
    if strategy == "ddp":
        if not any(p.requires_grad for p in model.parameters()):
            raise SettingsError("ddp needs at least one trainable parameter; every parameter is frozen")
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
    return _wrap_fsdp(model, env)


def _wrap_fsdp(model: nn.Module, env: DistributedEnv) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    FSDPModule = _fsdp_module_class()
    if not hasattr(FSDPModule, "set_reduce_scatter_unused_params"):
        raise SettingsError(
            f"strategy 'fsdp' needs FSDPModule.set_reduce_scatter_unused_params, missing in torch {torch.__version__} "
            "(processes that use different parameters would issue mismatched collectives): use strategy 'ddp'"
        )
    # DDP copies rank 0's weights to every process; fully_shard keeps each process's own slice, so
    # make the processes agree first (e.g. a head initialised with a different seed per rank).
    _broadcast_module_state(model)
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    layers = [layer for stack in decoder_stacks(model) for layer in stack]
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.set_reduce_scatter_unused_params(True)
    _UnusedGradientReset(model, layers).install()
    return model


def _broadcast_module_state(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every process (each tied tensor once)."""
    seen: set[int] = set()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                dist.broadcast(tensor.data, src=0)


def _tensors_in(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in _tensors_in(value)]
    if isinstance(obj, (list, tuple)):
        return [t for value in obj for t in _tensors_in(value)]
    if is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in fields(obj) for t in _tensors_in(getattr(obj, f.name))]
    return []


class _UnusedGradientReset:
    """Under FSDP2, set back to ``None`` the gradients that no process produced.

    ``set_reduce_scatter_unused_params(True)`` makes every process reduce-scatter every trainable
    parameter of a group, a zero gradient where it did not use one, so that the collectives match;
    a parameter no process used would then hold a zero gradient where one process holds ``None``.
    After each backward (an autograd final callback, queued so that it runs after FSDP2's own
    post-backward callback), gradients that are exactly zero on every process are reset to ``None``.
    """

    def __init__(self, root: nn.Module, layers: list[nn.Module]):
        self.root = root
        self.layers = layers
        self.params = [p for p in root.parameters() if p.requires_grad]
        self.queued = False

    def install(self) -> None:
        if not self.params:
            return
        self.root.register_forward_hook(self._on_forward)
        for layer in self.layers:
            layer.register_forward_hook(self._on_forward)

    def _on_forward(self, module, inputs, output) -> None:
        if module is self.root:
            self.queued = False  # a fresh graph (also after a backward that raised)
        if not torch.is_grad_enabled():
            return
        for tensor in _tensors_in(output):
            if tensor.requires_grad:
                tensor.register_hook(self._on_gradient)

    def _on_gradient(self, grad):
        if not self.queued:
            self.queued = True
            # A callback queued from a callback runs after every callback queued during the
            # backward, FSDP2's reduce-scatter included.
            torch.autograd.Variable._execution_engine.queue_callback(
                lambda: torch.autograd.Variable._execution_engine.queue_callback(self._reset)
            )
        return grad

    def _reset(self) -> None:
        self.queued = False
        local = [_local(p.grad) for p in self.params]
        device = next((g.device for g in local if g is not None), None) or self.params[0].device
        flags = torch.stack([
            g.ne(0).any() if g is not None and g.numel() else torch.zeros((), dtype=torch.bool, device=device)
            for g in local
        ]).to(torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        for param, used in zip(self.params, flags.tolist()):
            if not used:
                param.grad = None


def _local(tensor: torch.Tensor | None) -> torch.Tensor | None:
    if tensor is None:
        return None
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


def clip_grad_norm_(model: nn.Module, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Scale the gradients so that their total norm is at most ``max_norm``; return the norm.

    The total norm is over all gradients of the whole model (every shard under FSDP2, counted
    once; a tied tensor once), the same on every process and the same as one process computes on
    the whole batch; it is returned as a plain tensor (not a DTensor).
    """
    grads_of = [p for p in unwrap(model).parameters() if p.grad is not None]
    if not grads_of:
        return torch.zeros((), dtype=torch.float32)
    total = torch.nn.utils.clip_grad_norm_(grads_of, max_norm, norm_type=norm_type)
    if hasattr(total, "full_tensor"):
        total = total.full_tensor()
    return total


# ---------------------------------------------------------------------------------------------
# State dicts
# ---------------------------------------------------------------------------------------------


def _state_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kwargs)


def _trainable_names(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}


def _own_storage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy any tensor that shares memory with an earlier one (tied weights), so that the dict
    can be written by safetensors and each entry can be changed alone."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.numel():
            key = tensor.untyped_storage().data_ptr()
            if key in seen:
                tensor = tensor.clone()
            else:
                seen.add(key)
        out[name] = tensor
    return out


def full_state_dict(model: nn.Module, *, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights as CPU tensors, under the unwrapped module's own names.

    Call it on every process (it gathers shards under FSDP2). A wrapped model's (DDP or FSDP2)
    state is complete on rank 0 and empty (``{}``) on the other ranks; an unwrapped model's is
    its own on every process. Tensors are copies; tied weights appear under both names, as
    separate tensors. ``trainable_only`` keeps only parameters with ``requires_grad``.
    """
    inner = unwrap(model)
    if _is_wrapped(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        options = _state_options(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
        state = dict(get_model_state_dict(model, options=options))
    else:
        state = {name: t.detach().to("cpu", copy=True) for name, t in inner.state_dict().items()}
    if trainable_only:
        keep = _trainable_names(inner)
        state = {name: t for name, t in state.items() if name in keep}
    return _own_storage(state)


def _key_problem(module: nn.Module, keys, strict: bool) -> str | None:
    expected = set(module.state_dict().keys())
    given = set(keys)
    unexpected = sorted(given - expected)
    missing = sorted(expected - given) if strict else []
    if not (unexpected or missing):
        return None
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} ({', '.join(unexpected[:4])}"
                     f"{', ...' if len(unexpected) > 4 else ''})")
    return f"state dict does not match {type(module).__name__}: " + "; ".join(parts)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _check_then_raise(model: nn.Module, problem_on_rank0: str | None) -> None:
    """Raise the same error on every process of a wrapped model (before any collective hangs)."""
    if _is_wrapped(model):
        holder = [problem_on_rank0]
        dist.broadcast_object_list(holder, src=0, device=_collective_device(model))
        problem_on_rank0 = holder[0]
    if problem_on_rank0:
        raise SettingsError(problem_on_rank0)


def _collective_device(model: nn.Module) -> torch.device | None:
    param = next(iter(unwrap(model).parameters()), None)
    if param is not None and param.device.type == "cuda":
        return param.device
    return None


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, strict: bool) -> None:
    """Load full weights (as :func:`full_state_dict` gives them) into ``model``.

    ``strict=True`` wants every name of the model's state dict; ``strict=False`` allows a subset
    (e.g. a ``trainable_only`` state). Missing (when strict) or unknown names raise ``ValueError``.
    For a wrapped model, call it on every process: only rank 0's ``state`` is read (the others
    may pass ``{}``), its tensors are broadcast and sharded, and a name error is raised on every
    process.
    """
    inner = unwrap(model)
    if not _is_wrapped(model):
        _check_then_raise(model, _key_problem(inner, state.keys(), strict))
        inner.load_state_dict(state, strict=strict)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    _check_then_raise(model, _key_problem(inner, state.keys(), strict) if _rank() == 0 else None)
    options = _state_options(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
    # set_model_state_dict renames and fills the dict it is given: hand it a copy.
    set_model_state_dict(model, dict(state) if _rank() == 0 else {}, options=options)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's full state, keyed by parameter names (not indices), as CPU tensors.

    Same layout whatever the strategy and the number of processes, and loadable with
    ``torch.load(..., weights_only=True)``. Call it on every process; for a wrapped model it is
    complete on rank 0 and empty on the others.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if _is_wrapped(model):
        options = _state_options(full_state_dict=True, cpu_offload=True)
        return dict(get_optimizer_state_dict(model, optimizer, options=options))
    return _to_cpu(dict(get_optimizer_state_dict(model, optimizer)))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state from :func:`full_optimizer_state` into ``optimizer`` (built over ``model``).

    For a wrapped model, call it on every process: only rank 0's ``state`` is read (the others
    may pass ``{}``) and it is broadcast and sharded.
    """
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    # Not strict: a parameter that never had a gradient (e.g. an unused one) has no state to load.
    if _is_wrapped(model):
        options = _state_options(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_optimizer_state_dict(model, optimizer, _copy_containers(state) if _rank() == 0 else {}, options=options)
    else:
        set_optimizer_state_dict(model, optimizer, _copy_containers(state), options=_state_options(strict=False))


def _copy_containers(obj: Any) -> Any:
    """``obj`` with new dicts and lists (the tensors shared), so that loading leaves it as it was."""
    if isinstance(obj, dict):
        return {k: _copy_containers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy_containers(v) for v in obj]
    return obj
