"""Stage ``augment-text``: LLM-written action descriptions, made once, cached, read by stage one.

Reads a class-name file (txt one name per line, JSON ``{"idx": "name"}`` or CSV ``id,name``). Writes the description
file (format: ``froster.pipeline.descriptions``) and, beside it, ``<out>.progress.jsonl``: every answer as it arrives,
so a rerun after a crash or Ctrl-C asks only for what is missing (delete it to ask everything afresh). Training and
evaluation never touch the network; only this stage does, and ``--offline`` sends nothing.

    froster augment-text --classes k400_classes.txt --out descriptions/k400.json
    froster augment-text --classes ucf101.txt --out descriptions/ucf101.json --base-url http://localhost:8000/v1 \\
        --model Qwen/Qwen2.5-7B-Instruct
    froster augment-text --classes k400_classes.txt --out descriptions/k400.json --offline
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from froster.pipeline.descriptions import (
    CLASS_PLACEHOLDER,
    DEFAULT_INSTRUCTION,
    DEFAULT_MODEL,
    DEFAULT_SYSTEM,
    DescriptionFile,
    LLMSettings,
    describe_classes,
    offline_descriptions,
    write_descriptions,
)
from froster.pipeline.classnames import read_class_names
from froster.pipeline.errors import ConfigError, FrosterError

log = logging.getLogger(__name__)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class AugmentTextConfig:
    classes: Path  # class-name file: txt (one per line), JSON {"idx": "name"} or CSV id,name
    out: Path  # the description file to write (.json); progress goes to <out>.progress.jsonl beside it
    model: str = DEFAULT_MODEL  # chat model; "gpt-3.5-turbo" follows the paper's GPT-3.5
    instruction: str = DEFAULT_INSTRUCTION  # user message; {class} becomes the class's prompt name (paper's default)
    system: Optional[str] = DEFAULT_SYSTEM  # system message asking for one line of plain text; None sends none
    n_per_class: int = 1  # descriptions per class (the paper: 1); stage one builds 29 prompts per description
    base_url: Optional[str] = None  # any OpenAI-compatible server (vLLM, llama.cpp, Ollama); None: OpenAI
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key; the key itself is never stored
    concurrency: int = 8  # requests in flight at once
    timeout_s: float = 60.0  # read timeout per request (the client's default, 600 s, hides a stuck server)
    max_retries: int = 5  # the client's retries of 429 (honouring Retry-After), 5xx, timeouts, connection errors
    attempts: int = 3  # requests per description when the answer is unusable (malformed, empty, long, multi-line)
    max_chars: int = 400  # longest answer kept; the release's descriptions are under 300 characters
    offline: bool = False  # send nothing: each description is the class name in a sentence; the file says fallback

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", Path(self.classes))
        object.__setattr__(self, "out", Path(self.out))
        if self.out.suffix.lower() != ".json":
            raise ConfigError(f"out: expected a .json path, found {str(self.out)!r}")
        if not self.model.strip():
            raise ConfigError("model: expected a model name, found an empty string")
        if CLASS_PLACEHOLDER not in self.instruction:
            raise ConfigError(
                f"instruction: expected a {CLASS_PLACEHOLDER} placeholder for the class name, "
                f"found {self.instruction!r}"
            )
        if self.system is not None and not self.system.strip():
            object.__setattr__(self, "system", None)
        for name in ("n_per_class", "concurrency", "attempts", "max_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, found {value!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"max_retries: expected an integer >= 0, found {self.max_retries!r}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s: expected seconds > 0, found {self.timeout_s!r}")
        if self.base_url is not None and not re.match(r"https?://", self.base_url):
            raise ConfigError(f"base_url: expected an http:// or https:// URL, found {self.base_url!r}")
        if not _ENV_NAME.fullmatch(self.api_key_env):
            raise ConfigError(f"api_key_env: expected an environment variable name, found {self.api_key_env!r}")

    @property
    def progress_path(self) -> Path:
        return self.out.with_name(self.out.name + ".progress.jsonl")


def run(config: AugmentTextConfig) -> Path:
    """Describe every class of ``config.classes``; write ``config.out``; return its path.

    Raises FrosterError after writing the file when classes are missing (rerunning asks for those only).
    """
    class_names = read_class_names(config.classes)

    if config.offline:
        write_descriptions(
            config.out,
            DescriptionFile(
                descriptions=offline_descriptions(class_names),
                model=None, instruction=None, system=None, fallback=True, n_per_class=1,
            ),
        )
        log.info("offline: %d classes described by their names (fallback: true); wrote %s",
                 len(class_names), config.out)
        return config.out

    api_key = os.environ.get(config.api_key_env, "")
    if not api_key and config.base_url is None:
        raise FrosterError(
            f"--api-key-env: the environment variable {config.api_key_env} is not set; put the key there, point "
            "--base-url at a server that needs none, or use --offline"
        )
    if not api_key:
        log.info("%s is not set; sending a placeholder key to %s", config.api_key_env, config.base_url)
    settings = LLMSettings(
        model=config.model, base_url=config.base_url, api_key=api_key,
        timeout_s=config.timeout_s, max_retries=config.max_retries,
    )

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("describing classes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar, _quiet_http_logs():
        task = bar.add_task("describe", total=len(class_names) * config.n_per_class)
        result = describe_classes(
            class_names, settings,
            instruction=config.instruction, system=config.system,
            n=config.n_per_class, concurrency=config.concurrency, attempts=config.attempts,
            max_chars=config.max_chars, progress_path=config.progress_path,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )

    write_descriptions(
        config.out,
        DescriptionFile(
            descriptions=result.descriptions, model=config.model, instruction=config.instruction,
            system=config.system, fallback=False, n_per_class=config.n_per_class, missing=result.missing,
        ),
    )
    log.info(
        "described %d of %d classes (%d descriptions asked, %d from %s), missing %d, retried %d requests; wrote %s",
        len(result.descriptions), len(class_names), result.asked, result.resumed, config.progress_path.name,
        len(result.missing), result.retried, config.out,
    )
    if result.missing:
        shown = ", ".join(repr(c) for c in result.missing[:5]) + (" ..." if len(result.missing) > 5 else "")
        raise FrosterError(
            f"{config.out}: {len(result.missing)} of {len(class_names)} classes have no usable description ({shown}); "
            "the file lists them under \"missing\"; rerun the same command to ask for those only"
        )
    return config.out


@contextlib.contextmanager
def _quiet_http_logs() -> Iterator[None]:
    """The HTTP libraries log every request at INFO; keep them out of the progress display unless debugging."""
    names = ("httpx", "httpx2", "httpcore", "httpcore2")
    saved = {n: logging.getLogger(n).level for n in names}
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for n in names:
            logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
