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

# [protocol]

# [augment-text]

# [extract-teacher]

# [info]

# [train]

# [export]

# [evaluate]

# [distance]

# [demo]


def main() -> None:
    app()


if __name__ == "__main__":  # `torchrun -m froster.cli train ...` and `python -m froster.cli`
    main()
