"""The `ourvidz` command line: run the API, a worker, migrations; mint tokens; build checkpoints.

Every command imports what it needs when it runs, so `ourvidz --help` is instant and the API's
commands work without torch installed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Annotated, Literal, cast

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="ourvidz: generation jobs for AI images and videos (SDXL, Wan 2.1, Qwen).")


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def api(host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
        verbose: bool = False) -> None:
    """Serve the HTTP API, configured by OURVIDZ_* variables.

    Example: OURVIDZ_DATABASE_URL=postgresql://… OURVIDZ_REDIS_URL=redis://… ourvidz api --port 8000
    """
    import uvicorn

    from edge_api.app import create_app

    _logging(verbose)
    uvicorn.run(create_app(), host=host, port=port, log_level="info", access_log=verbose)


@app.command()
def worker(queues: Annotated[str, typer.Option(help="Queues to serve: sdxl, wan or both.")] = "sdxl,wan",
           burst: Annotated[bool, typer.Option(help="Stop once the queues are empty.")] = False,
           verbose: bool = False) -> None:
    """Run a GPU worker: claim jobs from the queues, generate, upload, call back.

    Example: OURVIDZ_REDIS_URL=redis://… OURVIDZ_API_URL=https://api… OURVIDZ_CALLBACK_SECRET=whsec_… \\
    ourvidz worker --queues sdxl,wan
    """
    from handler.main import run_worker
    from handler.settings import WorkerSettings

    _logging(verbose)
    settings = WorkerSettings(queues=queues)
    stats = asyncio.run(run_worker(settings, burst=burst))
    typer.echo(f"completed {stats.completed}, failed {stats.failed}, handed back {stats.handed_back}")


@app.command()
def migrate(database_url: Annotated[str, typer.Option(envvar="OURVIDZ_DATABASE_URL",
                                                      help="The Postgres to migrate.")]) -> None:
    """Apply supabase/migrations to a Postgres (Supabase's or any), once each.

    Example: ourvidz migrate --database-url postgresql://postgres:…@db.<project>.supabase.co:5432/postgres
    """
    from jobs.migrations import apply_migrations

    applied = asyncio.run(apply_migrations(database_url))
    typer.echo(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


@app.command()
def token(user_id: Annotated[str, typer.Option(help="The user's UUID.")] = "",
          secret: Annotated[str, typer.Option(envvar="OURVIDZ_JWT_SECRET", help="The HS256 JWT secret.")] = "",
          days: int = 30) -> None:
    """Print an HS256 token for a user, as Supabase issues them.

    Example: ourvidz token --user-id 6f1c… --secret "$OURVIDZ_JWT_SECRET"
    """
    from edge_api.auth import mint_token

    if not secret:
        raise typer.BadParameter("give --secret or set OURVIDZ_JWT_SECRET")
    user = uuid.UUID(user_id) if user_id else uuid.uuid4()
    typer.echo(mint_token(secret, user, ttl=days * 86400))


@app.command("make-checkpoints")
def make_checkpoints(size: Annotated[str, typer.Option(help="tiny (CPU tests) or full (real architectures).")] = "tiny",
                     out: Annotated[Path, typer.Option(help="Folder for sdxl/, wan/, qwen/.")] = Path(".checkpoints"),
                     ) -> None:
    """Build random-weight checkpoints in the real models' folder layouts.

    Example: ourvidz make-checkpoints --size tiny --out ./.checkpoints
    """
    from models.checkpoints import build_all

    if size not in ("tiny", "full"):
        raise typer.BadParameter("size must be tiny or full")
    paths = build_all(out, cast(Literal["tiny", "full"], size), progress=typer.echo)
    typer.echo(f"sdxl: {paths.sdxl}\nwan: {paths.wan}\nenhancer: {paths.enhancer}")


if __name__ == "__main__":
    app()
