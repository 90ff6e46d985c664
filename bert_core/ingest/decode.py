"""Bytes to text for plain-text inputs: decompression, encoding detection, counted replacement.

Detection (when no encoding is declared), per file:

1. a byte-order mark decides (UTF-8 BOM -> ``utf-8-sig``, UTF-16/32 BOMs);
2. else strict UTF-8 if the bytes decode;
3. else, if the file shows more valid multi-byte UTF-8 than invalid bytes, it is UTF-8
   with a few damaged bytes: decode as UTF-8, replace and count those;
4. else a single-byte legacy file: ``cp1252`` when it has bytes in 0x80-0x9F (smart
   quotes, dashes), ``latin-1`` otherwise. cp1252's five unassigned bytes fall back
   to their Latin-1 code points, so this step never fails.

Undecodable bytes become U+FFFD and are counted (``replaced_bytes``); they never crash.
"""

from __future__ import annotations

import codecs
import gzip
import io
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
_COUNTING = "bertflow.count_replace"
_CP1252_LATIN1 = "bertflow.cp1252_latin1"
_tally = threading.local()
_C1_BYTES = re.compile(rb"[\x80-\x9f]")
_BINARY_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _count_and_replace(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _tally.replaced = getattr(_tally, "replaced", 0) + (exc.end - exc.start)
    _tally.calls = getattr(_tally, "calls", 0) + 1
    return "\ufffd", exc.end


def _cp1252_as_latin1(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return "".join(map(chr, exc.object[exc.start : exc.end])), exc.end


codecs.register_error(_COUNTING, _count_and_replace)
codecs.register_error(_CP1252_LATIN1, _cp1252_as_latin1)


class Undecodable(Exception):
    """The bytes are not text at all (e.g. binary junk): the file is rejected with this reason."""


@dataclass
class Decoded:
    text: str
    encoding: str
    replaced_bytes: int


def open_binary(path: str | Path, compression: str | None) -> BinaryIO:
    """A read-only byte stream over a plain, ``.gz`` or ``.zst`` file."""
    if compression == "gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if compression == "zst":
        return _ZstdReader(open(path, "rb"))  # type: ignore[return-value]
    return open(path, "rb")


class _ZstdReader(io.RawIOBase):
    """Multi-frame zstd decompression that raises EOFError on a truncated file.

    (``zstandard``'s ``stream_reader`` silently returns a short stream when the input ends
    mid-frame; a truncated file must be rejected, not half-read.)
    """

    def __init__(self, fh: BinaryIO) -> None:
        import zstandard

        self._fh = fh
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._dobj = None
        self._buf = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            chunk = self._fh.read(CHUNK)
            if not chunk:
                if self._dobj is not None and not self._dobj.eof:
                    raise EOFError("zstd stream ended before the end of its frame")
                break
            while chunk:
                if self._dobj is None:
                    self._dobj = self._new()
                self._buf += self._dobj.decompress(chunk)
                chunk = b""
                if self._dobj.eof:
                    chunk = self._dobj.unused_data
                    self._dobj = None
        if size < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return out

    def close(self) -> None:
        self._fh.close()
        super().close()


def read_all(path: str | Path, compression: str | None, limit: int | None = None) -> bytes:
    """Decompressed content (at most ``limit`` bytes); corrupt or truncated compression raises
    (OSError, EOFError, zlib.error, ZstdError)."""
    parts, size = [], 0
    with open_binary(path, compression) as fh:
        while (limit is None or size < limit) and (block := fh.read(CHUNK if limit is None else min(CHUNK, limit - size))):
            parts.append(block)
            size += len(block)
    return b"".join(parts)


def check_not_binary(head: bytes, declared: str | None) -> None:
    """Reject NUL bytes or many control bytes at the start of a file declared as text."""
    if declared and declared.lower().replace("_", "-").startswith(("utf-16", "utf-32", "utf16", "utf32")):
        return
    if any(head.startswith(bom) for bom, name in _BOMS if name != "utf-8-sig"):
        return
    if not head:
        return
    nul = head.count(0)
    control = len(_BINARY_CONTROL.findall(head))
    if nul or control > 0.05 * len(head):
        raise Undecodable(f"looks like binary data, not text ({nul} NUL and {control} control bytes in the first {len(head)} bytes)")


def decode_bytes(data: bytes, declared: str | None = None) -> Decoded:
    """Decode one file's bytes with the declared encoding or the detected one (see module doc)."""
    encoding = declared or detect_encoding(data)
    return Decoded(*_decode_with(data, encoding))


def detect_encoding(data: bytes) -> str:
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    evidence = Evidence()
    evidence.feed(data, final=True)
    return evidence.verdict()


class Evidence:
    """Weighs valid multi-byte UTF-8 against invalid bytes, chunk by chunk (for streamed files)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=_COUNTING)
        self.multibyte_extra = 0  # bytes beyond the first of each valid multi-byte character
        self.invalid = 0
        self.has_c1 = False

    def feed(self, chunk: bytes, final: bool = False) -> None:
        _tally.replaced = _tally.calls = 0
        text = self._decoder.decode(chunk, final)
        # each inserted U+FFFD is 3 UTF-8 bytes for one character: take those out of the evidence
        extra = 0 if text.isascii() else len(text.encode("utf-8")) - len(text) - 2 * _tally.calls
        self.multibyte_extra += extra
        self.invalid += _tally.replaced
        self.has_c1 = self.has_c1 or bool(_C1_BYTES.search(chunk))

    def verdict(self) -> str:
        if self.invalid == 0 or self.multibyte_extra > self.invalid:
            return "utf-8"
        return "cp1252" if self.has_c1 else "latin-1"


def decode_utf8_counted(data: bytes) -> tuple[str, int]:
    """UTF-8 with each undecodable byte run replaced by U+FFFD; returns the text and the bytes replaced."""
    _tally.replaced = 0
    return data.decode("utf-8", errors=_COUNTING), _tally.replaced


def _decode_with(data: bytes, encoding: str) -> tuple[str, str, int]:
    if encoding == "cp1252":
        return data.decode("cp1252", errors=_CP1252_LATIN1), encoding, 0
    _tally.replaced = 0
    text = data.decode(encoding, errors=_COUNTING)
    return text, encoding, _tally.replaced


def detect_stream(opener: Callable[[], BinaryIO]) -> str:
    """Detect the encoding of a file too big to hold: one full streaming pass."""
    with opener() as fh:
        head = fh.read(CHUNK)
        for bom, name in _BOMS:
            if head.startswith(bom):
                return name
        evidence = Evidence()
        block = head
        while block:
            nxt = fh.read(CHUNK)
            evidence.feed(block, final=not nxt)
            block = nxt
    return evidence.verdict()


class StreamDecoder:
    """Decodes a byte stream chunk by chunk, counting replaced bytes across the whole file."""

    def __init__(self, encoding: str) -> None:
        errors = _CP1252_LATIN1 if encoding == "cp1252" else _COUNTING
        self._decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
        self.replaced_bytes = 0

    def iter_text(self, fh: BinaryIO) -> Iterator[str]:
        block = fh.read(CHUNK)
        while block:
            nxt = fh.read(CHUNK)
            _tally.replaced = 0
            text = self._decoder.decode(block, final=not nxt)
            self.replaced_bytes += _tally.replaced
            if text:
                yield text
            block = nxt

