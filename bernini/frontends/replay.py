"""``bernini generate --replay OUTPUT.json``: the run a sidecar records, again, frame for frame.

The sidecar holds the request as it ran (seed, every parameter, the model's resolved choices, the prompt
actually used, enhanced or not) and every path as given and absolute. A replay takes all of it, uses the
absolute paths (so it works from any working directory), never calls the prompt enhancer again, and
loads the recorded model with the recorded dtype and ``--quantize`` unless ``--config`` / ``--dtype`` /
``--quantize`` say otherwise, merging the recorded LoRAs (each checked against its recorded sha256).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import BerniniError
from ..record import RunPaths, RunRecord
from ..request import GenerationRequest
from ..resolve import PLANNER_SETTINGS

CONFLICTS = ("prompt", "case", "inputs", "video", "image", "images", "lora", "lora_high", "lora_low")


def read_sidecar(path: str | Path) -> RunRecord:
    sidecar = Path(path).expanduser()
    if sidecar.suffix != ".json" and sidecar.with_name(sidecar.name + ".json").is_file():
        sidecar = sidecar.with_name(sidecar.name + ".json")  # the output itself was named
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BerniniError(f"--replay: {sidecar} not found; pass the OUTPUT.json written beside an output") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BerniniError(f"--replay: cannot read {sidecar}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
        raise BerniniError(f"--replay: {sidecar} is not a bernini sidecar (no 'request')")
    return RunRecord.from_json(data)


def _absolute(entry: Any, slot: str) -> str | None:
    if entry is None:
        return None
    if isinstance(entry, dict):
        return entry["absolute"]
    if isinstance(entry, str) and entry.startswith("<"):
        raise BerniniError(f"--replay: the {slot} was given in memory ({entry}); replay needs media files")
    return str(entry)


def _media(record: RunRecord) -> dict[str, Any]:
    """The media slots from the recorded paths; a sidecar written before paths were recorded has the request's."""
    paths, request = record.paths or RunPaths(), record.request
    videos = paths.video if paths.video is not None else request.get("video") or []
    image = paths.image if paths.image is not None else request.get("image")
    images = paths.images if paths.images is not None else request.get("images") or []
    extend = paths.extend if paths.extend is not None else request.get("extend")
    return {
        "video": [_absolute(v, "video") for v in videos],
        "image": _absolute(image, "image"),
        "images": [_absolute(v, "images") for v in images],
        "extend": _absolute(extend, "extend"),
    }


def _default_output(record: RunRecord, sidecar: Path) -> str:
    written = Path(record.output or sidecar.with_suffix(""))
    absolute = ((record.paths.output if record.paths else None) or {}).get("absolute")
    written = Path(absolute) if absolute else written
    return str(written.with_name(f"{written.stem}_replay{written.suffix}"))


def _loras(model: dict[str, Any]) -> list:
    """The recorded LoRAs, in the order they were merged, refused in one line when a file is gone or changed."""
    from ..loaders.lora import LoraSpec, file_sha256

    specs = []
    for entry in model.get("loras") or []:
        path = entry.get("absolute") or entry["path"]
        if not Path(path).is_file():
            raise BerniniError(f"--replay: the run's LoRA file {path} is gone; restore it to replay the run")
        if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
            raise BerniniError(
                f"--replay: the LoRA file {path} has changed since the run (its sha256 differs from the sidecar's); "
                "restore the file the run used"
            )
        specs.append(LoraSpec(path, entry.get("expert", "both"), float(entry.get("scale", 1.0))).checked())
    return specs


def replay_requests(args: argparse.Namespace) -> list[GenerationRequest]:
    """The recorded request, ready to plan; sets ``args.config`` / checkpoints / dtype / quantize / LoRAs from
    the sidecar where the command line left them open."""
    given = [f"--{name}" for name in CONFLICTS if getattr(args, name, None) not in (None, [])]
    if given:
        raise BerniniError(f"--replay takes the run from its sidecar; drop {', '.join(given)}")
    record = read_sidecar(args.replay)
    names = set(GenerationRequest.field_names())
    if "planner" not in (record.resolved or {}):  # Bernini-R ran: its record's planner values were not given
        names -= set(PLANNER_SETTINGS)
    values = {key: value for key, value in record.request.items() if key in names}
    values.update(_media(record))
    values["use_pe"], values["pe_model"] = False, None  # the prompt recorded is the one that ran
    values["output"] = args.output or _default_output(record, Path(args.replay))
    paths = record.paths or RunPaths()
    model = record.model or {}
    if args.config is None:
        spec = paths.model or model.get("spec")
        args.config = spec["absolute"] if isinstance(spec, dict) else spec
    checkpoints = paths.checkpoints or model.get("separate_checkpoints") or {}
    for name, flag in (("transformer", "high_noise_ckpt"), ("transformer_2", "low_noise_ckpt")):
        if getattr(args, flag, None) is None and checkpoints.get(name):
            entry = checkpoints[name]
            setattr(args, flag, entry["absolute"] if isinstance(entry, dict) else entry)
    if getattr(args, "dtype", "auto") == "auto" and record.dtype:
        args.dtype = record.dtype
    if getattr(args, "quantize", "none") == "none":
        args.quantize = model.get("quantize_requested", model.get("quantize", "none"))
    args.replayed_loras = _loras(model)
    args.replayed = {"sidecar": str(Path(args.replay).absolute()), "prompt_enhancer": record.prompt_enhancer}
    return [GenerationRequest(**values)]
