"""Where a path lives: the local disk or an object store, behind one ``pyarrow.fs`` interface.

``locate("s3://bucket/lake/")`` gives a :class:`Location` on an ``S3FileSystem`` (path
``bucket/lake``); a plain path gives the local filesystem and the absolute path; another
scheme (``gs://``, ``az://``, ``memory://``...) goes through fsspec when its package is
installed. Stages read and write through the Location, so one code path serves both.

Credentials come only from the standard AWS chain (environment variables, the
``~/.aws`` profile, an instance or pod role), never from a URI or a config key: a URI
with ``user:secret@`` is refused, so no secret can reach a config that MLflow logs, a
manifest or a tag. ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``, the names the AWS
SDKs read) points at an S3-compatible store: MinIO, Ceph, R2, a test server.
"""

from __future__ import annotations

import functools
import io
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from bertflow.bert_core.errors import InputError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def scheme_of(spec: str) -> str | None:
    """``"s3"`` for ``s3://bucket/key``; None for a local path (``file://`` counts as local)."""
    m = _SCHEME.match(spec)
    if m is None or m.group(1).lower() == "file":
        return None
    return m.group(1).lower()


def is_remote(spec: str | os.PathLike) -> bool:
    """True for an object-store URI (``s3://``, ``gs://``...), False for a local path."""
    return scheme_of(os.fspath(spec)) is not None


@dataclass(frozen=True)
class Location:
    """A file or folder on some filesystem: ``uri`` for people and manifests, ``fs`` + ``path`` for pyarrow."""

    uri: str  # s3://bucket/key, or an absolute local path
    fs: pafs.FileSystem
    path: str  # the filesystem's own path: bucket/key on S3, the absolute path locally

    @property
    def remote(self) -> bool:
        return not isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def child(self, rel: str) -> Location:
        """The location ``rel`` (a relative posix path) below this one."""
        rel = rel.strip("/")
        return Location(f"{self.uri.rstrip('/')}/{rel}", self.fs, f"{self.path.rstrip('/')}/{rel}")

    def rel_of(self, path: str) -> str:
        """``path`` (a filesystem path below this location) relative to it."""
        return posixpath.relpath(path, self.path.rstrip("/") or "/")

    def uri_of(self, path: str) -> str:
        """The URI of ``path``, a filesystem path below this location."""
        return self.child(self.rel_of(path)).uri if path != self.path else self.uri

    def info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as exc:
            raise InputError(f"cannot reach {self.uri}: {exc}") from None

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def files(self) -> list[pafs.FileInfo]:
        """Every file below this folder (recursive; none when it does not exist)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise InputError(f"cannot list {self.uri}: {exc}") from None
        return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as fh:
            return fh.read()

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file at once: a rename locally, one PUT on an object store (never half visible)."""
        if not self.remote:
            from bertflow.bert_core.stageio import atomic_write_bytes

            atomic_write_bytes(self.path, data)
            return
        with self.fs.open_output_stream(self.path) as out:
            out.write(data)

    def delete(self) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass


def refuse_credentials(spec: str) -> None:
    """InputError for a URI that carries ``user:secret@``: checked when a config is loaded, before it is logged."""
    if scheme_of(spec) is not None and "@" in urlsplit(spec).netloc:
        raise InputError(f"{_redact(spec)}: credentials in a URI are refused (they would end up in logs); "
                         f"use the AWS environment variables or profile instead")


def locate(spec: str | os.PathLike) -> Location:
    """The :class:`Location` of a local path or an object-store URI; InputError for an unusable one."""
    spec = os.fspath(spec)
    scheme = scheme_of(spec)
    if scheme is None:
        local = spec[len("file://"):] if spec.lower().startswith("file://") else spec
        path = str(Path(local).expanduser().resolve())
        return Location(path, pafs.LocalFileSystem(), Path(path).as_posix())
    refuse_credentials(spec)
    parts = urlsplit(spec)
    if parts.query or parts.fragment:
        raise InputError(f"{spec}: a URI with ?query or #fragment is not supported; give the bucket and key only")
    path = (parts.netloc + parts.path).rstrip("/") if parts.path not in ("", "/") else parts.netloc
    uri = f"{scheme}://{path}"
    if scheme in ("s3", "s3a"):
        return Location(uri, s3_filesystem(*_s3_settings()), path)
    return Location(uri, _other_filesystem(scheme, spec), path)


def _s3_settings() -> tuple[str | None, str | None, str | None]:
    """``(endpoint host:port, scheme, region)`` from the standard AWS environment variables."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    for name in ENDPOINT_VARIABLES:
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        url = urlsplit(value if "://" in value else f"https://{value}")
        if url.username or url.password:
            raise InputError(f"{name}: credentials in the endpoint URL are refused; "
                             f"use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise InputError(f"{name}={value!r} is not an http(s) endpoint URL (e.g. http://127.0.0.1:9000)")
        return url.netloc, url.scheme, region
    return None, None, region


@functools.lru_cache(maxsize=8)
def s3_filesystem(endpoint: str | None, scheme: str | None, region: str | None) -> pafs.S3FileSystem:
    """An S3 filesystem on the default credential chain (cached: building one probes the environment)."""
    kwargs: dict = {"allow_bucket_creation": False, "allow_bucket_deletion": False,
                    "allow_delayed_open": True}  # a small object: one PutObject at close, not a multipart upload
    if endpoint is not None:
        kwargs.update(endpoint_override=endpoint, scheme=scheme)
    if region is not None:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def _other_filesystem(scheme: str, spec: str) -> pafs.FileSystem:
    """fsspec's implementation of ``scheme`` wrapped for pyarrow, when fsspec and that package are installed."""
    try:
        import fsspec
    except ImportError:
        raise InputError(f"{spec}: scheme {scheme}:// needs fsspec (pip install fsspec and its {scheme} package); "
                         f"s3:// works without it") from None
    try:
        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as exc:
        raise InputError(f"{spec}: no filesystem for {scheme}:// ({exc})") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _redact(spec: str) -> str:
    parts = urlsplit(spec)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://***@{host}{parts.path}"


GLOB_CHARS = frozenset("*?[")


def expand(loc: Location) -> tuple[Location, list[pafs.FileInfo], bool]:
    """``(root, files, is_folder)`` of an object-store path: one object, every object below a prefix, or the
    objects a glob matches (``*`` and ``?`` within one level, ``**/`` across levels), from one listing.

    Raises InputError when nothing is there.
    """
    if any(ch in GLOB_CHARS for ch in loc.path):
        fixed = []
        for part in loc.path.split("/"):
            if any(ch in GLOB_CHARS for ch in part):
                break
            fixed.append(part)
        prefix = "/".join(fixed)
        root = Location(loc.uri[: len(loc.uri) - len(loc.path)] + prefix, loc.fs, prefix)
        pattern = glob_regex(loc.path)
        return root, [i for i in root.files() if pattern.fullmatch(i.path)], True
    info = loc.info()
    if info.type == pafs.FileType.File:
        parent = loc.path.rsplit("/", 1)[0]
        return Location(loc.uri.rsplit("/", 1)[0], loc.fs, parent), [info], False
    if info.type != pafs.FileType.Directory:
        raise InputError(f"{loc.uri} does not exist (no object or prefix of that name)")
    return loc, loc.files(), True


def glob_regex(pattern: str) -> re.Pattern:
    """A glob over object keys as a regex: ``*``/``?`` stay within one level, ``**/`` spans any number."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] in "*?":
            out.append("[^/]*" if pattern[i] == "*" else "[^/]")
            i += 1
        elif pattern[i] == "[" and pattern.find("]", i + 1) != -1:
            end = pattern.find("]", i + 1)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def listing_digest(loc: Location) -> str:
    """A digest of what a remote path lists (key, size, modification time of each object; a glob's matches):
    one LIST instead of a download, and it changes with any rewrite."""
    import hashlib

    root, infos, _ = expand(loc)
    h = hashlib.sha256()
    for info in infos:
        mtime = info.mtime.isoformat() if info.mtime is not None else ""
        h.update(f"{root.rel_of(info.path)}\0{info.size}\0{mtime}\n".encode())
    return h.hexdigest()


class ReadCounter:
    """Bytes read through :func:`open_counted` files: what a run's manifest reports as ``bytes_read``."""

    def __init__(self) -> None:
        self.bytes = 0

    def add(self, n: int) -> None:
        self.bytes += n


class _CountingFile(io.RawIOBase):
    """A seekable reader over a pyarrow file that counts the bytes it hands out."""

    def __init__(self, raw: pa.NativeFile, counter: ReadCounter) -> None:
        super().__init__()
        self._raw, self._counter = raw, counter

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def size(self) -> int:
        return self._raw.size()

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n if n is not None and n >= 0 else None)
        self._counter.add(len(data))
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def open_counted(loc: Location, counter: ReadCounter) -> pa.NativeFile:
    """Open ``loc`` for random access, counting the bytes read into ``counter``."""
    raw = loc.fs.open_input_file(loc.path)
    return pa.PythonFile(_CountingFile(raw, counter), mode="r")
