"""The persistent queue: jobs and uploaded files in a database through SQLAlchemy.

SQLite (one file, one server) or PostgreSQL (any number of servers sharing the queue). A worker claims
the oldest queued job with ``SELECT … FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite serialises writers
and ignores the clause) followed by an update guarded by ``state = 'queued'``, so a job is claimed once.
Uploads and outputs are files on disk; the rows hold their paths, so servers sharing a queue must see
one another's output folders at the same paths (one machine, or a shared mount). The schema carries a
version and is migrated in place at start (:mod:`bernini.frontends.serve.migrations`).

A database that fails while the server runs (read-only, full, unreachable) raises SQLAlchemy's errors,
which the front end answers with one line (:func:`describe_failure`). An SQLite file deleted or replaced
under a running server raises :class:`StoreUnavailable` instead of writing into the unlinked file, and a
restart refuses to create an empty queue where one existed (the ``FILE.created`` marker beside it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ...errors import BerniniError
from .migrations import migrate, write_file

INTERRUPTED_BY_RESTART = "interrupted: the server restarted while this job ran; it was not re-run (submit it again)"
INTERRUPTED_STALE = "interrupted: its server stopped sending heartbeats for {seconds:.0f} s; it was not re-run"


class Base(DeclarativeBase):
    pass


class FileRow(Base):
    __tablename__ = "bernini_files"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    filename: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(8))
    suffix: Mapped[str] = mapped_column(String(8))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)


class JobRow(Base):
    __tablename__ = "bernini_jobs"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    state: Mapped[str] = mapped_column(String(12), index=True)
    params: Mapped[str] = mapped_column(Text)
    media: Mapped[str] = mapped_column(Text)
    meta: Mapped[str] = mapped_column(Text, default="{}")
    task_type: Mapped[str] = mapped_column(String(16))
    prompt: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    phase: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    expired: Mapped[bool] = mapped_column(Boolean, default=False)
    output_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    output_bytes: Mapped[int] = mapped_column(Integer, default=0)
    output_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    sidecar_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    resolved: Mapped[str | None] = mapped_column(Text, nullable=True)  # the request resolved at submit (JSON)

    def loads(self, column: str) -> Any:
        return json.loads(getattr(self, column))


@dataclass(frozen=True)
class NewJob:
    params: dict[str, Any]
    media: dict[str, Any]
    task_type: str
    meta: dict[str, Any]
    idempotency_key: str | None = None
    media_digests: dict[str, Any] | None = None  # the uploads' sha256 in place of their ids
    resolved: dict[str, Any] | None = None  # the request resolved at submit (ResolvedRequest.to_json), run as is

    @property
    def request_hash(self) -> str:
        media = self.media_digests if self.media_digests is not None else self.media
        text = json.dumps({"params": self.params, "media": media, "meta": self.meta}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


class IdempotencyConflict(BerniniError):
    """An Idempotency-Key reused with a different request."""


class StoreUnavailable(Exception):
    """The queue database cannot be used while the server runs (its SQLite file was deleted or replaced)."""


DATABASE_ERRORS = (SQLAlchemyError, StoreUnavailable)


def describe_failure(exc: BaseException) -> str:
    """What went wrong with the database, in words a client may see (no paths, hosts or SQL)."""
    if isinstance(exc, StoreUnavailable):
        return "its file was deleted or replaced while the server ran"
    text = str(getattr(exc, "orig", None) or exc).lower()
    if "readonly" in text or "read-only" in text or "read only" in text:
        return "it is read-only"
    if "full" in text or "no space" in text or "quota" in text:
        return "it is full (no space left)"
    if "locked" in text or "busy" in text:
        return "it is locked by another process"
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return "its tables are missing"
    return "it cannot be reached"


def failure_detail(exc: BaseException) -> str:
    """The driver's own first line, for the server's log."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def redact_url(url: str) -> str:
    """A database URL safe for logs (no password)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by create_engine in its own words
        return "<database url>"


class Store:
    """The queue's database: ``url`` is an SQLAlchemy URL (``sqlite:///…`` or ``postgresql://…``); ``files`` is
    the folder uploads are written to (``files/uploads``; by default the SQLite file's folder)."""

    def __init__(self, url: str, files: Path | None = None) -> None:
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        if self.dialect not in ("sqlite", "postgresql"):
            raise BerniniError(f"--db must be sqlite:///FILE or postgresql://…, got a {self.dialect} URL")
        connect_args = {"timeout": 30, "check_same_thread": False} if self.dialect == "sqlite" else {}
        self.file = sqlite_file(url) if self.dialect == "sqlite" else None
        self.files = files if files is not None or self.file is None else self.file.parent
        if self.file is not None:
            check_not_deleted(self.file)
        try:
            self.engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
            if self.dialect == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            migrate(self.engine, _create_tables, self.files)
        except BerniniError:
            raise
        except Exception as exc:  # noqa: BLE001 - driver errors span many classes; report one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BerniniError(f"cannot open the queue database {redact_url(url)}: {first}") from None
        self.identity = None
        if self.file is not None:
            self.identity = _identity(self.file)
            marker = created_marker(self.file)
            if not marker.exists():
                try:
                    marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()), encoding="utf-8")
                except OSError:  # a read-only folder: the first write to the queue says so in its own words
                    pass
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def sessions(self) -> Session:
        """A new session, after checking that an SQLite file is still the one opened."""
        if self.file is not None and _identity(self.file) != self.identity:
            raise StoreUnavailable(f"the queue database {self.file} was deleted or replaced while the server ran")
        return self._sessions()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    # ------------------------------------------------------------------ files
    def add_file(self, filename: str, kind: str, suffix: str, data: bytes) -> FileRow:
        """Write an upload to ``files/uploads/ID.SUFFIX`` and record it."""
        if self.files is None:
            raise BerniniError("this queue has no folder for uploads")
        file_id = new_id("file")
        path = write_file(self.files / "uploads" / f"{file_id}{suffix}", data)
        row = FileRow(
            id=file_id,
            filename=filename[:255],
            kind=kind,
            suffix=suffix,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            created_at=time.time(),
            path=str(path),
        )
        try:
            with self.session() as session:
                session.add(row)
        except BaseException:
            path.unlink(missing_ok=True)  # no row names it: it would never be removed
            raise
        return row

    def get_file(self, file_id: str) -> FileRow | None:
        with self.sessions() as session:
            return session.scalar(select(FileRow).where(FileRow.id == file_id))

    # ------------------------------------------------------------------ jobs
    def create_job(self, job: NewJob) -> tuple[JobRow, bool]:
        """Queue ``job``; with an idempotency key already used, the existing job (created False)."""
        if job.idempotency_key:
            existing = self._by_key(job.idempotency_key, job)
            if existing is not None:
                return existing, False
        row = JobRow(
            id=new_id("job"),
            state="queued",
            params=json.dumps(job.params),
            media=json.dumps(job.media),
            meta=json.dumps(job.meta),
            task_type=job.task_type,
            prompt=job.params.get("prompt", ""),
            idempotency_key=job.idempotency_key,
            request_hash=job.request_hash,
            created_at=time.time(),
            total=int((job.resolved or job.params).get("num_inference_steps", 0)),
            resolved=json.dumps(job.resolved) if job.resolved is not None else None,
            phase="queued",
            step=0,
            cancel_requested=False,
            expired=False,
            output_bytes=0,
        )
        try:
            with self.session() as session:
                session.add(row)
        except IntegrityError:  # the same key raced in from another request
            existing = self._by_key(job.idempotency_key or "", job)
            if existing is None:
                raise
            return existing, False
        return row, True

    def _by_key(self, key: str, job: NewJob) -> JobRow | None:
        with self.sessions() as session:
            row = session.scalar(select(JobRow).where(JobRow.idempotency_key == key))
        if row is not None and row.request_hash != job.request_hash:
            raise IdempotencyConflict("this Idempotency-Key was used for a different request; use a new key")
        return row

    def get_job(self, job_id: str) -> JobRow | None:
        with self.sessions() as session:
            return session.scalar(select(JobRow).where(JobRow.id == job_id))

    def list_jobs(self, limit: int, after: str | None) -> tuple[list[JobRow], bool]:
        """Newest first; ``after`` is the last id of the previous page."""
        query = select(JobRow).order_by(JobRow.seq.desc()).limit(limit + 1)
        with self.sessions() as session:
            if after is not None:
                anchor = session.scalar(select(JobRow.seq).where(JobRow.id == after))
                if anchor is None:
                    raise KeyError(after)
                query = query.where(JobRow.seq < anchor)
            rows = list(session.scalars(query))
        return rows[:limit], len(rows) > limit

    def counts(self) -> dict[str, int]:
        with self.sessions() as session:
            pairs = session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all()
        return {state: int(count) for state, count in pairs}

    def claim(self, worker: str) -> JobRow | None:
        """Take the oldest queued job for ``worker``; None when the queue is empty."""
        now = time.time()
        with self.session() as session:
            candidate = session.scalar(
                select(JobRow.id)
                .where(JobRow.state == "queued")
                .order_by(JobRow.seq)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if candidate is None:
                return None
            taken = session.execute(
                update(JobRow)
                .where(JobRow.id == candidate, JobRow.state == "queued")
                .values(state="running", worker=worker, started_at=now, heartbeat_at=now, phase="encode")
            ).rowcount
        return self.get_job(candidate) if taken == 1 else None

    def progress(self, job_id: str, step: int, total: int, phase: str) -> bool:
        """Record progress (and a heartbeat); returns whether the job should stop (cancelled or deleted)."""
        with self.session() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id)
                .values(step=step, total=total, phase=phase, heartbeat_at=time.time())
            )
            flag = session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id))
            return flag is None or bool(flag)  # a job deleted while it runs stops too

    def heartbeat(self, job_id: str) -> None:
        with self.session() as session:
            session.execute(update(JobRow).where(JobRow.id == job_id).values(heartbeat_at=time.time()))

    def finish(
        self,
        job_id: str,
        state: str,
        error: str | None = None,
        output: Path | None = None,
        sidecar: Path | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """End a running job; ``output`` / ``sidecar`` are its files; ``meta`` (the job's meta with what was rendered)
        replaces the stored one."""
        values: dict[str, Any] = {"state": state, "error": error, "finished_at": time.time(), "phase": "done"}
        if output is not None:
            values.update(
                output_path=str(output),
                output_name=output.name,
                sidecar_path=str(sidecar) if sidecar is not None else None,
                output_bytes=output.stat().st_size,
            )
        if meta is not None:
            values["meta"] = json.dumps(meta)
        with self.session() as session:
            session.execute(update(JobRow).where(JobRow.id == job_id, JobRow.state == "running").values(**values))

    def cancel(self, job_id: str) -> JobRow | None:
        """A queued job is dropped now; a running one is asked to stop at its next step."""
        now = time.time()
        with self.session() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "queued")
                .values(state="cancelled", error="cancelled before it started", finished_at=now, phase="done")
            )
            session.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.state == "running").values(cancel_requested=True)
            )
        return self.get_job(job_id)

    def delete(self, job_id: str) -> bool:
        """Remove the job's row (its output with it); a worker running it stops at its next step."""
        with self.session() as session:
            return session.execute(delete(JobRow).where(JobRow.id == job_id)).rowcount > 0

    def expire(self, job_id: str) -> None:
        """Forget a finished job's output (a DELETE or the retention limits; the caller removes its files)."""
        with self.session() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state.in_(("succeeded", "failed", "cancelled")))
                .values(expired=True, output_path=None, sidecar_path=None, output_bytes=0)
            )

    def recover(self, worker: str, stale_after_s: float) -> list[str]:
        """Mark failed the jobs this worker was running when it died, and those of silent servers."""
        now = time.time()
        failed: list[str] = []
        with self.session() as session:
            mine = session.scalars(select(JobRow.id).where(JobRow.state == "running", JobRow.worker == worker)).all()
            if mine:
                session.execute(
                    update(JobRow)
                    .where(JobRow.id.in_(mine), JobRow.state == "running")
                    .values(state="failed", error=INTERRUPTED_BY_RESTART, finished_at=now, phase="done")
                )
            stale = session.scalars(
                select(JobRow.id).where(JobRow.state == "running", JobRow.heartbeat_at < now - stale_after_s)
            ).all()
            if stale:
                session.execute(
                    update(JobRow)
                    .where(JobRow.id.in_(stale), JobRow.state == "running")
                    .values(
                        state="failed",
                        error=INTERRUPTED_STALE.format(seconds=stale_after_s),
                        finished_at=now,
                        phase="done",
                    )
                )
            failed = [*mine, *stale]
        return failed

    def prune(self, keep_jobs: int | None, keep_bytes: int | None) -> list[str]:
        """Expire the oldest finished outputs beyond ``keep_jobs`` outputs or ``keep_bytes`` bytes in all."""
        with self.sessions() as session:
            rows = session.execute(
                select(JobRow.id, JobRow.output_bytes)
                .where(JobRow.expired.is_(False), JobRow.output_bytes > 0)
                .order_by(JobRow.finished_at.desc(), JobRow.seq.desc())
            ).all()
        kept, total, drop = 0, 0, []
        for job_id, size in rows:
            over_count = keep_jobs is not None and kept + 1 > keep_jobs
            over_bytes = keep_bytes is not None and total + size > keep_bytes
            if drop or over_count or over_bytes:  # everything older than the first one dropped goes too
                drop.append(job_id)
                continue
            kept, total = kept + 1, total + size
        for job_id in drop:
            self.expire(job_id)
        return drop


def _create_tables(conn: Connection) -> None:
    Base.metadata.create_all(conn)


def sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL (None: in memory or a ``file:`` URI)."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


def created_marker(file: Path) -> Path:
    """Written beside an SQLite queue when it is created: the file existed, so its absence is a loss."""
    return file.with_name(file.name + ".created")


def check_not_deleted(file: Path) -> None:
    marker = created_marker(file)
    if marker.exists() and not file.exists():
        raise BerniniError(
            f"the queue database {file} is missing, but {marker.name} beside it says one was created there "
            f"({marker.read_text(encoding='utf-8', errors='replace').strip()[:40]}): restore it (jobs accepted "
            f"before are in it), or delete {marker} to start an empty queue"
        )


def _identity(file: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(file)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
