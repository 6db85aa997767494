"""The `ourvidz` command line: run the API, a worker, migrations; mint tokens; build checkpoints.

Every command imports what it needs when it runs, so `ourvidz --help` is instant and the API's
commands work without torch installed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer

from ourvidz.instance import DEFAULT_DIR

if TYPE_CHECKING:
    from ourvidz.embedded import Secrets

DEFAULT_API_URL = "http://127.0.0.1:8000"

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="ourvidz: generation jobs for AI images and videos (SDXL, Wan 2.1, Qwen).")


Verbose = Annotated[bool, typer.Option("--verbose", help="Log debug messages and every request.")]
DataDirOption = Annotated[Path | None, typer.Option(
    "--data-dir", help="The embedded instance's data folder (default: the nearest .ourvidz here or above).")]
ApiUrl = Annotated[str | None, typer.Option(
    envvar="OURVIDZ_API_URL", help="The API (default: where the instance answers, else http://127.0.0.1:8000).")]
Token = Annotated[str, typer.Option(envvar="OURVIDZ_TOKEN", help="A bearer token (default: the instance's user).")]


def _fail(message: object) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(1)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per callback is noise


@app.command()
def api(host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
        verbose: Verbose = False) -> None:
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
           verbose: Verbose = False) -> None:
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
def token(user_id: Annotated[str, typer.Option(help="The user's UUID (default: the instance's own user).")] = "",
          data_dir: DataDirOption = None,
          secret: Annotated[str, typer.Option(envvar="OURVIDZ_JWT_SECRET",
                                              help="An HS256 JWT secret (instead of the data folder's).")] = "",
          days: Annotated[int, typer.Option(help="How long the token is valid, in days.")] = 30) -> None:
    """Print a token for a user of this instance, as Supabase issues them.

    Example: ourvidz token --user-id 6f1c2b9e-0000-4000-8000-000000000001 --data-dir ./.ourvidz
    """
    from edge_api.auth import mint_token

    if secret:
        typer.echo(mint_token(secret, uuid.UUID(user_id) if user_id else uuid.uuid4(), ttl=days * 86400))
        return
    keys = _secrets(data_dir)
    typer.echo(mint_token(keys.jwt_secret, uuid.UUID(user_id or keys.user_id), ttl=days * 86400))


@app.command()
def up(host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
       port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
       data_dir: Annotated[Path, typer.Option(help="Where jobs, files, models and secrets are kept.")] = DEFAULT_DIR,
       verbose: Verbose = False) -> None:
    """Run everything on this machine: the API on SQLite, local storage, and a CPU worker with tiny models.

    Example: ourvidz up --port 8000   (then open the printed URL; Ctrl-C stops it, a restart resumes it)
    """
    from ourvidz.embedded import run_up
    from ourvidz.instance import AlreadyRunning, PortBusy

    _logging(verbose)
    try:
        asyncio.run(run_up(host, port, data_dir))
    except (AlreadyRunning, PortBusy) as exc:
        raise _fail(exc) from None
    typer.echo("Stopped.")


@app.command()
def submit(job_type: Annotated[str, typer.Argument(help="One of the 10 job types, e.g. sdxl_image_fast.")],
           prompt: Annotated[str, typer.Argument(help="What to generate.")],
           wait: Annotated[bool, typer.Option(help="Follow the job to its end with a progress bar.")] = False,
           negative_prompt: Annotated[str | None, typer.Option(help="What to avoid (SDXL only).")] = None,
           seed: Annotated[int | None, typer.Option(help="Reproduce an earlier result.")] = None,
           api_url: ApiUrl = None, token: Token = "", data_dir: DataDirOption = None) -> None:
    """Submit a job to a running API; with --wait, follow it and print its assets.

    Example: ourvidz submit sdxl_image_fast "a red fox in the snow" --wait
    """
    from ourvidz.client import run_submit

    url, bearer = _endpoint(api_url, token, data_dir)
    raise typer.Exit(asyncio.run(run_submit(url, bearer, job_type, prompt, wait, negative_prompt, seed)))


@app.command()
def jobs(api_url: ApiUrl = None, token: Token = "", data_dir: DataDirOption = None,
         limit: Annotated[int, typer.Option(help="How many jobs to list, newest first (1-100).")] = 20) -> None:
    """List your recent jobs with their status and progress.

    Example: ourvidz jobs --limit 10
    """
    from ourvidz.client import run_jobs

    url, bearer = _endpoint(api_url, token, data_dir)
    raise typer.Exit(asyncio.run(run_jobs(url, bearer, limit)))


def _secrets(data_dir: Path | None) -> Secrets:
    """The instance's secrets, read (never created: only `up` makes an instance)."""
    from ourvidz.embedded import DataDir
    from ourvidz.instance import NoInstance, find_data_dir

    try:
        return DataDir(data_dir or find_data_dir()).secrets()
    except NoInstance as exc:
        raise _fail(exc) from None


def _endpoint(api_url: str | None, token: str, data_dir: Path | None) -> tuple[str, str]:
    """Where to send requests and with which token: given, or the instance's (its URL, its user)."""
    from edge_api.auth import mint_token
    from ourvidz.instance import NoInstance, find_data_dir, read_running

    if api_url and token:
        return api_url, token
    try:
        folder = data_dir or find_data_dir()
    except NoInstance as exc:
        if token:
            return api_url or DEFAULT_API_URL, token
        raise _fail(exc) from None
    running = read_running(folder)
    url = api_url or (running.url if running else DEFAULT_API_URL)
    if token:
        return url, token
    keys = _secrets(folder)
    return url, mint_token(keys.jwt_secret, uuid.UUID(keys.user_id), ttl=3600)


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
