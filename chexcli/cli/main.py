"""Entry point of the `chex` command.

Each command group lives in its own module and is registered here. A
`ChexError` raised anywhere below becomes a one-line message on stderr and
its exit code, never a traceback.
"""

from __future__ import annotations

import sys

from chexcli.runtime import configure_allocator

configure_allocator()  # before anything imports torch

import typer  # noqa: E402

from chexcli.errors import ChexError  # noqa: E402

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
    from chexcli.cli import serve; app.command("serve")(serve.serve)  # noqa: E702
    from chexcli.cli import train; app.command("train")(train.train)  # noqa: E702
    from chexcli.cli import demo; app.command("demo")(demo.demo)  # noqa: E702


_register()


def _is_usage_error(ex: BaseException) -> bool:
    """A click usage error (or any ClickException), whichever copy of click raised it.

    typer < 0.29 raises `click.exceptions.ClickException`; typer >= 0.29 ships its own
    copy of click (`typer._click`) whose exceptions are not subclasses of click's. Both
    carry an integer `exit_code` and a `show()` that prints click's usual message.
    """
    return isinstance(getattr(ex, "exit_code", None), int) and callable(getattr(ex, "show", None))


def run(args: list[str] | None = None) -> None:
    """Console-script entry: run the app, turn `ChexError` and usage errors into one message and an exit code.

    Exit codes: 0 success, 1 failure while working, 2 bad input or usage, 130 interrupted.
    """
    try:
        # Without standalone mode the app raises usage errors to us and *returns* the code of
        # a `typer.Exit` (or of `ctx.exit`) instead of calling sys.exit itself.
        code = app(args=args, prog_name="chex", standalone_mode=False)
    except ChexError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as ex:
        if not _is_usage_error(ex):
            raise
        ex.show()
        sys.exit(ex.exit_code)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)
