"""`chex serve`: a local web page to ask ChEX about X-rays (upload, prompt or mark boxes, see the answer)."""

from __future__ import annotations

import inspect
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from chexcli.errors import ChexError

EXAMPLES = """
Examples:

  chex serve --model bundles/chex          # then open http://127.0.0.1:7860

  chex serve --model bundles/chex --dtype int8 --port 8080

  CHEX_SERVE_AUTH=alice:s3cret chex serve --model bundles/chex --host 0.0.0.0

  chex serve --model bundles/chex --allowed-host chex.example.org   # behind a TLS proxy
"""


def _interrupt(signum, frame):  # SIGTERM stops the server like Ctrl+C (uploads are still removed)
    raise KeyboardInterrupt


def serve(
    model: Path = typer.Option(..., "--model", "-m", help="Model bundle folder."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on. Anything but localhost lets other machines in: "
                                  "use it with --auth."),
    port: int = typer.Option(7860, "--port", min=0, max=65535, help="Port (0: any free port)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (exact), or float16 / int8 weights for the "
                              "sentence generator (CPU, faster)."),
    auth: Optional[str] = typer.Option(None, "--auth", envvar="CHEX_SERVE_AUTH", show_envvar=True,
                                       help="user:password that the browser must give (prefer the environment "
                                            "variable: command lines are visible to other users)."),
    allowed_host: list[str] = typer.Option([], "--allowed-host", metavar="NAME",
                                           help="Another name the app may be reached by (a proxy's public "
                                                "name); repeatable. Loopback names always work."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Cap sentence length."),
) -> None:
    """Open a local web page to ask ChEX about X-rays.

    Upload an X-ray (PNG, JPEG, DICOM) or pick an example, type prompts and/or mark boxes, press Explain.

    See the boxes, a sentence per region and, on request, a full report; download the annotated PNG and JSON.

    The model is loaded once; uploads stay in a temporary folder that is removed on exit.
    """
    try:
        from chexcli.serve.server import ChexServer, is_loopback, parse_auth
    except ImportError as err:
        raise ChexError(f"chex serve needs the serve extra ({err.name} is missing): "
                        "pip install 'chexcli[serve]'") from None
    from chexcli.devices import resolve_device
    from chexcli.serve.session import ServeSession

    if dtype not in ("float32", "float16", "int8"):
        raise ChexError(f"unknown --dtype {dtype!r}; use float32, float16 or int8")
    credentials = parse_auth(auth)
    if not model.is_dir():
        raise ChexError(f"--model {model}: no such bundle folder")
    if not is_loopback(host):
        typer.echo(f"warning: --host {host} makes the app reachable from other machines"
                   + ("" if credentials else "; anyone who can reach it can use it: add --auth user:password"),
                   err=True)
    server = ChexServer(host, port, credentials, allowed_host)  # fail fast on a port in use, before loading
    session = None
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        dev = resolve_device(device)
        typer.echo(f"loading {model} ...", err=True)
        session = ServeSession.load(model, device=str(dev), dtype=dtype, max_new_tokens=max_new_tokens)
        server.attach(session)
        typer.echo(f"chex serve: open {server.url} in a browser (Ctrl+C to stop)", err=True)
        sys.stderr.flush()
        server.run()  # uvicorn turns Ctrl+C / SIGTERM into a graceful stop, then raises the signal again
    except KeyboardInterrupt:  # that signal, or Ctrl+C while the model loads
        pass
    finally:
        server.close()
        if session is not None:
            session.close()
    typer.echo("stopped; uploads removed", err=True)


serve.__doc__ = inspect.cleandoc(serve.__doc__ or "") + "\n" + EXAMPLES
