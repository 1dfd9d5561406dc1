"""Reading one large JSON object (a COCO instances file, 450 MB for train+val) key by key, its big
arrays one element at a time, so that no more than a few chunks of the file are held at once.

`json.loads` of a COCO file builds every annotation as Python objects: several times the file's size
in memory. Here the file is read in chunks, each array element is decoded by the stdlib's C decoder
(`JSONDecoder.raw_decode`) and handed over with its exact source text, and what is consumed is dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from labelgen.data.text import open_user_text, read_user_chunk
from labelgen.errors import DataError

CHUNK = 8 << 20  # characters read at a time
# A value still undecodable with this much text after its start is broken, not cut by a chunk's end
# (COCO's largest elements, RLE masks of big images, are a few hundred kB).
MAX_ELEMENT = 64 << 20
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# Decoding a float costs more than the rest of a number-heavy element (COCO polygons): a caller that
# only forwards an element's text can take its floats as text, about twice as fast.
_FLOATS_AS_TEXT = json.JSONDecoder(parse_float=str)


class JsonObjectStream:
    """The top-level object of a JSON file, read key by key.

    Iterating yields each top-level key in file order; for the current key call either `value()` (the
    whole value, decoded) or `elements()` (an array's elements, each as (value, source text)), or
    neither (the value is then skipped, an array element by element). Raises `DataError` naming the
    file for invalid JSON and for unreadable or non-UTF-8 files (`what` and `fix` name the file's role
    in those messages, as `read_user_text` does).
    """

    def __init__(self, path: Path, what: str, fix: str) -> None:
        self.path, self._what, self._fix = path, what, fix
        self._file: TextIO | None = None
        self._buf, self._pos, self._eof = "", 0, False
        self._dropped = 0  # characters of the file before the buffer
        self._consumed = True

    def __enter__(self) -> JsonObjectStream:
        self._file = open_user_text(self.path, self._what, self._fix)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def __iter__(self) -> Iterator[str]:
        """Each top-level key; raises `DataError` if the file does not hold a JSON object."""
        if self._peek() != "{":
            raise DataError(f"{self.path}: not a JSON object (it starts with {self._peek()!r})")
        self._pos += 1
        if self._peek() == "}":
            return
        while True:
            key, _ = self._decode()
            if not isinstance(key, str) or self._peek() != ":":
                self._fail("expected a string key and ':'")
            self._pos += 1
            self._consumed = False
            yield key
            if not self._consumed:
                self._skip()
            if self._delimiter("}"):
                return

    def is_array(self) -> bool:
        """Whether the current key's value is an array."""
        return self._peek() == "["

    def value(self) -> Any:
        """The current key's whole value."""
        self._consumed = True
        return self._decode()[0]

    def elements(self, floats_as_text: bool = False) -> Iterator[tuple[Any, str]]:
        """The current key's array elements: (decoded value, its exact JSON text). With
        `floats_as_text`, floats in the values are their JSON text (str), not floats."""
        self._consumed = True
        if self._peek() != "[":
            self._fail("expected an array")
        self._pos += 1
        if self._peek() == "]":
            self._pos += 1
            return
        while True:
            decoder = _FLOATS_AS_TEXT if floats_as_text else _DECODER
            yield from self._buffered_elements(decoder)
            yield self._decode(decoder, keep_text=True)  # the element at the buffer's end, read on
            if self._delimiter("]"):
                return

    def _buffered_elements(self, decoder: json.JSONDecoder) -> Iterator[tuple[Any, str]]:
        """The elements that lie whole in the buffer, each followed by ','; stops before the last
        element of the array and before one that may run past the buffer. The fast path: one C
        decode and a few index operations per element (a COCO file has ~7 annotations per image)."""
        decode, whitespace = decoder.raw_decode, _WHITESPACE.match
        buf, pos = self._buf, self._pos
        limit = len(buf) - 1  # an element must end before it, so that its delimiter is in the buffer
        while True:
            start = whitespace(buf, pos).end()
            try:
                value, end = decode(buf, start)
            except json.JSONDecodeError:
                break
            end = whitespace(buf, end).end()
            if end >= limit or buf[end] != ",":
                break
            self._pos = pos = end + 1
            yield value, buf[start:end].rstrip()

    def _skip(self) -> None:
        if self.is_array():
            for _ in self.elements():
                pass
        else:
            self.value()

    def _delimiter(self, closing: str) -> bool:
        """Step over the ',' or `closing` after a value; True if it was `closing`."""
        found = self._peek()
        if found not in (",", closing):
            self._fail(f"expected ',' or {closing!r} after a value")
        self._pos += 1
        return found == closing

    def _peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file), reading more as needed."""
        while True:
            self._pos = _WHITESPACE.match(self._buf, self._pos).end()
            if self._pos < len(self._buf) or not self._read():
                return self._buf[self._pos : self._pos + 1]

    def _decode(self, decoder: json.JSONDecoder = _DECODER, keep_text: bool = False) -> tuple[Any, str]:
        """Decode the value at the current position and step past it: (value, its text if
        `keep_text` else ''). Reads on while the value may be cut by the buffer's end."""
        self._peek()  # raw_decode does not skip leading whitespace
        while True:
            try:
                value, end = decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as e:
                if len(self._buf) - self._pos < MAX_ELEMENT and self._read():
                    continue
                raise DataError(f"{self.path}: not valid JSON ({e.msg} at character {self._dropped + e.pos})") from e
            # a number ending exactly at the buffer's end may go on in the next chunk
            if end < len(self._buf) or not self._read():
                text = self._buf[self._pos : end] if keep_text else ""
                self._pos = end
                return value, text

    def _read(self) -> bool:
        """Append the next chunk, dropping what is consumed; False at the end of the file."""
        if self._eof:
            return False
        chunk = read_user_chunk(self._file, self.path, self._what, self._fix, CHUNK)
        self._dropped += self._pos
        self._buf, self._pos = self._buf[self._pos :] + chunk, 0
        self._eof = not chunk
        return bool(chunk)

    def _fail(self, what: str) -> None:
        found = self._buf[self._pos : self._pos + 20]
        raise DataError(f"{self.path}: not valid JSON ({what} at character {self._dropped + self._pos}: {found!r})")
