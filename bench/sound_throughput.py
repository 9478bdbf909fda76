"""Sound training throughput: `deepfit train` against a plain, hand-written PyTorch loop, in one run.

Both train the same network (deepfit's `soundcnn`: log-mel front end, per-bin batch norm, SpecAugment, the CNN; built
by `build_sound_model` from the spec deepfit chose for the run) from scratch on the same FSDD clips (`--clips`: the
first takes of every digit and speaker, as many of each), decoded once into memory as 16-bit samples (decoding is
timed on neither side), with the same batch size, optimizer (AdamW, weight decay on weights only, warm-up then
cosine), loss (label smoothing 0.1), precision (fp32) and augmentation (a random time shift within 10% of the clip and
a random gain of up to 6 dB, then SpecAugment inside the network). Only the training steps are timed; the first epoch
of each run is warm-up and not counted (unless there is a single epoch). Runs alternate, deepfit then plain,
`--repeats` times, so drift in the machine's speed hits both alike.

    uv run python bench/sound_throughput.py [--clips 600] [--epochs 3] [--repeats 3]
    uv run python bench/sound_throughput.py --smoke   # generated tones, seconds, writes nothing to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepfit.config import TrainConfig
from deepfit.modalities.sound.store import PCM_SCALE, SoundStore
from deepfit.tasks.classify.sound import SHIFT_SHARE, SoundSpec, build_sound_model
from deepfit.workflows.train import train

from common import plain_training, record, unpack
from sound_fsdd import NAME

BATCH = 32  # deepfit's default batch for sound (config.MODALITY_DEFAULTS)
PATTERN = r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.wav"  # FSDD: DIGIT_SPEAKER_TAKE.wav, the speaker as the group
LR, WEIGHT_DECAY, LABEL_SMOOTHING, GAIN_DB = 1e-3, 0.05, 0.1, 6.0  # deepfit's defaults (config.py, augment.py)


def counted(speeds: list[float]) -> list[float]:
    """The epochs measured: all but the first (warm-up), unless there is only one."""
    return speeds[1:] if len(speeds) > 1 else speeds


def deepfit_speed(recordings: Path, epochs: int, workdir: Path) -> tuple[float, Path]:
    """(training samples/s from the run's metrics.csv, the run folder)."""
    config = TrainConfig(task="classify", modality="sound", model="soundcnn", epochs=epochs, batch_size=BATCH,
                         val_fraction=0.0, test_fraction=0.0, precision="fp32", output=str(workdir / "runs"))
    run = train(recordings, config, label_pattern=PATTERN).run_dir
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return statistics.mean(counted([float(r["samples_per_s"]) for r in rows])), run


def same_data(run: Path) -> tuple[SoundSpec, SoundStore]:
    """The network spec deepfit chose (sample rate, clip length, front end) and its training clips, decoded once with
    the same margins for the time shift, the labels indexed as deepfit indexed them."""
    saved = json.loads((run / "config.json").read_text())
    spec = SoundSpec(**saved["sound"])
    root = Path(saved["data_root"])
    rows = [r for r in csv.DictReader((run / "split.csv").open()) if r["split"] == "train"]
    index = {c: i for i, c in enumerate(saved["classes"])}
    store, bad = SoundStore.load([root / r["path"] for r in rows], [index[r["label"]] for r in rows], spec.sample_rate,
                                 spec.samples, channels=spec.channels, margin=round(spec.samples * SHIFT_SHARE))
    assert not bad, bad
    return spec, store


def plain_speed(spec: SoundSpec, store: SoundStore, epochs: int) -> float:
    """The reference: what a careful user writes by hand with PyTorch alone, on deepfit's network class."""
    clips, labels, margin, samples = store.clips, store.labels, store.margin, spec.samples
    torch.manual_seed(0)
    model = build_sound_model(spec, augment=True)[0]  # SpecAugment inside, active in training
    opt, sched, loss_fn = plain_training(model, lr=LR, weight_decay=WEIGHT_DECAY, label_smoothing=LABEL_SMOOTHING,
                                         steps_per_epoch=math.ceil(len(clips) / BATCH), epochs=epochs)
    speeds = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(clips))
        for i in range(0, len(clips), BATCH):
            idx = order[i : i + BATCH]
            x = clips[idx].float() / PCM_SCALE  # (B, C, samples + 2 * margin)
            shifts = torch.randint(0, 2 * margin + 1, (len(idx),)).tolist()
            x = torch.stack([x[j, :, s : s + samples] for j, s in enumerate(shifts)])  # a random time shift per clip
            x = x * 10.0 ** ((torch.rand(len(idx), 1, 1) * 2 - 1) * GAIN_DB / 20)  # a random gain per clip
            loss = loss_fn(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        speeds.append(len(clips) / (time.perf_counter() - start))
    return statistics.mean(counted(speeds))


def fsdd(folder: Path, clips: int) -> Path:
    """FSDD's recordings, or a folder of links to takes 0 to K-1 of every digit and speaker (60 pairs): `clips` rounded
    up to a multiple of 60."""
    recordings = unpack("fsdd.tar.gz", "fsdd") / "recordings"
    takes = math.ceil(clips / 60)
    if takes >= 50:
        return recordings
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(recordings.glob("*.wav")):
        if int(NAME.fullmatch(path.name).group(3)) < takes:  # type: ignore[union-attr]
            (folder / path.name).symlink_to(path)
    return folder


def tones(folder: Path, per_class: int = 8, seconds: float = 0.7, rate: int = 8000) -> Path:
    """FSDD-like names and lengths, sine tones of one pitch per digit (--smoke)."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(round(seconds * rate)) / rate
    for digit in range(3):
        for take in range(per_class):
            wave = 0.5 * np.sin(2 * np.pi * (300 + 400 * digit) * t) + 0.01 * rng.standard_normal(len(t))
            sf.write(folder / f"{digit}_tone_{take}.wav", wave.astype(np.float32), rate, subtype="PCM_16")
    return folder


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=600, help="FSDD recordings to train on, a multiple of 60 (default "
                        "600: takes 0-9 of every digit and speaker; 3000: all)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run, the first not counted (default 3; smoke 1)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 3; smoke 1)")
    parser.add_argument("--smoke", action="store_true", help="a few generated tones: seconds, BENCHMARKS.md untouched")
    args = parser.parse_args(argv)
    epochs = args.epochs or (1 if args.smoke else 3)
    repeats = args.repeats or (1 if args.smoke else 3)
    ours, ref = [], []
    with tempfile.TemporaryDirectory() as tmp:
        recordings = tones(Path(tmp) / "tones") if args.smoke else fsdd(Path(tmp) / "fsdd", args.clips)
        data: tuple[SoundSpec, SoundStore] | None = None
        for _ in range(repeats):  # alternate, so drift in machine speed hits both alike
            speed, run = deepfit_speed(recordings, epochs, Path(tmp))
            ours.append(speed)
            data = data or same_data(run)  # decoded once, from the first run's spec and split
            ref.append(plain_speed(*data, epochs))
            print(f"deepfit {ours[-1]:.1f} samples/s, plain loop {ref[-1]:.1f} samples/s", flush=True)
    assert data is not None
    spec, store = data
    ratio = statistics.mean(ours) / statistics.mean(ref)
    print(f"ratio deepfit / plain: {ratio:.3f}", flush=True)
    result = {"deepfit": ours, "plain": ref, "ratio": ratio, "clips": len(store), "epochs": epochs, "repeats": repeats}
    if args.smoke:
        return result
    counted_text = "the first not counted" if epochs > 1 else "all counted"
    params = sum(p.numel() for p in build_sound_model(spec)[0].parameters()) / 1e6
    record(
        "sound-throughput", "Sound training throughput: deepfit vs a plain PyTorch loop (FSDD, CPU)",
        f"""
Same model (`soundcnn`, {params:.2f}M parameters, log-mel front end with {spec.frontend_config.bins} bands and SpecAugment
inside), from scratch, batch {BATCH}, fp32, AdamW (lr {LR:g}, weight decay {WEIGHT_DECAY:g} on weights, one epoch of
warm-up then cosine), label smoothing {LABEL_SMOOTHING:g}; {len(store)} FSDD recordings (takes 0-{math.ceil(len(store) / 60) - 1} of every
digit and speaker) at {spec.sample_rate} Hz, clips of {spec.samples / spec.sample_rate:g} s decoded once into memory (not timed), a random time
shift (up to {SHIFT_SHARE:.0%} of the clip) and gain (up to {GAIN_DB:g} dB) per clip; {epochs} epochs per run, {counted_text},
{repeats} alternating repeats. Only the training steps are timed, on both sides.

| loop | samples/s (mean of repeats) | each repeat |
|---|---|---|
| deepfit `train` | {statistics.mean(ours):.1f} | {', '.join(f'{v:.1f}' for v in ours)} |
| plain PyTorch loop | {statistics.mean(ref):.1f} | {', '.join(f'{v:.1f}' for v in ref)} |

**Ratio deepfit / plain: {ratio:.3f}** (target >= 0.95; each repeat {', '.join(f'{a / b:.3f}' for a, b in zip(ours, ref, strict=True))}).
""",
    )
    return result


if __name__ == "__main__":
    main()
