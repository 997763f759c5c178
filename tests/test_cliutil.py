"""What every console script shares: exit codes and Ctrl-C."""

from __future__ import annotations

import contextlib
import sys

import pytest
import typer

from beatsight.common.cliutil import run_app


@pytest.mark.parametrize("exit_code", [0, 3])
def test_console_scripts_exit_with_the_commands_code(exit_code: int, monkeypatch) -> None:
    """typer hands back `typer.Exit` codes (and 130 for Ctrl-C) outside standalone mode;
    run_app must pass them on, not exit 0."""
    app = typer.Typer()

    @app.command()
    def stop() -> None:
        raise typer.Exit(exit_code)

    @app.command()
    def other() -> None: ...

    monkeypatch.setattr(sys, "argv", ["prog", "stop"])
    with pytest.raises(SystemExit) if exit_code else contextlib.nullcontext() as exc:
        run_app(app)
    assert (exc.value.code if exit_code else 0) == exit_code


def test_ctrl_c_exits_130_with_a_word_not_a_traceback(monkeypatch, capsys) -> None:
    app = typer.Typer()

    @app.command()
    def work() -> None:
        raise KeyboardInterrupt

    @app.command()
    def other() -> None: ...

    monkeypatch.setattr(sys, "argv", ["prog", "work"])
    with pytest.raises(SystemExit) as exc:
        run_app(app)
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted"
