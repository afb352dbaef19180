"""The queue database's schema version and the ordered migrations that bring an older one up to date.

``bernini_schema`` holds one row, the version. A database without it but with the queue's tables is
version 1 (the first release). At start :func:`migrate` runs, in one transaction, every migration past
the stored version (under an advisory lock on PostgreSQL, so servers starting together migrate once),
and refuses a database newer than this code knows instead of writing rows it cannot read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, inspect, text

from ...errors import BerniniError

VERSION_TABLE = "bernini_schema"
LOCK_KEY = 0x6265726E  # "bern": the PostgreSQL advisory lock held while migrating


class SchemaTooNew(BerniniError):
    """The database was written by a newer bernini."""


def _files_on_disk(conn: Connection, files: Path | None) -> None:
    """Version 2: uploads and outputs leave the database for files; the rows keep their paths.

    Each step checks what is done already: SQLite's driver commits DDL as it goes, so a migration cut short
    is finished by the next start.
    """
    for table, column in (("bernini_files", "path"), ("bernini_jobs", "output_path"), ("bernini_jobs", "sidecar_path")):
        if column not in _columns(conn, table):
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} TEXT"))
    has_data = "data" in _columns(conn, "bernini_files")
    has_output = "output" in _columns(conn, "bernini_jobs")  # a start cut short may have dropped either
    blobs = conn.execute(text("SELECT count(*) FROM bernini_files")).scalar_one() if has_data else 0
    if has_output:
        blobs += conn.execute(text("SELECT count(*) FROM bernini_jobs WHERE output IS NOT NULL")).scalar_one()
    if blobs and files is None:
        raise BerniniError("the queue database holds files to move to disk; open it with its output folder")
    for (file_id,) in conn.execute(text("SELECT id FROM bernini_files")).all() if has_data else []:
        suffix, data = conn.execute(text("SELECT suffix, data FROM bernini_files WHERE id = :i"), {"i": file_id}).one()
        path = write_file(files / "uploads" / f"{file_id}{suffix}", bytes(data or b""))  # type: ignore[operator]
        conn.execute(text("UPDATE bernini_files SET path = :p WHERE id = :i"), {"p": str(path), "i": file_id})
    outputs = text("SELECT id FROM bernini_jobs WHERE output IS NOT NULL")
    for (job_id,) in conn.execute(outputs).all() if has_output else []:
        name, output, sidecar = conn.execute(
            text("SELECT output_name, output, sidecar FROM bernini_jobs WHERE id = :i"), {"i": job_id}
        ).one()
        folder = files / "jobs" / job_id / "output"  # type: ignore[operator]
        out = write_file(folder / (name or "output.mp4"), bytes(output))
        side = write_file(folder / f"{out.name}.json", (sidecar or "{}").encode("utf-8"))
        conn.execute(
            text("UPDATE bernini_jobs SET output_path = :o, sidecar_path = :s WHERE id = :i"),
            {"o": str(out), "s": str(side), "i": job_id},
        )
    for table, column in (("bernini_jobs", "output"), ("bernini_jobs", "sidecar"), ("bernini_files", "data")):
        if column in _columns(conn, table):
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))


def _resolved_column(conn: Connection, files: Path | None) -> None:
    """Version 3: a job keeps the request resolved at submit (JSON), which its worker runs; older rows have none and
    are resolved from their parameters when they run."""
    if "resolved" not in _columns(conn, "bernini_jobs"):
        conn.execute(text("ALTER TABLE bernini_jobs ADD COLUMN resolved TEXT"))


def _columns(conn: Connection, table: str) -> set[str]:
    return {column["name"] for column in inspect(conn).get_columns(table)}


Migration = Callable[[Connection, "Path | None"], None]
# (the version it makes, the step), in order
MIGRATIONS: list[tuple[int, Migration]] = [(2, _files_on_disk), (3, _resolved_column)]
LATEST = MIGRATIONS[-1][0]


def migrate(engine: Engine, create: Callable[[Connection], None], files: Path | None) -> int:
    """Bring the database to :data:`LATEST` (``create`` makes the current tables in an empty one); the version
    it had. :class:`SchemaTooNew` when it is newer than this code."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
        tables = set(inspect(conn).get_table_names())
        if VERSION_TABLE in tables:
            found = int(conn.execute(text(f"SELECT max(version) FROM {VERSION_TABLE}")).scalar_one() or 0)
        else:
            conn.execute(text(f"CREATE TABLE {VERSION_TABLE} (version INTEGER NOT NULL)"))
            found = 1 if "bernini_jobs" in tables else 0
        if found > LATEST:
            raise SchemaTooNew(
                f"the queue database has schema version {found}, newer than this bernini knows ({LATEST}): "
                "upgrade bernini, or use another --db"
            )
        if found == 0:
            create(conn)
        else:
            for version, step in MIGRATIONS:
                if version > found:
                    step(conn, files)
        if found != LATEST:
            conn.execute(text(f"DELETE FROM {VERSION_TABLE}"))
            conn.execute(text(f"INSERT INTO {VERSION_TABLE} (version) VALUES (:v)"), {"v": LATEST})
    return found


def write_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all (through a ``.part`` file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    partial.replace(path)
    return path
