"""Text classification end to end on texts the test writes: the classify task on the text modality, from the CLI and
from Python; tables and folders, a tokenizer learned from the training split, length buckets, evaluate, predict,
resume, and the bad input a user brings."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

import deepfit
from deepfit.cli import main
from deepfit.errors import DataError
from deepfit.modalities.text.io import read_texts
from deepfit.modalities.text.store import TextStore

WORDS = {"sport": ["goal", "match", "team", "coach", "league"], "food": ["pizza", "bread", "cook", "soup", "recipe"]}
FILLER = ["the", "a", "of", "and", "to", "in", "is", "it", "on", "for", "with", "as", "at", "by", "this", "that", "from", "was", "were", "be"]
SMALL = {"dim": 16, "buckets": 4096}  # a small bag: the default's 2**18 pair buckets cost seconds a test
BAGGED = ["--epochs", "15", "--lr", "0.02", "--batch-size", "16", "--vocab-size", "200", "--workers", "0",
          "--model-args", "dim=16,buckets=4096"]


def sentence(rng: random.Random, label: str) -> str:
    words = rng.choices(FILLER, k=rng.randint(4, 20)) + rng.choices(WORDS[label], k=3)
    rng.shuffle(words)
    return " ".join(words)


def write_table(path: Path, n: int = 100, seed: int = 0) -> Path:
    """TITLE, BODY, LABEL rows: the body holds the words that decide; one title holds HTML and a control character."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["title", "body", "label"])
        for i in range(n):
            for label in WORDS:
                title = "<b>breaking</b> \x07news" if i == 0 else f"item {i}"
                writer.writerow([title, sentence(rng, label), label])
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_table(tmp_path_factory.mktemp("texts") / "news.csv")


def test_train_evaluate_and_predict_text_from_the_cli(table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    assert main(["train", str(table), "--text-column", "title", "--text-column", "body", *BAGGED, "--output", str(runs),
                 "--name", "bag", "--no-evaluate"]) == 0
    run = runs / "bag"
    config = json.loads((run / "config.json").read_text())
    assert config["modality"] == "text" and config["text"]["model"] == "bag"
    assert config["model"] == "bag"  # (not the image default: texts found with --modality auto train deepfit's bag)
    rows = list(csv.DictReader((run / "split.csv").open(encoding="utf-8")))
    assert {r["split"] for r in rows} == {"train", "val", "test"} and all(r["text"] for r in rows)
    assert rows[0]["source"].startswith(str(table)) and ":" in rows[0]["source"]  # file:line of every text
    assert main(["evaluate", str(run)]) == 0
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9
    html = (run / "report.html").read_text()
    assert "<b>breaking" not in html  # texts are escaped in the report

    lines = tmp_path / "lines.txt"
    lines.write_text("the coach and the team won the match\n\nhow to cook a soup with bread\n", encoding="utf-8")
    assert main(["predict", str(run), str(lines)]) == 0
    out = capsys.readouterr().out
    predicted = list(csv.DictReader((run / "predictions.csv").open()))
    assert [p["label"] for p in predicted] == ["sport", "food"]  # one text a line, blank lines left out
    assert [p["source"] for p in predicted] == [f"{lines}:1", f"{lines}:3"]
    assert "2 texts" in out


def test_the_python_front_end_takes_strings_and_reloads(table: Path, tmp_path: Path) -> None:
    clf = deepfit.TextClassifier("bag", epochs=15, lr=0.02, batch_size=16, vocab_size=200, workers=0, output=str(tmp_path),
                                 name="py", model_args=SMALL).fit(table, text_column=["title", "body"])
    one = clf.predict("the league match ended with a goal")
    assert one.label == "sport" and 0.5 < one.probability <= 1.0
    assert [p.label for p in clf.predict(["pizza recipe", "a team coach"])] == ["food", "sport"]
    again = deepfit.load(clf.run_dir)
    assert isinstance(again, deepfit.TextClassifier)
    assert again.predict("bread soup recipe").label == "food"
    _check_text_export(clf.run_dir)


def _check_text_export(run: Path) -> None:
    """Token ids in (the tokenizer saved beside), the same probabilities out, in batches of texts of any length."""
    from deepfit.workflows.export import export

    made = export(run, dynamic_batch=True)
    assert made.figures["parity"]["top1_agreement"] == 1.0 and (run / "model.tokenizer.json").is_file()
    texts = ["pizza recipe", "a team coach who won the league match with a late goal", "x"]
    ours, theirs = deepfit.load(run, backend="onnx").predict_proba(texts), deepfit.load(run).predict_proba(texts)
    assert abs(ours - theirs).max() < 0.02  # torch may compute in bf16 here


@pytest.mark.parametrize("model", ["rnn", "transformer"])
def test_the_recurrent_and_transformer_networks_train(table: Path, tmp_path: Path, model: str) -> None:
    clf = deepfit.TextClassifier(model, model_args={"depth": 1, "width": 32, "heads": 2} if model == "transformer"
                                 else {"dim": 32, "hidden": 32}, epochs=2, batch_size=16, vocab_size=200, workers=0,
                                 output=str(tmp_path), name=model).fit(table, text_column="body")
    assert clf.predict("a goal").label in WORDS and len(clf.predict(["a", "b c"])) == 2
    _check_text_export(clf.run_dir)


def test_length_buckets_pad_less_and_keep_every_text_once() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    store = TextStore([[5] * n for n in lengths], [0] * 500, [Path(str(i)) for i in range(500)])
    order = torch.randperm(500, generator=torch.Generator().manual_seed(0))
    arranged = store.arrange_order(order, 16)
    assert sorted(arranged.tolist()) == list(range(500))  # a permutation: every text once
    assert torch.equal(arranged, store.arrange_order(order, 16))  # the same order gives the same batches (resume)
    assert store.padded_tokens(arranged, 16) < store.padded_tokens(order, 16) / 5
    batch, labels, idx = next(store.batches(16, order=arranged))
    assert batch["input_ids"].shape[1] == max(lengths[i] for i in idx.tolist())  # padded to its own longest
    assert batch["attention_mask"].sum().item() == sum(lengths[i] for i in idx.tolist())


def test_a_stopped_text_run_resumes_to_the_weights_of_one_never_stopped(table: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from conftest import ctrl_c_after
    from deepfit.errors import TrainingInterrupted

    options = dict(output=str(tmp_path), epochs=2, batch_size=8, vocab_size=200, workers=0, save_every_steps=1,
                   model_args=SMALL)
    whole = deepfit.TextClassifier("bag", name="whole", **options).fit(table)
    with ctrl_c_after(13), pytest.raises(TrainingInterrupted):  # within the second epoch
        deepfit.TextClassifier("bag", name="stopped", **options).fit(table)
    deepfit.resume(tmp_path / "stopped")
    a, b = load_file(str(whole.run_dir / "last.safetensors")), load_file(str(tmp_path / "stopped" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tables_jsonl_and_folders_are_read_with_their_splits(tmp_path: Path) -> None:
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text("\n".join(json.dumps({"review": t, "sentiment": s, "split": sp}) for t, s, sp in
                               [("great film", "pos", "train"), ("awful", "neg", "train"), ("fine", "pos", "test")]) + "\n")
    catalog = read_texts(jsonl)
    assert [(f.text, f.label, f.split) for f in catalog.files][0] == ("awful", "neg", "train")
    assert {str(f.path) for f in catalog.files} == {f"{jsonl}:{n}" for n in (1, 2, 3)}
    for split, label, text in (("train", "a", "one"), ("train", "b", "two"), ("test", "a", "three")):
        (tmp_path / "folders" / split / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "folders" / split / label / f"{text}.txt").write_text(text)
    folders = read_texts(tmp_path / "folders")
    assert sorted((f.text, f.label, f.split) for f in folders.files) == [("one", "a", "train"), ("three", "a", "test"),
                                                                         ("two", "b", "train")]


def test_bad_text_input_is_named_with_its_file_and_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "latin.csv"
    bad.write_bytes("text,label\nfine,a\ncaf\xe9 cr\xe8me,b\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv:3: bytes that are not utf-8.*--encoding"):
        read_texts(bad)
    assert [f.text for f in read_texts(bad, encoding="latin-1").files] == ["fine", "café crème"]
    with pytest.raises(DataError, match=r"no column 'headline' for the texts; its columns are text, label"):
        read_texts(bad, text_columns=["headline"], encoding="latin-1")
    nameless = tmp_path / "nameless.csv"
    nameless.write_text("words,y\nhello,a\n")
    with pytest.raises(DataError, match=r"no column for the texts found by name.*columns are words, y: name one with --text-column"):
        read_texts(nameless)
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\nhello,a\n   ,b\nbye,b\n")
    assert len(read_texts(empty).files) == 2
    assert any(f"skipped 1 empty texts: {empty}:3" in r.message for r in caplog.records)
    one = tmp_path / "one.csv"
    one.write_text("text,label\nhello,a\nbye,a\n")
    with pytest.raises(DataError, match="need at least 2 classes"):
        read_texts(one)


def test_texts_from_the_command_line_and_stdin(table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import io

    clf = deepfit.TextClassifier("bag", epochs=15, lr=0.02, batch_size=16, vocab_size=200, workers=0, output=str(tmp_path),
                                 name="cli", model_args=SMALL).fit(table, text_column="body")
    assert main(["predict", str(clf.run_dir), "--text", "pizza and bread", "--text", "the team coach",
                 "--output", str(tmp_path / "given.csv")]) == 0
    assert [r["label"] for r in csv.DictReader((tmp_path / "given.csv").open())] == ["food", "sport"]
    monkeypatch.setattr("sys.stdin", io.StringIO("a soup recipe\n\nthe league goal\n"))
    assert main(["predict", str(clf.run_dir), "-", "--output", str(tmp_path / "stdin.json")]) == 0
    rows = json.loads((tmp_path / "stdin.json").read_text())
    assert [r["label"] for r in rows] == ["food", "sport"]
    capsys.readouterr()
    assert main(["predict", str(clf.run_dir)]) != 0
    assert "nothing to predict" in capsys.readouterr().err


def test_the_same_text_in_two_splits_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(1)
    rows = [[sentence(rng, label), label, split] for split, n in (("train", 20), ("val", 6), ("test", 6))
            for label in WORDS for _ in range(n)]
    rows += [["Pizza  and BREAD tonight", "food", "train"], ["pizza and bread tonight", "food", "test"]]
    with (data / "texts.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["text", "label", "split"], *rows])
    clf = deepfit.TextClassifier("bag", epochs=1, batch_size=16, vocab_size=200, workers=0, output=str(tmp_path / "runs"),
                                 name="leak", model_args=SMALL).fit(data / "texts.csv")
    groups = list(csv.DictReader((clf.run_dir / "duplicates.csv").open()))
    assert {(g["split"], g["text"]) for g in groups} >= {("train", "Pizza  and BREAD tonight"), ("test", "pizza and bread tonight")}
    assert any("in more than one split" in r.message and "duplicates.csv" in r.message for r in caplog.records)


def test_a_tsv_text_may_start_with_a_quote_mark(tmp_path: Path) -> None:
    tsv = tmp_path / "sms.tsv"
    tsv.write_text('label\tsms\nham\t"Oh no" she said, then left\nspam\tWIN a "prize" now\nham\tok\n', encoding="utf-8")
    texts = [f.text for f in read_texts(tsv).files]
    assert sorted(texts) == sorted(['"Oh no" she said, then left', 'WIN a "prize" now', "ok"])  # three rows, none merged


def test_data_check_shows_lengths_repeats_and_label_spellings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "check.csv"
    rows = [["call me later", "ham"], ["Call me  later", "spam"], ["free prize", "Spam"], ["hello there", "ham"]]
    with data.open("w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], *rows])
    assert main(["data", "check", str(data)]) == 0
    out = capsys.readouterr().out
    assert "4 texts in 3 classes" in out and "lengths in tokens (4 texts" in out
    assert "texts that occur more than once (case and spaces aside): 1, 2 rows" in out
    assert "the same text under two labels: 1" in out and "labels that differ only by case or spaces: 1" in out
    assert "'Spam' / 'spam'" in out
