"""``edgefleet db init``: create the controller's database on purpose, or bring its schema up
to date.

Every other command that opens the database refuses to create a missing SQLite file
(``refuse_new_database`` in ``controller/cli/common.py``): a forgotten ``-c`` would otherwise
leave an empty ``./edgefleet.db`` behind and the next command would miss what this one
wrote. ``edgefleet serve`` creates the database too.
"""

import typer

from controller.cli.common import ConfigOpt, settings_or_exit
from controller.cli.common import fail as _fail

db_app = typer.Typer(no_args_is_help=True, help="Create or upgrade the controller's database.")


@db_app.command("init")
def db_init(config: ConfigOpt = None) -> None:
    """Create the database the config names (a SQLite file, or the tables in an empty
    PostgreSQL database) and apply the schema steps it has not had; safe to run again."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import SQLModel

    from controller.db import make_engine
    from controller.migrations import migrate  # imports every table module first
    from controller.settings import sqlite_file

    settings = settings_or_exit(config, database="create")
    file = sqlite_file(settings.database_url)
    if file is not None and not file.absolute().parent.is_dir():
        raise _fail(f"folder {file.absolute().parent} for the database does not exist", 2)
    created = file is not None and not file.exists()
    shown = (
        str(file.absolute())
        if file is not None
        else make_url(settings.database_url).render_as_string(hide_password=True)
    )
    engine = make_engine(settings.database_url)
    try:
        SQLModel.metadata.create_all(engine)
        applied = migrate(engine)
    except SQLAlchemyError as e:
        raise _fail(f"cannot set up the database {shown}: {e}") from e
    finally:
        engine.dispose()
    if created:
        typer.echo(f"database {shown} created")
        return
    typer.echo(f"database {shown} is up to date")
    for step in applied:
        typer.echo(f"  schema step applied: {step}")


__all__ = ["db_app"]
