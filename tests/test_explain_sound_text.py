"""Explanations of sound and text classifiers, and the explanation beside each worst prediction of a report.

Sound, the pointing game: clips of noise where class "tone" holds a short 1 kHz tone at a random time and class "noise"
none; a network that learned the task must hear the tone, so the maximum of its map over the spectrogram must fall in
the tone's frames and near its mel bins. Text, the same: texts of made-up filler words where one keyword at a random
place decides the class, so the keyword must get the highest score. Both also pass the sanity check of Adebayo et al.
(2018): with the network's weights randomised, the explanation changes (rank correlation below 0.5).
"""

from __future__ import annotations

import copy
import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from scipy.stats import spearmanr

import deepfit
from conftest import TrainedRun
from deepfit.cli import main
from deepfit.errors import ConfigError
from deepfit.explain.result import ExplainSettings

RATE, TONE_HZ, TONE_SAMPLES = 8000, 1000.0, 1200  # a 0.15 s tone in 1 s clips
PATTERN = r"(?P<label>[a-z]+)_\d+_\d+\.wav"
SOUND = dict(model_args={"depth": 2, "width": 8}, epochs=6, batch_size=8, lr=0.005, workers=0, clip_seconds=1.0)


def _clips(root: Path, per_class: int, seed: int, labels: tuple[str, ...] = ("tone", "noise")) -> list[Path]:
    """LABEL_I_START.wav: noise of random loudness; a "tone" clip holds the tone from sample START on."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    paths = []
    for label in labels:
        for i in range(per_class):
            wave = rng.uniform(0.02, 0.08) * rng.standard_normal(RATE)
            start = int(rng.integers(0, RATE - TONE_SAMPLES)) if label == "tone" else 0
            if label == "tone":
                t = np.arange(TONE_SAMPLES) / RATE
                wave[start : start + TONE_SAMPLES] += rng.uniform(0.2, 0.4) * np.sin(2 * np.pi * TONE_HZ * t)
            paths.append(root / f"{label}_{i}_{start}.wav")
            soundfile.write(paths[-1], wave.astype(np.float32), RATE, subtype="PCM_16")
    return paths


@pytest.fixture(scope="module")
def sound_run(tmp_path_factory: pytest.TempPathFactory) -> deepfit.SoundClassifier:
    root = tmp_path_factory.mktemp("tones")
    _clips(root / "data", 30, seed=0)
    clf = deepfit.SoundClassifier(output=str(root / "runs"), name="tones", **SOUND).fit(root / "data", label_pattern=PATTERN)
    clf.tests = _clips(root / "tests", 20, seed=1, labels=("tone",))  # type: ignore[attr-defined]
    return clf


def _tone_bins(predictor: object) -> np.ndarray:
    """The mel bins of the tone: those within 6 dB of the loudest in the picture of a clean tone."""
    from deepfit.modalities.sound.frontend import LogMel

    t = torch.arange(RATE) / RATE
    with torch.inference_mode():
        picture = LogMel(predictor.spec.frontend_config)(torch.sin(2 * np.pi * TONE_HZ * t)[None, None])[0, 0]  # type: ignore[attr-defined]
    level = picture.mean(1).numpy()  # (bins,)
    return np.flatnonzero(level > level.max() - 6)


# The default layer of SOUND's soundcnn (its last stage, after one pooling): a cell is 2 bins by 2 frames and sees 14 of
# each (two 3x3 convolutions, a pooling, two more at stride 2)
CELL, FIELD = 2, 14


def _on_tone(e: object, bins: np.ndarray, hop: int) -> bool:
    """Whether the map's maximum lies in the tone's frames (give or take a cell of the grid) and near its bins: within
    half a cell's receptive field, as far as a cell's evidence can be placed (measured, the peak often lies on the
    tone's lower edge, a few bins below it)."""
    start = int(Path(e.source).stem.split("_")[2])  # type: ignore[attr-defined]
    row, column = np.unravel_index(int(e.heat.argmax()), e.heat.shape)  # type: ignore[attr-defined]
    # the frame centred at sample s is s / hop
    in_time = start / hop - CELL <= column <= (start + TONE_SAMPLES) / hop + CELL
    return bool(in_time and bins.min() - FIELD // 2 <= row <= bins.max() + FIELD // 2)


def test_the_map_of_a_tone_points_at_it_in_time_and_pitch(sound_run: deepfit.SoundClassifier) -> None:
    model = deepfit.load(sound_run.run_dir)
    assert isinstance(model, deepfit.SoundClassifier)
    made = model.explain(sound_run.tests[0].parent)  # type: ignore[attr-defined]
    assert len(made) == 20 and {e.method for e in made} == {"hirescam"} and {e.target for e in made} == {"tone"}
    assert made[0].layer == "body.features" and made[0].heat.shape == (64, 101)
    assert all(e.heat.min() >= 0 and e.heat.max() <= 1 and e.picture.dtype == np.uint8 for e in made)
    bins, hop = _tone_bins(model.predictor), model.predictor.spec.frontend_config.hop_length
    misses = [(Path(e.source).name, np.unravel_index(int(e.heat.argmax()), e.heat.shape)) for e in made
              if not _on_tone(e, bins, hop)]
    assert len(misses) <= 0.1 * len(made), f"maps off the tone (at bins {bins}), with their peaks: {misses}"


def _randomised(predictor: object, seed: int = 12345) -> object:
    """A copy of the predictor whose network has every parameter drawn again (and norms' statistics reset). Not with
    the training's seed (0): that would draw its initial weights again, which the rows of words a bag of n-grams
    rarely saw keep after training."""
    torch.manual_seed(seed)
    other = copy.copy(predictor)
    other.model = copy.deepcopy(predictor.model)  # type: ignore[attr-defined]
    for module in other.model.modules():  # type: ignore[attr-defined]
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return other


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_a_sound_map_changes_when_the_weights_are_random(sound_run: deepfit.SoundClassifier, method: str) -> None:
    from deepfit.tasks.classify.explain import explain_clips

    clips, predictor = sound_run.tests[:5], sound_run.predictor  # type: ignore[attr-defined]
    trained = explain_clips(predictor, clips, ExplainSettings(method=method))
    random_ = explain_clips(_randomised(predictor), clips, ExplainSettings(method=method))
    rho = [spearmanr(a.heat.ravel(), b.heat.ravel()).statistic for a, b in zip(trained, random_, strict=True)]
    assert np.mean(np.nan_to_num(rho)) < 0.5, rho


def test_deepfit_explain_on_a_clip_and_its_bad_options(sound_run: deepfit.SoundClassifier, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    clip, run = sound_run.tests[0], str(sound_run.run_dir)  # type: ignore[attr-defined]
    assert main(["explain", run, str(clip), "--output", str(tmp_path / "a")]) == 0
    [record] = json.loads((tmp_path / "a" / "explanations.json").read_text())
    assert record["target"] == "tone" and record["layer"].startswith("body.") and record["peak"]["of"][0] == 64
    assert (tmp_path / "a" / record["picture"]).stat().st_size > 1000
    assert "1 explanations (hirescam on layer body." in capsys.readouterr().out
    # a layer named as the records name it, or as the network inside names it
    for name in (record["layer"], record["layer"].removeprefix("body.")):
        made = sound_run.explain(clip, layer=name, method="layercam", target="noise")
        assert made[0].layer == record["layer"] and made[0].target == "noise" and made[0].predicted == "tone"
    wave, rate = soundfile.read(clip, dtype="float32")  # samples with their rate, from Python
    [pair] = sound_run.explain((wave, rate))
    assert pair.source == "<tuple 0>" and np.allclose(pair.heat, sound_run.explain(clip)[0].heat, atol=1e-3)
    assert main(["explain", run, str(clip), "--layer", "body.nope"]) == 2
    err = capsys.readouterr().err
    assert "--layer body.nope: the sound network has no such layer" in err and "body.features" in err
    assert main(["explain", run, str(clip), "--method", "occlusion"]) == 2
    assert "--method occlusion: a sound classifier is explained by hirescam, gradcam," in capsys.readouterr().err


def _explained_cards(report: Path) -> tuple[int, str]:
    html = report.read_text()
    return html.count('class="shot"'), html


# --- text --------------------------------------------------------------------------------------------------------

KEYWORDS = {"pos": "zorbly", "neg": "quenvak"}
_SYLLABLES = ["ka", "lo", "mi", "te", "su", "ri", "po", "na", "ve", "du"]
FILLER = sorted({a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in _SYLLABLES})[::20][:50]
BAG = dict(epochs=10, lr=0.05, batch_size=16, vocab_size=200, workers=0, model_args={"dim": 16, "buckets": 4096})


def _text(rng: random.Random, label: str) -> str:
    words = rng.choices(FILLER, k=rng.randint(6, 12))
    words.insert(rng.randint(0, len(words)), KEYWORDS[label])
    return " ".join(words)


def _tests(n: int = 10, seed: int = 5) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(_text(rng, label), label) for label in KEYWORDS for _ in range(n)]


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keywords") / "data" / "texts.csv"
    path.parent.mkdir()
    rng = random.Random(0)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([_text(rng, label), label] for _ in range(200) for label in KEYWORDS)
    return path


@pytest.fixture(scope="module")
def bag_run(texts: Path) -> deepfit.TextClassifier:
    return deepfit.TextClassifier("bag", output=str(texts.parent.parent / "runs"), name="bag", **BAG).fit(texts)


def _points_at_keyword(made: list, tests: list[tuple[str, str]]) -> tuple[int, list[str]]:
    hits, misses = 0, []
    for e, (text, label) in zip(made, tests, strict=True):
        assert "".join(t for t, _ in e.tokens) == text.replace(" ", "")  # every word, as written
        best = max(e.tokens, key=lambda ts: ts[1])[0]
        hits += best == KEYWORDS[label]
        misses += [] if best == KEYWORDS[label] else [f"{best} in {text}"]
    return hits, misses


def test_occlusion_gives_the_keyword_the_highest_score(bag_run: deepfit.TextClassifier) -> None:
    tests = _tests()
    made = deepfit.load(bag_run.run_dir).explain([t for t, _ in tests])
    assert [e.target for e in made] == [label for _, label in tests] and {e.method for e in made} == {"occlusion"}
    hits, misses = _points_at_keyword(made, tests)
    assert hits >= 0.9 * len(tests), f"{hits}/{len(tests)}: {misses}"
    with pytest.raises(ConfigError, match="the bag network has no embedding per token; use --method occlusion"):
        bag_run.explain(tests[0][0], method="integrated-gradients")


def test_text_occlusion_changes_when_the_weights_are_random(bag_run: deepfit.TextClassifier) -> None:
    from deepfit.tasks.classify.explain import explain_texts

    texts_ = [t for t, _ in _tests(5)]
    settings = ExplainSettings(target="pos")  # the same class explained by both networks
    trained = explain_texts(bag_run.predictor, texts_, settings)
    random_ = explain_texts(_randomised(bag_run.predictor), texts_, settings)
    rho = [spearmanr([s for _, s in a.tokens], [s for _, s in b.tokens]).statistic for a, b in zip(trained, random_, strict=True)]
    assert np.mean(np.nan_to_num(rho)) < 0.5, rho


def test_deepfit_explain_takes_texts_and_files_of_lines(bag_run: deepfit.TextClassifier, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    lines = tmp_path / "in" / "lines.txt"
    (a, _), (b, _) = _tests(1)
    lines.write_text(f"{a}\n\n{b}\n", encoding="utf-8")
    out = tmp_path / "out"
    given = f"{FILLER[0]} zorbly"
    assert main(["explain", str(bag_run.run_dir), str(tmp_path / "in"), "--text", given, "--output", str(out)]) == 0
    records = json.loads((out / "explanations.json").read_text())
    assert [r["source"] for r in records] == [f"{lines}:1", f"{lines}:3", given]
    assert [r["target"] for r in records] == ["pos", "neg", "pos"] and all(r["layer"] == "tokens" for r in records)
    assert records[2]["tokens"][1][0] == "zorbly" and all((out / r["picture"]).is_file() for r in records)
    assert "3 explanations (occlusion on layer tokens)" in capsys.readouterr().out
    table = tmp_path / "table.csv"  # a table's text column, found by name, a row each
    table.write_text(f"id,text\n1,{a}\n2,{b}\n", encoding="utf-8")
    made = bag_run.explain(table)
    assert [(e.source, e.target) for e in made] == [(f"{table}:2", "pos"), (f"{table}:3", "neg")]
    assert main(["explain", str(bag_run.run_dir), "--text", " "]) == 2
    assert "an empty text has nothing to explain" in capsys.readouterr().err


def test_integrated_gradients_on_a_transformer_give_the_keyword_the_highest_score(texts: Path) -> None:
    clf = deepfit.TextClassifier("transformer", output=str(texts.parent.parent / "runs"), name="transformer", epochs=6,
                                 lr=0.005, batch_size=16, vocab_size=200, workers=0,
                                 model_args={"depth": 1, "width": 32, "heads": 2}).fit(texts)
    tests = _tests()
    made = clf.explain([t for t, _ in tests], method="integrated-gradients")
    assert {e.layer for e in made} == {"embed"}
    hits, misses = _points_at_keyword(made, tests)
    assert hits >= 0.9 * len(tests), f"{hits}/{len(tests)}: {misses}"


def test_a_tfidf_run_is_explained_by_its_ngrams(texts: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert main(["features", str(texts), "--model", "tfidf", "--output", str(runs), "--name", "tf"]) == 0
    cards, html = _explained_cards(runs / "tf" / "report.html")  # the report `deepfit features` writes as it saves
    assert cards > 0 and html.count('<div class="explanation"') == cards
    tests = _tests(5)
    made = deepfit.load(runs / "tf").explain([t for t, _ in tests])
    assert {e.layer for e in made} == {"n-grams"}
    # the strongest n-gram holds the keyword (the word, or a pair of words with it), not merely characters of it
    strongest = [max(e.tokens, key=lambda ts: ts[1])[0] for e in made]
    hits = sum(KEYWORDS[label] in term for term, (_, label) in zip(strongest, tests, strict=True))
    assert hits >= 0.9 * len(tests), strongest
    with pytest.raises(ConfigError, match="a TF-IDF model is explained by occlusion of its n-grams"):
        deepfit.load(runs / "tf").explain(tests[0][0], method="integrated-gradients")


# --- reports -----------------------------------------------------------------------------------------------------


def test_an_image_report_shows_an_explanation_beside_each_worst_prediction(trained_run: TrainedRun, tmp_path: Path) -> None:
    from deepfit.workflows.evaluate import evaluate

    run = Path(shutil.copytree(trained_run.run_dir, tmp_path / "run"))  # a copy: the shared run is never evaluated
    cards, html = _explained_cards(evaluate(run).report)
    assert cards > 0 and html.count('<div class="thumb explanation"><img src="data:image/jpeg;base64,') == cards
    assert 'alt="explanation: why ' in html


def test_sound_and_text_reports_show_explanations(sound_run: deepfit.SoundClassifier, bag_run: deepfit.TextClassifier,
                                                  tmp_path: Path) -> None:
    from deepfit.workflows.evaluate import evaluate

    sound = Path(shutil.copytree(sound_run.run_dir, tmp_path / "sound"))
    cards, html = _explained_cards(evaluate(sound).report)
    assert cards > 0 and html.count('<div class="thumb explanation">') == cards and "<audio" in html
    text = Path(shutil.copytree(bag_run.run_dir, tmp_path / "text"))
    cards, html = _explained_cards(evaluate(text).report)
    assert cards > 0 and html.count('<div class="explanation"') == cards and html.count('<p class="tokens"') == cards


def test_a_failing_explanation_leaves_the_card_without_one(sound_run: deepfit.SoundClassifier,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from deepfit.tasks.classify import task
    from deepfit.tasks.classify.explain_report import worst_explainer

    clips = [str(p) for p in sound_run.tests[:2]]  # type: ignore[attr-defined]
    real = task.TASK.explain

    def flaky(predictor: object, items: list, settings: ExplainSettings) -> list:
        if str(items[0]) == clips[0]:
            raise RuntimeError("out of memory")
        return real(predictor, items, settings)

    monkeypatch.setattr(task.TASK, "explain", flaky)
    shown = worst_explainer(sound_run.predictor)(clips)
    assert list(shown) == [clips[1]] and f"no explanation of {clips[0]} in the report: RuntimeError: out of memory" in caplog.text

    def never(predictor: object, items: list, settings: ExplainSettings) -> list:
        raise ConfigError("the model x has no layer whose output is a picture of its input")

    monkeypatch.setattr(task.TASK, "explain", never)
    caplog.clear()
    assert worst_explainer(sound_run.predictor)(clips) == {}  # the model cannot be explained: said once, not per card
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "the report shows no explanations: the model x has no layer whose output is a picture of its input"]


def test_deepfit_serve_answers_for_sound_and_text(sound_run: deepfit.SoundClassifier, bag_run: deepfit.TextClassifier) -> None:
    """The API serves a sound run (a sound file's bytes, decoded by content) and a text run (JSON), explanations too."""
    from fastapi.testclient import TestClient

    from deepfit.serve.app import create_app

    clip = sound_run.tests[0]  # type: ignore[attr-defined]
    with TestClient(create_app([sound_run.run_dir, bag_run.run_dir])) as c:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["tones"]["modality"] == "sound" and models["bag"]["modality"] == "text"
        heard = c.post("/v1/models/tones/predict?explain=1", content=Path(clip).read_bytes()).json()
        assert heard["result"]["label"] == sound_run.predict(clip).label and heard["explanation"].startswith("data:image/png")
        read = c.post("/v1/models/bag/predict?explain=1", json={"text": " ".join([*FILLER[:4], "zorbly", *FILLER[4:8]])}).json()
        assert read["result"]["label"] == "pos" and max(read["tokens"], key=lambda t: t[1])[0] == "zorbly"
        assert c.post("/v1/models/bag/predict", json={"text": ""}).status_code == 400
        answer = c.post("/v1/models/tones/predict", content=b"RIFF....not a wave")
        assert answer.status_code == 400 and "not a readable sound file" in answer.json()["error"]
