"""Entry point of the `chex` command.

Each command group lives in its own module and is registered here. A
`ChexError` raised anywhere below becomes a one-line message on stderr and
its exit code, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from chexcli.errors import ChexError

app = typer.Typer(
    name="chex",
    help="ChEX chest X-ray explainer: boxes and sentences for text or box prompts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Attach the command groups (imported lazily so `chex --help` stays fast)."""
    # Each group module adds itself here with one line.
    from chexcli.cli import predict; app.command("predict")(predict.predict)  # noqa: E702
    from chexcli.cli import data; app.add_typer(data.app, name="data")  # noqa: E702
    from chexcli.cli import evaluate; app.command("evaluate")(evaluate.evaluate)  # noqa: E702
    from chexcli.cli import weights; app.add_typer(weights.app, name="weights")  # noqa: E702


_register()


def run() -> None:
    """Console-script entry: run the app and turn `ChexError` into exit codes."""
    try:
        app(standalone_mode=False)
    except ChexError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except (typer.Exit,) as ex:
        sys.exit(ex.exit_code)
    except Exception as ex:  # click usage errors carry their own exit code
        import click

        if isinstance(ex, click.exceptions.ClickException):
            ex.show()
            sys.exit(ex.exit_code)
        raise
