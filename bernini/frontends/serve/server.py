"""``bernini serve``: the job service front end (FastAPI on uvicorn, the pipeline loaded once).

One process: the HTTP server in the main thread, one worker thread running the queue. Under torchrun
rank 0 serves and runs the worker; every other rank follows the broadcast jobs (Ulysses / CFG parallel
inside each job). The token comes from ``--token`` or ``BERNINI_SERVE_TOKEN`` and is never logged.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ...errors import BerniniError
from ..launch import cfg_degree, launch_env, parallel_requested, parallel_run, report_setup_error
from ..options import (
    OneLineErrorParser,
    add_model_args,
    add_parallel_args,
    describe_loaded,
    enhancer_config,
    load_pipeline,
    quiet_libraries,
)

logger = logging.getLogger("bernini.frontends.serve")
TOKEN_VARIABLE = "BERNINI_SERVE_TOKEN"


def build_parser(prog: str = "bernini serve") -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=prog, description="serve Bernini-R jobs over HTTP (see docs/serving.md)")
    add_model_args(parser)
    net = parser.add_argument_group("service")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    net.add_argument("--port", type=int, default=8000, help="port to listen on")
    net.add_argument(
        "--db", default=None, help="queue database: sqlite:///FILE or postgresql://… (default OUTPUT_DIR/queue.db)"
    )
    net.add_argument("--token", default=None, help=f"bearer token clients must send (or set ${TOKEN_VARIABLE})")
    net.add_argument("--output_dir", default="outputs/serve", help="per-job folders, uploads, the SQLite queue")
    net.add_argument("--model_id", default=None, help="the id /v1/models reports (default: the bundle's name)")
    net.add_argument("--worker_id", default=None, help="this server's name in a shared queue (default HOST:PORT)")
    net.add_argument("--keep_jobs", type=int, default=200, help="finished outputs kept (oldest removed first)")
    net.add_argument("--keep_gb", type=float, default=20.0, help="total size of the finished outputs kept")
    net.add_argument("--max_upload_mb", type=float, default=512.0, help="largest upload accepted")
    net.add_argument(
        "--stale_after", type=float, default=120.0, help="seconds without a heartbeat before another server's job fails"
    )
    net.add_argument("--pe_model", default=None, help="prompt-enhancer model for jobs with use_pe")
    net.add_argument("-v", "--verbose", action="store_true", help="log each request and job")
    add_parallel_args(parser)
    return parser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    token = args.token or environ.get(TOKEN_VARIABLE) or None
    if token is not None and (len(token) < 8 or any(c.isspace() for c in token)):
        raise BerniniError("the token must be at least 8 characters without spaces")
    if token is None and not is_loopback(args.host):
        raise BerniniError(
            f"refusing to serve on {args.host} without a token: pass --token or set {TOKEN_VARIABLE} "
            "(or listen on 127.0.0.1)"
        )
    return token


def model_id_of(args: argparse.Namespace, pipe: Any) -> str:
    if args.model_id:
        return args.model_id
    spec = str(getattr(pipe.source, "spec", None) or args.config or "bernini")
    return Path(spec.rstrip("/")).name or "bernini"


def check_limits(args: argparse.Namespace) -> None:
    for name in ("keep_jobs", "keep_gb", "max_upload_mb", "stale_after"):
        if getattr(args, name) <= 0:
            raise BerniniError(f"--{name} must be positive, got {getattr(args, name)}")
    if not 0 < args.port < 65536:
        raise BerniniError(f"--port must be between 1 and 65535, got {args.port}")


def serve(args: argparse.Namespace, token: str | None, pipe: Any, link: Any = None) -> int:
    """Rank 0: open the queue, start the worker thread and the HTTP server; returns at shutdown."""
    import uvicorn

    from ...jobs import EventBoard
    from .app import create_app
    from .service import Service, ServiceConfig
    from .store import DATABASE_ERRORS, Store, failure_detail, redact_url
    from .worker import Worker, WorkerSettings

    output_dir = Path(args.output_dir).expanduser().resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    url = args.db or f"sqlite:///{output_dir / 'queue.db'}"
    store = Store(url, files=output_dir)
    worker_id = args.worker_id or f"{socket.gethostname()}:{args.port}"
    try:
        interrupted = store.recover(worker_id, args.stale_after)
    except DATABASE_ERRORS as exc:
        raise BerniniError(f"cannot use the queue database {redact_url(url)}: {failure_detail(exc)}") from None
    for job_id in interrupted:
        logger.warning("job %s was running when its server stopped; marked failed", job_id)
    config = ServiceConfig(
        model_id=model_id_of(args, pipe),
        output_dir=output_dir,
        worker_id=worker_id,
        token=token,
        defaults=pipe.model_defaults,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        created=int(time.time()),
    )
    settings = WorkerSettings(
        output_dir=output_dir,
        worker_id=worker_id,
        keep_jobs=args.keep_jobs,
        keep_bytes=int(args.keep_gb * (1 << 30)),
        stale_after_s=args.stale_after,
    )
    enhancer = enhancer_config(args)
    events = EventBoard()
    worker = Worker(store, pipe, settings, pipe.model_defaults, enhancer, link, events)
    thread = threading.Thread(target=worker.serve_forever, name="bernini-serve-worker", daemon=True)
    thread.start()
    app = create_app(Service(store, config, events))
    print(
        f"serving {config.model_id} on http://{args.host}:{args.port} (queue {redact_url(url)}, worker {worker_id}, "
        f"auth {'on' if token else 'off'}, {len(interrupted)} interrupted job(s) marked failed)",
        file=sys.stderr,
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    )
    try:
        server.run()
    finally:
        worker.stop()
        thread.join(timeout=30)
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    env = launch_env(environ)
    try:
        check_limits(args)
        token = resolve_token(args, environ)
        quiet_libraries()
        if not parallel_requested(args, env):
            start = time.perf_counter()
            pipe = load_pipeline(args)
            pipe.set_progress_bar_config(disable=True)
            print(describe_loaded(pipe, time.perf_counter() - start), file=sys.stderr, flush=True)
            return serve(args, token, pipe)
        return serve_group(args, token, env)
    except BerniniError as exc:
        report_setup_error(exc, env.rank, lambda line: print(line, file=sys.stderr, flush=True))
        return 2
    except KeyboardInterrupt:
        return 130


def serve_group(args: argparse.Namespace, token: str | None, env: Any) -> int:
    """Under torchrun: every rank runs every job, so the Ulysses × CFG degrees must cover the world."""
    from ...runtime.parallel.groups import RankZeroChannel
    from .worker import Worker, WorkerSettings

    if int(args.ulysses) * cfg_degree(args) != env.world:
        raise BerniniError(
            f"the service runs each job on every rank: --ulysses ({args.ulysses}) × --cfg_parallel "
            f"({cfg_degree(args)}) must equal the number of processes ({env.world})"
        )
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    with ExitStack() as stack:
        pipe, context = stack.enter_context(parallel_run(args, env, log))
        pipe.set_progress_bar_config(disable=True)
        link = RankZeroChannel(context.groups.control, env.rank, enabled=env.world > 1)
        if env.rank == 0:
            return serve(args, token, pipe, link)
        settings = WorkerSettings(output_dir=Path(args.output_dir).expanduser().resolve(), worker_id=f"rank{env.rank}")
        return Worker(None, pipe, settings, pipe.model_defaults, enhancer_config(args), link).follow()  # type: ignore[arg-type]
