"""Read feedback dumps (CSV, TSV, JSONL, Parquet) in chunks and map their columns onto items.

Memory is bounded by the chunk size, never by the dump. A row that cannot be used becomes a
quarantine row naming file, row and field; a file that cannot be read at all is an `InputError`
naming the file. Row numbers are 1-based data records (the header is not counted; for JSONL,
the line number).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from feedback_nlp.config import SOURCES, ColumnMap
from feedback_nlp.errors import InputError, Reason, where
from feedback_nlp.records import ITEM, QUARANTINED

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
ROW = "__row__"
_TRUE = {"true", "t", "yes", "y", "1", "si", "sì", "sim", "oui", "ja", "vero"}
_FALSE = {"false", "f", "no", "n", "0", "não", "nao", "non", "nein", "falso"}


def discover(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand folders (recursively, sorted) and glob patterns (`dumps/2026-11-*.csv`,
    `exports/**/*.jsonl`; sorted) and check every file has a known format."""
    files: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in FORMATS)
            if not found:
                raise InputError(
                    "E100", f"{p}: folder holds no {', '.join(sorted(FORMATS))} files"
                )
            files.extend(found)
        elif not p.exists() and _is_glob(str(raw)):
            matched = sorted(Path(m) for m in glob.glob(str(raw), recursive=True))
            found = [f for f in matched if f.is_file() and f.suffix.lower() in FORMATS]
            if not found:
                raise InputError("E102", f"{raw}: the pattern matches no {', '.join(sorted(FORMATS))} files")
            files.extend(found)
        elif p.is_file():
            if p.suffix.lower() not in FORMATS:
                raise InputError(
                    "E101",
                    f"{p}: unknown file type '{p.suffix or '(none)'}'; expected one of "
                    f"{', '.join(sorted(FORMATS))}",
                )
            files.append(p)
        else:
            raise InputError("E102", f"{p}: no such file or folder")
    return files


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def quarantine_frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        return QUARANTINED.empty()
    return QUARANTINED.conform(pd.DataFrame(rows, columns=list(QUARANTINED.columns)))


def _q(path: Path, row: int | None, fld: str, reason: Reason, detail: str, text: str = "") -> dict:
    return {
        "source_file": str(path),
        "row": row,
        "field": fld,
        "reason": reason.value,
        "detail": detail,
        "text_preview": text[:200],
    }


def _has_surrogates(s: object) -> bool:
    return isinstance(s, str) and any("\udc80" <= c <= "\udcff" for c in s)


def _split_bad_utf8(path: Path, df: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Rows with undecodable bytes (read as surrogates) go to quarantine, named by field."""
    bad_rows: list[dict] = []
    mask = np.zeros(len(df), dtype=bool)
    for col in df.columns:
        if col == ROW or df[col].dtype != object:
            continue
        m = df[col].map(_has_surrogates).to_numpy(dtype=bool)
        for i in np.flatnonzero(m & ~mask):
            text = df[col].iloc[i].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            bad_rows.append(
                _q(path, int(df[ROW].iloc[i]), col, Reason.INVALID_UTF8,
                   "bytes that are not UTF-8; re-export the file as UTF-8", text)
            )
        mask |= m
    return df.loc[~mask], bad_rows


def _read_delimited(path: Path, sep: str, chunk_size: int, *, source: Any = None,
                    row_offset: int = 0) -> Iterator[tuple[pd.DataFrame, list[dict]]]:
    try:
        reader = pd.read_csv(
            path if source is None else source, sep=sep, dtype=object, keep_default_na=False,
            chunksize=chunk_size, encoding="utf-8", encoding_errors="surrogateescape", skip_blank_lines=False,
        )
        for chunk in reader:
            chunk.columns = [_decode_header(path, c) for c in chunk.columns]
            chunk[ROW] = chunk.index.to_numpy() + 1 + row_offset
            yield _split_bad_utf8(path, chunk)
    except pd.errors.EmptyDataError as e:
        raise InputError("E103", f"{path}: file is empty (no header, no rows)") from e
    except pd.errors.ParserError as e:
        raise InputError(
            "E104", f"{path}: not valid {'TSV' if sep == chr(9) else 'CSV'}: {e}; check quoting "
            "and the number of fields on that line"
        ) from e
    except OSError as e:
        raise InputError("E105", f"{path}: cannot read file: {e}") from e


def _decode_header(path: Path, col: object) -> str:
    col = str(col)
    if _has_surrogates(col):
        raise InputError("E106", f"{path}: the header row is not UTF-8; re-export as UTF-8")
    return col


def _jsonl_value(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _read_jsonl(path: Path, chunk_size: int, *, start: int = 0, end: int | None = None,
                first_line: int = 1) -> Iterator[tuple[pd.DataFrame, list[dict]]]:
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise InputError("E105", f"{path}: cannot read file: {e}") from e
    with fh:
        if fh.read(1) == b"":
            raise InputError("E103", f"{path}: file is empty (no JSON lines)")
        fh.seek(start)
        lines: Iterable[bytes] = fh if end is None else _lines_until(fh, end - start)
        records: list[dict] = []
        bad: list[dict] = []
        for lineno, raw in enumerate(lines, start=first_line):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                preview = raw.decode("utf-8", "replace")
                bad.append(_q(path, lineno, "", Reason.INVALID_UTF8,
                              f"byte {e.start}: not UTF-8; re-export the file as UTF-8", preview))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(_q(path, lineno, "", Reason.MALFORMED_JSON, f"{e.msg} at column {e.colno}", line))
                continue
            if not isinstance(obj, dict):
                bad.append(_q(path, lineno, "", Reason.NOT_AN_OBJECT,
                              f"expected a JSON object per line, got {type(obj).__name__}", line))
                continue
            rec = {str(k): _jsonl_value(v) for k, v in obj.items()}
            rec[ROW] = lineno
            records.append(rec)
            if len(records) >= chunk_size:
                yield pd.DataFrame.from_records(records).fillna(""), bad
                records, bad = [], []
        if records or bad:
            df = pd.DataFrame.from_records(records).fillna("") if records else pd.DataFrame({ROW: []})
            yield df, bad


def _parquet_file(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt or empty file
        raise InputError("E107", f"{path}: not a readable Parquet file: {e}") from e


def _read_parquet(path: Path, chunk_size: int, *, start: int = 0,
                  stop: int | None = None) -> Iterator[tuple[pd.DataFrame, list[dict]]]:
    pf = _parquet_file(path)
    offset = 0
    groups = None
    if start or stop is not None:  # a block: only the row groups that hold rows start..stop-1
        md = pf.metadata
        groups, first = [], 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if first + n > start and (stop is None or first < stop):
                if not groups:
                    offset = first
                groups.append(g)
            first += n
    for batch in pf.iter_batches(batch_size=chunk_size, row_groups=groups):
        lo, hi = max(start - offset, 0), len(batch) if stop is None else min(stop - offset, len(batch))
        if hi <= lo:
            offset += len(batch)
            if stop is not None and offset >= stop:
                break
            continue
        df = batch.slice(lo, hi - lo).to_pandas()
        offset += lo
        for col in df.columns:
            df[col] = df[col].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else _jsonl_value(v)).astype(object)
        df[ROW] = np.arange(offset + 1, offset + len(df) + 1)
        offset += len(batch) - lo
        yield df, []


def read_raw_chunks(path: Path, chunk_size: int) -> Iterator[tuple[pd.DataFrame, list[dict]]]:
    """Yield (raw chunk of string columns plus ROW, quarantine rows) for one file."""
    fmt = FORMATS[path.suffix.lower()]
    if fmt == "csv":
        return _read_delimited(path, ",", chunk_size)
    if fmt == "tsv":
        return _read_delimited(path, "\t", chunk_size)
    if fmt == "jsonl":
        return _read_jsonl(path, chunk_size)
    return _read_parquet(path, chunk_size)


@dataclass(frozen=True)
class Block:
    """A partition of one input file, readable on its own by any machine that sees the file:
    a byte range of whole records (CSV, TSV, JSONL) or a range of rows (Parquet). `first_row`
    is its first record's row number in the file, so quarantine rows name the file's rows."""

    path: str
    start: int          # byte offset (Parquet: row index)
    end: int            # byte offset past the last record (Parquet: row index past the last)
    first_row: int      # 1-based record number (JSONL: line number) of the first record
    rows: int           # records (JSONL: lines) in the block

    @property
    def name(self) -> str:
        return f"{Path(self.path).name}:{self.first_row}-{self.first_row + self.rows - 1}"


def plan_blocks(path: Path, rows: int) -> list[Block]:
    """Split a file into blocks of about `rows` records, on record boundaries: a CSV record may
    span lines inside quotes, so CSV and TSV are scanned with the csv module (the same quoting
    rules as pandas' parser); JSONL splits on lines; Parquet on row numbers. An empty file is
    one block, whose reading raises the same error as the local engine's."""
    fmt = FORMATS[path.suffix.lower()]
    if fmt == "parquet":
        n = _parquet_file(path).metadata.num_rows
        return [Block(str(path), a, min(a + rows, n), a + 1, min(rows, n - a)) for a in range(0, n, rows)] or \
            [Block(str(path), 0, 0, 1, 0)]
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise InputError("E105", f"{path}: cannot read file: {e}") from e
    blocks: list[Block] = []
    with fh:
        pos = len(fh.readline()) if fmt != "jsonl" else 0  # CSV and TSV blocks start after the header
        start, first, n = pos, 1, 0
        if fmt == "jsonl":
            for line in fh:
                pos += len(line)
                n += 1
                if n == rows:
                    blocks.append(Block(str(path), start, pos, first, n))
                    start, first, n = pos, first + n, 0
        else:
            consumed = [pos]

            def lines() -> Iterator[str]:
                for line in fh:
                    consumed[0] += len(line)
                    yield line.decode("utf-8", "surrogateescape")

            try:
                for _ in csv.reader(lines(), delimiter="\t" if fmt == "tsv" else ","):
                    n += 1
                    if n == rows:
                        blocks.append(Block(str(path), start, consumed[0], first, n))
                        start, first, n = consumed[0], first + n, 0
            except csv.Error:  # a file pandas may still read (or refuse, with the local engine's error)
                return [Block(str(path), 0, -1, 1, 0)]
            pos = consumed[0]
        if n or not blocks:
            blocks.append(Block(str(path), start, pos, first, n))
    return blocks


def read_block(block: Block, chunk_size: int) -> Iterator[tuple[pd.DataFrame, list[dict]]]:
    """(raw chunk, quarantine rows) of one block: the same parsing and the same rules as
    `read_raw_chunks` on the whole file, row numbers included."""
    path = Path(block.path)
    fmt = FORMATS[path.suffix.lower()]
    if block.end == -1:  # not split: read whole
        return read_raw_chunks(path, chunk_size)
    if fmt == "parquet":
        return _read_parquet(path, chunk_size, start=block.start, stop=block.end)
    if fmt == "jsonl":
        return _read_jsonl(path, chunk_size, start=block.start, end=block.end, first_line=block.first_row)
    if block.start == 0 or (block.first_row == 1 and block.rows == 0):
        return _read_delimited(path, "\t" if fmt == "tsv" else ",", chunk_size)
    with open(path, "rb") as fh:
        header = fh.readline()
        fh.seek(block.start)
        body = fh.read(block.end - block.start)
    return _read_delimited(path, "\t" if fmt == "tsv" else ",", chunk_size, source=io.BytesIO(header + body),
                           row_offset=block.first_row - 1)


def _lines_until(fh: Any, limit: int) -> Iterator[bytes]:
    for line in fh:
        yield line
        limit -= len(line)
        if limit <= 0:
            return


def stable_id(text: str, created_at: str, channel: str, source: str) -> str:
    """An id derived from content, so re-reading the same dump gives the same ids."""
    h = hashlib.sha256("\x1f".join((text, created_at, channel, source)).encode("utf-8", "surrogatepass"))
    return "h" + h.hexdigest()[:20]


def _normalise(values: pd.Series, aliases: Mapping[str, str]) -> pd.Series:
    low = values.astype(str).str.strip().str.lower()
    mapped = low.map(lambda v: aliases.get(v, v.replace(" ", "_").replace("-", "_")))
    return mapped.where(low != "", pd.NA)


def _number(values: pd.Series, low: float, high: float) -> tuple[pd.Series, int]:
    s = values.astype(str).str.strip().str.replace(",", ".", regex=False)
    num = pd.to_numeric(s.where(s != ""), errors="coerce")
    bad = (num.isna() & (s != "")) | (num < low) | (num > high)
    return num.where(~bad).astype("Float64"), int(bad.sum())


def _boolean(values: pd.Series) -> tuple[pd.Series, int]:
    low = values.astype(str).str.strip().str.lower()
    out = pd.Series(pd.NA, index=values.index, dtype="boolean")
    out[low.isin(_TRUE)] = True
    out[low.isin(_FALSE)] = False
    bad = int((out.isna() & (low != "")).sum())
    return out, bad


@dataclass
class MappedChunk:
    items: pd.DataFrame  # ITEM columns, text still raw, lang from the input when given
    quarantine: pd.DataFrame
    blanked: dict[str, int]  # field -> values outside their range, set to missing


def map_columns(
    raw: pd.DataFrame,
    path: Path,
    columns: ColumnMap,
    *,
    max_text_chars: int,
) -> MappedChunk:
    """Raw string columns -> typed ITEM frame; unusable rows to quarantine."""
    found = columns.resolve([c for c in raw.columns if c != ROW])
    if "text" not in found:
        if raw.columns.tolist() == [ROW]:  # a chunk that held only bad lines
            found["text"] = ROW
        else:
            cols = [c for c in raw.columns if c != ROW]
            raise InputError(
                "E110",
                f"{where(path, field='text')}: no text column; looked for "
                f"{list(columns.candidates['text'])}, found {cols}. Name it with "
                "`-c text=COLUMN` or a --columns file",
            )

    def col(fld: str) -> pd.Series:
        if fld in found and found[fld] in raw.columns:
            return raw[found[fld]].astype(object).fillna("").astype(str)
        return pd.Series("", index=raw.index, dtype=object)

    text = col("text") if found["text"] != ROW else pd.Series("", index=raw.index, dtype=object)
    rows = raw[ROW].astype("int64")
    quarantine: list[dict] = []
    keep = np.ones(len(raw), dtype=bool)
    empty = text.str.strip() == ""
    too_long = text.str.len() > max_text_chars
    text_col = found["text"]
    for i in np.flatnonzero(empty.to_numpy()):
        quarantine.append(_q(path, int(rows.iloc[i]), text_col, Reason.EMPTY_TEXT, "text is empty"))
    for i in np.flatnonzero(too_long.to_numpy()):
        n = len(text.iloc[i])
        quarantine.append(_q(path, int(rows.iloc[i]), text_col, Reason.TEXT_TOO_LONG,
                             f"{n} characters; the limit is max_text_chars={max_text_chars}", text.iloc[i]))
    keep &= ~(empty | too_long).to_numpy()

    created_raw = col("created_at")
    created = pd.to_datetime(created_raw.where(created_raw != ""), errors="coerce", utc=True, format="mixed")
    blanked = {"created_at": int((created.isna() & (created_raw != "")).sum())}
    nps, blanked["nps"] = _number(col("nps"), 0, 10)
    csat, blanked["csat"] = _number(col("csat"), 0, 10)
    res, blanked["resolution_hours"] = _number(col("resolution_hours"), 0, float("inf"))
    fcr, blanked["fcr"] = _boolean(col("fcr"))
    channel = _normalise(col("channel"), columns.values.get("channel", {}))
    source = _normalise(col("source"), columns.values.get("source", {}))
    ids = col("id").str.strip()
    no_id = ids == ""
    if no_id.any():
        ids = ids.copy()
        gen = [
            stable_id(t, c, ch, s)
            for t, c, ch, s in zip(text[no_id], created_raw[no_id], col("channel")[no_id], col("source")[no_id])
        ]
        ids[no_id] = gen
    lang = col("language").str.strip().str.lower().str.split(r"[-_]").str[0]

    items = pd.DataFrame(
        {
            "item_id": ids,
            "source_file": str(path),
            "row": rows,
            "text": text,
            "created_at": created,
            "channel": channel,
            "source": source,
            "segment": col("segment").str.strip().str.lower().replace("", pd.NA),
            "lang": lang.replace("", pd.NA),
            "nps": nps,
            "csat": csat,
            "resolution_hours": res,
            "fcr": fcr,
        }
    )
    items = ITEM.conform(items.loc[keep])
    return MappedChunk(items, quarantine_frame(quarantine), {k: v for k, v in blanked.items() if v})


def row_location(source_file: object, row: object) -> str:
    """Where an item was read, as quarantine details name it."""
    return f"{source_file} row {row}"


def drop_duplicate_ids(items: pd.DataFrame, seen: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the first row of each id across the whole run; later ones go to quarantine.

    `seen` maps id -> "file row N" of its first occurrence and is updated in place.
    """
    rows: list[dict] = []
    keep = np.ones(len(items), dtype=bool)
    for i, (item_id, src, row, text) in enumerate(
        zip(items["item_id"], items["source_file"], items["row"], items["text"])
    ):
        first = seen.get(item_id)
        if first is not None:
            keep[i] = False
            rows.append(_q(Path(src), int(row), "id", Reason.DUPLICATE_ID,
                           f"id {item_id!r} already read at {first}", text))
        else:
            seen[item_id] = row_location(src, row)
    return items.loc[keep], quarantine_frame(rows)


def known_source(values: pd.Series) -> pd.Series:
    """True where `source` is one of the known source types (others are kept, but flagged)."""
    return values.isin(SOURCES)
