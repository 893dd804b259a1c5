"""The `chex` command line: one Typer app per command group."""
