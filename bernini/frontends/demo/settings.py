"""The demo's server-wide settings: what its flags fix for every request."""

import argparse
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import BerniniError
from ..options import enhancer_config


@dataclass
class DemoSettings:
    """Server-wide settings: what the flags fix for every request."""

    save_dir: Path
    use_pe: bool = False
    pe_model: str | None = None
    enhancer: Any = None  # the prompt enhancer's EnhancerConfig, built from the flags and environment
    flow_shift: float = 5.0
    max_frames: int = 360
    use_unipc: bool | None = None  # None: the bundle's config decides
    use_src_tgt_id: bool | None = None
    interpolate_src_id: bool | None = None
    max_trained_src_id: int | None = None
    server: dict[str, Any] = field(default_factory=dict)
    temporary: bool = False  # the save dir is a temp dir the demo made (removed on exit)

    @classmethod
    def from_args(cls, args: argparse.Namespace, serving: bool = True) -> "DemoSettings":
        """``serving`` (rank 0) creates the save dir; the other ranks never write there."""
        if args.max_frames < 1:
            raise BerniniError("--max_frames must be at least 1")
        if args.queue_size < 1:
            raise BerniniError("--queue_size must be at least 1")
        if args.save_dir:
            save_dir = Path(args.save_dir)
        else:
            save_dir = Path(tempfile.mkdtemp(prefix="bernini_gradio_")) if serving else Path(tempfile.gettempdir())
        if serving:
            save_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            save_dir=save_dir.resolve(),
            use_pe=bool(args.use_pe),
            pe_model=args.pe_model,
            enhancer=enhancer_config(args) if args.use_pe else None,
            flow_shift=args.flow_shift,
            max_frames=args.max_frames,
            use_unipc=args.use_unipc,
            use_src_tgt_id=args.use_src_tgt_id,
            interpolate_src_id=args.interpolate_src_id,
            max_trained_src_id=args.max_trained_src_id,
            server={"host": args.host, "port": args.port, "share": args.share, "auth": args.auth is not None},
            temporary=serving and not args.save_dir,
        )
