"""The froster command line (Typer). Each command parses options, builds one stage's config and calls its ``run()``.

Nothing else lives here: no logic, no file formats. A user error (FrosterError, which includes config validation)
prints one line on stderr and exits 1, without a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer

from froster import __version__
from froster.pipeline.errors import FrosterError

T = TypeVar("T")

app = typer.Typer(
    name="froster",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="froster: FROSTER open-vocabulary video action recognition, as an offline pipeline "
    "(extract-teacher -> train -> evaluate).",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"froster {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages on stderr."),
) -> None:
    """froster: FROSTER open-vocabulary video action recognition as an offline pipeline."""
    from rich.logging import RichHandler
    from rich.console import Console

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, show_time=False)],
        force=True,
    )


def _call(fn: Callable[[], T]) -> T:
    """Run ``fn`` (which builds a config and calls a stage); a FrosterError becomes one line on stderr and exit 1."""
    try:
        return fn()
    except FrosterError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume", err=True)
        raise typer.Exit(130) from None


def _floats(text: Optional[str], option: str) -> Optional[tuple[float, ...]]:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise FrosterError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def _ints(text: Optional[str], option: str) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise FrosterError(f"{option}: expected comma-separated integers, got {text!r}") from None


# ---- commands (each section owned by one stage; keep them in pipeline order) ----

# [manifest]
@app.command(
    "manifest",
    short_help="Write a manifest (Parquet) from annotations, probing every video. "
    "E.g. froster manifest --format ucf101 --annotations ucfTrainTestlist --split test1 --video-root UCF-101 "
    "--out manifests/ucf101_test1.parquet",
)
def manifest_command(
    fmt: str = typer.Option(..., "--format", help="Annotation format: lists (lines 'path,label' or 'path label' + "
                            "--classes), kinetics (CSV label,youtube_id,time_start,time_end,split), ucf101 "
                            "(classInd.txt + trainlist0N/testlist0N), hmdb51 ({class}_test_split{N}.txt files), "
                            "folders (a folder per class)."),
    video_root: Path = typer.Option(..., "--video-root", help="Folder the videos' relative paths start from."),
    out: Path = typer.Option(..., "--out", help="Manifest to write (.parquet), atomically."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="The list file (lists), the CSV "
                                               "(kinetics), the folder with classInd.txt (ucf101), the folder of "
                                               "split files (hmdb51); not used by folders."),
    split: Optional[str] = typer.Option(None, "--split", help="ucf101/hmdb51: train1|test1|train2|test2|train3|"
                                        "test3|all; kinetics: keep rows whose split column equals it (default: all "
                                        "rows); lists/folders: the split name written into each row."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="Class-name file (txt one per line, JSON "
                                           "{\"idx\": \"name\"}, CSV id,name): required for lists; for the other "
                                           "formats it fixes the class list and order."),
    prompt_names: Optional[Path] = typer.Option(None, "--prompt-names", help="Class-name file overriding the "
                                                "derived prompt names, one per class by label."),
    no_probe: bool = typer.Option(False, "--no-probe", help="Skip probing; every row stays status 'unprobed'."),
    workers: int = typer.Option(8, "--workers", help="Probing threads."),
    max_listed: int = typer.Option(50, "--max-listed", help="Failing videos listed on stdout (all are kept in the "
                                   "manifest); 0 lists all."),
) -> None:
    """Write a manifest from annotations: one row per video with its label, names, split and probe results.

    Missing, empty and undecodable videos keep their row with a status and reason and are listed on stdout.
    Prompt names: underscores become spaces and UCF CamelCase is split ("ApplyEyeMakeup" -> "apply eye makeup").

    Example: froster manifest --format kinetics --annotations kinetics400/train.csv --split train
    --video-root /data/k400 --out manifests/k400_train.parquet
    """
    from froster.stages.manifest import ManifestConfig, run

    _call(lambda: run(ManifestConfig(
        format=fmt, video_root=video_root, out=out, annotations=annotations, split=split, classes=classes,
        prompt_names=prompt_names, probe=not no_probe, workers=workers, max_listed=max_listed,
    )))

# [protocol]
protocol_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Write a protocol file (TOML) from manifests: the runs, evaluation sets, checkpoint and aggregation that "
    "train and evaluate read (format: docs/protocols.md).",
)
app.add_typer(
    protocol_app,
    name="protocol",
    short_help="Write a protocol file (TOML): base2novel or cross-dataset. "
    "E.g. froster protocol base2novel --train manifests/k400_train.parquet --test manifests/k400_val.parquet "
    "--out protocols/k400_base2novel.toml",
)


def _protocol_paths(text: Optional[str]) -> tuple[Path, ...]:
    return tuple(Path(x.strip()) for x in (text or "").split(",") if x.strip())


def _protocol_groups(values: Optional[list[str]], option: str) -> list[tuple[str, tuple[Path, ...]]]:
    out = []
    for value in values or []:
        group, sep, paths = value.partition("=")
        if not sep or not group.strip() or not _protocol_paths(paths):
            raise FrosterError(f"{option}: expected GROUP=MANIFEST[,MANIFEST...], got {value!r}")
        out.append((group.strip(), _protocol_paths(paths)))
    return out


@protocol_app.command(
    "base2novel",
    short_help="Base-to-novel on one dataset: base/novel derived or given, 16 shots per base class per seed. "
    "E.g. froster protocol base2novel --train k400_train.parquet --test k400_val.parquet --out k400_b2n.toml",
)
def protocol_base2novel(
    train: Path = typer.Option(..., "--train", help="Training manifest (e.g. K400 train, HMDB-51 train1)."),
    test: Path = typer.Option(..., "--test", help="Test manifest holding the base and novel test videos."),
    out: Path = typer.Option(..., "--out", help="Protocol file to write (.toml)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Class-name file of the base classes (with --novel; "
                                        "e.g. the ViFi-CLIP lists). Default: derived, the more frequent half."),
    novel: Optional[Path] = typer.Option(None, "--novel", help="Class-name file of the novel classes."),
    seeds: str = typer.Option("1,2,3", "--seeds", help="One run per seed, each with its own training subset."),
    shots: int = typer.Option(16, "--shots", help="Training videos per base class (the paper: 16)."),
    train_lists: Optional[str] = typer.Option(None, "--train-lists", help="Comma-separated video lists, one run "
                                              "each, instead of seeded subsets."),
    name: Optional[str] = typer.Option(None, "--name", help="Protocol name (default: TRAIN's stem + -base2novel)."),
) -> None:
    """Write a base-to-novel protocol (paper A.1): train on base classes, evaluate base and novel test sets.

    Without --base/--novel, classes are sorted by number of training videos (ties by name) and the more frequent
    half is base. Each run trains on --shots videos per base class; the last checkpoint is evaluated; reported:
    base, novel, HM = 2bn/(b+n), mean over runs.

    Example: froster protocol base2novel --train manifests/k400_train.parquet --test manifests/k400_val.parquet
    --seeds 1,2,3 --out protocols/k400_base2novel.toml
    """
    from froster.stages.protocol import ProtocolConfig, run

    _call(lambda: run(ProtocolConfig(
        kind="base2novel", out=out, name=name, train=train, test=test, base_classes=base, novel_classes=novel,
        seeds=_ints(seeds, "--seeds") or (), shots=shots, train_lists=_protocol_paths(train_lists),
    )))


@protocol_app.command(
    "cross-dataset",
    short_help="One run on the full source, evaluated on other datasets' splits and new-class subsets. "
    "E.g. froster protocol cross-dataset --source k400_train.parquet --target ucf101=ucf_test1.parquet "
    "--novel-target k600=k600_test.parquet --out k400_cross.toml",
)
def protocol_cross_dataset(
    source: Path = typer.Option(..., "--source", help="Training manifest (e.g. K400 train), all of it."),
    out: Path = typer.Option(..., "--out", help="Protocol file to write (.toml)."),
    target: Optional[list[str]] = typer.Option(None, "--target", help="GROUP=MANIFEST[,MANIFEST...], repeatable: "
                                               "each manifest one eval set with its whole vocabulary; a group's sets "
                                               "are reported as mean and std (e.g. ucf101=test1,test2,test3 and "
                                               "ucf101-full=all)."),
    novel_target: Optional[list[str]] = typer.Option(None, "--novel-target", help="GROUP=MANIFEST, repeatable: its "
                                                     "classes absent from the source, subsampled (e.g. k600=test)."),
    novel_size: int = typer.Option(160, "--novel-size", help="Classes per new-class subset (the paper: 160)."),
    novel_seeds: str = typer.Option("1,2,3", "--novel-seeds", help="One new-class subset per seed."),
    novel_lists: Optional[str] = typer.Option(None, "--novel-lists", help="Comma-separated class-name files, one "
                                              "subset each, instead of seeded subsets (one --novel-target only)."),
    name: Optional[str] = typer.Option(None, "--name", help="Protocol name (default: SOURCE's stem + "
                                       "-cross-dataset)."),
) -> None:
    """Write a cross-dataset protocol (paper A.1): one run on every usable source video, the averaged checkpoint.

    New-class subsets must not share a class with the source (compared after normalising case, punctuation and
    spaces); an overlap is refused, naming the classes.

    Example: froster protocol cross-dataset --source manifests/k400_train.parquet
    --target ucf101=manifests/ucf101_test1.parquet,manifests/ucf101_test2.parquet,manifests/ucf101_test3.parquet
    --target ucf101-full=manifests/ucf101_all.parquet --novel-target k600=manifests/k600_test.parquet
    --out protocols/k400_cross.toml
    """
    from froster.stages.protocol import ProtocolConfig, run

    def go():
        novel = _protocol_groups(novel_target, "--novel-target")
        if any(len(paths) != 1 for _, paths in novel):
            raise FrosterError("--novel-target: expected GROUP=MANIFEST with one manifest each")
        return run(ProtocolConfig(
            kind="cross-dataset", out=out, name=name, source=source,
            targets=tuple(_protocol_groups(target, "--target")), novel_targets=tuple((g, p[0]) for g, p in novel),
            novel_size=novel_size, novel_seeds=_ints(novel_seeds, "--novel-seeds") or (),
            novel_lists=_protocol_paths(novel_lists),
        ))

    _call(go)

@app.command(
    "augment-text",
    short_help="Ask an LLM for a description of every class, once. "
    "E.g. froster augment-text --classes k400.txt --out descriptions/k400.json",
)
def augment_text(
    classes: Path = typer.Option(..., "--classes", help="Class-name file: txt (one per line), JSON {\"idx\": \"name\"} "
                                 "or CSV id,name."),
    out: Path = typer.Option(..., "--out", help="Description file to write (.json); answers are also saved as they "
                             "arrive to OUT.progress.jsonl, so a rerun asks only for what is missing."),
    model: str = typer.Option("gpt-3.5-turbo", "--model", help="Chat model name (the paper used GPT-3.5)."),
    instruction: str = typer.Option("Please describe this action in the video {class}", "--instruction",
                                    help="User message; {class} becomes the class name (default: the paper's)."),
    system: str = typer.Option(
        "Answer with one sentence of plain text on a single line, without a title, list or quotes.", "--system",
        help="System message sent before the instruction; \"\" sends none."),
    n_per_class: int = typer.Option(1, "--n-per-class", min=1, help="Descriptions per class."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible server root, e.g. "
                                           "http://localhost:8000/v1 (vLLM, llama.cpp server, Ollama); default: OpenAI."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key "
                                    "(never written anywhere)."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Requests in flight at once."),
    timeout: float = typer.Option(60.0, "--timeout", help="Read timeout per request, in seconds."),
    max_retries: int = typer.Option(5, "--max-retries", min=0, help="Client retries of rate limits (429, honouring "
                                    "Retry-After), server errors, timeouts and connection errors."),
    attempts: int = typer.Option(3, "--attempts", min=1, help="Requests per description when the answer is unusable "
                                 "(malformed, empty, multi-line, too long) before the class is reported missing."),
    max_chars: int = typer.Option(400, "--max-chars", min=1, help="Longest answer accepted, in characters."),
    offline: bool = typer.Option(False, "--offline", help="Send nothing: each description is the class name in a "
                                 "plain sentence; the file says fallback: true."),
) -> None:
    """Ask an LLM, through the openai client, for a description of every class; write them for stage one.

    The key comes from the environment (--api-key-env) and is never written to a file, a log or an error message.
    Classes without a usable answer are listed as missing (never invented) and the command exits 1; rerun it to ask
    for those only.

    Example: OPENAI_API_KEY=... froster augment-text --classes k400.txt --out descriptions/k400.json
    """
    from froster.stages.augment_text import AugmentTextConfig, run

    path = _call(lambda: run(AugmentTextConfig(
        classes=classes, out=out, model=model, instruction=instruction, system=system or None,
        n_per_class=n_per_class, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
        timeout_s=timeout, max_retries=max_retries, attempts=attempts, max_chars=max_chars, offline=offline,
    )))
    typer.echo(str(path))


@app.command(
    "extract-teacher",
    short_help="Run the frozen CLIP teacher once; store view and prompt features. "
    "E.g. froster extract-teacher --manifest m.parquet --model ViT-B-16 --pretrained openai --out cache/k400.zarr",
)
def extract_teacher(
    out: Path = typer.Option(..., "--out", help="Store directory to write (Zarr v3), e.g. cache/k400.zarr."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Manifest Parquet file (froster manifest). "
                                            "Or give the annotation options --format/--annotations/--video-root."),
    format: Optional[str] = typer.Option(None, "--format", help="Annotation format when there is no --manifest: "
                                         "lists | kinetics | ucf101 | hmdb51 | folders."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="Annotation file or folder of --format "
                                               "(list file, Kinetics CSV, UCF/HMDB split folder)."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="Class-name file (txt / JSON {\"idx\": \"name\"} "
                                           "/ CSV id,name); required for --format lists."),
    prompt_names: Optional[Path] = typer.Option(None, "--prompt-names", help="Prompt-name file overriding the "
                                                "derived prompt names (one per class, same formats as --classes)."),
    video_root: Optional[Path] = typer.Option(None, "--video-root", help="Folder the manifest's paths are relative "
                                              "to (default: the manifest's own root)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to extract (e.g. train1, test1, train); also "
                                        "picks train or test views under --view-mode auto."),
    model: str = typer.Option("ViT-B-16", "--model", help="open_clip model name, or local-dir:PATH (an open_clip "
                              "folder with config and weights)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="open_clip pretrained tag, e.g. openai "
                                             "(downloaded by open_clip on first use)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Local state dict for --model instead of "
                                              "--pretrained."),
    quick_gelu: Optional[bool] = typer.Option(None, "--quick-gelu/--no-quick-gelu", help="Force QuickGELU on/off "
                                              "(default: decided; on for OpenAI-trained weights)."),
    allow_random_teacher: bool = typer.Option(False, "--allow-random-teacher", help="Allow a teacher without "
                                              "weights (tests only)."),
    image_mean: Optional[str] = typer.Option(None, "--image-mean", help="Override the model's mean, e.g. "
                                             "0.481,0.458,0.408."),
    image_std: Optional[str] = typer.Option(None, "--image-std", help="Override the model's std, e.g. "
                                            "0.269,0.261,0.276."),
    frames: int = typer.Option(8, "--frames", help="T, frames per view (the release's 8)."),
    views: Optional[int] = typer.Option(None, "--views", help="V, views per video (default: 4 training views, "
                                        "or 3 test clips x 1 centre crop)."),
    view_mode: str = typer.Option("auto", "--view-mode", help="train | test | auto (test when the split name "
                                  "holds test or val and not train)."),
    rate: int = typer.Option(16, "--rate", help="Sampling rate: frames between samples at --target-fps (16)."),
    target_fps: float = typer.Option(30.0, "--target-fps", help="Frame rate the sampling rate refers to (30)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the training views (same seed, same views)."),
    descriptions: Optional[Path] = typer.Option(None, "--descriptions", help="Description file (froster JSON, "
                                                "authors' {\"idx\": \"Name: description\"} JSON, or CSV "
                                                "class,description); P = 29 x descriptions per class."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    precision: str = typer.Option("auto", "--precision", help="auto (fp32 on cpu, bf16 autocast on cuda) | fp32 | "
                                  "bf16 | fp16."),
    batch_size: int = typer.Option(8, "--batch-size", help="Videos per teacher forward (each brings V x T frames)."),
    decode_threads: int = typer.Option(4, "--decode-threads", help="Threads decoding the next videos while the "
                                       "teacher runs."),
    block_rows: int = typer.Option(64, "--block-rows", help="Rows per chunk of every per-video array; one dask "
                                   "task per block."),
    workers: int = typer.Option(0, "--workers", help="Start a local dask cluster of N processes (0: one process)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Use the dask cluster at tcp://HOST:PORT."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store made with other settings."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar on stderr."),
) -> None:
    """Run the frozen CLIP teacher over V views x T frames of every video and over every class prompt; write a store.

    Resumable: rerun the same command after an interruption (even kill -9) and it continues; on a complete store it
    returns at once; other settings on an existing store are refused, naming each one (or --overwrite).

    Example: froster extract-teacher --manifest cache/k400-train.parquet --model ViT-B-16 --pretrained openai
    --out cache/k400.zarr --device cuda --batch-size 16
    """
    from froster.stages.extract_teacher import ExtractConfig, run

    def go():
        ann = None
        if manifest is None:
            if format is None:
                raise FrosterError("give --manifest FILE, or --format with --annotations/--video-root")
            if video_root is None:
                raise FrosterError(f"--video-root: format {format!r} needs the folder of the videos")
            ann = dict(format=format, video_root=video_root, annotations=annotations, split=split,
                       classes_file=classes, prompt_names_file=prompt_names)
        return run(ExtractConfig(
            out=out, manifest=manifest, annotations=ann, video_root=video_root if manifest is not None else None,
            split=split, model=model, pretrained=pretrained, checkpoint=checkpoint, quick_gelu=quick_gelu,
            allow_random_teacher=allow_random_teacher, image_mean=_floats(image_mean, "--image-mean"),
            image_std=_floats(image_std, "--image-std"), frames=frames, views=views, view_mode=view_mode, rate=rate,
            target_fps=target_fps, seed=seed, descriptions=descriptions, device=device, precision=precision,
            batch_size=batch_size, decode_threads=decode_threads, block_rows=block_rows, workers=workers,
            scheduler=scheduler, overwrite=overwrite, progress=progress,
        ))

    typer.echo(str(_call(go)))


@app.command("info", short_help="Print a feature store's counts, provenance, settings and failures. "
             "E.g. froster info cache/k400.zarr")
def info(
    store: Path = typer.Argument(..., help="Store directory written by extract-teacher, e.g. cache/k400.zarr."),
    max_failures: int = typer.Option(50, "--max-failures", help="Failed videos listed one per line (all are "
                                     "counted)."),
) -> None:
    """Print what a feature store holds: counts (videos, done, failed by status), the teacher's provenance, the
    sampling and prompt settings, and the failed videos with their reasons. Works on an unfinished store too.

    Example: froster info cache/k400.zarr
    """
    from froster.stages.info import InfoConfig, run

    _call(lambda: run(InfoConfig(store=store, max_failures=max_failures)))


# [train]
@app.command(
    "train",
    short_help="Train the student from a store's teacher targets (residual feature distillation). "
    "E.g. froster train --cache cache/k400.zarr --epochs 22 --batch-size 8 --grad-accum 8",
)
def train(
    cache: Optional[Path] = typer.Option(None, "--cache", help="Feature store written by extract-teacher (the "
                                         "training videos' views and teacher features). Required unless --resume."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<store name>/, or "
                                       "runs/<protocol stem>/<run>/ with --protocol)."),
    protocol: Optional[Path] = typer.Option(None, "--protocol", help="Protocol file (froster protocol): the run's "
                                            "vocabulary and training subset. Default: the whole store, its classes."),
    run_name: Optional[str] = typer.Option(None, "--run", help="Run of --protocol to train, or 'all' (each in "
                                           "turn, in OUT/<run>/)."),
    student: Optional[str] = typer.Option(None, "--student", help="clip (frame-wise, fully fine-tuned) | vclip "
                                          "(Open-VCLIP neighbour-frame attention; the paper's default)."),
    vclip_edge: Optional[str] = typer.Option(None, "--vclip-edge", help="vclip at the clip edges: zero (the "
                                             "release's zero-filled neighbour, default) | mask."),
    model: Optional[str] = typer.Option(None, "--model", help="Optional check: must equal the store's teacher "
                                        "model (the student starts from the teacher's weights)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="Optional check: must equal the store's "
                                             "teacher pretrained tag."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Optional check: must be the store's "
                                              "teacher weights file (compared by SHA-256)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="cached (the stored targets, default) | online "
                                          "(recompute them with the teacher each step, for comparison)."),
    video_root: Optional[Path] = typer.Option(None, "--video-root", help="Where the store's videos are now, when "
                                              "moved since extraction (size and mtime must still match)."),
    distance: Optional[str] = typer.Option(None, "--distance", help="Distillation distance: cosine (1 - cos, the "
                                           "release, default) | l2 (the paper's Eq. 7)."),
    distill: Optional[str] = typer.Option(None, "--distill", help="Table 4 variant: none | fd (no head) | fd-mlp "
                                          "(MLP projector) | rfd (residual head, default)."),
    distill_on: Optional[str] = typer.Option(None, "--distill-on", help="vision | text | both (default)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Residual head's alpha (default 0.1, paper A.1)."),
    beta: Optional[float] = typer.Option(None, "--beta", help="Distillation weight beta (default 2, paper A.1)."),
    zero_init: Optional[bool] = typer.Option(None, "--zero-init/--no-zero-init", help="Start the residual heads' "
                                             "W2 at zero (default; --no-zero-init is the paper's Table 5)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default 12, base-to-novel; the "
                                         "cross-dataset recipe uses 22)."),
    warmup_epochs: Optional[float] = typer.Option(None, "--warmup-epochs", help="Linear warmup epochs from "
                                                  "lr x lr-factor (default 2, paper A.1)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Clips per micro-batch (default 8: the "
                                             "release's 64 over 8 GPUs)."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step "
                                             "(default 1); keeps the global batch on fewer devices."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Base learning rate (default 3.33e-6, paper A.1)."),
    lr_factor: Optional[float] = typer.Option(None, "--lr-factor", help="Warmup start and cosine end as a "
                                              "fraction of --lr (default 0.01: the release's 3.33e-8)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="AdamW weight decay (default 0.01; "
                                                 "none for biases, 1-D parameters, logit_scale)."),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Gradient L2-norm clip (default 1.0)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of data order, views, templates and head init "
                                       "(default 0)."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Also checkpoint every N steps (default "
                                             "0: at the end of each epoch only)."),
    average_from: Optional[int] = typer.Option(None, "--average-from", help="First epoch of the weight average "
                                               "written as averaged.pt (default 2)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory from its "
                                          "last checkpoint (rerunning the same command does too)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start a new run from this checkpoint's "
                                             "weights (not its optimizer or step)."),
    val_cache: Optional[Path] = typer.Option(None, "--val-cache", help="Store to report top-1 on after each epoch "
                                             "(its own classes), in metrics.jsonl."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="DataLoader processes decoding videos "
                                              "(default 0: in the training process)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default) | cuda."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto (fp32 on cpu, bf16 autocast on cuda; "
                                            "default) | fp32 | bf16 | fp16 (with a gradient scaler)."),
    grad_checkpointing: Optional[bool] = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing",
                                                      help="Recompute each transformer block's activations in the "
                                                      "backward pass: less memory, more compute, same results "
                                                      "(default off)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, build everything, run one optimizer step on "
                                 "the first batch and print its peak memory (per process under torchrun); write "
                                 "nothing."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar on stderr."),
) -> None:
    """Train the student (clip or vclip) from the teacher's weights with CE plus residual feature distillation
    against the stored teacher targets; write a run directory: config.json, metrics.jsonl, checkpoints/,
    final.pt, averaged.pt. Prints the run directory.

    Options left out take the defaults shown (the paper's A.1 and the authors' release); with --resume, options
    left out keep the run's own values. Refused before any step: an incomplete store, a changed video, a teacher
    other than the store's, a vocabulary that is not the store's classes, an empty training subset.

    Example: froster train --cache cache/hmdb51_train1.zarr --protocol protocols/hmdb51_b2n.toml --run all
    --batch-size 4 --grad-accum 8

    Memory check first: froster train --cache cache/k400.zarr --batch-size 8 --device cuda --dry-run
    """
    from froster.stages.train import TrainConfig, run

    given = dict(
        cache=cache, out=out, protocol=protocol, run=run_name, student=student, vclip_edge=vclip_edge, model=model,
        pretrained=pretrained, checkpoint=checkpoint, teacher=teacher, video_root=video_root, distance=distance,
        distill=distill, distill_on=distill_on, alpha=alpha, beta=beta, zero_init=zero_init, epochs=epochs,
        warmup_epochs=warmup_epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr, lr_factor=lr_factor,
        weight_decay=weight_decay, grad_clip=grad_clip, seed=seed, save_every=save_every, average_from=average_from,
        resume=resume, init_from=init_from, val_cache=val_cache, num_workers=num_workers, device=device,
        precision=precision, grad_checkpointing=grad_checkpointing,
    )
    # Only the options given reach the config: its defaults (each citing its source) are the single place they live.
    config = lambda: TrainConfig(progress=progress, dry_run=dry_run,  # noqa: E731
                                 **{k: v for k, v in given.items() if v is not None})
    # The run directory, or with --dry-run the step's memory line (a DryRun, one per process under torchrun).
    typer.echo(str(_call(lambda: run(config()))))


# [export]
@app.command(
    "export",
    short_help="Write a trained student as an open_clip local-dir model (frame-wise CLIP). "
    "E.g. froster export runs/k400 --out exports/froster-k400",
)
def export(
    run_dir: Path = typer.Argument(..., help="Run directory of froster train (or one of its checkpoint files)."),
    out: Path = typer.Option(..., "--out", help="Folder to write: open_clip_config.json, "
                             "open_clip_model.safetensors, froster_export.json."),
    checkpoint: str = typer.Option("auto", "--checkpoint", help="auto (averaged.pt if present, else final.pt) | "
                                   "averaged | last (final.pt)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
) -> None:
    """Write the student of a run (averaged weights if present, else the last epoch's) as an open_clip local folder
    that open_clip.create_model("local-dir:OUT") loads, and that extract-teacher and evaluate accept as
    --model local-dir:OUT. Prints the folder.

    The export is frame-wise CLIP: vclip's neighbour-frame attention has no parameters and is not representable in
    open_clip, so a vclip student is exported as frame-wise CLIP (the log says so).

    Example: froster export runs/k400 --out exports/froster-k400
    """
    from froster.stages.export import ExportConfig, run

    typer.echo(str(_call(lambda: run(ExportConfig(run=run_dir, out=out, checkpoint=checkpoint,
                                                  overwrite=overwrite)))))


# [evaluate]
def _key_paths(values: Optional[list[str]], option: str) -> tuple[tuple[str, Path], ...]:
    """``["KEY=PATH", ...]`` -> ((KEY, PATH), ...); a value without '=' is a user error naming the option."""
    out = []
    for v in values or []:
        key, sep, path = v.partition("=")
        if not sep or not key.strip() or not path.strip():
            raise FrosterError(f"{option}: expected KEY=PATH, got {v!r}")
        out.append((key.strip(), Path(path.strip())))
    return tuple(out)


@app.command(
    "evaluate",
    short_help="Score frozen teacher, tuned model and ensemble on a protocol; write tables. "
    "E.g. froster evaluate --protocol base2novel --device cuda",
)
def evaluate(
    protocol: Optional[list[str]] = typer.Option(None, "--protocol", metavar="FILE|NAME", help="Protocol file, or the name of a file under "
                                                 "./protocols/ (base2novel -> protocols/base2novel.toml). Repeat for "
                                                 "one table over several protocols of one kind (Table 1 over K400, "
                                                 "HMDB, UCF, SSv2)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Without a protocol: one test-view store, evaluated "
                                         "over its own class list (needs --checkpoint)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="With --cache: the checkpoint to evaluate "
                                              "(final.pt, averaged.pt or any epoch file of froster train)."),
    store: Optional[list[str]] = typer.Option(None, "--store", metavar="KEY=PATH", help="KEY=PATH: the store of the protocol's dataset "
                                              "KEY ([datasets.KEY]); repeatable. Default: STORES/KEY.zarr, else the "
                                              "test-view store in STORES made from that manifest."),
    stores: Path = typer.Option(Path("cache"), "--stores", help="Folder holding the stores of the protocol's "
                                "datasets."),
    runs: Optional[Path] = typer.Option(None, "--runs", help="Folder of the protocol's run directories "
                                        "(RUNS/NAME/final.pt or averaged.pt); default runs/<protocol file stem>."),
    run_checkpoint: Optional[list[str]] = typer.Option(None, "--run-checkpoint", metavar="RUN=FILE", help="RUN=FILE: the checkpoint of "
                                                       "protocol run RUN instead of the one in its run directory; "
                                                       "repeatable."),
    out: Optional[Path] = typer.Option(None, "--out", help="Result directory (default reports/<protocol stem> or "
                                       "reports/eval-<store>)."),
    video_root: Optional[Path] = typer.Option(None, "--video-root", help="Where the videos are now, when moved since "
                                              "the stores were made."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda: where the tuned model runs."),
    precision: str = typer.Option("auto", "--precision", help="auto (fp32 on cpu, bf16 autocast on cuda) | fp32 | "
                                  "bf16 | fp16."),
    batch_size: int = typer.Option(8, "--batch-size", help="Videos per forward of the tuned model (each 3 clips x T "
                                   "frames)."),
    workers: int = typer.Option(2, "--workers", help="DataLoader processes decoding videos (0: decode in this "
                                "process)."),
    text_batch: int = typer.Option(1024, "--text-batch", help="Prompts per text-tower call for the tuned model's "
                                   "class embeddings."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar on stderr."),
) -> None:
    """Evaluate every run of a protocol on every evaluation set it names, with the checkpoint it names (last epoch
    for base-to-novel, the weight average for cross-dataset): the frozen teacher (the stores' features), the tuned
    model (its towers over the stored test views, 3 clips x 1 crop) and their ensemble (the sum of the two cosine
    scores). Writes predictions, metrics, table.md (the paper's Table 1 or 2, printed here), chart.png and
    config.json into the result directory.

    Example: froster evaluate --protocol protocols/k400_cross.toml --stores cache --device cuda
    """
    from froster.stages.evaluate import EvaluateConfig, run

    def go():
        return run(EvaluateConfig(
            protocols=tuple(protocol or ()), cache=cache, checkpoint=checkpoint,
            stores=_key_paths(store, "--store"), stores_dir=stores, runs_dir=runs,
            run_checkpoints=_key_paths(run_checkpoint, "--run-checkpoint"), out=out, video_root=video_root,
            device=device, precision=precision, batch_size=batch_size, workers=workers, text_batch=text_batch,
            progress=progress,
        ))

    result = _call(go)
    typer.echo((result / "table.md").read_text(encoding="utf-8"), nl=False)
    typer.echo(f"results: {result}")


# [distance]
@app.command(
    "distance",
    short_help="Semantic distance between two vocabularies from the teacher's text features. "
    "E.g. froster distance --source cache/k400.zarr --target classes/ucf101.txt",
)
def distance(
    source: Path = typer.Option(..., "--source", help="Training vocabulary: a class-name file (txt / JSON / CSV) or "
                                "a store directory (its class list)."),
    target: Path = typer.Option(..., "--target", help="Evaluation vocabulary, compared against --source; a class-name "
                                "file or a store."),
    model: Optional[str] = typer.Option(None, "--model", help="Teacher whose text tower embeds the names: an open_clip "
                                        "name or local-dir:PATH (default: the stores' teacher; needed when neither "
                                        "side is a store)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="open_clip pretrained tag of --model, e.g. "
                                             "openai."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Local state dict for --model instead of "
                                              "--pretrained."),
    remove_overlap: bool = typer.Option(False, "--remove-overlap", help="Leave out target classes that are also "
                                        "source classes (names equal after removing case, punctuation and spaces)."),
    pairs: int = typer.Option(5, "--pairs", help="Closest (target, source) pairs to list."),
    out: Optional[Path] = typer.Option(None, "--out", help="Result directory (default "
                                       "reports/distance/<source>__<target>)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda: where the text tower runs."),
) -> None:
    """Embed the two vocabularies' class names alone (no template) with the teacher's text tower and print the
    authors' measure (mean over target classes of the best cosine similarity to a source class; higher is closer),
    the symmetric Hausdorff distance on 1 - cos (lower is closer) and the closest pairs. The paper's Fig. 1 and 5.

    Example: froster distance --source classes/k400.txt --target classes/k600_new.txt --model ViT-B-16
    --pretrained openai
    """
    from froster.stages.distance import DistanceConfig, run

    result = _call(lambda: run(DistanceConfig(
        source=source, target=target, model=model, pretrained=pretrained, checkpoint=checkpoint,
        remove_overlap=remove_overlap, pairs=pairs, out=out, device=device,
    )))
    typer.echo((result / "distance.md").read_text(encoding="utf-8"), nl=False)
    typer.echo(f"results: {result}")


# [demo]
@app.command(
    "demo",
    short_help="Run every stage on the built-in toy world; print the base-to-novel table. "
    "E.g. froster demo --quick",
)
def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for the worlds, descriptions, manifests, "
                             "protocols, stores, runs and reports (the table: OUT/report/table.md)."),
    quick: bool = typer.Option(False, "--quick", help="Small world, quick teacher, one seed, a few steps: every "
                               "stage in about half a minute (the test suite's variant; its numbers mean nothing)."),
    ablations: bool = typer.Option(False, "--ablations", help="Also train and table the paper's Table 4 (fd, "
                                   "fd-mlp, rfd on vision / text / both) and Tables 5-6 (no zero-init, alpha 0.05 "
                                   "and 0.2): 7 more runs per seed."),
    seeds: str = typer.Option("1,2,3", "--seeds", help="Base-to-novel seed runs, comma-separated (--quick keeps the "
                              "first)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the world's clips and of the toy teacher's pretraining."),
    cross_dataset: bool = typer.Option(True, "--cross-dataset/--no-cross-dataset", help="Also evaluate world A's "
                                       "runs on world B (other objects, sizes and background)."),
    teacher_dir: Optional[Path] = typer.Option(None, "--teacher-dir", help="The toy teacher's open_clip local-dir "
                                               "folder (default cache/toy-teacher-<default|quick>-seed<SEED>); "
                                               "reused when its recipe and seed match."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda: where every stage runs."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over: delete the demo's outputs under --out and the "
                               "teacher folder first (a full, timed run)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the stages' progress bars on stderr."),
) -> None:
    """Make the synthetic world (clips of one object doing one motion; base classes to train on, novel classes with
    new motions and with objects no training clip shows), pretrain a toy CLIP teacher on its single frames (once,
    under cache/), then run the pipeline through each stage: augment-text --offline, manifest, protocol, extract-
    teacher, train (fine-tuned with --distill none, and FROSTER with rfd, student vclip, per seed), evaluate. Prints
    the table: frozen teacher, fine-tuned, FROSTER and the ensemble, base / novel / HM top-1 (mean ± std over seeds).
    Outputs made earlier with the same settings are reused.

    Example: froster demo --quick --out /tmp/froster-demo
    """
    from froster.stages.demo import DemoConfig, run

    def go():
        return run(DemoConfig(
            out=out, teacher_dir=teacher_dir, seed=seed, quick=quick, ablations=ablations,
            seeds=_ints(seeds, "--seeds") or (), cross_dataset=cross_dataset, device=device, fresh=fresh,
            progress=progress,
        ))

    result = _call(go)
    typer.echo((result / "table.md").read_text(encoding="utf-8"), nl=False)
    typer.echo(f"results: {result}")


def main() -> None:
    app()


if __name__ == "__main__":  # `torchrun -m froster.cli train ...` and `python -m froster.cli`
    main()
