"""The `ourvidz` command line."""

import typer

app = typer.Typer(no_args_is_help=True, help="ourvidz: generation jobs for AI images and videos.")
