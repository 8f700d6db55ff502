"""Getting a published checkpoint's file: the Hugging Face Hub through `huggingface_hub`, direct URLs through
`torch.hub.download_url_to_file`, each verified before anything reads it.

Environment:
    SEGLAB_HOME: seglab's cache (default `~/.cache/seglab`): `downloads/` holds direct-URL files and files placed by
        hand, `weights/` the converted safetensors, `locks/` the file locks.
    SEGLAB_WEIGHTS_MIRROR: `http://host:port/prefix` replaces the scheme and host of every direct URL (the path is
        kept), for mirrors and air-gapped sites.
    HF_ENDPOINT, HF_HUB_OFFLINE, HF_TOKEN, HF_HOME / HF_HUB_CACHE: as `huggingface_hub` documents them; read when a
        file is fetched, so setting them after import works too.
    SEGLAB_OFFLINE=1: never touch the network (as HF_HUB_OFFLINE=1 does for the Hub).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

from seglab.hub.table import WeightsEntry

_TRUE = {"1", "true", "yes", "on"}


class WeightsDownloadError(RuntimeError):
    """A checkpoint that could not be fetched or failed verification; the message says what to do."""


def seglab_home() -> Path:
    return Path(os.environ.get("SEGLAB_HOME") or Path.home() / ".cache" / "seglab").expanduser()


def is_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("SEGLAB_OFFLINE", "HF_HUB_OFFLINE"))


def mirrored(url: str) -> str:
    """`url` with its scheme and host replaced by `SEGLAB_WEIGHTS_MIRROR` (its path kept), when that is set."""
    mirror = os.environ.get("SEGLAB_WEIGHTS_MIRROR", "").strip()
    if not mirror:
        return url
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return mirror.rstrip("/") + path


def placed_path(entry: WeightsEntry) -> Path:
    """Where the source file of `entry` is kept (and where a person may put it by hand)."""
    downloads = seglab_home() / "downloads"
    if entry.hub:
        return downloads / "hf" / entry.hub.repo / entry.hub.file
    return downloads / entry.file_name


def cached_path(entry: WeightsEntry, img_size: int | None = None) -> Path:
    """Where the converted (seglab safetensors) weights of `entry` are cached; `img_size`: a ViT backbone converted
    for another position-embedding grid than the row's."""
    size = f".img{img_size}" if img_size is not None and img_size != entry.img_size else ""
    return seglab_home() / "weights" / entry.model / f"{entry.tag}{size}.safetensors"


def safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The `__metadata__` of a safetensors file, read from its header (no torch); None when unreadable."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length < 100_000_000:
                return None
            return json.loads(f.read(length)).get("__metadata__") or {}
    except (OSError, ValueError):
        return None


def is_cached(entry: WeightsEntry, img_size: int | None = None) -> bool:
    """Whether the converted file exists and was made from the row's present source."""
    meta = safetensors_metadata(cached_path(entry, img_size))
    return meta is not None and meta.get("source") == entry.location


def lock(path: Path):
    """An inter-process lock (`filelock`) beside seglab's cache, named after `path`."""
    from filelock import FileLock

    name = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    locks = seglab_home() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"{path.name}.{name}.lock"))


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def format_problem(path: Path, name: str | None = None) -> str | None:
    """Why `path` cannot be a checkpoint file (an HTML page, an empty or truncated file), or None.

    Recognised: zip containers (PyTorch >= 1.6, `.npz`) with their central directory intact, safetensors whose
    header and data fit the file, pickles (legacy PyTorch, detectron2 `.pkl`; a `.pkl` must end with the STOP
    opcode). `name` is the file's published name when `path` has another (a Hub cache blob)."""
    suffix = Path(name or path.name).suffix
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in text[:256]:
        return "an HTML page, not a checkpoint (an error or sign-in page?)"
    if suffix == ".safetensors":
        length = int.from_bytes(head[:8], "little")
        try:
            with open(path, "rb") as f:
                f.seek(8)
                header = json.loads(f.read(length)) if length < size else None
        except (ValueError, UnicodeDecodeError):
            header = None
        if not isinstance(header, dict):
            return f"not a safetensors file (no readable header; {size} bytes)"
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + length + end != size:
            return f"a truncated safetensors file ({size} bytes, its header describes {8 + length + end})"
        return None
    if head[:4] == b"PK\x03\x04" and suffix != ".pkl":  # torch >= 1.6 files and .npz are zip archives
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except zipfile.BadZipFile as exc:
            return f"a damaged or truncated zip archive ({exc}; {size} bytes)"
        return None
    if head[:1] == b"\x80" and suffix != ".npz":  # a pickle: legacy torch.save, detectron2 .pkl
        if suffix == ".pkl":
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b".":
                    return f"a truncated pickle ({size} bytes, no STOP opcode at the end)"
        return None
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return f"a {'zip archive' if head[:1] == b'P' else 'pickle'}, not what its name {name or path.name} says"
    return f"not a checkpoint format seglab knows (first bytes {head[:8]!r}; {size} bytes)"


def verify_file(path: Path, entry: WeightsEntry, origin: str, lfs_sha256: str | None = None) -> str:
    """Checks the format and the publisher's hash of a downloaded file; returns its SHA-256.

    Raises:
        WeightsDownloadError: naming `origin` (the URL), the file, and the expected and actual hash.
    """
    problem = format_problem(path, entry.file_name)
    if problem is not None:
        raise WeightsDownloadError(f"{origin} gave {problem}; the file was removed")
    sha256 = file_digest(path)
    expected = [("sha256", entry.sha256, sha256), ("sha256 (Hub LFS)", lfs_sha256, sha256)]
    if entry.md5:
        expected.append(("md5", entry.md5, file_digest(path, "md5")))
    for kind, want, actual in expected:
        if want and not actual.startswith(want):
            raise WeightsDownloadError(f"{origin}: {kind} mismatch: expected {want}, got {actual[:len(want)]} "
                                       f"(full {actual}); the file was removed and not loaded")
    return sha256


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def hub_cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None  # huggingface_hub's own default


def hub_download(repo: str, file: str, revision: str | None = None) -> Path:
    """`huggingface_hub.hf_hub_download` with HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE / SEGLAB_OFFLINE and the cache
    variables read now (huggingface_hub reads some of them once, when it is imported)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, file, revision=revision, cache_dir=hub_cache_dir(),
                                endpoint=os.environ.get("HF_ENDPOINT") or None, local_files_only=is_offline(),
                                token=os.environ.get("HF_TOKEN")))


def _place_hint(entry: WeightsEntry, target: Path) -> str:
    return f"place {entry.file_name} (from {entry.location}) at {target}"


def fetch_source(entry: WeightsEntry, progress: bool = True) -> tuple[Path, str]:
    """The verified source file of `entry` and its SHA-256, downloaded when not cached.

    A file already at `placed_path(entry)` (downloaded earlier, or put there by hand) is used first; Hub files
    otherwise live in the Hugging Face cache.
    """
    target = placed_path(entry)
    with lock(target):
        if target.is_file():
            try:
                return target, verify_file(target, entry, str(target))
            except WeightsDownloadError:
                _remove(target)
                raise
        if entry.fetch == "manual":
            how = entry.manual.get("how", "not downloadable by a program")
            raise WeightsDownloadError(f"{entry.name} cannot be downloaded by a program ({how}): download "
                                       f"{entry.manual['page']} in a browser and save the file as {target}")
        if entry.fetch == "hub":
            return _fetch_hub(entry, target, progress)
        return _fetch_url(entry, target, progress)


def _fetch_hub(entry: WeightsEntry, target: Path, progress: bool) -> tuple[Path, str]:
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    hub, offline = entry.hub, is_offline()
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        path = hub_download(hub.repo, hub.file, hub.revision)
    except LocalEntryNotFoundError as exc:
        state = "offline (HF_HUB_OFFLINE / SEGLAB_OFFLINE)" if offline else f"cannot reach {endpoint or 'the Hub'}"
        raise WeightsDownloadError(f"{entry.name}: {state} and {hub.repo}/{hub.file} is not in the Hugging Face "
                                   f"cache; {_place_hint(entry, target)}, or download it while online "
                                   f"({type(exc).__name__})") from exc
    except (EntryNotFoundError, RepositoryNotFoundError) as exc:
        raise WeightsDownloadError(f"{entry.name}: the Hub has no {hub.file} in {hub.repo}@{hub.revision} "
                                   f"({type(exc).__name__}); {_place_hint(entry, target)}") from exc
    except OSError as exc:  # huggingface_hub's HTTP errors are OSErrors
        raise WeightsDownloadError(f"{entry.name}: downloading {entry.location} failed ({exc}); "
                                   f"{_place_hint(entry, target)}") from exc
    blob = Path(os.path.realpath(path))
    lfs = blob.name if len(blob.name) == 64 and all(c in "0123456789abcdef" for c in blob.name) else None
    try:
        return path, verify_file(blob, entry, entry.location, lfs_sha256=lfs)
    except WeightsDownloadError:
        _remove(path, blob)  # the snapshot link and the blob: a later call downloads again
        raise


def _fetch_url(entry: WeightsEntry, target: Path, progress: bool) -> tuple[Path, str]:
    import urllib.error

    from torch.hub import download_url_to_file

    url = mirrored(entry.url)
    if is_offline():
        raise WeightsDownloadError(f"{entry.name}: offline (SEGLAB_OFFLINE / HF_HUB_OFFLINE) and not cached; "
                                   f"download {url} and save it as {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.download")
    try:
        download_url_to_file(url, str(partial), progress=progress)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        _remove(partial)
        raise WeightsDownloadError(f"{entry.name}: downloading {url} failed ({exc}); download it by other means "
                                   f"and save it as {target}") from exc
    try:
        sha256 = verify_file(partial, entry, url)
    except WeightsDownloadError:
        _remove(partial)
        raise
    os.replace(partial, target)
    return target, sha256
