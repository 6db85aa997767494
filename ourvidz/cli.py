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
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per callback is noise


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


DATA_DIR = Path(".ourvidz")


@app.command()
def token(user_id: Annotated[str, typer.Option(help="The user's UUID (default: the instance's own user).")] = "",
          data_dir: Annotated[Path, typer.Option(help="The embedded instance's data folder.")] = DATA_DIR,
          secret: Annotated[str, typer.Option(envvar="OURVIDZ_JWT_SECRET",
                                              help="An HS256 JWT secret (instead of the data folder's).")] = "",
          days: int = 30) -> None:
    """Print a token for a user of this instance, as Supabase issues them.

    Example: ourvidz token --user-id 6f1c2b9e-0000-4000-8000-000000000001 --data-dir ./.ourvidz
    """
    from edge_api.auth import mint_token
    from ourvidz.embedded import DataDir

    keys = None if secret else DataDir(data_dir).secrets()
    user = uuid.UUID(user_id) if user_id else uuid.UUID(keys.user_id if keys else str(uuid.uuid4()))
    typer.echo(mint_token(secret or (keys.jwt_secret if keys else ""), user, ttl=days * 86400))


@app.command()
def up(host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
       port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
       data_dir: Annotated[Path, typer.Option(help="Where jobs, files, models and secrets are kept.")] = DATA_DIR,
       verbose: bool = False) -> None:
    """Run everything on this machine: the API on SQLite, local storage, and a CPU worker with tiny models.

    Example: ourvidz up --port 8000   (then open the printed URL; Ctrl-C stops it, a restart resumes it)
    """
    from ourvidz.embedded import run_up

    _logging(verbose)
    try:
        asyncio.run(run_up(host, port, data_dir))
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled; everything is already stopped
        typer.echo("Stopped.")


@app.command()
def submit(job_type: Annotated[str, typer.Argument(help="One of the 10 job types, e.g. sdxl_image_fast.")],
           prompt: Annotated[str, typer.Argument(help="What to generate.")],
           wait: Annotated[bool, typer.Option(help="Follow the job to its end with a progress bar.")] = False,
           negative_prompt: Annotated[str | None, typer.Option(help="What to avoid (SDXL only).")] = None,
           seed: Annotated[int | None, typer.Option(help="Reproduce an earlier result.")] = None,
           api_url: Annotated[str, typer.Option(envvar="OURVIDZ_API_URL")] = "http://127.0.0.1:8000",
           token: Annotated[str, typer.Option(envvar="OURVIDZ_TOKEN", help="Default: the data folder's user.")] = "",
           data_dir: Annotated[Path, typer.Option(help="The embedded instance's data folder.")] = DATA_DIR) -> None:
    """Submit a job to a running API; with --wait, follow it and print its assets.

    Example: ourvidz submit sdxl_image_fast "a red fox in the snow" --wait
    """
    from ourvidz.client import run_submit

    code = asyncio.run(run_submit(api_url, token or _local_token(data_dir), job_type, prompt, wait,
                                  negative_prompt, seed))
    raise typer.Exit(code)


@app.command()
def jobs(api_url: Annotated[str, typer.Option(envvar="OURVIDZ_API_URL")] = "http://127.0.0.1:8000",
         token: Annotated[str, typer.Option(envvar="OURVIDZ_TOKEN", help="Default: the data folder's user.")] = "",
         data_dir: Annotated[Path, typer.Option(help="The embedded instance's data folder.")] = DATA_DIR,
         limit: int = 20) -> None:
    """List your recent jobs with their status and progress.

    Example: ourvidz jobs --limit 10
    """
    from ourvidz.client import run_jobs

    raise typer.Exit(asyncio.run(run_jobs(api_url, token or _local_token(data_dir), limit)))


def _local_token(data_dir: Path) -> str:
    from edge_api.auth import mint_token
    from ourvidz.embedded import DataDir

    if not (data_dir / "secrets.json").exists():
        raise typer.BadParameter(f"no instance in {data_dir}: give --token, or run `ourvidz up` first")
    keys = DataDir(data_dir).secrets()
    return mint_token(keys.jwt_secret, uuid.UUID(keys.user_id), ttl=3600)


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
