"""The demo's entry point: its flags, the server-wide settings, this rank's bring-up, ``main`` and ``serve``."""

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ...errors import BerniniError
from ...runtime.parallel.groups import RankZeroChannel
from ..help import document
from ..launch import ParallelSession, cfg_degree, launch_env, parallel_requested, report_setup_error
from ..options import (
    OneLineErrorParser,
    add_model_args,
    add_parallel_args,
    add_pe_args,
    load_pipeline,
    quiet_libraries,
)
from .backend import DemoBackend, worker_loop
from .layout import build_ui
from .settings import DemoSettings

logger = logging.getLogger("bernini.frontends.demo")


def build_parser(prog: str = "bernini demo") -> argparse.ArgumentParser:
    """Upstream ``gradio_demo.py``'s flags: the model flags of ``bernini generate``, then server and demo ones."""
    parser = OneLineErrorParser(
        prog=prog,
        description="Bernini-R Gradio demo (listens on 127.0.0.1 unless --host is given; upstream binds 0.0.0.0)",
    )
    add_model_args(parser)
    server = parser.add_argument_group("server")
    server.add_argument("--port", "--server_port", dest="port", type=int, default=7860)
    server.add_argument(
        "--host",
        "--server_name",
        dest="host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the demo to the network, as upstream does)",
    )
    server.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    server.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="require this login")
    server.add_argument(
        "--save_dir",
        default=None,
        help="outputs (one unguessable folder per browser session), their sidecars and every upload "
        "(default: a new temp dir bernini_gradio_*, removed on exit)",
    )
    server.add_argument("--max_file_size", default="200mb", help="largest accepted upload (e.g. 200mb, 1gb)")
    server.add_argument("--max_frames", type=int, default=360, help="largest frame count a request may ask for")
    server.add_argument("--queue_size", type=int, default=20, help="requests that may wait behind the running one")
    generation = parser.add_argument_group("generation defaults")
    generation.add_argument("--flow_shift", type=float, default=5.0, help="the flow-shift slider's start value")
    add_pe_args(parser, "allow the GPT prompt enhancer checkbox")
    add_parallel_args(parser)
    parser.add_argument("-v", "--verbose", action="store_true")
    return document(parser)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``user:password`` (split at the first colon) or ``None``."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise BerniniError("--auth must look like USER:PASSWORD (both non-empty)")
    return user, password


def check_port(host: str, port: int) -> None:
    """Refuse a port already taken, in one line and before the model loads."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as exc:
        reason = exc.strerror or exc
        raise BerniniError(f"cannot listen on {host}:{port} ({reason}); pick another with --port") from None


def warn_if_public(args: argparse.Namespace) -> None:
    if args.share and not args.auth:
        print(
            "warning: --share opens a public gradio.live link that anyone can use; add --auth USER:PASSWORD",
            file=sys.stderr,
            flush=True,
        )


def use_gradio_cache(save_dir: Path) -> None:
    """Uploads and Gradio's cache go under the save dir.

    Gradio takes its upload folder only from the ``GRADIO_TEMP_DIR`` variable (read when it handles
    files), so the serving rank sets it, before gradio is imported; analytics are turned off in the
    Blocks themselves.
    """
    cache = save_dir / ".gradio"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(cache)


def bring_up_this_rank(args: argparse.Namespace, stack: ExitStack) -> tuple[DemoSettings, Any, RankZeroChannel]:
    """This process's settings, pipeline and broadcast channel, through the shared parallel bring-up.

    The settings (and their flag checks) come before the slow model load. Under torchrun every rank
    serves every request, so the Ulysses × CFG degrees must cover the whole world (no data parallelism
    in the demo). The process group, if any, is left when ``stack`` closes.
    """
    env = launch_env()
    if env.rank == 0:
        warn_if_public(args)
        check_port(args.host, args.port)
    settings = DemoSettings.from_args(args, serving=env.rank == 0)
    if env.rank == 0 and settings.temporary:
        stack.callback(shutil.rmtree, settings.save_dir, True)
    if env.rank == 0:
        use_gradio_cache(settings.save_dir)
    quiet_libraries()
    if not parallel_requested(args, env):
        return settings, load_pipeline(args), RankZeroChannel()
    ulysses, cfg = int(args.ulysses), cfg_degree(args)
    session = ParallelSession(args, env, [(ulysses, cfg)])
    if ulysses * cfg != env.world:
        raise BerniniError(
            f"the demo runs each request on every rank: --ulysses ({ulysses}) × --cfg_parallel ({cfg}) "
            f"must equal the number of processes ({env.world})"
        )
    stack.enter_context(session)
    context = session.context(ulysses, cfg)
    pipe = session.load(context)
    context.install(pipe)
    return settings, pipe, RankZeroChannel(context.groups.control)


def main(argv: Sequence[str] | None = None, prog: str = "bernini demo") -> int:
    """Start the demo (rank 0 serves; other ranks follow the broadcast requests). Returns an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    previous: dict[int, Any] = {}
    for signum in _ENDING_SIGNALS if _main_thread() else ():
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays ignored
            previous[signum] = signal.signal(signum, _interrupt)
    try:
        auth = parse_auth(args.auth)
        with ExitStack() as stack:
            settings, pipe, collective = bring_up_this_rank(args, stack)
            return serve(args, auth, DemoBackend(pipe, settings, collective))
    except BerniniError as exc:
        report_setup_error(exc, launch_env().rank, lambda line: print(line, file=sys.stderr, flush=True))
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_ENDING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM and SIGHUP end the demo like Ctrl-C: the server closes and the demo's temporary folders are removed."""
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def serve(args: argparse.Namespace, auth: tuple[str, str] | None, backend: DemoBackend) -> int:
    """Rank 0 runs the Gradio server until it is stopped; the other ranks follow its broadcasts."""
    settings = backend.settings
    if backend.collective.rank != 0:
        backend.pipe.set_progress_bar_config(disable=True)
        return worker_loop(backend)
    stop_pings = backend.keep_alive()
    try:
        app = build_ui(backend)
        app.queue(default_concurrency_limit=1, max_size=args.queue_size)
        where = " (a temporary folder, removed on exit; pass --save_dir to keep outputs)" if settings.temporary else ""
        print(f"Bernini-R demo: saving to {settings.save_dir}{where}", file=sys.stderr, flush=True)
        try:
            app.launch(
                server_name=args.host,
                server_port=args.port,
                share=args.share,
                auth=auth,
                max_file_size=args.max_file_size,
                allowed_paths=[str(settings.save_dir)],
                show_error=True,
                quiet=False,
            )
        except OSError as exc:  # the port was taken while the model loaded
            raise BerniniError(f"cannot listen on {args.host}:{args.port} ({exc}); pick another with --port") from None
    finally:
        stop_pings.set()
        backend.shutdown()
    return 0
