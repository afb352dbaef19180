"""``bernini submit``: send jobs to a ``bernini serve`` server, follow them with a bar, download the results.

It takes the flags of ``bernini generate`` (``--case``, ``--inputs``, ``--prompt``, ``--video`` …): media
files are uploaded (``POST /v1/files``), each job is queued with their ids, its server-sent events drive a
progress bar, and the output and its sidecar are written where ``--output`` (or the case) says.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import BerniniError
from ...request import GenerationRequest
from ..options import (
    DEFAULT_OUTPUT,
    OneLineErrorParser,
    add_generation_args,
    requests_from_args,
)
from .server import TOKEN_VARIABLE

MEDIA = ("video", "image", "images")


def build_parser(prog: str = "bernini submit") -> OneLineErrorParser:
    parser = OneLineErrorParser(prog=prog, description="submit jobs to a bernini serve server and fetch the results")
    parser.add_argument("--server", required=True, help="the server's URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", default=None, help=f"bearer token (default ${TOKEN_VARIABLE})")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one HTTP call may take")
    add_generation_args(parser)
    return parser


class Client:
    """The HTTP calls of ``bernini submit`` (httpx); every failure is a one-line :class:`BerniniError`."""

    def __init__(self, server: str, token: str | None, timeout: float = 60.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BerniniError(f"cannot reach {self.server}: {exc}") from None
        if response.status_code >= 400:
            raise BerniniError(f"{self.server} answered {response.status_code}: {error_message(response)}")
        return response

    def upload(self, path: str) -> str:
        file = Path(path)
        if not file.is_file():
            raise BerniniError(f"media file {path} not found")
        with file.open("rb") as handle:
            return self.call("POST", "/v1/files", files={"file": (file.name, handle)}).json()["id"]

    def submit(self, request: GenerationRequest) -> dict[str, Any]:
        if request.cache_calibration:
            raise BerniniError("--cache_calibration names a file on this machine; a server keeps its own calibration")
        skipped = (*MEDIA, "output", "cache_calibration")
        body = {k: v for k, v in request.values().items() if k not in skipped}  # the server's model fills the rest
        media = request.merged()  # a case file's prompt and media go too
        body["prompt"] = media["prompt"]
        body["video"] = [self.upload(v) for v in media["video"]]
        body["image"] = self.upload(media["image"]) if media["image"] is not None else None
        body["images"] = [self.upload(v) for v in media["images"]]
        return self.call("POST", "/v1/jobs", json=body).json()

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, job) pairs from the job's event stream, until its ``end`` event."""
        import httpx

        for _attempt in range(20):
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(60.0)) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise BerniniError(f"{self.server} answered {response.status_code}: {error_message(response)}")
                    name, data = "message", []
                    for line in response.iter_lines():
                        if line.startswith("event:"):
                            name = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].strip())
                        elif not line and data:
                            job = json.loads("\n".join(data))
                            yield name, job
                            if name == "end":
                                return
                            name, data = "message", []
            except (httpx.TransportError, httpx.RemoteProtocolError):
                continue  # the stream broke (a proxy, a restart): reconnect, the job's state is in the queue
        raise BerniniError(f"lost the event stream of {job_id}")

    def download(self, job: dict[str, Any], output: str) -> Path:
        response = self.call("GET", job["output_url"])
        disposition = response.headers.get("content-disposition", "")
        suffix = ".png" if disposition.endswith('.png"') else ".mp4"
        target = Path(output)
        if target.suffix in (".png", ".mp4"):
            target = target.with_suffix(suffix)
        else:
            target = target.with_name(target.name + suffix)
        write_atomically(target, response.content)
        sidecar = self.call("GET", job["sidecar_url"]).content
        write_atomically(target.with_name(target.name + ".json"), sidecar)
        return target


def error_message(response: Any) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return " ".join(response.text.split())[:300] or response.reason_phrase


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    partial.write_bytes(data)
    partial.replace(path)


def follow(client: Client, job: dict[str, Any], show_bar: bool) -> dict[str, Any]:
    from tqdm import tqdm

    bar = tqdm(total=job["progress"]["total"], desc=job["id"][:12], unit="step", disable=not show_bar, leave=False)
    final = job
    try:
        for _name, final in client.events(job["id"]):
            progress = final["progress"]
            bar.total = progress["total"]
            bar.update(progress["step"] - bar.n)
            bar.set_postfix_str(f"{final['state']} {progress['phase']}")
    finally:
        bar.close()
    return final


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    client = None
    try:
        requests = requests_from_args(args)
        client = Client(args.server, args.token or environ.get(TOKEN_VARIABLE), args.timeout)
        queued: list[tuple[int, dict[str, Any] | BerniniError, str]] = []
        for index, request in enumerate(requests):
            try:
                if isinstance(request, BerniniError):
                    raise request
                queued.append((index, client.submit(request), request.merged()["output"] or DEFAULT_OUTPUT))
            except BerniniError as exc:
                if len(requests) == 1:
                    raise
                queued.append((index, exc, ""))
        failures = 0
        for index, job, output in queued:
            label = f"task {index + 1}/{len(requests)}"
            if isinstance(job, BerniniError):
                log(f"error: {label}: {job}")
                failures += 1
                continue
            log(f"{label}: queued as {job['id']}")
            final = follow(client, job, not args.no_progress and sys.stderr.isatty())
            if final["state"] != "succeeded":
                log(f"error: {label}: {final['id']} {final['state']}: {final.get('error') or ''}".rstrip(": "))
                failures += 1
                continue
            log(f"{label}: wrote {client.download(final, output)}")
        return 1 if failures else 0
    except BerniniError as exc:
        log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted (the jobs stay queued on the server; DELETE /v1/jobs/ID cancels one)")
        return 130
    finally:
        if client is not None:
            client.close()
