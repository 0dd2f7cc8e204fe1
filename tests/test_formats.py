"""Format versions of what the tools write: the current version round-trips; a newer one is
refused in one line naming the file, its version and the newest this sgpt reads, as the tool
reports it (exit status 1, no traceback); an older one no longer read says what makes it
again; a file of an sgpt before versions (or a published layout) loads as it did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_tool
from fakes.hifigan import fabricate_vocoder, small_config
from fakes.tokenizers import extended

from sgpt.core.default import load_default
from sgpt.core.errors import CheckpointError
from sgpt.core.formats import FileFormat
from sgpt.lm.models import MODEL_META, model_meta, read_meta
from sgpt.lm.tokenizer import META_FILE, SpeechTokenizer, TokenizerError
from sgpt.tokenize.pack import PackedDataset, PackError
from sgpt.units.kmeans import load_centroids, read_sidecar, save_centroids
from sgpt.vocode import hifigan_train, vocos_train
from sgpt.vocode.architectures import load_vocoder
from sgpt.vocode.hifigan import UnitHiFiGAN, read_config
from sgpt.vocode.vocos import UnitVocos

SHIPPED = Path(__file__).resolve().parents[1] / "sgpt" / "default"
THING = FileFormat("sgpt-thing", "a thing", "make it again with sgpt-thing", version=3,
                   oldest=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rewrite(path: Path, **changes) -> dict:
    """Rewrite the JSON object at ``path`` with ``changes`` (None: the key removed)."""
    data = {**json.loads(path.read_text()), **changes}
    data = {k: v for k, v in data.items() if v is not None}
    path.write_text(json.dumps(data))
    return data


def newer(path: Path, name: str, reads: int = 1) -> str:
    """The refusal of ``path`` rewritten to version ``reads + 1`` of format ``name``."""
    return (f"{path}: {name} version {reads + 1} is newer than this sgpt reads ({reads}): "
            "upgrade sgpt")


def refused_in_one_line(r, tool: str, message: str) -> None:
    assert r.returncode == 1 and r.stderr == f"{tool}: error: {message}\n", r.stderr


# --- the check ------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [2, 3])
def test_the_versions_a_format_reads_load(version):
    THING.check("t.json", {"format": "sgpt-thing", "version": version, "k": 1})
    assert THING.stamp() == {"format": "sgpt-thing", "version": 3}


@pytest.mark.parametrize("meta, message", [
    ({"format": "sgpt-thing", "version": 4},
     "sgpt-thing version 4 is newer than this sgpt reads (3): upgrade sgpt"),
    ({"format": "sgpt-thing", "version": 1},
     "sgpt-thing version 1 is older than this sgpt reads (2 to 3): make it again with "
     "sgpt-thing"),
    ({"format": "sgpt-thing"},  # no version: the first
     "sgpt-thing version 1 is older than this sgpt reads (2 to 3): make it again with "
     "sgpt-thing"),
    ({"format": "sgpt-thing", "version": "3"}, "version '3' is not a format version"),
    ({"format": "sgpt-thing", "version": True}, "version True is not a format version"),
    ({"format": "sgpt-other", "version": 3}, "not a thing (format 'sgpt-thing')"),
    ({"version": 3}, "not a thing (format 'sgpt-thing')"),
    ([3], "not a thing (format 'sgpt-thing')"),
])
def test_other_files_are_refused_by_name(meta, message):
    with pytest.raises(CheckpointError) as e:
        THING.check("t.json", meta)
    assert str(e.value) == f"t.json: {message}"


def test_a_file_without_a_format_is_version_1_where_sgpt_once_wrote_none():
    unnamed = FileFormat("sgpt-thing", "a thing", "remake it", unnamed=True)
    unnamed.check("c.json", {"upsample_rates": [2], "version": "v2"})  # that version is not ours
    with pytest.raises(CheckpointError, match="newer than this sgpt reads"):
        unnamed.check("c.json", {"format": "sgpt-thing", "version": 2})
    dropped = FileFormat("sgpt-thing", "a thing", "remake it", 2, 2, unnamed=True)
    with pytest.raises(CheckpointError, match="^c.json: sgpt-thing version 1 is older"):
        dropped.check("c.json", {"upsample_rates": [2]})
    with pytest.raises(TokenizerError):
        FileFormat("sgpt-thing", "a thing", "remake it", error=TokenizerError).check("t", {})


# --- each format ----------------------------------------------------------------------------

def test_kmeans_sidecar(speech_dir, tmp_path):
    km = tmp_path / "km.npy"
    centroids = np.random.default_rng(0).standard_normal((8, 39)).astype(np.float32)
    save_centroids(km, centroids, {"encoder": "mfcc", "layer": None})
    sidecar = km.with_suffix(".json")
    assert read_sidecar(km)["format"] == "sgpt-kmeans" and read_sidecar(km)["version"] == 2
    np.testing.assert_array_equal(load_centroids(km), centroids)
    rewrite(sidecar, format=None, version=None)  # as sgpt wrote it before versions
    np.testing.assert_array_equal(load_centroids(km), centroids)
    wav = speech_dir / "s0.wav"
    assert run_tool("sgpt-units", "--encoder", "mfcc", "--kmeans", km, wav).returncode == 0
    rewrite(sidecar, format="sgpt-kmeans", version=3)
    with pytest.raises(CheckpointError) as e:
        load_centroids(km)
    assert str(e.value) == newer(sidecar, "sgpt-kmeans", 2)
    r = run_tool("sgpt-units", "--encoder", "mfcc", "--kmeans", km, wav)
    refused_in_one_line(r, "sgpt-units", newer(sidecar, "sgpt-kmeans", 2))


def test_model_description(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(extended("llama", "reference"), model)
    meta = model_meta("cross-modal", 1000, False, "base", 2006)
    (model / MODEL_META).write_text(json.dumps(meta))
    assert read_meta(model) == meta and meta["version"] == 1
    legacy = rewrite(model / MODEL_META, version=None)
    assert read_meta(model) == legacy
    rewrite(model / MODEL_META, version=2)
    with pytest.raises(CheckpointError) as e:
        read_meta(model)
    assert str(e.value) == newer(model / MODEL_META, "sgpt-model")
    r = run_tool("sgpt-generate", "--model", model, input='{"id": "q", "text": "Hi?"}\n')
    refused_in_one_line(r, "sgpt-generate", newer(model / MODEL_META, "sgpt-model"))


def test_tokenizer_description(tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(extended("llama", "reference"), tok)
    meta = json.loads((tok / META_FILE).read_text())
    assert (meta["format"], meta["version"]) == ("sgpt-tokenizer", 1)
    assert SpeechTokenizer.from_dir(str(tok)).k == 1000
    rewrite(tok / META_FILE, version=None)
    assert SpeechTokenizer.from_dir(str(tok)).k == 1000
    rewrite(tok / META_FILE, version=2)
    with pytest.raises(TokenizerError) as e:
        SpeechTokenizer.from_dir(str(tok))
    assert str(e.value) == newer(tok / META_FILE, "sgpt-tokenizer")
    data = tmp_path / "s1.txt"
    data.write_text("<sosp><1><2><eosp>\n")
    r = run_tool("sgpt-tokenize", "pack", "--tokenizer", tok, "-o", tmp_path / "p", data)
    refused_in_one_line(r, "sgpt-tokenize", newer(tok / META_FILE, "sgpt-tokenizer"))
    r = run_tool("sgpt-tokenize", "extend", tok, "-o", tmp_path / "again")
    refused_in_one_line(r, "sgpt-tokenize", newer(tok / META_FILE, "sgpt-tokenizer"))


def test_packed_part_header(tmp_path):
    data = tmp_path / "s1.txt"
    data.write_text("".join(f"<sosp><{i}><{i + 1}><{i + 2}><eosp>\n" for i in range(20)))
    packed = tmp_path / "p"
    r = run_tool("sgpt-tokenize", "pack", "--tokenizer", extended("llama", "reference"),
                 "--block-size", "8", "-o", packed, data)
    assert r.returncode == 0, r.stderr
    header = packed / "part-00000-of-00001.json"
    assert json.loads(header.read_text())["version"] == 1
    blocks = len(PackedDataset(str(packed)))
    assert blocks > 0
    rewrite(header, version=None)
    assert len(PackedDataset(str(packed))) == blocks
    rewrite(header, version=2)
    with pytest.raises(PackError) as e:
        PackedDataset(str(packed))
    assert str(e.value) == newer(header, "sgpt-pack")
    r = run_tool("sgpt-tokenize", "unpack", packed)
    refused_in_one_line(r, "sgpt-tokenize", newer(header, "sgpt-pack"))
    r = run_tool("sgpt-tokenize", "pack", "--tokenizer", extended("llama", "reference"),
                 "--block-size", "8", "-o", packed, data)  # a re-run: that part is not done
    refused_in_one_line(r, "sgpt-tokenize", newer(header, "sgpt-pack"))


@pytest.mark.parametrize("arch", ["hifigan", "vocos"])
def test_vocoder_directory_as_sgpt_vocode_train_writes_it(arch, tmp_path):
    config = tmp_path / "given.json"
    config.write_text(json.dumps(small_config() if arch == "hifigan" else {
        "arch": "vocos", "num_embeddings": 16, "embedding_dim": 16, "dim": 16,
        "intermediate_dim": 32, "num_layers": 1}))
    out = tmp_path / "voc"
    train = hifigan_train if arch == "hifigan" else vocos_train
    opts = train.TrainOptions(output=str(out), steps=0, segment_size=960)
    trainer = train.Trainer(train.training_config(opts, str(config)), opts,
                            torch.device("cpu"), info=lambda _: None)
    trainer.train([])  # writes config.json; 0 updates to make
    trainer.save()
    written = json.loads((out / "config.json").read_text())
    assert list(written)[:2] == ["format", "version"]
    assert (written["format"], written["version"]) == ("sgpt-vocoder", 1)
    assert isinstance(load_vocoder(str(out)), UnitHiFiGAN if arch == "hifigan" else UnitVocos)
    resumed = train.training_config(opts, None).to_dict()  # what a resumed run writes back
    assert "format" not in resumed and "version" not in resumed  # the file's, not the config's
    rewrite(out / "config.json", version=2)
    with pytest.raises(CheckpointError) as e:
        load_vocoder(str(out))
    assert str(e.value) == newer(out / "config.json", "sgpt-vocoder")
    rewrite(out / "config.json", arch="vocos-next")  # what a newer sgpt may know: still named
    with pytest.raises(CheckpointError) as e:
        load_vocoder(str(out))
    assert str(e.value) == newer(out / "config.json", "sgpt-vocoder")
    r = run_tool("sgpt-vocode", "--vocoder", out, "-o", tmp_path / "wav", input="1 2\n")
    refused_in_one_line(r, "sgpt-vocode", newer(out / "config.json", "sgpt-vocoder"))


def test_published_vocoder_without_sgpt_keys_loads_as_before(tmp_path):
    published = fabricate_vocoder(tmp_path / "published", small_config(version="v1"))
    model = load_vocoder(str(published))
    assert isinstance(model, UnitHiFiGAN) and model.cfg.extra["version"] == "v1"
    assert read_config(str(published / "config.json")).to_dict() == small_config(version="v1")


def test_default_description_and_the_shipped_files(tmp_path, monkeypatch):
    """What ships in sgpt/default/ loads: default.json, sgpt_model.json, sgpt_tokenizer.json
    at version 1, the k-means sidecar as sgpt wrote it before versions (no format key), and
    the vocoder (whichever architecture ships) for the default's k."""
    monkeypatch.delenv("SGPT_DEFAULT")
    shipped = load_default()
    assert read_meta(shipped.model)["version"] == 1
    assert SpeechTokenizer.from_dir(str(shipped.model)).k == shipped.k
    assert "format" not in read_sidecar(shipped.kmeans)
    assert load_vocoder(str(shipped.vocoder)).k == shipped.k
    copy = tmp_path / "default"
    shutil.copytree(SHIPPED, copy)
    monkeypatch.setenv("SGPT_DEFAULT", str(copy))
    rewrite(copy / "default.json", version=None)
    assert load_default().k == shipped.k
    for f, name, reads in ((copy / "default.json", "sgpt-default", 1),
                           (copy / "model" / MODEL_META, "sgpt-model", 1),
                           (copy / "kmeans.json", "sgpt-kmeans", 2),
                           (copy / "vocoder" / "config.json", "sgpt-vocoder", 1)):
        text = f.read_text()
        rewrite(f, format=name, version=reads + 1)
        with pytest.raises(CheckpointError) as e:
            load_default()
        assert str(e.value) == newer(f, name, reads)
        f.write_text(text)
    r = run_tool("sgpt-vocode", "-o", tmp_path / "w", input="1 2\n",
                 env={"SGPT_DEFAULT": str(copy)})
    assert r.returncode == 0, r.stderr
