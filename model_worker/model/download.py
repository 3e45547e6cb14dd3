"""Fetching the four published artefacts (model.md §2) into one weights directory.

The two rinna repositories come from the Hugging Face hub through ``huggingface_hub`` (which resumes and
checks them itself); the two LAVIS files come over plain HTTPS with resume (``Range`` on a ``.part``
file), a size check against the server's length and a hash check (a known SHA-256, or the MD5 that Google
Cloud Storage reports in ``x-goog-hash``). Without network the command fails at once, listing the
missing files and where to get them.

Pins: the weights directory's ``sources.lock.json`` records the SHA-256 of each LAVIS file and the commit
of each hub repository the files came from. Once recorded (by the first download, or written by the
operator from a trusted copy), every later download takes the hub files at exactly that commit and refuses
a LAVIS file whose SHA-256 differs, so a changed upstream file is never taken silently.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

log = logging.getLogger(__name__)

LAVIS_BASE = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2"
HF_ENDPOINT = "https://huggingface.co"
PINS_FILE = "sources.lock.json"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download cannot be done (no network, bad response, size or hash mismatch)."""


@dataclass(frozen=True)
class UrlFile:
    """A file fetched over plain HTTP(S) into ``dest`` (relative to the weights directory)."""

    dest: str
    url: str
    sha256: str | None = None

    def where(self) -> str:
        return self.url


@dataclass(frozen=True)
class HubFile:
    """A file of a Hugging Face hub repository, stored at ``dest`` (relative to the weights directory)."""

    dest: str
    repo_id: str
    filename: str

    def where(self, endpoint: str = HF_ENDPOINT) -> str:
        return f"{endpoint.rstrip('/')}/{self.repo_id}/resolve/main/{self.filename}"


def artefacts(*, lavis_base: str = LAVIS_BASE) -> tuple[UrlFile | HubFile, ...]:
    """The files of a weights directory and where they come from (``lavis_base`` may name a mirror)."""
    lavis_base = lavis_base.rstrip("/")
    return (
        UrlFile("eva_vit_g.pth", f"{lavis_base}/eva_vit_g.pth"),
        UrlFile("blip2_pretrained_flant5xxl.pth", f"{lavis_base}/blip2_pretrained_flant5xxl.pth"),
        HubFile("checkpoint.pth", "rinna/bilingual-gpt-neox-4b-minigpt4", "checkpoint.pth"),
        *(HubFile(f"gpt-neox/{name}", "rinna/bilingual-gpt-neox-4b", name)
          for name in ("config.json", "model.safetensors", "spiece.model", "tokenizer_config.json")),
    )


ARTEFACTS = artefacts()


def missing_files(dest: Path, files: tuple[UrlFile | HubFile, ...] = ARTEFACTS) -> list[UrlFile | HubFile]:
    return [f for f in files if not (dest / f.dest).is_file()]


def _host_of(item: UrlFile | HubFile, hub_endpoint: str) -> tuple[str, int]:
    parts = urlsplit(item.url if isinstance(item, UrlFile) else hub_endpoint)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _via_proxy(host: str, port: int) -> tuple[str, int]:
    """The proxy that urllib and huggingface_hub would connect to for this host, if any."""
    if urllib.request.proxy_bypass(host):
        return host, port
    proxy = urllib.request.getproxies().get("https" if port == 443 else "http")
    if not proxy:
        return host, port
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or host, parts.port or 8080


def _where(item: UrlFile | HubFile, hub_endpoint: str) -> str:
    return item.where() if isinstance(item, UrlFile) else item.where(hub_endpoint)


def check_network(files: list[UrlFile | HubFile], *, hub_endpoint: str, timeout: float) -> None:
    """Fail at once, naming every missing file and its source, when a needed host cannot be reached."""
    hosts = {_via_proxy(*_host_of(f, hub_endpoint)) for f in files}
    down = sorted(f"{h}:{p}" for h, p in hosts if not _reachable(h, p, timeout))
    if down:
        listing = "\n".join(f"  {f.dest}  <-  {_where(f, hub_endpoint)}" for f in files)
        raise DownloadError(f"cannot reach {', '.join(down)} (no network?). Missing files, and where to get "
                            f"them (put them in the weights directory under these names):\n{listing}")


def download_all(dest: Path, *, files: tuple[UrlFile | HubFile, ...] = ARTEFACTS,
                 hub_endpoint: str = HF_ENDPOINT, timeout: float = 10.0) -> None:
    """Fetch every missing artefact into ``dest`` (resuming partial files) as the pins say, recording the
    pins of what had none; or raise :class:`DownloadError`."""
    dest = Path(dest)
    needed = missing_files(dest, files)
    if not needed:
        return
    check_network(needed, hub_endpoint=hub_endpoint, timeout=timeout)
    pins = read_pins(dest)
    for item in needed:
        if isinstance(item, UrlFile):
            target = dest / item.dest
            fetch_url(item.url, target, sha256=item.sha256 or pins.get(item.dest), timeout=timeout)
            pins.setdefault(item.dest, _sha256_of(target))
        else:
            pins[item.repo_id] = _fetch_hub(item, dest, endpoint=hub_endpoint, revision=pins.get(item.repo_id))
        _write_pins(dest, pins)


def read_pins(dest: Path) -> dict[str, str]:
    """The weights directory's pins: LAVIS file name -> SHA-256, hub repository -> commit."""
    path = Path(dest) / PINS_FILE
    if not path.is_file():
        return {}
    try:
        pins = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DownloadError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
        raise DownloadError(f"{path} must map file names and repositories to hashes and commits")
    return pins


def _write_pins(dest: Path, pins: dict[str, str]) -> None:
    (dest / PINS_FILE).write_text(json.dumps(pins, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_hub(item: HubFile, dest: Path, *, endpoint: str, revision: str | None) -> str:
    """Download one hub file at ``revision`` (a pinned commit; the newest when None); returns its commit."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    local_dir = (dest / item.dest).parent
    try:
        commit = revision or get_hf_file_metadata(
            hf_hub_url(item.repo_id, item.filename, revision="main", endpoint=endpoint)).commit_hash
        hf_hub_download(item.repo_id, item.filename, local_dir=local_dir, endpoint=endpoint, revision=commit)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise DownloadError(f"could not fetch {item.filename} from {item.repo_id} at {revision or 'main'}: "
                            f"{exc}") from exc
    return commit


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # the partial file already holds everything (or more)
            return exc
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: {exc}") from exc


def _total_size(response, offset: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return None if length is None else int(length) + (offset if response.status == 206 else 0)


def _goog_md5(headers) -> str | None:
    for value in headers.get_all("x-goog-hash") or []:
        for part in value.split(","):
            name, _, digest = part.strip().partition("=")
            if name == "md5":
                return base64.b64decode(digest).hex()
    return None


def fetch_url(url: str, target: Path, *, sha256: str | None = None, timeout: float = 10.0) -> None:
    """Download ``url`` to ``target`` through ``target.part``, resuming it; verify size and hash."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset, timeout)
    if response.status == 416:
        response.close()
        part.unlink(missing_ok=True)  # cannot tell what the stale partial holds: start over
        return fetch_url(url, target, sha256=sha256, timeout=timeout)
    if offset and response.status != 206:
        log.info("%s: server ignored the range request; starting over", url)
        offset = 0
    total, md5 = _total_size(response, offset), _goog_md5(response.headers)
    _copy_body(response, part, offset=offset, total=total, label=target.name)
    _verify(part, url=url, total=total, sha256=sha256, md5=md5)
    part.replace(target)


def _copy_body(response, part: Path, *, offset: int, total: int | None, label: str) -> None:
    with response, part.open("ab" if offset else "wb") as out, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, desc=label, leave=False
    ) as bar:
        try:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        except (OSError, ValueError) as exc:  # connection dropped: keep the partial file for a resume
            raise DownloadError(f"{label}: interrupted after {out.tell()} bytes ({exc}); run again to resume") from exc


def _verify(part: Path, *, url: str, total: int | None, sha256: str | None, md5: str | None) -> None:
    size = part.stat().st_size
    if total is not None and size < total:
        raise DownloadError(f"{url}: got {size} of {total} bytes; run again to resume")
    problem = f"size {size} != {total}" if total is not None and size != total else None
    if problem is None and (sha256 or md5):
        digest = hashlib.sha256() if sha256 else hashlib.md5()
        with part.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        expected = sha256 or md5
        problem = None if digest.hexdigest() == expected else f"hash {digest.hexdigest()} != {expected}"
    if problem:
        part.unlink()
        raise DownloadError(f"{url}: downloaded file failed its check ({problem}); removed, run again")
