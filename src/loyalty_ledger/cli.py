"""The `loyalty` command: serve, migrate and run."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import typer

from loyalty_ledger.ledger import migrate as migrations
from loyalty_ledger.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Loyalty ledger with expiring balances.")


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address [env LOYALTY_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env LOYALTY_PORT].")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL [env LOYALTY_DATABASE_URL].")
    ] = None,
    clock: Annotated[
        str | None, typer.Option(help="'system' or 'test' [env LOYALTY_CLOCK].")
    ] = None,
) -> None:
    """Serve the gRPC API until SIGTERM/SIGINT."""
    from loyalty_ledger.server import serve as run_server

    settings = _settings(host=host, port=port, database_url=database_url, clock=clock)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # APScheduler logs every job it adds and runs at INFO: our runs log their own summary.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    asyncio.run(run_server(settings))


@app.command()
def migrate(
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL [env LOYALTY_DATABASE_URL].")
    ] = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Create or upgrade the database schema."""
    settings = _settings(database_url=database_url)
    migrations.upgrade(settings.database_url, revision)
    typer.echo(
        f"database at revision {migrations.head_revision() if revision == 'head' else revision}"
    )


@app.command()
def run(
    kind: Annotated[str, typer.Argument(help="expiry | warnings | holds | inactivity | birthdays")],
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL [env LOYALTY_DATABASE_URL].")
    ] = None,
) -> None:
    """Run one batch job now, as of the current time, and print its summary."""
    from loyalty_ledger.api.offer_codec import decode_offer
    from loyalty_ledger.clock import SystemClock
    from loyalty_ledger.jobs.runner import Runner
    from loyalty_ledger.ledger.db import Database
    from loyalty_ledger.ledger.records import RunKind
    from loyalty_ledger.ledger.service import Ledger

    kinds = {
        "expiry": RunKind.EXPIRY,
        "warnings": RunKind.EXPIRY_WARNING,
        "holds": RunKind.HOLD_TIMEOUT,
        "inactivity": RunKind.INACTIVITY,
        "birthdays": RunKind.BIRTHDAY,
    }
    if kind not in kinds:
        raise typer.BadParameter(f"choose one of {', '.join(kinds)}", param_hint="KIND")
    settings = _settings(database_url=database_url)

    async def go() -> None:
        db = Database(settings.database_url)
        await db.start()
        try:
            clock = SystemClock()
            ledger = Ledger(db, clock, idempotency_retention_us=0)
            done = await Runner(ledger, chunk_max=settings.run_chunk_max, decode=decode_offer).run(
                kinds[kind], clock.now_us(), "cli"
            )
        finally:
            await db.close()
        typer.echo(
            f"run {done.id} ({done.kind.value}) {done.status.value}: "
            f"{done.items_processed} items in {done.chunks_committed} chunks"
        )

    asyncio.run(go())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
