"""Sound networks: the front end inside, deepfit's CNN and CRNN and an image network on spectrograms, SpecAugment in
training only, and every one trainable under the CPU's bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torchvision

from deepfit.errors import ConfigError
from deepfit.modalities.sound.frontend import FrontEndConfig
from deepfit.models.weights import classifier_module
from deepfit.tasks.classify.sound_model import SoundClassifier, SpecAugment, SpecAugmentLayer, build_body

FRONT = FrontEndConfig(sample_rate=8000, n_mels=32)


@pytest.mark.parametrize("name", ["soundcnn", "crnn", "resnet18"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_waveforms_in_logits_out_and_gradients_reach_every_layer(name: str, precision: str) -> None:
    torch.manual_seed(0)
    if name == "resnet18":
        body, chans = torchvision.models.resnet18(num_classes=5), 3
    else:
        body, chans = build_body(name, 5, FRONT, 1, model_args={"depth": 2, "width": 8}, drop_rate=0.1)
    model = SoundClassifier(FRONT, body, body_chans=chans, spec_augment=SpecAugment())
    wave = torch.randn(4, 1, 8000) * 0.1  # (B, C, T): one second at 8 kHz
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(wave)
    assert logits.shape == (4, 5)
    logits.float().logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    head = set(classifier_module(model).parameters())  # what transfer learning trains first: the new layers
    assert head == set(classifier_module(body).parameters()) | set(model.norm.parameters())


def test_spec_augment_masks_stripes_in_training_only_and_repeats_with_the_seed() -> None:
    layer = SpecAugmentLayer(SpecAugment(time_masks=2, time_width=0.2, freq_masks=2, freq_width=4))
    x = torch.ones(3, 1, 32, 50)
    layer.train()
    torch.manual_seed(1)
    masked = layer(x)
    torch.manual_seed(1)
    assert torch.equal(masked, layer(x))
    zero = masked == 0
    assert zero.any()
    rows, cols = zero.all(3), zero.all(2)  # whole bands or whole moments, nothing else
    assert torch.equal(zero, rows[..., None] | cols[:, :, None, :])
    assert int(cols.sum(-1).max()) <= 2 * 10 and int(rows.sum(-1).max()) <= 2 * 4
    layer.eval()
    assert torch.equal(layer(x), x)


def test_model_args_are_checked_and_the_crnn_depth_must_leave_frequency_bins() -> None:
    with pytest.raises(ConfigError, match=r"has no option 'widht' \(did you mean 'width'\?\)"):
        build_body("soundcnn", 3, FRONT, 1, model_args={"widht": 8}, drop_rate=0.0)
    with pytest.raises(ConfigError, match="halves 32 frequency bins to nothing"):
        build_body("crnn", 3, FRONT, 1, model_args={"depth": 6}, drop_rate=0.0)
    with pytest.raises(ConfigError, match="gru or lstm"):
        build_body("crnn", 3, FRONT, 1, model_args={"rnn": "transformer"}, drop_rate=0.0)
    with pytest.raises(ConfigError, match="unknown sound network"):
        build_body("wavenet", 3, FRONT, 1, model_args={}, drop_rate=0.0)
    lstm, _ = build_body("crnn", 3, FRONT, 2, model_args={"rnn": "lstm", "hidden": 16}, drop_rate=0.0)
    assert SoundClassifier(FRONT, lstm, channels=2, body_chans=2)(torch.zeros(2, 2, 4000)).shape == (2, 3)
