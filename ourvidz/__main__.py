"""`python -m ourvidz …` is the `ourvidz` command."""

from ourvidz.cli import app

app()
