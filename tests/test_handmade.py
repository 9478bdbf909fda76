"""The hand-made baseline features: shapes, the colour histogram, HOG orientations and normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from deepfit.models.handmade import HANDMADE_IMAGE_SIZE, HandmadeFeatures


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (y, x), each (size, size), y growing downwards as in images."""
    r = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(r, r, indexing="ij")


def _gray(plane: torch.Tensor, batch: int = 1) -> torch.Tensor:
    """(H, W) intensities -> (batch, 3, H, W) gray images."""
    return plane.clamp(0, 1).expand(batch, 3, *plane.shape).clone()


def _gradient_part(m: HandmadeFeatures, x: torch.Tensor) -> torch.Tensor:
    return m(x)[:, m.colour_bins**3 :]


def _orientation_energy(m: HandmadeFeatures, x: torch.Tensor) -> torch.Tensor:
    """(B, orientations): the gradient part summed over blocks and cells, as a fraction per orientation bin."""
    energy = _gradient_part(m, x).view(x.shape[0], -1, m.orientations).sum(dim=1)
    return energy / energy.sum(dim=1, keepdim=True)


# --- shape and contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [HANDMADE_IMAGE_SIZE, 32])
def test_shape_dtype_and_finiteness(size: int) -> None:
    m = HandmadeFeatures()
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    f = m(x)
    assert f.shape == (3, m.feature_dim(size))
    assert f.dtype == torch.float32
    assert torch.isfinite(f).all()


def test_feature_dim_formula() -> None:
    # 64 colour bins + 7x7 blocks of 2x2 cells x 9 orientations at 64 px.
    assert HandmadeFeatures().feature_dim(64) == 64 + 7 * 7 * 2 * 2 * 9 == 1828
    assert HandmadeFeatures(colour_bins=2, orientations=6, cell=4, block=3).feature_dim(16) == 8 + 2 * 2 * 3 * 3 * 6


def test_no_parameters_nothing_in_state_dict_and_deterministic() -> None:
    m = HandmadeFeatures()
    assert list(m.parameters()) == []
    assert m.state_dict() == {}  # nothing to save or load in checkpoints
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(m(x), m(x))


def test_batched_features_equal_per_image_features() -> None:
    m = HandmadeFeatures()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    one_by_one = torch.cat([m(x[i : i + 1]) for i in range(4)])
    assert torch.allclose(m(x), one_by_one, atol=1e-6)


@pytest.mark.parametrize("size", [60, 36, 8])
def test_bad_image_size_raises_value_error(size: int) -> None:
    m = HandmadeFeatures()  # cell 8, block 2: sizes must be multiples of 8 and at least 16
    with pytest.raises(ValueError, match="handmade features"):
        m.feature_dim(size)
    with pytest.raises(ValueError, match="handmade features"):
        m(torch.zeros(1, 3, size, size))


def test_bad_input_and_options_raise_value_error() -> None:
    with pytest.raises(ValueError, match="square"):
        HandmadeFeatures()(torch.zeros(1, 3, 32, 64))
    with pytest.raises(ValueError, match="RGB"):
        HandmadeFeatures()(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="orientations"):
        HandmadeFeatures(orientations=0)


# --- colour ---------------------------------------------------------------------------------------------


def test_pure_red_puts_all_colour_mass_in_one_bin() -> None:
    m = HandmadeFeatures(colour_bins=4)
    x = torch.zeros(1, 3, 32, 32)
    x[:, 0] = 1.0
    colour = m(x)[0, :64]
    assert colour[(3 * 4 + 0) * 4 + 0] == 1.0  # r in the top bin, g and b in the bottom one
    assert colour.sum() == 1.0


def test_colour_part_is_a_normalised_histogram() -> None:
    m = HandmadeFeatures(colour_bins=4)
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    colour = m(x)[:, :64]
    assert (colour >= 0).all()
    assert torch.allclose(colour.sum(dim=1), torch.ones(5))
    assert (colour > 0).sum(dim=1).min() > 40  # uniform noise fills most of the 64 bins


# --- gradients ------------------------------------------------------------------------------------------


def test_vertical_stripes_vote_for_orientation_zero() -> None:
    y, x = _grid(32)
    m = HandmadeFeatures()
    energy = _orientation_energy(m, _gray(0.5 + 0.5 * torch.sin(2 * math.pi * x / 8)))  # varies along x
    assert energy[0, 0] > 0.99


@pytest.mark.parametrize("orientations", [8, 9])
def test_horizontal_stripes_vote_for_orientation_half_pi(orientations: int) -> None:
    y, x = _grid(32)
    m = HandmadeFeatures(orientations=orientations)
    energy = _orientation_energy(m, _gray(0.5 + 0.5 * torch.sin(2 * math.pi * y / 8)))[0]  # varies along y
    if orientations == 8:  # a bin is centred on pi/2
        assert energy[4] > 0.99
    else:  # pi/2 lies halfway between the centres of bins 4 and 5: shared equally by interpolation
        assert energy[4] == pytest.approx(0.5, abs=0.01) and energy[5] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(("sign", "expected_bin"), [(1, 1), (-1, 3)])
def test_diagonal_stripes_vote_for_their_diagonal(sign: int, expected_bin: int) -> None:
    y, x = _grid(32)
    m = HandmadeFeatures(orientations=4)  # bins centred on 0, pi/4, pi/2, 3pi/4
    # Intensity grows along (1, sign) in (x, y-down) coordinates: orientation pi/4, or 3pi/4 for sign -1.
    energy = _orientation_energy(m, _gray(0.5 + 0.5 * torch.sin(2 * math.pi * (x + sign * y) / 8)))[0]
    assert energy.argmax() == expected_bin and energy[expected_bin] > 0.8


def test_constant_image_has_an_all_zero_gradient_part() -> None:
    m = HandmadeFeatures()
    g = _gradient_part(m, torch.full((2, 3, 32, 32), 0.37))
    assert torch.count_nonzero(g) == 0


def test_gradient_part_is_invariant_to_brightness_scale() -> None:
    m = HandmadeFeatures()
    gen = torch.Generator().manual_seed(4)
    x = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 66, 66, generator=gen), 3, stride=1)  # (2, 3, 64, 64)
    bright, dim = _gradient_part(m, x), _gradient_part(m, 0.5 * x)
    assert torch.allclose(dim, bright, atol=1e-5), f"max difference {(dim - bright).abs().max():.2e}"
    assert not torch.allclose(m(x)[:, :64], m(0.5 * x)[:, :64])  # the colour part does see the change
    blocks = bright.view(2, -1, 2 * 2 * 9)  # each block ends L2-Hys normalised: unit length
    assert torch.allclose(blocks.norm(dim=-1), torch.ones(2, blocks.shape[1]), atol=1e-4)


# --- separability ---------------------------------------------------------------------------------------


def _stripes_or_checkers(n: int, checkers: bool, gen: torch.Generator, size: int = 32) -> torch.Tensor:
    """n noisy two-tone images: stripes (horizontal or vertical) or checkerboards, random period and phase.

    Both classes draw colour and contrast from the same law, so only the gradient part can tell them apart.
    """
    y, x = _grid(size)
    images = []
    for _ in range(n):
        period = int(torch.randint(4, 9, (1,), generator=gen))
        dy, dx = torch.randint(0, 2 * period, (2,), generator=gen).tolist()
        across, down = ((x + dx) // period) % 2, ((y + dy) // period) % 2
        stripes = across if torch.rand(1, generator=gen) < 0.5 else down
        pattern = (across + down) % 2 if checkers else stripes
        low = 0.1 + 0.3 * torch.rand(1, generator=gen)
        high = low + 0.3 + 0.3 * torch.rand(1, generator=gen)
        tint = 0.6 + 0.4 * torch.rand(3, 1, 1, generator=gen)
        plane = (low + (high - low) * pattern) * tint  # (3, size, size)
        images.append((plane + 0.05 * torch.randn(3, size, size, generator=gen)).clamp(0, 1))
    return torch.stack(images)


def test_linear_svm_separates_stripes_from_checkerboards() -> None:
    from sklearn.svm import LinearSVC

    gen = torch.Generator().manual_seed(5)
    x = torch.cat([_stripes_or_checkers(40, False, gen), _stripes_or_checkers(40, True, gen)])
    y = torch.cat([torch.zeros(40), torch.ones(40)]).long()
    order = torch.randperm(80, generator=gen)
    x, y = x[order], y[order]
    features = HandmadeFeatures()(x).numpy()
    train, test = slice(0, 40), slice(40, 80)
    svm = LinearSVC(C=1.0).fit(features[train], y[train].numpy())
    accuracy = (svm.predict(features[test]) == y[test].numpy()).mean()
    assert accuracy >= 0.95


# --- devices --------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    m = HandmadeFeatures()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    on_gpu = m.to("cuda")(x.to("cuda"))
    assert torch.equal(on_gpu, m.to("cuda")(x.to("cuda")))
    assert torch.allclose(on_gpu.cpu(), HandmadeFeatures()(x), atol=1e-5)
