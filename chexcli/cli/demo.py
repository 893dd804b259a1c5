"""`chex demo`: the whole pipeline on synthetic chest X-rays, on a CPU, in minutes."""

from __future__ import annotations

from pathlib import Path

import typer

from chexcli.errors import ChexError


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="folder of the demo run folders"),
    quick: bool = typer.Option(False, "--quick", help="toy scale (under 2 minutes): checks the pipeline, not quality"),
    seed: int = typer.Option(0, "--seed", min=0, help="seed of the synthetic data and of training"),
) -> None:
    """Prepare synthetic X-rays, train a small ChEX through all four stages, evaluate it against
    trivial baselines, run `chex predict` on test images, and print a summary.

    Exit code 1 when the trained model does not beat the baselines (full run only).

    Examples:

      chex demo

      chex demo --quick --out /tmp/demo
    """
    from chexcli.demo.run import run_demo

    result = run_demo(out, quick=quick, seed=seed, echo=lambda m: typer.echo(m, err=True))
    if not result.passed and not quick:
        failed = [c.name for c in result.checks if c.enforced and not c.passed]
        raise ChexError(f"the demo model did not beat the baselines: {', '.join(failed)} "
                        f"(see {result.run_dir / 'summary.txt'})", exit_code=1)
