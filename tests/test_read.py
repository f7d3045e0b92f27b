import json

import pandas as pd
import pytest

from conftest import write
from feedback_nlp.config import ColumnMap, parse_column_overrides
from feedback_nlp.errors import InputError
from feedback_nlp.read import discover, drop_duplicate_ids, map_columns, read_raw_chunks, stable_id


def mapped(path, columns, chunk_size=100, max_text_chars=20000):
    out = []
    for raw, bad in read_raw_chunks(path, chunk_size):
        m = map_columns(raw, path, columns, max_text_chars=max_text_chars)
        out.append((m, bad))
    return out


def test_read_csv_tsv_jsonl_parquet_give_the_same_items(tmp_path, columns):
    df = pd.DataFrame({"id": ["a", "b"], "comment": ["primo testo", "second text"], "channel": ["E-mail", "Twitter"],
                       "nps": ["3", "10"]})
    df.to_csv(tmp_path / "x.csv", index=False)
    df.to_csv(tmp_path / "x.tsv", index=False, sep="\t")
    df.to_json(tmp_path / "x.jsonl", orient="records", lines=True, force_ascii=False)
    df.to_parquet(tmp_path / "x.parquet", index=False)
    results = []
    for ext in ("csv", "tsv", "jsonl", "parquet"):
        [(m, bad)] = mapped(tmp_path / f"x.{ext}", columns)
        assert not bad
        results.append(m.items[["item_id", "row", "text", "channel", "nps"]].reset_index(drop=True))
    for r in results[1:]:
        pd.testing.assert_frame_equal(results[0], r)
    assert results[0]["channel"].tolist() == ["email", "social"]
    assert results[0]["row"].tolist() == [1, 2]


def test_read_in_chunks_numbers_rows_across_chunks(tmp_path, columns):
    pd.DataFrame({"text": [f"testo numero {i}" for i in range(25)]}).to_csv(tmp_path / "a.csv", index=False)
    chunks = mapped(tmp_path / "a.csv", columns, chunk_size=10)
    assert [len(m.items) for m, _ in chunks] == [10, 10, 5]
    assert chunks[2][0].items["row"].tolist() == list(range(21, 26))


def test_read_discover_expands_folders_and_rejects_unknown_types(tmp_path):
    write(tmp_path / "d" / "a.csv", "text\nx\n")
    write(tmp_path / "d" / "sub" / "b.jsonl", '{"text": "y"}\n')
    write(tmp_path / "d" / "notes.txt", "ignored inside a folder")
    assert [p.name for p in discover([tmp_path / "d"])] == ["a.csv", "b.jsonl"]
    bad = write(tmp_path / "x.xlsx", "?")
    with pytest.raises(InputError, match=r"\[E101\].*x\.xlsx.*unknown file type '\.xlsx'") as e:
        discover([bad])
    assert e.value.exit_code == 2
    with pytest.raises(InputError, match=r"\[E102\].*missing\.csv: no such file"):
        discover([tmp_path / "missing.csv"])


def test_read_missing_text_column_names_file_and_field(tmp_path, columns):
    p = write(tmp_path / "a.csv", "id,body_text\n1,hello\n")
    with pytest.raises(InputError, match=r"\[E110\] .*a\.csv, field 'text': no text column.*found \['id', 'body_text'\]"):
        mapped(p, columns)
    # ... and an override fixes it
    fixed = columns.with_overrides(parse_column_overrides(["text=body_text"]))
    [(m, _)] = mapped(p, fixed)
    assert m.items["text"].tolist() == ["hello"]


@pytest.mark.parametrize("name", ["empty.csv", "empty.jsonl", "empty.tsv"])
def test_read_empty_file_is_an_input_error(tmp_path, columns, name):
    p = write(tmp_path / name, "")
    with pytest.raises(InputError, match=rf"\[E103\] .*{name}: file is empty"):
        mapped(p, columns)


def test_read_unreadable_parquet_is_an_input_error(tmp_path, columns):
    p = write(tmp_path / "broken.parquet", b"not parquet at all")
    with pytest.raises(InputError, match=r"\[E107\] .*broken\.parquet: not a readable Parquet file"):
        mapped(p, columns)


def test_read_non_utf8_row_is_quarantined_with_its_field(tmp_path, columns):
    p = write(tmp_path / "latin1.csv", b"id,text\n1,ok text\n2,caf\xe9 froid\n3,fine\n")
    [(m, bad)] = mapped(p, columns)
    assert m.items["item_id"].tolist() == ["1", "3"]
    assert [(b["row"], b["field"], b["reason"]) for b in bad] == [(2, "text", "invalid_utf8")]
    assert "caf\ufffd froid" in bad[0]["text_preview"]


def test_read_jsonl_bad_lines_are_quarantined_with_line_numbers(tmp_path, columns):
    lines = [json.dumps({"text": "uno"}), "{not json", "[1, 2]", "", json.dumps({"text": "due"})]
    p = write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")
    raw_bytes = p.read_bytes() + b'{"text": "tr\xe8s"}\n'
    p.write_bytes(raw_bytes)
    [(m, bad)] = mapped(p, columns)
    assert m.items["text"].tolist() == ["uno", "due"]
    assert m.items["row"].tolist() == [1, 5]
    assert [(b["row"], b["reason"]) for b in bad] == [(2, "malformed_json"), (3, "not_an_object"), (6, "invalid_utf8")]


def test_read_empty_and_huge_texts_are_quarantined(tmp_path, columns):
    big = "a" * 1_000_000
    pd.DataFrame({"text": ["ok", "   ", big]}).to_csv(tmp_path / "a.csv", index=False)
    [(m, _)] = mapped(tmp_path / "a.csv", columns)
    assert m.items["text"].tolist() == ["ok"]
    q = m.quarantine
    assert q["reason"].tolist() == ["empty_text", "text_too_long"]
    assert q["row"].tolist() == [2, 3]
    assert "1000000 characters" in q["detail"].iloc[1]
    assert len(q["text_preview"].iloc[1]) <= 200


def test_read_ids_are_stable_from_content_when_absent(tmp_path, columns):
    p = write(tmp_path / "a.csv", "text,channel\nhello there,chat\nhello there,phone\n")
    [(m1, _)] = mapped(p, columns)
    [(m2, _)] = mapped(p, columns)
    assert m1.items["item_id"].tolist() == m2.items["item_id"].tolist()
    assert m1.items["item_id"].nunique() == 2
    assert m1.items["item_id"].iloc[0] == stable_id("hello there", "", "chat", "")


def test_read_duplicate_ids_keep_the_first_and_quarantine_the_rest(tmp_path, columns):
    p = write(tmp_path / "a.csv", "id,text\n7,first\n8,other\n7,second\n")
    [(m, _)] = mapped(p, columns)
    seen: dict = {}
    items, q = drop_duplicate_ids(m.items, seen)
    assert items["text"].tolist() == ["first", "other"]
    assert q["reason"].tolist() == ["duplicate_id"]
    assert q["row"].tolist() == [3]
    assert "a.csv row 1" in q["detail"].iloc[0]


def test_read_kpi_fields_are_typed_and_out_of_range_values_blanked(tmp_path, columns):
    p = write(tmp_path / "a.csv",
              "text,nps,csat,fcr,date,generation\na,9,4,yes,2026-11-01,Gen_Z\nb,eleven,5,no,nonsense,\nc,11,,sim,2026-11-02T10:00:00Z,boomer\n")
    [(m, _)] = mapped(p, columns)
    it = m.items
    assert it["nps"].tolist()[0] == 9 and pd.isna(it["nps"].iloc[1]) and pd.isna(it["nps"].iloc[2])
    assert it["fcr"].tolist() == [True, False, True]
    assert it["segment"].iloc[0] == "gen_z"
    assert m.blanked == {"nps": 2, "created_at": 1}


def test_read_column_map_rejects_unknown_fields():
    with pytest.raises(InputError, match="E020"):
        ColumnMap({"text": ("text",), "colour": ("c",)})
    with pytest.raises(InputError, match="E023"):
        parse_column_overrides(["text"])


def test_read_broken_csv_quoting_is_an_input_error_naming_the_file(tmp_path, columns):
    p = write(tmp_path / "broken.csv", 'id,text\n1,"an unclosed quote\n2,next row\n')
    with pytest.raises(InputError, match=r"\[E104\] .*broken\.csv: not valid CSV"):
        mapped(p, columns)


def test_read_header_only_file_has_no_rows(tmp_path, columns):
    p = write(tmp_path / "h.csv", "id,text\n")
    assert sum(len(m.items) for m, _ in mapped(p, columns)) == 0
