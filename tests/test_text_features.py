"""Features + classical models on text: TF-IDF n-grams (the baseline), sentence embeddings of a pretrained encoder, and
a trained text run cut at a layer; each saved as a run that predicts from strings."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import deepfit
from deepfit.cli import main
from deepfit.errors import ConfigError
from deepfit.modalities.text.ngrams import (
    BLOCKS,
    dense_batches,
    fit_ngrams,
    ngram_counts,
    tfidf_matrix,
    tfidf_module,
)
from test_text_classify import write_table
from test_text_pretrained import tiny_bert  # noqa: F401 - the fixture

TEXTS = ["Free entry in 2 a wkly comp", "Ok lar... Joking wif u oni", "free free FREE entry now", "joking, ok? ok!",
         "U dun say so early hor", "WINNER!! claim your free prize", "ok see you", "Nah I don't think he goes"]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_table(tmp_path_factory.mktemp("texts") / "news.csv", n=40)


def test_tfidf_in_torch_weighs_as_scikit_learn_does() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vocabulary = fit_ngrams(TEXTS[:6])
    new = TEXTS[6:] + ["entry"]
    reference = np.hstack([TfidfVectorizer(analyzer=a, ngram_range=(lo, hi), min_df=2, sublinear_tf=True)
                           .fit(TEXTS[:6]).transform(new).toarray() for a, lo, hi in BLOCKS])
    module = tfidf_module(vocabulary)
    ours = torch.cat([module({"counts": x}) for x in dense_batches(ngram_counts(vocabulary.blocks, new), 2)]).numpy()
    assert ours.shape == reference.shape and np.abs(ours - reference).max() < 1e-6
    assert np.abs(tfidf_matrix(vocabulary, new).toarray() - reference).max() < 1e-6  # the sparse path agrees


def test_tfidf_and_a_linear_svm_make_a_run_that_reads_strings(table: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    assert main(["features", str(table), "--model", "tfidf", "--text-column", "body", "--output", str(runs), "--name", "tf"]) == 0
    out = capsys.readouterr().out
    assert "texts x" in out and "classifier: svm" in out
    run = runs / "tf"
    clf = deepfit.load(run)
    assert isinstance(clf, deepfit.TextClassifier)
    assert [p.label for p in clf.predict(["the coach of the team", "a pizza recipe"])] == ["sport", "food"]
    assert main(["evaluate", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "text-card" in html  # the worst-predicted texts are shown, as for a trained network

    new = tmp_path / "new.csv"  # a column of a table, rows named file:line, an empty one skipped
    new.write_text("id,headline\n1,the team won the league match\n2,\n3,cook the soup with bread\n", encoding="utf-8")
    assert main(["predict", str(run), str(new), "--text-column", "headline", "--output", str(tmp_path / "p.json")]) == 0
    predicted = json.loads((tmp_path / "p.json").read_text())
    assert [(p["source"], p["label"]) for p in predicted] == [(f"{new}:2", "sport"), (f"{new}:4", "food")]
    assert [p.label for p in clf.predict(new, text_column="headline")] == ["sport", "food"]  # the same from Python

    with pytest.raises(ConfigError, match="needs dense features; on TF-IDF n-grams use svm or logreg"):
        deepfit.fit_features(table, "tfidf", classifier="knn", text_column="body", output=str(runs))
    with pytest.raises(ConfigError, match="TF-IDF features are sparse"):
        deepfit.extract_features(table, "tfidf", export=str(tmp_path / "f.npz"), text_column="body")


def test_sentence_embeddings_are_cached_and_their_run_needs_no_folder(table: Path, tiny_bert: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    folder = tmp_path / "encoder"
    shutil.copytree(tiny_bert, folder)
    result = deepfit.fit_features(table, f"hf:{folder}", classifier="logreg", text_column="body", output=str(tmp_path),
                                  name="bert-features", workers=0)
    assert result.features.features.shape == (80, 32)  # the masked mean of a 32-wide encoder's last states
    again = deepfit.extract_features(table, f"hf:{folder}", text_column="body")
    assert again.reused == 80 and np.allclose(again.features, result.features.features)
    first = deepfit.extract_features(table, f"hf:{folder}", layer="1", text_column="body")
    assert first.reused == 0 and not np.allclose(first.features, result.features.features)  # another layer, other vectors
    with pytest.raises(ConfigError, match="layers are numbered, 0 .* to 2"):
        deepfit.extract_features(table, f"hf:{folder}", layer="encoder", text_column="body")
    before = deepfit.load(result.run_dir).predict_proba(["a goal for the team"])
    shutil.rmtree(folder)
    after = deepfit.load(result.run_dir).predict_proba(["a goal for the team"])
    assert np.allclose(before, after, atol=1e-5)


def test_a_trained_text_run_gives_features_of_its_embedding(table: Path, tmp_path: Path) -> None:
    clf = deepfit.TextClassifier("bag", epochs=3, batch_size=16, vocab_size=200, workers=0, output=str(tmp_path), name="bag",
                                 model_args={"dim": 8, "buckets": 256}).fit(table, text_column="body")
    result = deepfit.fit_features(table, str(clf.run_dir), text_column="body", output=str(tmp_path), name="bag-features")
    assert result.features.features.shape == (80, 8)
    assert deepfit.load(result.run_dir).predict("a goal and a match").label in ("sport", "food")


def test_compare_on_text_sets_tfidf_against_embeddings_fine_tuning_and_scratch(table: Path, tiny_bert: Path,  # noqa: F811
                                                                              tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(table), "--text-column", "body", "--models", f"hf:{tiny_bert}", "--fractions", "0.5", "1",
                 "--finetune-epochs", "2", "--scratch", "--scratch-epochs", "2", "--output", str(tmp_path), "--name", "cmp"]) == 0
    rows = list(csv.DictReader((tmp_path / "cmp" / "results.csv").open()))
    assert [(r["approach"], r["fraction"]) for r in rows] == [
        (approach, fraction) for approach in ("TF-IDF n-grams + svm", "tiny-bert features + svm", "tiny-bert fine-tuned",
                                              "bag from scratch") for fraction in ("0.5", "1.0")]
    assert [int(r["train_images"]) for r in rows[:2]] == [32, 64]  # nested halves of the 64 training texts (80%)
    assert float(rows[1]["accuracy"]) >= 0.9  # the words that decide are plain: TF-IDF finds them
    assert "most accurate" in capsys.readouterr().out
