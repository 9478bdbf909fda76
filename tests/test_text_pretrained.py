"""Transfer learning on text: a pretrained `transformers` encoder fine-tuned (`--model hf:FOLDER`), offline, on a tiny
BERT of the real architecture that the test saves with the real MiniLM tokenizer (../shared/weights)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import deepfit
from conftest import SHARED
from deepfit.cli import main
from deepfit.errors import ConfigError
from deepfit.modalities.text.tokenizer import encode
from deepfit.models.text_encoders import text_encoder_info
from test_text_classify import write_table

MINILM = SHARED / "weights" / "all-MiniLM-L6-v2"
needs_minilm = pytest.mark.skipif(not MINILM.is_dir(), reason="../shared/weights/all-MiniLM-L6-v2 is not here")


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_table(tmp_path_factory.mktemp("texts") / "news.csv", n=40)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT of 2 layers 32 wide, random weights, with MiniLM's WordPiece tokenizer (lower-casing, [CLS] ... [SEP])."""
    if not MINILM.is_dir():
        pytest.skip("../shared/weights/all-MiniLM-L6-v2 is not here")
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("encoders") / "tiny-bert"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(folder)
    return folder


@needs_minilm
def test_a_cut_text_keeps_the_encoders_marks_at_both_ends() -> None:
    tokenizer = text_encoder_info(f"hf:{MINILM}").tokenizer
    ids, cut = encode(tokenizer, ["Free entry in 2 a wkly comp to win FA Cup final tkts", "ok"], 6)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    assert cut == 1 and len(ids[0]) == 6 and ids[0][0] == cls and ids[0][-1] == sep
    assert ids[1] == [cls, tokenizer.token_to_id("ok"), sep]


def test_an_encoder_is_fine_tuned_in_two_stages_and_needs_no_folder_afterwards(table: Path, tiny_bert: Path,
                                                                               tmp_path: Path,
                                                                               caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "encoder"
    shutil.copytree(tiny_bert, folder)
    runs = tmp_path / "runs"
    with caplog.at_level("INFO"):
        assert main(["train", str(table), "--text-column", "body", "--model", f"hf:{folder}", "--epochs", "3", "--lr", "0.003",
                     "--batch-size", "16", "--max-length", "12", "--output", str(runs), "--name", "bert", "--no-evaluate"]) == 0
    assert "are longer than 12 tokens and were cut" in caplog.text  # the truncated share is reported
    run = runs / "bert"
    config = json.loads((run / "config.json").read_text())
    assert config["modality"] == "text" and config["text"]["max_length"] == 12 and config["encoder"]["source"] == "transformers"
    phases = [row["phase"] for row in csv.DictReader((run / "metrics.csv").open())]
    assert phases == ["head", "full", "full"]  # the new head first, then the whole encoder at a lower rate
    before = deepfit.load(run).predict_proba(["the coach and the team", "a soup recipe"])
    shutil.rmtree(folder)  # the sidecar holds the architecture and the tokenizer: the folder is no longer needed
    clf = deepfit.load(run)
    assert isinstance(clf, deepfit.TextClassifier)
    assert torch.allclose(torch.from_numpy(clf.predict_proba(["the coach and the team", "a soup recipe"])),
                          torch.from_numpy(before))
    assert main(["evaluate", str(run)]) == 0 and (run / "test_metrics.json").is_file()


@needs_minilm
def test_fine_tuned_minilm_sorts_texts_by_their_words(table: Path, tmp_path: Path) -> None:
    """The real encoder: what it learned before (word meanings) carries a 56-text training split in two epochs."""
    clf = deepfit.TextClassifier(f"hf:{MINILM}", epochs=2, batch_size=16, output=str(tmp_path), name="minilm", workers=0)
    clf.fit(table, text_column="body")
    assert clf.evaluate().metrics["accuracy"] >= 0.9
    assert [p.label for p in clf.predict(["the team scored a late goal", "bake the bread and cook the soup"])] == ["sport", "food"]


def test_a_stopped_encoder_run_resumes_without_its_folder(table: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from conftest import ctrl_c_after
    from deepfit.errors import TrainingInterrupted

    folder = tmp_path / "encoder"
    shutil.copytree(tiny_bert, folder)
    options = dict(output=str(tmp_path), epochs=2, batch_size=16, workers=0, save_every_steps=1, seed=3)
    whole = deepfit.TextClassifier(f"hf:{folder}", name="whole", **options).fit(table, text_column="body")
    with ctrl_c_after(7), pytest.raises(TrainingInterrupted):  # in the second epoch, after the head's
        deepfit.TextClassifier(f"hf:{folder}", name="stopped", **options).fit(table, text_column="body")
    shutil.rmtree(folder)
    deepfit.resume(tmp_path / "stopped")
    a, b = load_file(str(whole.run_dir / "last.safetensors")), load_file(str(tmp_path / "stopped" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_what_cannot_be_a_text_encoder_is_named(table: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import Wav2Vec2Config

    Wav2Vec2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path / "w2v")
    with pytest.raises(ConfigError, match="'wav2vec2' network, which does not read text"):
        text_encoder_info(f"hf:{tmp_path / 'w2v'}")
    with pytest.raises(ConfigError, match=f"cannot load the text network '{tmp_path / 'none'}'.*save_pretrained"):
        text_encoder_info(f"hf:{tmp_path / 'none'}")
    with pytest.raises(ConfigError, match="reads at most 64 tokens a text: --max-length 100"):
        deepfit.TextClassifier(f"hf:{tiny_bert}", max_length=100, output=str(tmp_path)).fit(table, text_column="body")
