"""Benchmark of stage two's step: the release-style step against froster's, on the same student and data, in one run.

Both steps do forward + backward + AdamW step of the student (ViT-B-16 geometry, random weights, ``vclip`` by default:
the paper's student) and the two residual heads under the full FROSTER loss, written as stage two's loop (the text
tower once per step, the class embeddings' gradient collected on a leaf), gradients averaged over ranks.

- (a) release: the teacher (a second CLIP) encodes the same frames and all 2K prompts online (no_grad); every prompt is
  padded to 77 tokens and encoded by open_clip's ``encode_text``; every rank encodes all 2K prompts.
- (b) froster: the teacher's outputs are given as tensors (the store's cached targets); the prompts go through
  ``Student.encode_text`` (``encode_text_trimmed``: length buckets, exact) and are sharded across ranks
  (``encode_prompts_sharded``).

Shape (defaults): 1 clip of 8 frames at 224 per rank against 50 classes x 2 prompts, the release's per-GPU proportion
of video to text work (8 clips, 400 classes) scaled down. Prompt token lengths follow the release's: the bare prompt
("Name: description") is uniform in 9..55 tokens (mean 32), the templated one 9 tokens longer (mean 41, max 64),
start and end tokens included (release notes section 2).

With 2 ranks (gloo on CPU) each rank gets one thread on the 2-core CPU, and (a) is timed on the same 2 ranks: the ratio
compares steps at equal hardware. One process also runs one thread by default (``--threads``): on a 2-core machine
shared with other work, two OpenMP threads spin-wait for each other whenever one is descheduled, which inflates the
smaller kernels of the bucketed text forward most (measured: +50% CPU time on the student's vision, the trimmed text
no cheaper than the padded one), so the ratio would measure the machine's load rather than the step. Every part is
timed in wall seconds and in this process's CPU seconds; with one thread per rank the CPU time is the rank's own
compute, robust to other load (it leaves out waiting for the other rank at the collectives, which wall time keeps).
Steps alternate (a, b, then b, a, ...) and medians are reported; per-part times are rank 0's. On CPU the default run
does 1 repeat and no warm-up step (AdamW's state is allocated before timing).

    python benchmarks/train_step.py                                     # CPU: 1 process, then 2 gloo ranks
    python benchmarks/train_step.py --repeats 3 --adamw fused
    python benchmarks/train_step.py --device cuda --clips 8 --classes 400 --ranks 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SOT, EOT, CONTEXT = 49406, 49407, 77  # CLIP's tokenizer
TEMPLATE_EXTRA = 9  # tokens a template adds to the bare prompt: 41 - 32, the release's means
PARTS = ("student vision f+b", "student text f+b", "teacher vision", "teacher text", "sync + optimizer", "step")


def prompt_tokens(num_classes: int, seed: int) -> torch.Tensor:
    """Token ids ``[2K, 77]``, templated rows then bare rows, with the release's length distribution."""
    g = torch.Generator().manual_seed(seed)
    bare = torch.randint(9, 56, (num_classes,), generator=g)  # [K], uniform 9..55: mean 32
    lengths = torch.cat([bare + TEMPLATE_EXTRA, bare])  # [2K]: templated mean 41, max 64
    tokens = torch.zeros(2 * num_classes, CONTEXT, dtype=torch.int64)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0] = SOT
        tokens[i, 1 : n - 1] = torch.randint(1, SOT, (n - 2,), generator=g)
        tokens[i, n - 1] = EOT
    return tokens


def _rank(rank: int, args: argparse.Namespace, world: int, port: int, out: str) -> None:
    """One rank of one configuration: build, time the steps, write rank 0's times to ``out``."""
    import open_clip

    from froster.pipeline.distributed import DistEnv, average_gradients, encode_prompts_sharded
    from froster.pipeline.heads import ResidualHead
    from froster.pipeline.losses import froster_loss, video_logits
    from froster.pipeline.optim import param_groups
    from froster.pipeline.students import create_student
    from froster.pipeline.text import class_embeddings, encode_text_trimmed

    logging.basicConfig(level=logging.ERROR)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        env = DistEnv.from_env(args.device)
    else:
        env = DistEnv.from_env(args.device) if args.device == "cuda" else DistEnv()
    device = env.device
    torch.manual_seed(0)
    clip = open_clip.create_model(args.model)  # random weights
    # The teacher's forwards in (a) run the student's own weights under no_grad: the same compute as a frozen copy of
    # the same architecture, without a second copy of the weights in memory (2 ranks of (a) peak near 7 GB each).
    teacher = clip
    options = {"edge": "zero"} if args.student == "vclip" else {}
    student = create_student(args.student, clip, args.frames, **options).to(device).train()
    dim = clip.text_projection.shape[1]
    heads = torch.nn.ModuleDict({"vision": ResidualHead(dim), "text": ResidualHead(dim)}).to(device)
    # AdamW as stage two builds it. With --adamw fused, (b) steps with torch's fused AdamW (the same update in one
    # kernel per dtype) and (a) with the default as the release: on CPU one optimizer whose group flag is switched
    # per step (the two keep the same state on CPU), on CUDA two optimizers (memory is not short there).
    optimizer = torch.optim.AdamW(param_groups([student, heads]), lr=3.33e-6, betas=(0.9, 0.999), eps=1e-8)
    optimizers = {"a": optimizer, "b": optimizer}
    if args.adamw == "fused" and device.type == "cuda":
        optimizers["b"] = torch.optim.AdamW(param_groups([student, heads]), lr=3.33e-6, betas=(0.9, 0.999), eps=1e-8,
                                            fused=True)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def optimizer_for(kind: str) -> torch.optim.Optimizer:
        if args.adamw == "fused" and device.type == "cpu":
            for group in optimizer.param_groups:
                group["fused"] = True if kind == "b" else None
        return optimizers[kind]
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size

    K = args.classes
    g = torch.Generator().manual_seed(1000 + rank)  # each rank its own clips
    pixels = torch.randn(args.clips, args.frames, 3, size, size, generator=g).to(device)  # [b, T, 3, S, S]
    labels = torch.randint(0, K, (args.clips,), generator=g).to(device)  # [b]
    tokens = prompt_tokens(K, args.seed).to(device)  # [2K, 77], the same on every rank
    cached_frames = F.normalize(torch.randn(args.clips, args.frames, dim, generator=g), dim=-1)  # [b, T, D]
    cached_frames = cached_frames.half().to(device)  # the store keeps float16
    cached_text = F.normalize(torch.randn(2, K, dim, generator=torch.Generator().manual_seed(7)), dim=-1)
    cached_text = cached_text.half().to(device)  # [2, K, D]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" and args.precision == "bf16"
                else torch.autocast("cpu", enabled=False))

    def now() -> torch.Tensor:
        """(wall, this process's CPU time) in seconds. CPU time counts only the cycles this process got, so it is
        robust to other load on a shared machine (with 1 thread per rank it is the rank's compute; with more threads it
        adds up the threads, spin-waits included); wall time includes waiting at the collectives."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return torch.tensor([time.perf_counter(), time.process_time()], dtype=torch.float64)

    def step(kind: str) -> dict[str, list[float]]:
        t = {p: torch.zeros(2, dtype=torch.float64) for p in PARTS}
        t0 = now()
        with autocast:
            if kind == "a":
                prompts = student.clip.encode_text(tokens)  # [2K, D]: 77 tokens, all prompts on every rank
            else:
                encode = lambda x: encode_text_trimmed(student.clip, x, multiple=args.bucket_multiple)  # noqa: E731
                prompts = encode_prompts_sharded(encode, tokens, env)  # [2K, D]: this rank's share, gathered
        class_emb = class_embeddings(prompts.float().reshape(2, K, -1))  # [K, D]
        t1 = now()
        t["student text f+b"] += t1 - t0
        if kind == "a":
            with torch.no_grad(), autocast:
                frames_t = teacher.encode_image(pixels.flatten(0, 1)).float()  # [b*T, D]
            target_frames = F.normalize(frames_t, dim=-1).reshape(args.clips, args.frames, -1)  # [b, T, D]
            t2 = now()
            with torch.no_grad(), autocast:
                text_t = teacher.encode_text(tokens).float()  # [2K, D]
            target_classes = class_embeddings(text_t.reshape(2, K, -1))  # [K, D]
            t3 = now()
            t["teacher vision"], t["teacher text"] = t2 - t1, t3 - t2
            del frames_t, text_t
        else:
            target_frames = cached_frames.float()
            target_classes = class_embeddings(cached_text.float())
            t3 = now()
        leaf = class_emb.detach().requires_grad_(True)
        with autocast:
            frames = student.encode_frames(pixels).float()  # [b, T, D]
            logits = video_logits(frames, leaf, student.logit_scale.float())  # [b, K]
            terms = froster_loss(logits, labels, F.normalize(frames, dim=-1), target_frames, leaf, target_classes,
                                 heads["vision"], heads["text"])
        terms["total"].backward()
        t4 = now()
        t["student vision f+b"] = t4 - t3
        class_emb.backward(leaf.grad)  # the text tower's backward (through the gather's for b)
        t5 = now()
        t["student text f+b"] += t5 - t4
        average_gradients(params, env)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt = optimizer_for(kind)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t6 = now()
        t["sync + optimizer"] = t6 - t5
        t["step"] = t6 - t0
        return {p: v.tolist() for p, v in t.items()}

    # AdamW allocates its state on the first step: do that outside the timings (zero gradients).
    for opt in set(optimizers.values()):
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
    for _ in range(args.warmup):
        step("a"), step("b")
    times: dict[str, list[dict[str, list[float]]]] = {"a": [], "b": []}
    for rep in range(args.repeats):
        for kind in (("a", "b") if rep % 2 == 0 else ("b", "a")):  # alternate which goes first
            times[kind].append(step(kind))
    if env.is_main:
        Path(out).write_text(json.dumps({"times": times, "threads": torch.get_num_threads(), "device": str(device),
                                         "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}))
    env.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(args: argparse.Namespace, world: int) -> dict:
    """Time (a) and (b) with ``world`` ranks, each in its own process(es) so memory is returned between configs."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.json")
        mp.spawn(_rank, args=(args, world, _free_port(), out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def report(result: dict, world: int, args: argparse.Namespace, target: float) -> dict:
    """Print the per-part medians (wall and CPU seconds) of (a) and (b) and the ratios; return them as a dict."""
    med = {
        clock: {k: {p: statistics.median(s[p][i] for s in result["times"][k]) for p in PARTS} for k in ("a", "b")}
        for i, clock in enumerate(("wall", "cpu"))
    }
    ratio = {clock: m["b"]["step"] / m["a"]["step"] for clock, m in med.items()}
    where = result["gpu"] or "CPU"
    print(f"\n== {world} rank(s) on {where}, {result['threads']} thread(s) per rank, {args.repeats} repeat(s) of each "
          f"step, medians, rank 0 ==")
    print(f"{'part':<20}{'(a) release':>13}{'share':>7}{'(b) froster':>13}{'share':>7}   {'(a) cpu':>9}{'(b) cpu':>9}")
    for p in PARTS:
        a, b = med["wall"]["a"][p], med["wall"]["b"][p]
        print(f"{p:<20}{a:>12.2f}s{a / med['wall']['a']['step']:>7.1%}{b:>12.2f}s{b / med['wall']['b']['step']:>7.1%}"
              f"   {med['cpu']['a'][p]:>8.2f}s{med['cpu']['b'][p]:>8.2f}s")
    verdict = "ok" if ratio["wall"] <= target else "ABOVE TARGET"
    print(f"ratio b/a = {ratio['wall']:.3f} wall (target <= {target}): {verdict}; {ratio['cpu']:.3f} in CPU time")
    return {"ranks": world, "threads_per_rank": result["threads"], "device": result["device"], "gpu": result["gpu"],
            "ratio_wall": round(ratio["wall"], 4), "ratio_cpu": round(ratio["cpu"], 4), "target": target,
            "median_s": {c: {k: {p: round(v, 4) for p, v in m.items()} for k, m in mm.items()}
                         for c, mm in med.items()},
            "steps_wall_s": {k: [round(s["step"][0], 3) for s in v] for k, v in result["times"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip architecture (random weights)")
    p.add_argument("--student", default="vclip", choices=("clip", "vclip"), help="student (vclip: the paper's)")
    p.add_argument("--clips", type=int, default=1, help="clips per rank (the release: 8 per GPU)")
    p.add_argument("--frames", type=int, default=8, help="T")
    p.add_argument("--classes", type=int, default=50, help="K; 2K prompts per step (the release's K400: 400)")
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts to time, e.g. 1,2")
    p.add_argument("--repeats", type=int, default=1, help="timed steps of each kind per configuration")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps of each kind (default: 0 cpu, 1 cuda)")
    p.add_argument("--bucket-multiple", type=int, default=8, help="froster's bucket rounding (pipeline/text.py)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (gloo) | cuda (NCCL)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: fp32 on cpu, bf16 autocast on cuda (the release ran fp16 autocast)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per rank on cpu (default 1: see the module docstring)")
    p.add_argument("--adamw", default="default", choices=("default", "fused"),
                   help="AdamW of froster's step (b): torch's default (as stage two now) or fused; (a) keeps default")
    p.add_argument("--seed", type=int, default=0, help="prompt lengths")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    if args.warmup is None:
        args.warmup = 1 if args.device == "cuda" else 0
    if args.precision == "auto":
        args.precision = "bf16" if args.device == "cuda" else "fp32"
    worlds = [int(w) for w in args.ranks.split(",")]
    if args.device == "cuda" and max(worlds) > torch.cuda.device_count():
        raise SystemExit(f"--ranks {args.ranks} needs {max(worlds)} GPUs; this machine has {torch.cuda.device_count()}")

    lengths = (prompt_tokens(args.classes, args.seed) != 0).sum(dim=1).float()
    K = args.classes
    print(f"model {args.model} ({args.student}), {args.clips} clip(s) x {args.frames} frames per rank, {K} classes x 2 "
          f"prompts: templated mean {lengths[:K].mean():.1f} max {lengths[:K].max():.0f} tokens, bare mean "
          f"{lengths[K:].mean():.1f}; device {args.device}, precision {args.precision}, AdamW of (b): {args.adamw}")
    results = []
    t0 = time.perf_counter()
    for world in worlds:
        target = 0.50 if world == 1 else 0.40
        results.append(report(run_config(args, world), world, args, target))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
