"""`python -m chexcli` runs the `chex` command."""

from chexcli.cli.main import run

if __name__ == "__main__":
    run()
