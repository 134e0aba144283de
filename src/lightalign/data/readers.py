"""Read raw rows from wherever the data lives, each with its origin (``file:line``).

Sources:
- a local ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file;
- ``demo:<split>``: the demo task shipped with lightalign (``sft``, ``eval``, ``prompts``,
  ``rankings``, ``pairs``), generated once into the cache;
- anything else is a Hugging Face dataset id, optionally ``id:split`` (e.g. ``Anthropic/hh-rlhf:test``).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from lightalign.errors import DataError

Row = tuple[dict, str]  # (raw row, "file:line")

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_rows(source: str, split: str = "train") -> Iterator[Row]:
    """Yield ``(row, origin)`` for every row of ``source``; raise :class:`DataError` on unreadable input."""
    if source.startswith("demo:"):
        yield from _read_demo(source[len("demo:") :])
        return
    path = Path(source).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise DataError(source, "file not found")
        yield from _read_local(path)
        return
    yield from _read_hub(source, split)


def _read_demo(name: str) -> Iterator[Row]:
    from lightalign.demo import ensure_demo_data

    files = ensure_demo_data()
    if name == "text":  # the demo dialogues as plain text, for the pretrain variant
        for row, origin in _read_local(Path(files["sft"])):
            yield {"text": "\n".join(m["content"] for m in row["messages"])}, origin
        return
    if name not in files:
        raise DataError(f"demo:{name}", f"unknown demo split; valid: {', '.join(sorted(files))}")
    yield from _read_local(Path(files[name]))


def _read_local(path: Path) -> Iterator[Row]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet(path)
        return
    text = _decode_utf8(path, path.read_bytes())
    if not text.strip():
        raise DataError(str(path), "the file is empty")
    if suffix == ".json":
        yield from _read_json(path, text)
    elif suffix == ".csv":
        yield from _read_csv(path, text)
    else:
        yield from _read_jsonl(path, text)


# Byte patterns of files that are not UTF-8 text, named so the error says what to do about them.
_NOT_UTF8 = (
    (codecs.BOM_UTF16_LE, "UTF-16 (it starts with a UTF-16 byte-order mark)"),
    (codecs.BOM_UTF16_BE, "UTF-16 (it starts with a UTF-16 byte-order mark)"),
    (b"\x1f\x8b", "gzip-compressed: decompress it first"),
)


def _decode_utf8(path: Path, raw: bytes) -> str:
    """The text of a data file, or a :class:`DataError` saying which encoding it has instead of UTF-8."""
    for magic, what in _NOT_UTF8:
        if raw.startswith(magic):
            raise DataError(str(path), f"not UTF-8 but {what}; re-save the file as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}", f"not valid UTF-8 (byte {err.start}); re-save the file as UTF-8") from None
    if "\x00" in text:  # valid UTF-8 never holds NUL in text files; UTF-16 without a BOM holds one per ASCII char
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"{path}:{line}", "holds NUL bytes: UTF-16 without a byte-order mark, or not a text file; "
                                          "re-save the file as UTF-8")
    return text


def _read_jsonl(path: Path, text: str) -> Iterator[Row]:
    # Split on "\n" only: str.splitlines() also splits on U+2028, U+0085 ..., which JSON strings may hold raw.
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        origin = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            # A last row without its newline that does not parse is most likely a file cut off while written.
            cut = number == len(lines)
            hint = "; the file ends inside this row: is it truncated?" if cut else ""
            raise DataError(origin, f"malformed JSON at column {err.colno}: {err.msg}{hint}") from None
        if not isinstance(row, dict):
            raise DataError(origin, f"expected a JSON object per line, got {type(row).__name__}")
        yield row, origin


def _read_json(path: Path, text: str) -> Iterator[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}", f"malformed JSON at column {err.colno}: {err.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(str(path), "expected a JSON list of objects (or {\"data\": [...]})")
    for index, row in enumerate(data):
        origin = f"{path}:item {index}"
        if not isinstance(row, dict):
            raise DataError(origin, f"expected an object, got {type(row).__name__}")
        yield row, origin


def _read_csv(path: Path, text: str) -> Iterator[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""))  # the csv module handles quoted line breaks itself
    for row in reader:
        origin = f"{path}:{reader.line_num}"
        if None in row:
            raise DataError(origin, "more values than header columns")
        yield row, origin


def _read_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(str(path), f"cannot read Parquet: {str(err).splitlines()[0]}") from None
    for index, row in enumerate(table.to_pylist()):
        yield row, f"{path}:row {index}"


def _read_hub(source: str, split: str) -> Iterator[Row]:
    dataset_id, _, explicit_split = source.partition(":")
    import datasets

    try:
        dataset = datasets.load_dataset(dataset_id, split=explicit_split or split)
    except Exception as err:  # offline, unknown id, unknown split: one line, not the hub client's trace
        raise DataError(source, f"cannot load Hugging Face dataset: {str(err).splitlines()[0]}") from None
    for index, row in enumerate(dataset):
        yield dict(row), f"{source}:row {index}"
