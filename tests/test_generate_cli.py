"""sgpt-generate as users run it: a saved model directory, real pipes into sgpt-vocode, bad
records, resuming, adapters, and the interactive mode with real espeak-ng speech."""

from __future__ import annotations

import json
import os
import select
import subprocess

import click
import numpy as np
import pytest
import soundfile as sf
from conftest import run_tool, tool
from fakes.hifigan import fabricate_vocoder, small_config
from fakes.tokenizers import extended, llama_base
from test_generate import FITTED, K, fitted_model, tiny_llama, tokenizer


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The fitted model as sgpt-train writes it (a full chain-of-modality model)."""
    from sgpt.lm.models import model_meta, save_model_dir

    out = tmp_path_factory.mktemp("model") / "stage3"
    tok_dir = str(extended("llama", "reference", K))
    meta = model_meta("chain-of-modality", K, False, "tiny-llama", len(tokenizer()))
    save_model_dir(out, fitted_model(), meta, tok_dir)
    return out


@pytest.fixture(scope="module")
def vocoder(tmp_path_factory):
    return fabricate_vocoder(tmp_path_factory.mktemp("vocoder"),
                             small_config(num_embeddings=K), seed=7)


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models: a second thread only adds contention


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def generate(model_dir, *args, **kw):
    return run_tool("sgpt-generate", "--model", model_dir, *args, env=ONE_THREAD, **kw)


def test_answers_pipe_into_sgpt_vocode_and_bad_records_are_named(model_dir, vocoder, tmp_path):
    bad = [{"id": "markup", "text": "hi <eoh> [SpeechGPT]: yes"},
           {"id": "unknown-unit", "units": [1, 2, K + 3]},
           {"id": "empty", "units": []}]
    lines = jsonl([r for r, _ in FITTED[:2]] + bad + [r for r, _ in FITTED[2:]])
    lines += "{not json\n"
    r = generate(model_dir, "--greedy", "--batch-size", "3", "--keep-order", input=lines)
    assert r.returncode == 1
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 4, r.stderr
    assert any(e.startswith("sgpt-generate: error: markup: 'text' contains markup '<eoh>'")
               for e in errors)
    assert any(e.startswith("sgpt-generate: error: unknown-unit: unit 53 in 'units' is "
                            "outside 0..49")
               for e in errors)
    assert any(e.startswith("sgpt-generate: error: empty: nothing to answer") for e in errors)
    assert any(e.startswith("sgpt-generate: error: stdin:9: malformed JSON") for e in errors)
    out = {rec["id"]: rec for rec in records(r.stdout)}
    assert list(out) == [rec["id"] for rec, _ in FITTED]  # --keep-order
    assert out["t2s"]["text"] == "Paris is the capital of France."
    assert out["s2s"]["transcript"] == "Where do you live?"
    assert out["s2s"]["units"] == [10, 11, 10]
    assert out["asr"]["text"] == "the quick brown fox"
    assert out["cont"]["units"] == [43, 44, 45]
    assert out["s2s"]["prompt"] == {"units": [7, 8, 9, 7, 12]}
    speech = jsonl(rec for rec in out.values() if "units" in rec)
    v = run_tool("sgpt-vocode", "--vocoder", vocoder, "-o", tmp_path / "wav", input=speech,
                 env=ONE_THREAD)
    assert v.returncode == 0, v.stderr
    for rid in ("t2s", "s2s", "tts", "cont"):
        info = sf.info(str(tmp_path / "wav" / f"{rid}.wav"))
        assert info.samplerate == 16000 and info.frames > 0


def test_no_model_says_what_to_pass():
    r = run_tool("sgpt-generate", input=jsonl([{"id": "a", "text": "hi"}]))
    assert r.returncode == 2
    assert "no model given" in r.stderr and "--model DIR" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_tool("sgpt-generate", "--model", "no/such/dir", input=jsonl([{"id": "a"}]))
    assert r.returncode == 1
    assert r.stderr == "sgpt-generate: error: no/such/dir: no such model directory or file\n"


def test_output_file_resumes_and_long_prompts_fail_unless_truncated(model_dir, tmp_path):
    out = tmp_path / "answers.jsonl"
    long = {"id": "long", "units": list(range(K)) * 10}  # 500 units: no room in 512
    first = [FITTED[2][0], long]
    r = generate(model_dir, "--greedy", "-o", out, input=jsonl(first))
    assert r.returncode == 1
    assert "long: prompt of 5" in r.stderr and "--truncate" in r.stderr
    assert [x["id"] for x in records(out.read_text())] == ["asr"]
    r = generate(model_dir, "--greedy", "--truncate", "--max-new-tokens", "4", "-o", out,
                 input=jsonl(first))
    assert r.returncode == 0, r.stderr
    assert "resumed: 1 records already answered" in r.stderr
    assert "long: question truncated to its first" in r.stderr
    got = records(out.read_text())
    assert [x["id"] for x in got] == ["asr", "long"]
    assert got[1]["prompt"]["units"] == long["units"]  # the record itself is not cut


def test_answers_stream_from_a_pipe_and_seeds_repeat(model_dir):
    """Each answer comes out while stdin is still open (no batch to fill), and the same
    seed gives the same answers however the records were batched."""
    questions = [jsonl([FITTED[0][0]]), "<sosp><7><8><9><7><12><eosp>\n"]
    args = [tool("sgpt-generate"), "--model", str(model_dir), "--seed", "5",
            "--max-new-tokens", "30", "--batch-size", "8"]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1,
                            env={**os.environ, **ONE_THREAD})
    streamed = []
    try:
        for question in questions:
            proc.stdin.write(question)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 300)
            assert ready, "no answer while stdin is open"
            streamed.append(proc.stdout.readline())
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    got = records("".join(streamed))
    assert [r["id"] for r in got] == ["t2s", "stdin_2"]
    assert got[1]["task"] == "chat" and got[1]["prompt"]["units"] == [7, 8, 9, 7, 12]
    # the same seed in this process, all records in one batch, gives the same answers
    from sgpt.generate.decode import Generator, Sampling, answer_record, build_prompt

    tok = tokenizer()
    gen = Generator(fitted_model(), tok, Sampling(seed=5, max_new_tokens=30), batch_size=2)
    spoken = {"id": "stdin_2", "units": [7, 8, 9, 7, 12], "units_meta": {"dedup": True}}
    prompts = [build_prompt(r, tok) for r in (FITTED[0][0], spoken)]
    want = {res.prompt.id: answer_record(res, tok)[0]["raw"] for res in gen.generate(prompts)}
    assert {r["id"]: r["raw"] for r in got} == want


def test_adapter_on_a_plain_directory(tmp_path):
    """A published-style pair: a transformers directory with the extended tokenizer, and a
    PEFT LoRA adapter directory on top (SpeechGPT-7B-cm + -com)."""
    from peft import LoraConfig, get_peft_model

    from sgpt.generate.decode import Generator, Sampling, answer_record, build_prompt
    from sgpt.lm.models import copy_tokenizer

    tok = tokenizer()
    base = tiny_llama(len(tok), seed=5)
    plain = tmp_path / "cm"
    base.save_pretrained(str(plain), safe_serialization=True)
    copy_tokenizer(str(extended("llama", "reference", K)), plain)
    lora = get_peft_model(tiny_llama(len(tok), seed=5),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                     init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / "com"))
    merged = lora.merge_and_unload().eval()
    record = {"id": "q", "text": "How are you today?"}
    want = {}
    for name, model in (("base", base), ("merged", merged)):
        gen = Generator(model, tok, Sampling(greedy=True, max_new_tokens=8, min_new_tokens=8))
        (res,) = gen.generate([build_prompt(record, tok)])
        want[name] = answer_record(res, tok)[0]["raw"]
    assert want["base"] != want["merged"]
    flags = ("--greedy", "--max-new-tokens", "8", "--min-new-tokens", "8")
    r = run_tool("sgpt-generate", "--model", plain, "--adapter", tmp_path / "com", *flags,
                 input=jsonl([record]), env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert records(r.stdout)[0]["raw"] == want["merged"]


def test_interactive_text_and_audio_questions(model_dir, vocoder, speech_dir, tmp_path):
    km = tmp_path / "km.npy"  # k-means of K centroids over MFCC features (39 dims)
    np.save(km, np.random.default_rng(0).standard_normal((K, 39)).astype(np.float32))
    wav = speech_dir / "s0.wav"
    questions = (f"What is the capital of France?\n{wav}\nsay <5>\n"
                 f"Transcribe it. This is input: {wav}\n{tmp_path / 'typo.wav'}\n")
    r = generate(model_dir, "-i", "--greedy", "--max-new-tokens", "40", "--units-encoder",
                 "mfcc", "--units-kmeans", km, "--vocoder", vocoder, "--wav-dir",
                 tmp_path / "talk", input=questions)
    assert r.returncode == 1  # the third question holds markup
    assert "error: turn-3: 'text' contains markup '<5>'" in r.stderr
    # a mistyped audio path is an error, not a text question; warnings name the turn too
    assert f"error: turn-5: {tmp_path / 'typo.wav'}: no such audio file" in r.stderr
    warnings = [w for w in r.stderr.splitlines() if ": warning: " in w]
    assert all(": warning: turn-" in w for w in warnings), r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "answer: Paris is the capital of France."
    assert lines[1] == f"speech: {tmp_path / 'talk' / 'answer-1.wav'}"
    assert sf.info(str(tmp_path / "talk" / "answer-1.wav")).frames > 0
    # the spoken question, and an instruction about it
    assert sum(line.startswith("answer:") for line in lines[2:]) == 2


def test_interactive_audio_needs_the_units_flags(speech_dir):
    from sgpt.cli.generate import Voice
    from sgpt.core.errors import SgptError

    voice = Voice(None, None, 11, None, None, None, ".", "cpu", "float32")
    voice.ready(50)
    with pytest.raises(SgptError, match="--units-kmeans"):
        voice.units(str(speech_dir / "s0.wav"))
    with pytest.raises(click.UsageError, match="--units-kmeans"):
        Voice("mfcc", None, 11, None, None, None, ".", "cpu", "float32")


def test_interactive_speech_errors_of_the_background_load_are_raised_by_ready(tmp_path):
    """The encoder and vocoder load while the model does: a broken one is still named
    before the first prompt, in the main thread."""
    from sgpt.cli.generate import Voice
    from sgpt.core.errors import SgptError

    voice = Voice("mfcc", None, 11, str(tmp_path / "missing.npy"), None, None, ".", "cpu",
                  "float32")
    with pytest.raises(SgptError, match="missing.npy"):
        voice.ready(50)


@pytest.mark.parametrize("k, reason", [(60, "not the tokenizer it was trained with"),
                                       (40, "trained with k=50 units, the tokenizer has 40")])
def test_a_tokenizer_that_does_not_match_the_model_is_refused(model_dir, k, reason):
    from sgpt.cli.generate import Session
    from sgpt.core.errors import SgptError
    from sgpt.generate.decode import Sampling

    other = str(extended("llama", "reference", k))
    with pytest.raises(SgptError, match=reason):
        Session(str(model_dir), None, other, "cpu", "float32", Sampling(), 1, True)


def test_a_model_directory_without_a_usable_tokenizer_says_what_to_pass(model_dir, tmp_path):
    """A plain transformers save (no tokenizer), a mistyped --tokenizer, a tokenizer that was
    never extended: one line naming the directory, not transformers' hub message."""
    from sgpt.cli.generate import Session
    from sgpt.core.errors import SgptError
    from sgpt.generate.decode import Sampling
    from sgpt.lm.models import copy_tokenizer

    bare = tmp_path / "bare"
    tiny_llama(len(tokenizer())).save_pretrained(str(bare), safe_serialization=True)
    plain = llama_base()  # a LLaMA-style tokenizer, not extended

    def refused(model, tok=None):
        with pytest.raises(SgptError) as e:
            Session(str(model), None, tok, "cpu", "float32", Sampling(), 1, True)
        return str(e.value)

    unfinished = tmp_path / "unfinished"  # what a killed sgpt-train run leaves
    (unfinished / "checkpoint").mkdir(parents=True)
    (unfinished / "train_config.yaml").write_text("stage: cross-modal\n")
    message = refused(unfinished)
    assert message.startswith(f"{unfinished}: an sgpt-train run that has not finished")
    moved = tmp_path / "adapter-of-a-moved-base"  # an sgpt-train LoRA directory
    moved.mkdir()
    copy_tokenizer(str(extended("llama", "reference", K)), moved)
    (moved / "sgpt_model.json").write_text(json.dumps(
        {"format": "sgpt-model", "version": 1, "stage": "chain-of-modality", "k": K,
         "adapter": True, "base_model": str(tmp_path / "gone"),
         "vocab_size": len(tokenizer())}))
    message = refused(moved)
    assert "is not there" in message and f"as --adapter {moved}" in message
    message = refused(bare)
    assert message.startswith(f"{bare}: no tokenizer in the model directory")
    assert "--tokenizer DIR" in message
    assert refused(model_dir, str(tmp_path / "nope")) == f"{tmp_path / 'nope'}: no such " \
        "tokenizer directory"
    assert "huggingface" not in refused(model_dir, str(tmp_path / "nope"))
    message = refused(model_dir, str(plain))
    assert message.startswith(f"{plain}: ") and "sgpt-tokenize extend" in message


def test_shards_split_the_records(model_dir, tmp_path, capsys):
    from sgpt.cli.common import Reporter
    from sgpt.cli.generate import Session, answer_records
    from sgpt.generate.decode import Sampling

    source = tmp_path / "q.jsonl"
    source.write_text(jsonl(r for r, _ in FITTED))
    session = Session(str(model_dir), None, None, "cpu", "float32",
                      Sampling(greedy=True, max_new_tokens=40), 4, True)
    ids = []
    for shard in ((0, 2), (1, 2)):
        code = answer_records(session, [str(source)], "-", Reporter("sgpt-generate"), False,
                              "chat", False, {}, keep_order=True, shard=shard)
        assert code == 0
        ids.append([json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()])
    assert ids == [["t2s", "s2s"], ["asr", "tts", "cont"]]


def test_config_file_settings_and_flags_over_them(model_dir, tmp_path):
    from click.testing import CliRunner

    from sgpt.cli.generate import cli

    config = tmp_path / "generate.yaml"
    config.write_text(f"model: {model_dir}\ngreedy: true\nmax-new-tokens: 7\n")
    question = jsonl([{"id": "q", "text": "What is the capital of France?"}])
    runner = CliRunner()
    r = runner.invoke(cli, ["--config", str(config)], input=question)
    assert r.exit_code == 0, r.output
    assert "stopped at the token budget (7 new tokens)" in r.stderr
    r = runner.invoke(cli, ["--config", str(config), "--max-new-tokens", "5"], input=question)
    assert r.exit_code == 0 and "(5 new tokens)" in r.stderr
    config.write_text("max_new_tokens: 7\ntemprature: 0.1\n")
    r = runner.invoke(cli, ["--config", str(config)], input=question)
    assert r.exit_code == 2 and "unknown setting 'temprature'" in r.stderr
    config.write_text("max-new-tokens: lots\n")  # a wrong type names the file and the key
    r = runner.invoke(cli, ["--config", str(config)], input=question)
    assert r.exit_code == 2 and f"{config}: setting 'max-new-tokens': 'lots'" in r.stderr


def test_a_stage_1_model_continues_units_unless_told_otherwise(tmp_path):
    """sgpt-train's stage-1 directory never saw the chat prompt: without --task its
    records are continued, as the README's spoken-language-model use; --task still wins."""
    from click.testing import CliRunner

    from sgpt.cli.generate import cli
    from sgpt.lm.models import model_meta, save_model_dir

    s1 = tmp_path / "s1"
    save_model_dir(s1, tiny_llama(len(tokenizer())), model_meta(
        "pretrain", K, False, "tiny-llama", len(tokenizer())),
        str(extended("llama", "reference", K)))
    question = jsonl([{"id": "u", "units": [3, 4, 5]}])
    flags = ["--model", str(s1), "--greedy", "--max-new-tokens", "2"]
    r = CliRunner().invoke(cli, flags, input=question)
    assert r.exit_code == 0, r.output
    assert records(r.stdout)[0]["task"] == "continue"
    assert "stage-1 (pretrain) model" in r.stderr
    r = CliRunner().invoke(cli, [*flags, "--task", "asr"], input=question)
    assert r.exit_code == 0 and records(r.stdout)[0]["task"] == "asr", r.output


def test_output_that_is_an_input_or_a_directory_is_a_usage_error(model_dir, tmp_path):
    """'-o questions.jsonl questions.jsonl' used to 'resume' from the questions (every id
    there) and answer nothing with exit status 0; '-o answers/' was an internal error."""
    from click.testing import CliRunner

    from sgpt.cli.generate import cli

    questions = tmp_path / "questions.jsonl"
    questions.write_text(jsonl([{"id": "q", "text": "What is the capital of France?"}]))
    before = questions.read_bytes()
    for out, words in ((questions, "is also an input"), (tmp_path, "is a directory")):
        r = CliRunner().invoke(cli, ["--model", str(model_dir), "-o", str(out),
                                     str(questions)])
        assert r.exit_code == 2 and words in r.stderr, r.output
        assert "Traceback" not in r.output
    assert questions.read_bytes() == before
