"""What every console script shares: one-line errors instead of tracebacks, logging set-up."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from .errors import BeatSightError

err_console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    """Our own messages at INFO; libraries (Flower, Ray, alembic) only from WARNING on."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("beatsight").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("flwr").propagate = False  # Flower prints through its own handler


def run_app(app: typer.Typer) -> None:
    """Run a typer app; a BeatSightError becomes `error: <message>` on stderr and exit code 2,
    Ctrl-C `interrupted` and 130. Outside standalone mode typer turns Ctrl-C and `typer.Exit`
    into a returned exit code, which is easy to drop (it was: Ctrl-C exited 0)."""
    setup_logging()
    try:
        code = app(standalone_mode=False)
    except BeatSightError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except Exception as exc:  # click usage errors carry their own formatting
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if code == 130:
        err_console.print("interrupted")
    if isinstance(code, int) and code:
        sys.exit(code)
