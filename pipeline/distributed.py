"""Several processes training one student (torchrun, gloo on CPU, NCCL on CUDA): the rank and world of this process, a
differentiable all-gather, class prompts sharded across ranks, and gradient averaging (issue 5).

Why shard the prompts: every step of FROSTER encodes the class prompts (2 x K: the step's templated prompt and the bare
prompt of each class) with the student's text tower, with gradients. The release has every rank encode all 2K prompts,
so the text work, half of the release's per-GPU step (../shared/reference/performance-notes.md section 4), does not
shrink as ranks are added. Here each rank encodes ``ceil(2K / W)`` of them and the embeddings are all-gathered,
differentiably, so every rank still builds all K class embeddings and computes the same loss as before.

The gradient factor, worked out. W ranks, rank r holding b of the step's B = W b clips (set I_r), K classes whose
embeddings c_k (built from all prompts) every rank holds after the gather. The single-process loss on the whole batch:

    L   = (1/B) sum_i ce_i + beta ((1/(B T)) sum_{i,t} d_it + (1/K) sum_k e_k)
    L_r = (1/b) sum_{i in I_r} ce_i + beta ((1/(b T)) sum_{i in I_r, t} d_it + (1/K) sum_k e_k)     rank r's loss
    L   = (1/W) sum_r L_r                (b = B / W; the text term e_k is the same on every rank)

so each rank's loss is the plain mean over its own clips, no rescaling, and:
- vision and head parameters: rank r's backward gives dL_r/dtheta; averaging over ranks (DistributedDataParallel, or
  ``average_gradients``) gives (1/W) sum_r dL_r/dtheta = dL/dtheta.
- text parameters: rank s encoded prompt shard P_s only, but every rank's loss depends on it (through the gathered
  class embeddings). The gather's backward therefore all-reduces the incoming gradient with SUM and keeps rank s's
  slice: rank s receives sum_r dL_r/dP_s, back-propagates it into its text tower, and the averaging over ranks gives
  (1/W) sum_s sum_r dL_r/dP_s dP_s/dtheta = (1/W) sum_r dL_r/dtheta = dL/dtheta.
Keeping only this rank's own slice instead of the sum would drop the other W - 1 ranks' dependence on the shard (text
gradients too small, about 1/W); summing the parameter gradients instead of averaging them would need each L_r divided
by W. tests/test_distributed.py checks both routes (DDP and ``average_gradients``) against one process.

Every rank must run the same collectives in the same order (gloo and NCCL match calls by order, not by name): the
gather here checks first that all ranks pass the same shapes (and ``encode_prompts_sharded`` the same prompts), and
raises FrosterError on every rank when they differ, rather than hanging or mixing mismatched tensors. A rank whose
loss does not depend on the gathered tensor would skip the gather's backward and hang the others: in FROSTER's loss
every rank's CE reads all class embeddings.

Shape names: N items (prompts), W ranks, s = ceil(N / W) items per rank, L tokens, D embedding dim.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from froster.pipeline.errors import FrosterError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# torchrun's variables (torch.distributed.run); MASTER_ADDR / MASTER_PORT are read by init_process_group itself.
_RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT")
DEVICES = ("cpu", "cuda")

# Gradient all-reduce bucket: big enough that per-call latency is amortised (DDP's default bucket is 25 MiB), small
# enough that the flattened copy stays a small fraction of the gradients' memory.
_BUCKET_BYTES = 25 * 1024 * 1024

# Header width of the agreement check: enough for the shapes and counts compared here; fixed so that ranks passing
# tensors of different ndim still exchange equal-sized headers (a size mismatch in the check itself would hang).
_HEADER = 16
_DTYPE_CODES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.float64: 4, torch.int64: 5, torch.int32: 6}


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine, its ``device``.

    ``DistEnv()`` is the single-process run (rank 0 of 1, no process group); ``DistEnv.from_env()`` reads torchrun's
    variables and initialises the process group. ``owns_group``: this object initialised it, so ``close()`` (or
    leaving a ``with`` block) destroys it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory, logs metrics and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process: the collectives below do something."""
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str = "cpu", timeout: timedelta | None = None) -> DistEnv:
        """The environment torchrun set up, process group initialised (gloo on ``device="cpu"``, NCCL on ``"cuda"``).

        Without ``WORLD_SIZE`` (a plain ``python``/``froster`` run) or with ``WORLD_SIZE=1`` it is the single-process
        environment; on CUDA its device is the current GPU. With several processes each takes GPU ``LOCAL_RANK``.
        A process group already initialised by the caller is reused (and not destroyed by ``close``). ``timeout``
        bounds every collective (torch's default, 30 minutes, when None).
        """
        if device not in DEVICES:
            raise FrosterError(f"distributed: device must be one of {', '.join(DEVICES)}, found {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise FrosterError("--device cuda: torch finds no CUDA device here")
        world = _env_int("WORLD_SIZE", 1, minimum=1)
        if world == 1 and not (dist.is_available() and dist.is_initialized()):
            if device == "cuda":
                return cls(device=torch.device("cuda", torch.cuda.current_device()))
            return cls()
        rank = _env_int("RANK", None, minimum=0)
        local_rank = _env_int("LOCAL_RANK", rank, minimum=0)
        if rank >= world:
            raise FrosterError(f"environment variable RANK={rank} must be below WORLD_SIZE={world}")
        if device == "cuda":
            count = torch.cuda.device_count()
            if local_rank >= count:
                raise FrosterError(
                    f"LOCAL_RANK={local_rank} but this machine has {count} CUDA device(s): start at most {count} "
                    f"processes per node (torchrun --nproc-per-node)"
                )
            # Before init: NCCL binds each process's communicator to the current device.
            torch.cuda.set_device(local_rank)
            dev = torch.device("cuda", local_rank)
        else:
            dev = torch.device("cpu")
        if dist.is_initialized():
            if (dist.get_rank(), dist.get_world_size()) != (rank, world):
                raise FrosterError(
                    f"the initialised process group is rank {dist.get_rank()} of {dist.get_world_size()}, but the "
                    f"environment says RANK={rank} WORLD_SIZE={world}"
                )
            return cls(rank, world, local_rank, dev, owns_group=False)
        missing = [v for v in _RENDEZVOUS_VARS if not os.environ.get(v)]
        if missing:
            raise FrosterError(
                f"WORLD_SIZE={world} but {', '.join(missing)} not set: start distributed runs with torchrun "
                f"(torchrun --nproc-per-node N -m froster.cli train ...)"
            )
        backend = "nccl" if device == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        try:
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, **kwargs)
        except (RuntimeError, ValueError) as e:
            raise FrosterError(
                f"could not start the {backend} process group (rank {rank} of {world}, "
                f"MASTER_ADDR={os.environ.get('MASTER_ADDR')} MASTER_PORT={os.environ.get('MASTER_PORT')}): {e}"
            ) from e
        logger.info("rank %d of %d (local rank %d) on %s, backend %s", rank, world, local_rank, dev, backend)
        return cls(rank, world, local_rank, dev, owns_group=True)

    def close(self) -> None:
        """Destroy the process group if this object initialised it (idempotent)."""
        if self.owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self) -> DistEnv:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _env_int(name: str, default: int | None, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise FrosterError(f"environment variable {name} is not set (WORLD_SIZE > 1 needs {', '.join(_RANK_VARS)})")
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise FrosterError(f"environment variable {name}: expected an integer, found {raw!r}") from e
    if value < minimum:
        raise FrosterError(f"environment variable {name}: expected an integer >= {minimum}, found {value}")
    return value


def _group_size(group=None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


# ---- agreement check -----------------------------------------------------------------------------------------------


def _gather_headers(values: Sequence[int], device: torch.device, group=None) -> list[list[int]]:
    """Every rank's ``values`` (at most _HEADER - 1 ints), in rank order. One small all-gather."""
    if len(values) >= _HEADER:
        raise ValueError(f"header of {len(values)} values; at most {_HEADER - 1}")  # internal: callers are fixed
    header = torch.zeros(_HEADER, dtype=torch.int64)
    header[0] = len(values)
    header[1 : 1 + len(values)] = torch.tensor([int(v) for v in values], dtype=torch.int64)
    header = header.to(device)  # NCCL only moves CUDA tensors
    parts = [torch.empty_like(header) for _ in range(_group_size(group))]
    dist.all_gather(parts, header, group=group)
    return [p[1 : 1 + int(p[0])].tolist() for p in parts]


def _agree(values: Sequence[int], device: torch.device, what: str, group=None) -> None:
    """Raise FrosterError on every rank when the ranks' ``values`` differ (all ranks see all headers, so all raise)."""
    seen = _gather_headers(values, device, group)
    if any(v != seen[0] for v in seen):
        listing = "; ".join(f"rank {r}: {v}" for r, v in enumerate(seen))
        raise FrosterError(f"distributed: {what} differ across ranks ({listing}); every rank must pass the same")


# ---- differentiable all-gather -------------------------------------------------------------------------------------


class _AllGather(torch.autograd.Function):
    """Forward: concatenate every rank's ``x [s, ...]`` in rank order -> ``[W * s, ...]``.
    Backward: SUM the incoming gradient over ranks, keep this rank's rows (see the module docstring for why SUM)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        world = dist.get_world_size(group)
        ctx.group, ctx.rank, ctx.rows = group, dist.get_rank(group), x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts)  # [W * s, ...]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Each rank's loss reads every rank's rows, so the gradient of this rank's rows is the sum of what every rank's
        # loss sends them. The clone: all_reduce works in place and autograd may hold grad elsewhere.
        grad = grad.contiguous().clone()  # [W * s, ...]
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None  # [s, ...]


def all_gather_differentiable(x: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank's ``x [s, ...]`` concatenated in rank order, ``[W * s, ...]``, with gradients flowing back to each
    rank's own rows (summed over the ranks' losses). The identity in a single process.

    All ranks must pass the same shape and dtype: checked first with a small all-gather, and a mismatch raises
    FrosterError on every rank (rather than hanging in, or reading past, an all-gather of unequal shards).
    """
    if _group_size(group) == 1:
        return x
    shape = list(x.shape)
    _agree([x.ndim, _DTYPE_CODES.get(x.dtype, 0), *shape[:_HEADER - 3]], x.device, "shards to all-gather "
           "(ndim, dtype code, shape)", group)
    return _AllGather.apply(x, group)


# ---- prompt sharding -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptLayout:
    """Which rank encodes which of N items, and how to put the gathered result back in order.

    ``rows [W, s]``: the items rank r encodes (rank r's share is ``rows[r]``); the last ``padded_total - N`` slots
    (at most W - 1) repeat a real item so that every shard has s rows. ``source [N]``: for item i, its row in the
    gathered ``[W * s, ...]`` tensor (rank r's j-th item sits at row r * s + j); padding rows are never read, so they
    drop out of the result and get no gradient.
    """

    num_items: int
    world_size: int
    rows: torch.Tensor  # [W, s] int64
    source: torch.Tensor  # [N] int64

    @property
    def per_rank(self) -> int:
        return self.rows.shape[1]

    @property
    def padded_total(self) -> int:
        return self.rows.numel()

    def unshard(self, gathered: torch.Tensor) -> torch.Tensor:
        """``gathered [W * s, ...]`` -> ``[N, ...]`` in the items' order, padding dropped (differentiable)."""
        if gathered.shape[0] != self.padded_total:
            raise FrosterError(
                f"unshard: expected {self.padded_total} gathered rows ({self.world_size} ranks x {self.per_rank}), "
                f"found {gathered.shape[0]}"
            )
        return gathered[self.source.to(gathered.device)]


def prompt_layout(num_items: int, world_size: int, lengths: torch.Tensor | None = None) -> PromptLayout:
    """Deal N items to W ranks, ``s = ceil(N / W)`` each, padded to ``W * s`` with repeats of a real item.

    Without ``lengths`` items are dealt in order; with ``lengths [N]`` (token counts), longest first, so that every
    rank gets about the same number of tokens: the step's list is [K templated, K bare] and templated prompts are
    about 9 tokens longer (release notes section 2), so contiguous shards would leave one rank all the long ones, and
    the step waits for the slowest rank at the gather. Dealing is in snake order (ranks 0..W-1, then W-1..0, ...),
    which balances sorted lengths better than round-robin. The padding repeats the last item dealt (the shortest).
    The result is exact whatever the order: it only decides who computes what.
    """
    if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
        raise FrosterError(f"prompt sharding: expected at least one item, found num_items={num_items!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise FrosterError(f"prompt sharding: world_size must be an integer >= 1, found {world_size!r}")
    per_rank = math.ceil(num_items / world_size)
    total = per_rank * world_size
    if lengths is None:
        order = torch.arange(num_items)
    else:
        lengths = torch.as_tensor(lengths).detach().cpu()
        if lengths.shape != (num_items,):
            raise FrosterError(
                f"prompt sharding: lengths must have shape [{num_items}], found {tuple(lengths.shape)}"
            )
        order = torch.sort(lengths, descending=True, stable=True).indices  # [N]
    padded = torch.cat([order, order[-1:].expand(total - num_items)])  # [W * s]
    p = torch.arange(total)
    j, k = p // world_size, p % world_size  # round, position in the round
    rank = torch.where(j % 2 == 0, k, world_size - 1 - k)  # snake: even rounds 0..W-1, odd rounds W-1..0
    rows = torch.empty(world_size, per_rank, dtype=torch.int64)
    rows[rank, j] = padded
    source = torch.empty(num_items, dtype=torch.int64)
    source[order] = (rank * per_rank + j)[:num_items]  # real items are the first N dealt
    return PromptLayout(num_items, world_size, rows, source)


def shard_prompts(
    num_items: int, world_size: int, rank: int, lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """``(indices [s], padded_total)``: the items rank ``rank`` encodes, and ``W * s`` (N padded to a multiple of W).

    Every rank gets s = ceil(N / W) items; when N is not a multiple of W (or N < W) the last shards include repeats of
    a real item, dropped again by ``prompt_layout(...).unshard`` after the gather. See ``prompt_layout``.
    """
    layout = prompt_layout(num_items, world_size, lengths)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise FrosterError(f"prompt sharding: rank must be in 0..{world_size - 1}, found {rank!r}")
    return layout.rows[rank], layout.padded_total


def _checksum(tokens: torch.Tensor) -> int:
    # Weighted by position and row so that reordered tokens or prompts differ too. int64 arithmetic wraps on overflow
    # (only past ~30,000 prompts), identically on every rank, so it stays a valid comparison.
    n, length = tokens.shape
    w_pos = torch.arange(1, length + 1, device=tokens.device, dtype=torch.int64)
    w_row = torch.arange(1, n + 1, device=tokens.device, dtype=torch.int64) % 65521 + 1
    return int(((tokens.long() * w_pos).sum(dim=1) * w_row).sum())


def encode_prompts_sharded(
    encode_fn: Callable[[torch.Tensor], torch.Tensor],
    tokens: torch.Tensor,
    env: DistEnv,
    *,
    balance: bool = True,
) -> torch.Tensor:
    """Embeddings ``[N, ...]`` of all prompts ``tokens [N, L]``, each rank encoding only its ``ceil(N / W)`` share.

    Shard (``prompt_layout``) -> ``encode_fn(tokens[share])`` on this rank (with gradients if enabled) ->
    ``all_gather_differentiable`` -> padding dropped and the input order restored. The result, and its gradient into
    this rank's text tower, are those of ``encode_fn(tokens)`` on one process (module docstring: the averaging over
    ranks completes it). Every rank must call it with the same tokens: checked (count, length, a checksum), so that a
    rank that drew another template raises FrosterError on every rank instead of training on mixed prompts.
    ``balance`` deals prompts by token count (padding id 0, as CLIP's tokenizer) so that ranks get equal work; it never
    changes the result. In a single process this is ``encode_fn(tokens)``.
    """
    if tokens.ndim != 2:
        raise FrosterError(f"encode_prompts_sharded expects token ids [N, L], found shape {tuple(tokens.shape)}")
    if not env.distributed:
        return encode_fn(tokens)
    n, length = tokens.shape
    _agree([n, length, _checksum(tokens)], env.device, "prompt tokens (count, length, checksum)")
    lengths = (tokens != 0).sum(dim=1) if balance else None  # [N]
    layout = prompt_layout(n, env.world_size, lengths)
    mine = layout.rows[env.rank].to(tokens.device)  # [s]
    emb = encode_fn(tokens[mine])  # [s, D]
    if emb.shape[0] != layout.per_rank:
        raise FrosterError(f"encode_fn returned {emb.shape[0]} rows for {layout.per_rank} prompts")
    return layout.unshard(all_gather_differentiable(emb))  # [N, D]


# ---- gradients, parameters, small collectives ----------------------------------------------------------------------


def average_gradients(params: Iterable[torch.Tensor], env: DistEnv, bucket_bytes: int = _BUCKET_BYTES) -> None:
    """Replace every ``p.grad`` with its mean over ranks (what DistributedDataParallel does during backward).

    Call it once per optimizer step, after every backward of the step and before gradient clipping / the optimizer
    (and before ``GradScaler.unscale_``: an inf on one rank then reaches all, and all skip the step). With each rank's
    loss the mean over its own clips, the result is the single-process gradient of the whole batch (module
    docstring). For a loop that, like stage two's, runs several backward passes per step (grad_accum micro-batches,
    then the text tower once), this replaces DDP, whose reducer expects one backward per forward in which every
    parameter receives a gradient. Parameters without a gradient are skipped; all ranks must agree on which (checked:
    a mismatch raises FrosterError on every rank). Gradients travel in flat buckets of ``bucket_bytes`` per dtype and
    device, SUM then divide (gloo has no AVG).
    """
    if not env.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    _agree([len(grads), sum(g.numel() for g in grads)], env.device, "gradients to average (count, elements)")
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        if g.is_sparse:
            raise FrosterError("average_gradients: sparse gradients are not supported (use dense embeddings)")
        groups.setdefault((g.device, g.dtype), []).append(g)
    for tensors in groups.values():
        limit = max(1, bucket_bytes // tensors[0].element_size())  # elements per bucket
        bucket: list[torch.Tensor] = []
        size = 0
        for g in tensors + [None]:
            if g is not None:
                bucket.append(g)
                size += g.numel()
            if bucket and (g is None or size >= limit):
                _reduce_bucket(bucket, env.world_size)
                bucket, size = [], 0


def _reduce_bucket(grads: list[torch.Tensor], world_size: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])  # [sum of numel]
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def broadcast_parameters(module: nn.Module, env: DistEnv, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (DDP does this when it wraps a module), so that ranks
    start identical even where building the model is not bit-deterministic."""
    if not env.distributed:
        return
    tensors = list(module.parameters()) + list(module.buffers())
    _agree([len(tensors), sum(t.numel() for t in tensors)], env.device, "parameters to broadcast (count, elements)")
    for t in tensors:
        dist.broadcast(t.data, src=src)


def broadcast_object(obj: T, env: DistEnv, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank; ``obj`` is ignored on the other ranks."""
    if not env.distributed:
        return obj
    box = [obj if env.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=env.device if env.device.type == "cuda" else None)
    return box[0]


def run_on_main(fn: Callable[[], T], env: DistEnv) -> T:
    """``fn()`` run on rank 0 only, its result given to every rank; a FrosterError it raises is raised on every rank.

    For work with one writer (the run directory's state, creating it) whose outcome all ranks need: the other ranks
    wait in the broadcast and learn of a failure instead of hanging in the next collective. Other exceptions are bugs:
    rank 0 raises them as they are and the others raise a FrosterError that points to rank 0's traceback.
    """
    if not env.distributed:
        return fn()
    if env.is_main:
        try:
            value = fn()
        except FrosterError as e:
            broadcast_object(("user-error", str(e)), env)
            raise
        except BaseException as e:
            broadcast_object(("crash", f"{type(e).__name__}: {e}"), env)
            raise
        return broadcast_object(("ok", value), env)[1]
    kind, value = broadcast_object(None, env)
    if kind == "user-error":
        raise FrosterError(value)
    if kind == "crash":
        raise FrosterError(f"rank 0 failed ({value}); see its traceback")
    return value


def reduce_scalars(values: dict[str, float], env: DistEnv, op: str = "mean") -> dict[str, float]:
    """``values`` summed (``op="sum"``) or averaged (``"mean"``) over ranks, e.g. the logged loss terms (each rank's
    is the mean over its clips, so their mean is the whole batch's) or correct-prediction counts."""
    if op not in ("mean", "sum"):
        raise FrosterError(f"reduce_scalars: op must be mean or sum, found {op!r}")
    if not env.distributed:
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=env.device)  # [n]
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if op == "mean":
        t /= env.world_size
    return dict(zip(keys, t.tolist(), strict=True))


def barrier(env: DistEnv) -> None:
    """Wait until every rank gets here (e.g. before reading what rank 0 wrote)."""
    if not env.distributed:
        return
    if env.device.type == "cuda":
        dist.barrier(device_ids=[env.local_rank])
    else:
        dist.barrier()


class RankBatches(Sampler[list]):
    """This rank's contiguous share of each global batch a batch sampler yields.

    Wrap the sampler of global step batches (``EpochBatchSampler(num_items, step_batch * W, ...)``) so that every rank
    decodes only its own clips. Rank r takes items ``[r * n / W, (r + 1) * n / W)`` of each n-item batch; with
    ``grad_accum`` micro-batches of b clips per rank, W ranks see exactly the micro-batches of one process run with
    ``--batch-size b --grad-accum grad_accum * W`` (same data order, same global step, same gradient). A batch whose
    size is not a multiple of W raises FrosterError.
    """

    def __init__(self, batch_sampler: Iterable[list], env: DistEnv):
        self.batch_sampler, self.env = batch_sampler, env

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list]:
        world, rank = self.env.world_size, self.env.rank
        for batch in self.batch_sampler:
            if len(batch) % world:
                raise FrosterError(f"a global batch of {len(batch)} items does not split over {world} ranks")
            n = len(batch) // world
            yield batch[rank * n : (rank + 1) * n]
