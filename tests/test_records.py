import json

import pytest

from sgpt.core.errors import RecordError
from sgpt.core.records import RecordWriter, format_record, parse_line, read_records


def test_three_line_formats_are_detected():
    assert parse_line('{"id": "a", "units": [1, 2], "x": {"y": 1}}', "d") == {
        "id": "a", "units": [1, 2], "x": {"y": 1}}
    assert parse_line("<sosp><12><7><eosp>\n", "f_1") == {
        "id": "f_1", "units": [12, 7], "units_meta": {"dedup": True}}
    # decoding added tokens can insert spaces
    assert parse_line("<sosp> <12> <7> <eosp>", "f_1")["units"] == [12, 7]
    assert parse_line("12 7 7 3", "f_2") == {
        "id": "f_2", "units": [12, 7, 7, 3], "units_meta": {"dedup": False}}


def test_json_record_without_id_takes_the_audio_stem():
    assert parse_line('{"audio": "dir/utt1.flac"}', "x_1")["id"] == "utt1"
    assert parse_line('{"text": "hi"}', "x_1")["id"] == "x_1"


@pytest.mark.parametrize("line, reason", [
    ('{"id": "a", "units": [1, -2]}', "'units' must be a list of integers >= 0"),
    ('{"id": "a", "units": [1, 2.5]}', "'units' must be a list of integers >= 0"),
    ('{"id": "a", "units": [true]}', "'units' must be a list of integers >= 0"),
    ('{"id": "a", "units": [1, 2], "durations": [1]}', "differ in length"),
    ('{"id": "a", "units": [1], "durations": [0]}', "'durations' must be a list of integers >= 1"),
    ('{"id": 3}', "'id' must be a string"),
    ('{"id": "a", "text": 5}', "'text' must be a string"),
    ('{"id": "a", ', "malformed JSON"),
    ("[1, 2]", "not a JSON record"),
    ("<sosp><12>hello<eosp>", "not a <sosp>"),
    ("12 x 3", "not a JSON record"),
])
def test_bad_lines_raise_one_clear_reason(line, reason):
    with pytest.raises(RecordError) as e:
        parse_line(line, "f_3", "f.jsonl:3")
    assert reason in e.value.reason


def test_read_records_names_bad_lines_and_keeps_good_ones(tmp_path):
    f = tmp_path / "in.km"
    f.write_text('1 2 3\n\n{"id": "a", "units": [4]}\n{bad\n<sosp><5><eosp>\n')
    got = list(read_records([str(f), str(tmp_path / "missing.km"), str(tmp_path)]))
    assert [g["id"] if isinstance(g, dict) else str(g) for g in got] == [
        "in_1", "a", f"{f}:4: malformed JSON (Expecting property name enclosed in double "
        "quotes at column 2)", "in_5", f"{tmp_path / 'missing.km'}: no such file",
        f"{tmp_path}: is a directory, not a file of records"]


def test_each_line_is_read_on_its_own_whatever_it_holds(tmp_path):
    """A byte-order mark, a line that is not UTF-8, JSON nested 100,000 deep, an integer of
    5,000 digits: each bad line is one error naming file:line; the good lines all come."""
    f = tmp_path / "hostile.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + b'{"id": "a", "units": [1]}\n'
                  + b'{"id": "latin1", "text": "caf\xe9"}\n'
                  + b'{"id": "b", "units": [2]}\n'
                  + b'{"id": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
                  + b'{"id": "huge", "units": [' + b"9" * 5000 + b"]}\n"
                  + b'{"id": "c", "text": "caf\xc3\xa9"}\n')
    out = list(read_records([str(f)]))
    good = [r["id"] for r in out if isinstance(r, dict)]
    bad = {e.where: e.reason for e in out if isinstance(e, RecordError)}
    assert good == ["a", "b", "c"] and out[-1]["text"] == "café"
    assert bad == {f"{f}:2": "not UTF-8 text (byte 0xe9 at column 30)",
                   f"{f}:4": "malformed JSON (nested too deep)",
                   f"{f}:5": bad[f"{f}:5"]}
    assert bad[f"{f}:5"].startswith("malformed JSON (Exceeds the limit")


def test_format_record():
    r = {"id": "a", "units": [3, 1], "text": "é"}
    assert format_record(r) == '{"id": "a", "units": [3, 1], "text": "é"}'
    assert format_record(r, "speechgpt") == "<sosp><3><1><eosp>"
    assert format_record(r, "fairseq") == "3 1"


def test_writer_is_atomic_and_resumes_after_a_kill(tmp_path):
    out = tmp_path / "u.txt"
    w = RecordWriter(str(out), "fairseq")
    w.write({"id": "a", "units": [1]})
    w.write({"id": "b", "units": [2]})
    assert not out.exists()  # nothing that looks whole until close()
    # a kill mid-line: the output has a partial line the journal does not know of
    with open(str(out) + ".partial", "a") as f:
        f.write("3 3")
    w2 = RecordWriter(str(out), "fairseq")
    assert w2.done == {"a", "b"}
    w2.write({"id": "c", "units": [4]})
    w2.close()
    assert out.read_text() == "1\n2\n4\n"
    assert not (tmp_path / "u.txt.partial").exists()
    assert not (tmp_path / "u.txt.partial.ids").exists()


def test_writer_resumes_over_a_finished_jsonl_file(tmp_path):
    out = tmp_path / "u.jsonl"
    out.write_text(json.dumps({"id": "a", "units": [1]}) + "\n" + '{"id": "b", "un')
    w = RecordWriter(str(out))
    assert w.done == {"a"}
    w.write({"id": "b", "units": [2]})
    w.close()
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["a", "b"]


def test_writer_makes_the_output_directory(tmp_path):
    out = tmp_path / "new" / "deeper" / "u.jsonl"
    w = RecordWriter(str(out))
    w.write({"id": "a", "units": [1]})
    w.close()
    assert json.loads(out.read_text())["id"] == "a"
