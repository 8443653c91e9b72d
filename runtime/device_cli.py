"""The `ember` command of a runtime bundle (`ember bundle`, bundle.py): the runtime's commands only (run, chat,
verify, bench, eval, serve), on the TVM runtime alone. The full `ember` (cli.py) adds compile, inspect and models."""
from __future__ import annotations

import click

from . import commands

COMMANDS = ("run", "chat", "verify", "bench", "eval", "serve")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """ember runtime bundle: run compiled artifacts with the TVM runtime alone (compile them with the full ember)."""


for _name in COMMANDS:
    cli.add_command(commands.COMMANDS[_name], _name)


def main() -> None:
    cli(prog_name="ember")


if __name__ == "__main__":
    main()
