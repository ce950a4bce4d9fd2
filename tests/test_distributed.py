"""pipeline/distributed.py: prompt sharding, and W gloo processes against one process on the whole batch.

The multi-process tests start W copies of this file as rank processes with torchrun's variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT on a free port of 127.0.0.1), so ``DistEnv.from_env`` runs as under torchrun. The
parent computes the single-process reference on the whole batch, writes the weights and data to a file the ranks load,
and compares what the ranks write back. A rank that hangs fails the test at the timeout instead of hanging pytest.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from froster.pipeline.distributed import (
    DistEnv,
    RankBatches,
    average_gradients,
    broadcast_object,
    encode_prompts_sharded,
    prompt_layout,
    reduce_scalars,
    run_on_main,
    shard_prompts,
)
from froster.pipeline.errors import FrosterError

TIMEOUT_S = 240  # per multi-process run; the tiny model builds in well under a second, imports take the rest
K, T, PER_RANK = 5, 3, 2  # classes, frames, clips per rank
SOT, EOT = 49406, 49407


# ---- prompt sharding (in process) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 10, 16])
@pytest.mark.parametrize("w", [1, 2, 3, 4])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_layout_covers_every_item_once_and_pads_to_a_multiple(n, w, with_lengths):
    lengths = torch.randint(3, 60, (n,)) if with_lengths else None
    layout = prompt_layout(n, w, lengths)
    s = -(-n // w)
    assert layout.rows.shape == (w, s) and layout.padded_total == w * s
    assert layout.padded_total - n < w  # padding < one item per rank
    flat = layout.rows.flatten()  # gathered row g holds item flat[g]
    assert set(flat.tolist()) == set(range(n))  # padding repeats real items only
    assert torch.equal(flat[layout.source], torch.arange(n))  # each item read from a row that holds it
    assert layout.source.unique().numel() == n  # ... a different row for each item
    assert torch.equal(layout.unshard(flat[:, None].float())[:, 0], torch.arange(n).float())  # padding dropped
    for rank in range(w):
        mine, total = shard_prompts(n, w, rank, lengths)
        assert torch.equal(mine, layout.rows[rank]) and total == w * s


def test_layout_with_lengths_balances_tokens_across_ranks():
    # The step's list: K templated prompts then K bare ones, ~9 tokens shorter (the release's 41 vs 32 on average).
    g = torch.Generator().manual_seed(1)
    bare = torch.randint(9, 56, (50,), generator=g)
    lengths = torch.cat([bare + 9, bare])  # [100]
    balanced = prompt_layout(100, 2, lengths)
    per_rank = [int(lengths[r].sum()) for r in balanced.rows]
    assert abs(per_rank[0] - per_rank[1]) <= int(lengths.max())
    contiguous = [int(lengths[:50].sum()), int(lengths[50:].sum())]
    assert abs(per_rank[0] - per_rank[1]) < abs(contiguous[0] - contiguous[1])


def test_shard_prompts_fewer_items_than_ranks():
    assert shard_prompts(1, 2, 0)[1] == 2 and shard_prompts(1, 2, 1)[0].tolist() == [0]  # rank 1 encodes a repeat
    layout = prompt_layout(2, 4)
    assert layout.rows.shape == (4, 1) and layout.source.tolist() == [0, 1]


@pytest.mark.parametrize("args", [(0, 2, 0), (3, 0, 0), (3, 2, 2), (3, 2, -1)])
def test_shard_prompts_refuses_bad_arguments(args):
    with pytest.raises(FrosterError, match="prompt sharding"):
        shard_prompts(*args)


def test_unshard_refuses_a_wrong_row_count():
    with pytest.raises(FrosterError, match="expected 4 gathered rows"):
        prompt_layout(3, 2).unshard(torch.zeros(3, 2))


def test_single_process_helpers_are_identities():
    env = DistEnv()
    assert env.is_main and not env.distributed
    tokens = torch.randint(0, 100, (5, 7))
    assert encode_prompts_sharded(lambda t: t.float() * 2, tokens, env).equal(tokens.float() * 2)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    average_gradients([p], env)
    assert p.grad.tolist() == [2.0, 2.0, 2.0]
    assert broadcast_object({"a": 1}, env) == {"a": 1}
    assert run_on_main(lambda: 5, env) == 5
    assert reduce_scalars({"ce": 1.5}, env) == {"ce": 1.5}


def test_from_env_without_torchrun_is_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = DistEnv.from_env("cpu")
    assert (env.rank, env.world_size, env.device.type, env.owns_group) == (0, 1, "cpu", False)


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE: expected an integer, found 'two'"),
        ({"WORLD_SIZE": "2"}, "RANK is not set"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 must be below WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR, MASTER_PORT not set"),
    ],
)
def test_from_env_names_the_bad_variable(monkeypatch, variables, message):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(FrosterError, match=message):
        DistEnv.from_env("cpu")


def test_from_env_refuses_an_unknown_device():
    with pytest.raises(FrosterError, match="device must be one of cpu, cuda"):
        DistEnv.from_env("tpu")


def test_rank_batches_split_each_global_batch_contiguously():
    batches = [list(range(0, 6)), list(range(6, 12))]
    assert list(RankBatches(batches, DistEnv(rank=1, world_size=3))) == [[2, 3], [8, 9]]
    with pytest.raises(FrosterError, match="does not split over 4 ranks"):
        list(RankBatches(batches, DistEnv(rank=0, world_size=4)))


# ---- the problem both sides solve ----------------------------------------------------------------------------------


def _register_tiny() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import register_tiny_model

    return register_tiny_model()


def _build(state: dict | None = None):
    """The tiny vclip student and both residual heads (W2 not zero, so both heads carry gradient), from ``state``."""
    import open_clip

    from froster.pipeline.heads import ResidualHead
    from froster.pipeline.students import create_student

    clip = open_clip.create_model(_register_tiny())
    student = create_student("vclip", clip, T)
    dim = clip.text_projection.shape[1]
    heads = torch.nn.ModuleDict({name: ResidualHead(dim, zero_init=False) for name in ("vision", "text")})
    if state is not None:
        student.load_state_dict(state["student"])
        heads.load_state_dict(state["heads"])
    return student, heads


def _tokens(n: int, generator: torch.Generator) -> torch.Tensor:
    """CLIP-like token rows ``[n, 77]``: start token, random ids, end token at lengths 4..30 (several buckets)."""
    tokens = torch.zeros(n, 77, dtype=torch.int64)
    for i in range(n):
        length = int(torch.randint(4, 31, (), generator=generator))
        tokens[i, 0] = SOT
        tokens[i, 1 : length - 1] = torch.randint(1, 49000, (length - 2,), generator=generator)
        tokens[i, length - 1] = EOT
    return tokens


def _make_problem(world: int) -> dict:
    torch.manual_seed(0)
    student, heads = _build()
    g = torch.Generator().manual_seed(1)
    B, D = world * PER_RANK, student.clip.text_projection.shape[1]
    return {
        "student": student.state_dict(),
        "heads": heads.state_dict(),
        "frames": torch.randn(B, T, 3, 32, 32, generator=g),  # [B, T, 3, H, W]
        "labels": torch.randint(0, K, (B,), generator=g),  # [B]
        "teacher_frames": F.normalize(torch.randn(B, T, D, generator=g), dim=-1),  # [B, T, D]
        "teacher_prompts": torch.randn(2, K, D, generator=g),  # [2, K, D] stored text features of the two prompts
        "tokens": _tokens(2 * K, g),  # [2K, 77]: templated then bare
        "pad_weights": torch.randn(3, D, generator=g),  # [3, D]
    }


def _terms(student, heads, frames, labels, teacher_frames, class_emb, teacher_classes) -> dict:
    """The full FROSTER loss (CE + beta (fd_vision + fd_text)) of ``frames`` against ``class_emb``."""
    from froster.pipeline.losses import froster_loss, video_logits

    emb = frames if frames.ndim == 3 else student.encode_frames(frames)  # [b, T, D]
    logits = video_logits(emb, class_emb, student.logit_scale)  # [b, K]
    return froster_loss(logits, labels, F.normalize(emb, dim=-1), teacher_frames, class_emb, teacher_classes,
                        heads["vision"], heads["text"], beta=2.0)


def _grads(student, heads) -> dict[str, torch.Tensor]:
    named = [(f"student.{n}", p) for n, p in student.named_parameters()]
    named += [(f"heads.{n}", p) for n, p in heads.named_parameters()]
    return {n: p.grad.detach().clone() for n, p in named if p.grad is not None}


def _reference(problem: dict) -> dict:
    """One process, the whole batch: gradients and loss; the text tower's gradients of the 3-prompt loss."""
    from froster.pipeline.text import class_embeddings

    student, heads = _build(problem)
    prompts = student.encode_text(problem["tokens"]).reshape(2, K, -1)  # [2, K, D]
    terms = _terms(student, heads, problem["frames"], problem["labels"], problem["teacher_frames"],
                   class_embeddings(prompts), class_embeddings(problem["teacher_prompts"]))
    terms["total"].backward()
    result = {"grads": _grads(student, heads), "loss": float(terms["total"].detach())}
    student, heads = _build(problem)
    (student.encode_text(problem["tokens"][:3]) * problem["pad_weights"]).sum().backward()
    result["padded"] = _grads(student, torch.nn.ModuleDict())
    return result


# ---- rank processes ------------------------------------------------------------------------------------------------


def _rank_main(problem_path: str, out_dir: str) -> None:
    """One rank: the gradient of its share by the two routes, and the edge cases; writes rank{r}.pt."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from froster.pipeline.distributed import all_gather_differentiable, broadcast_parameters
    from froster.pipeline.text import class_embeddings

    torch.set_num_threads(1)
    env = DistEnv.from_env("cpu")
    problem = torch.load(problem_path, weights_only=True)
    r, W = env.rank, env.world_size
    mine = slice(r * PER_RANK, (r + 1) * PER_RANK)
    teacher_classes = class_embeddings(problem["teacher_prompts"])  # [K, D]
    result: dict = {}

    # Route 1, stage two's loop: sharded prompts, the class embeddings' gradient collected over 2 micro-batches of one
    # clip on a leaf, then one text backward, then average_gradients.
    student, heads = _build(problem)
    broadcast_parameters(student, env)
    prompts = encode_prompts_sharded(student.encode_text, problem["tokens"], env).reshape(2, K, -1)  # [2, K, D]
    class_emb = class_embeddings(prompts)  # [K, D]
    leaf = class_emb.detach().requires_grad_(True)
    totals = []
    for chunk in range(PER_RANK):
        i = slice(r * PER_RANK + chunk, r * PER_RANK + chunk + 1)
        terms = _terms(student, heads, problem["frames"][i], problem["labels"][i], problem["teacher_frames"][i],
                       leaf, teacher_classes)
        (terms["total"] / PER_RANK).backward()
        totals.append(float(terms["total"].detach()) / PER_RANK)
    class_emb.backward(leaf.grad)
    average_gradients(list(student.parameters()) + list(heads.parameters()), env)
    result["loop"] = _grads(student, heads)
    result["loop_loss"] = reduce_scalars({"total": sum(totals)}, env)["total"]

    # Route 2, DistributedDataParallel: one forward of vision and this rank's prompts, one backward.
    student, heads = _build(problem)
    ddp_student = DDP(student)
    ddp_heads = {name: DDP(head) for name, head in heads.items()}
    layout = prompt_layout(2 * K, W, (problem["tokens"] != 0).sum(dim=1))
    frames, shard = ddp_student(frames=problem["frames"][mine], tokens=problem["tokens"][layout.rows[r]])
    prompts = layout.unshard(all_gather_differentiable(shard)).reshape(2, K, -1)  # [2, K, D]
    terms = _terms(student, ddp_heads, frames, problem["labels"][mine], problem["teacher_frames"][mine],
                   class_embeddings(prompts), teacher_classes)
    terms["total"].backward()
    result["ddp"] = _grads(student, heads)

    # The gather's backward: y = cat_r x_r; loss_r = sum(w_r * y), so dx_r = sum_r' w_r'[rows of r] (summed over ranks).
    x = torch.full((2, 3), float(r), requires_grad=True)
    y = all_gather_differentiable(x)  # [2W, 3]
    weights = torch.arange(2 * W * 3, dtype=torch.float32).reshape(2 * W, 3) * (r + 1)
    (weights * y).sum().backward()
    result["gather_value"], result["gather_grad"] = y.detach(), x.grad

    # 3 prompts on W ranks (padded): the same loss on every rank, so the averaged gradient is one process's.
    student, heads = _build(problem)
    emb = encode_prompts_sharded(student.encode_text, problem["tokens"][:3], env)  # [3, D]
    (emb * problem["pad_weights"]).sum().backward()
    average_gradients(student.parameters(), env)
    result["padded"] = _grads(student, torch.nn.ModuleDict())

    # Fewer prompts than ranks and padding: values equal one process's, padding dropped.
    with torch.no_grad():
        for n in (1, 3):
            got = encode_prompts_sharded(student.encode_text, problem["tokens"][:n], env)
            result[f"prompts_{n}"] = (got, student.encode_text(problem["tokens"][:n]))

    # Unequal shards and different prompts raise on every rank instead of hanging.
    for name, call in (
        ("unequal", lambda: all_gather_differentiable(torch.zeros(2 + r, 4))),
        ("tokens", lambda: encode_prompts_sharded(student.encode_text, problem["tokens"] + (r == 1), env)),
    ):
        try:
            call()
            result[name] = None
        except FrosterError as e:
            result[name] = str(e)
    torch.save(result, Path(out_dir) / f"rank{r}.pt")
    env.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(world: int, tmp_path: Path) -> tuple[dict, list[dict]]:
    """(the one-process reference, what each of ``world`` rank processes wrote)."""
    problem = _make_problem(world)
    torch.save(problem, tmp_path / "problem.pt")
    reference = _reference(problem)
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, __file__, str(tmp_path / "problem.pt"), str(tmp_path)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{world} ranks did not finish in {TIMEOUT_S} s (a collective hung)")
    for rank, p in enumerate(procs):
        assert p.returncode == 0, f"rank {rank} failed:\n{logs[rank][-4000:]}"
    return reference, [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


_RUNS: dict[int, tuple[dict, list[dict]]] = {}


@pytest.fixture
def ranks(request, tmp_path_factory):
    """The reference and the ranks' results for ``world`` ranks, computed once per module (process start-up is most of
    the cost)."""
    world = request.param
    if world not in _RUNS:
        _RUNS[world] = _run_ranks(world, tmp_path_factory.mktemp(f"ranks{world}"))
    return _RUNS[world]


def _max_diff(a: dict, b: dict) -> tuple[float, float]:
    """Largest absolute and largest relative (to the reference's largest entry) difference over all gradients."""
    assert a.keys() == b.keys()
    abs_d = max(float((a[n] - b[n]).abs().max()) for n in a)
    rel_d = max(float((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-12)) for n in a)
    return abs_d, rel_d


def _assert_equal_grads(got: dict, reference: dict, what: str) -> None:
    assert got.keys() == reference.keys(), what
    for name, grad in reference.items():
        # fp32 round-off of another summation order (per-rank batches, buckets, the all-reduce): within 1e-5 of the
        # tensor's largest entry, plus 1e-6. Seen: at most 1.3e-6 relative, 1.3e-5 absolute (|grad| up to ~20).
        tol = 1e-6 + 1e-5 * float(grad.abs().max())
        torch.testing.assert_close(got[name], grad, rtol=0, atol=tol, msg=lambda m: f"{what} {name}: {m}")


@pytest.mark.parametrize(
    "ranks", [2, pytest.param(3, marks=pytest.mark.slow)], indirect=True, ids=["2 ranks", "3 ranks"]
)  # 3 ranks: the 2K = 10 prompts pad to 12, two ranks encode a repeat
def test_ranks_give_the_single_process_gradients(ranks):
    reference, results = ranks
    grads = reference["grads"]
    assert len(grads) > 40 and all(g.abs().sum() > 0 for n, g in grads.items() if "heads" in n)
    assert any("token_embedding" in n for n in grads)  # the text tower is in, through the sharded prompts
    for r, res in enumerate(results):
        assert res["loop_loss"] == pytest.approx(reference["loss"], rel=1e-6, abs=1e-6)
        for route in ("loop", "ddp"):  # stage two's loop with average_gradients, and DistributedDataParallel
            abs_d, rel_d = _max_diff(res[route], grads)
            print(f"{len(results)} ranks, rank {r}, {route}: max |grad diff| {abs_d:.2e}, relative {rel_d:.2e}")
            _assert_equal_grads(res[route], grads, f"{route} rank {r}")
        _assert_equal_grads(res["padded"], reference["padded"], f"3 prompts, rank {r}")


@pytest.mark.parametrize("ranks", [2], indirect=True, ids=["2 ranks"])
def test_gather_sum_backward_padding_and_refusals(ranks):
    _, results = ranks
    world = len(results)
    weights = torch.arange(2 * world * 3, dtype=torch.float32).reshape(2 * world, 3)
    scale = sum(r + 1 for r in range(world))  # rank r's loss weighs y by (r + 1)
    for r, res in enumerate(results):
        assert torch.equal(res["gather_value"][:, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
        torch.testing.assert_close(res["gather_grad"], weights[2 * r : 2 * r + 2] * scale)
        for n in (1, 3):  # fewer prompts than ranks; padding
            got, want = res[f"prompts_{n}"]
            assert got.shape == want.shape == (n, want.shape[1])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert "shards to all-gather" in res["unequal"]
        assert "rank 0: [2, 1, 2, 4]; rank 1: [2, 1, 3, 4]" in res["unequal"]
        assert "prompt tokens (count, length, checksum) differ across ranks" in res["tokens"]


# ---- torchrun: two CPU ranks train one run ------------------------------------------------------------------------


def _train_is_distributed() -> bool:
    import inspect

    from froster.stages import train as train_stage

    return "DistEnv" in inspect.getsource(train_stage)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """4 videos of 2 classes, the tiny teacher as a local-dir folder, and the store stage one makes of them."""
    import numpy as np

    from froster.pipeline.manifests import build_manifest, probe_manifest, write_manifest
    from froster.pipeline.teacher import TeacherSpec, load_clip, save_local_dir
    from froster.pipeline.videowriter import write_video
    from froster.stages.extract_teacher import ExtractConfig
    from froster.stages.extract_teacher import run as extract

    base = tmp_path_factory.mktemp("torchrun")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("clap", "jump")):
        for i in range(2):
            frames = np.clip(rng.normal(60 + 120 * c, 20, size=(8, 32, 32, 3)), 0, 255).astype(np.uint8)
            write_video(base / "videos" / name / f"v{i}.mp4", frames, fps=30.0)
    manifest = write_manifest(probe_manifest(build_manifest("folders", base / "videos", split="train"), workers=1),
                              base / "train.parquet")
    torch.manual_seed(0)
    tiny = load_clip(TeacherSpec(_register_tiny(), allow_random=True))
    teacher = save_local_dir(tiny.model, tiny.model_config, base / "teacher")
    return extract(ExtractConfig(
        out=base / "train.zarr", manifest=manifest, model=f"local-dir:{teacher}", frames=2, views=2,
        view_mode="train", block_rows=2, batch_size=2, decode_threads=1, progress=False,
    ))


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_write_one_run_equal_to_one_process(small_store, tmp_path):
    if not _train_is_distributed():
        pytest.skip("stages/train.py does not use pipeline.distributed yet")
    from froster.pipeline.checkpoints import load_checkpoint
    from froster.stages.train import TrainConfig
    from froster.stages.train import run as train

    common = ["--cache", str(small_store), "--student", "clip", "--epochs", "2", "--warmup-epochs", "1",
              "--batch-size", "1", "--average-from", "1", "--no-progress"]
    out = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "froster.cli", "train", *common, "--out", str(out / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    run_dir = out / "ddp"
    assert sorted(p.name for p in out.iterdir()) == ["ddp"]  # one run directory, written once
    for name in ("config.json", "metrics.jsonl", "final.pt", "averaged.pt", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    derived = json.loads((run_dir / "config.json").read_text())["derived"]
    assert derived["world_size"] == 2 and derived["global_batch"] == 2 and derived["steps_per_epoch"] == 2
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["type"] == "step"] == [1, 2, 3, 4]  # each step once: rank 0 writes

    # One process with the same global step (2 micro-batches of 1 clip) gives the same weights.
    single = train(TrainConfig(cache=small_store, out=out.parent / "single", student="clip", epochs=2,
                               warmup_epochs=1.0, batch_size=1, grad_accum=2, average_from=1, progress=False))
    a, b = load_checkpoint(run_dir / "final.pt"), load_checkpoint(single / "final.pt")
    for name, weight in b["model"].items():
        torch.testing.assert_close(a["model"][name], weight, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    single_steps = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    for mine, theirs in zip(lines, single_steps, strict=True):
        assert mine.get("total") == pytest.approx(theirs.get("total"), rel=1e-5)


if __name__ == "__main__":  # a rank process of the tests above
    _rank_main(sys.argv[1], sys.argv[2])
