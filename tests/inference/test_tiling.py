"""Tiled whole-scene inference and test-time augmentation (``spectraseg.inference.tiling``)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spectraseg.features.windows import DIHEDRAL, dihedral_inverse, reflect_index
from spectraseg.inference.tiling import _fill_tile, plan_strips, predict_probs, tile_layout
from spectraseg.models.unet import UNet

torch.set_num_threads(1)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


class Constant(torch.nn.Module):
    """Logits equal to a fixed value per class, whatever the input."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return self.logits.expand(n, -1, h, w).clone()


def pixelwise(in_channels: int) -> torch.nn.Conv2d:
    """A 1x1 convolution with known weights: logits are a fixed linear map of each pixel."""
    conv = torch.nn.Conv2d(in_channels, 10, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(10 * in_channels, dtype=torch.float32).view(10, -1, 1, 1))
        conv.weight.mul_(0.01).sub_(0.2)
        conv.bias.copy_(torch.linspace(-1, 1, 10))
    return conv


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@given(
    length=st.integers(1, 700),
    tile=st.sampled_from([32, 64, 256]),
    margin=st.integers(0, 8),
    multiple=st.sampled_from([None, 1, 8, 16]),
)
def test_tile_centres_cover_every_pixel_once(
    length: int, tile: int, margin: int, multiple: int | None
) -> None:
    step = tile - 2 * margin
    layout = tile_layout(length, tile, margin, multiple)
    covered = np.zeros(length, dtype=int)
    for start, size in layout:
        assert 0 <= start < length and size <= tile
        if multiple:
            assert size % multiple == 0
        kept = min(step, size - 2 * margin, length - start)
        assert kept > 0
        covered[start : start + kept] += 1
    assert (covered == 1).all()
    assert len(layout) == -(-length // step)
    assert all(size == tile for _, size in layout[:-1])


def test_edge_tiles_shrink_to_what_is_left() -> None:
    # 3392 = 15 * 224 + 32: the last column of tiles needs 32 + 2 * 16 = 64 pixels.
    assert tile_layout(3392, 256, 16, 16)[-1] == (3360, 64)
    assert tile_layout(3392, 256, 16)[-1] == (3360, 256)
    assert tile_layout(3348, 1024, 16, 16)[-1] == (2976, 416)
    assert tile_layout(448, 256, 16, 16) == [(0, 256), (224, 256)]


@pytest.mark.parametrize("shape", [(4, 37, 53), (4, 300, 261), (4, 1, 1), (4, 64, 64)])
def test_constant_model_stitches_exactly(shape: tuple[int, int, int]) -> None:
    logits = [float(v) for v in np.linspace(-3, 3, 10)]
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    probs = predict_probs(Constant(logits), image, tile=64, margin=8, batch=3)
    assert probs.shape == (10, *shape[1:]) and probs.dtype == np.float32
    want = sigmoid(np.array(logits, dtype=np.float32))
    # Every pixel, borders included, holds exactly the model's value: no seams, no gaps.
    for c in range(10):
        assert np.all(probs[c] == np.float32(torch.sigmoid(torch.tensor(logits[c])).item()))
        assert probs[c, 0, 0] == pytest.approx(want[c], abs=1e-6)


@pytest.mark.parametrize("multiple", [None, 8])
def test_constant_model_stitches_exactly_with_shrunken_edge_tiles(multiple) -> None:
    image = np.zeros((2, 150, 203), np.float32)
    probs = predict_probs(Constant([0.3] * 10), image, tile=64, margin=8, multiple=multiple)
    assert np.all(probs == np.float32(torch.sigmoid(torch.tensor(0.3)).item()))


def test_pixelwise_model_reproduces_known_function() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, 131, 97)).astype(np.float32)
    conv = pixelwise(3)
    w = conv.weight.detach().numpy()[:, :, 0, 0]
    b = conv.bias.detach().numpy()
    want = sigmoid(np.einsum("kc,chw->khw", w, image) + b[:, None, None])
    for tta in (False, True):
        got = predict_probs(conv, image, tile=48, margin=8, batch=5, tta=tta)
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_amp_is_ignored_on_cpu() -> None:
    image = np.random.default_rng(3).normal(size=(3, 70, 50)).astype(np.float32)
    conv = pixelwise(3)
    np.testing.assert_array_equal(
        predict_probs(conv, image, tile=32, margin=4, device="cpu", amp=True),
        predict_probs(conv, image, tile=32, margin=4, device="cpu"),
    )


@needs_cuda
@pytest.mark.parametrize("tta", [False, True])
def test_cuda_matches_cpu(tta: bool) -> None:
    """The same network on the GPU (float32, and float16 autocast) as on the CPU."""
    from spectraseg.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(5, 10, width=8, depth=2).eval()
    image = np.random.default_rng(4).normal(size=(5, 150, 130)).astype(np.float32)
    want = predict_probs(net, image, tile=64, margin=8, batch=3, tta=tta, device="cpu")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions round to 10-bit mantissas
    try:
        got = predict_probs(net.cuda(), image, tile=64, margin=8, batch=3, tta=tta)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)
    half = predict_probs(net, image, tile=64, margin=8, batch=3, tta=tta, amp=True)
    np.testing.assert_allclose(half, want, atol=5e-3)
    assert not np.array_equal(half, got)  # autocast did run in float16


def test_read_only_and_integer_inputs(tmp_path) -> None:
    image = np.random.default_rng(7).normal(size=(2, 40, 30)).astype(np.float32)
    np.save(tmp_path / "scene.npy", image)
    ro = np.load(tmp_path / "scene.npy", mmap_mode="r")
    conv = pixelwise(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = predict_probs(conv, ro, tile=16, margin=2)
    np.testing.assert_array_equal(got, predict_probs(conv, image, tile=16, margin=2))
    ints = (np.arange(2 * 40 * 30).reshape(2, 40, 30) % 7).astype(np.uint16)
    np.testing.assert_allclose(
        predict_probs(conv, ints, tile=16, margin=2),
        predict_probs(conv, ints.astype(np.float32), tile=16, margin=2),
    )


def test_tiles_equal_whole_scene_inference_within_margin() -> None:
    """With context >= the receptive field, tiling is invisible: same as one big forward."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 10, 3, padding=1)
    )
    image = np.random.default_rng(2).normal(size=(3, 90, 71)).astype(np.float32)
    got = predict_probs(net, image, tile=32, margin=4, batch=4)
    shrunk = predict_probs(net, image, tile=32, margin=4, batch=4, multiple=4, tta=False)
    padded = np.pad(image, ((0, 0), (4, 4), (4, 4)), mode="reflect")
    with torch.no_grad():
        whole = torch.sigmoid(net(torch.from_numpy(padded)[None]))[0, :, 4:-4, 4:-4].numpy()
    np.testing.assert_allclose(got, whole, atol=1e-6)
    np.testing.assert_allclose(shrunk, whole, atol=1e-6)


def test_tta_is_identity_for_an_equivariant_model() -> None:
    # A 3x3 kernel symmetric under the dihedral group commutes with all 8 transforms.
    conv = torch.nn.Conv2d(2, 10, 3, padding=1)
    with torch.no_grad():
        k = torch.tensor([[0.1, 0.2, 0.1], [0.2, -0.5, 0.2], [0.1, 0.2, 0.1]])
        conv.weight.copy_(k.expand(10, 2, 3, 3) * torch.linspace(0.5, 2, 10).view(10, 1, 1, 1))
    image = np.random.default_rng(3).normal(size=(2, 70, 45)).astype(np.float32)
    plain = predict_probs(conv, image, tile=32, margin=4)
    tta = predict_probs(conv, image, tile=32, margin=4, tta=True)
    np.testing.assert_allclose(tta, plain, atol=1e-6)


def test_tta_averages_the_transformed_predictions() -> None:
    """A position-dependent model: TTA output is the mean of the 8 inverse-mapped maps."""

    class Ramp(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, _, h, w = x.shape
            ramp = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w) / (h * w)
            return (ramp + 0 * x[:, :1]).expand(n, 10, h, w)

    image = np.zeros((1, 16, 16), dtype=np.float32)
    got = predict_probs(Ramp(), image, tile=16, margin=0, tta=True)
    ramp = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16) / 256
    maps = [dihedral_inverse(torch.sigmoid(ramp), k) for k in range(len(DIHEDRAL))]
    want = torch.stack(maps).mean(0)[0, 0].numpy()
    np.testing.assert_allclose(got[0], want, atol=1e-6)


def test_model_mode_is_restored_and_output_shape_checked() -> None:
    conv = pixelwise(2)
    conv.train()
    predict_probs(conv, np.zeros((2, 10, 10), np.float32), tile=16, margin=2)
    assert conv.training
    bad = torch.nn.Conv2d(2, 3, 1)
    with pytest.raises(ValueError, match="model returned shape"):
        predict_probs(bad, np.zeros((2, 10, 10), np.float32), tile=16, margin=2)
    with pytest.raises(ValueError, match="must exceed twice the margin"):
        predict_probs(conv, np.zeros((2, 10, 10), np.float32), tile=16, margin=8)


@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(1, 80),
    w=st.integers(1, 80),
    margin=st.integers(0, 6),
    batch=st.integers(1, 5),
)
def test_pixelwise_model_any_size(h: int, w: int, margin: int, batch: int) -> None:
    image = np.random.default_rng(h * 100 + w).normal(size=(2, h, w)).astype(np.float32)
    conv = pixelwise(2)
    got = predict_probs(conv, image, tile=16, margin=margin, batch=batch)
    w_ = conv.weight.detach().numpy()[:, :, 0, 0]
    want = sigmoid(np.einsum("kc,chw->khw", w_, image) + conv.bias.detach().numpy()[:, None, None])
    np.testing.assert_allclose(got, want, atol=2e-6)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    tile=st.integers(9, 24),
    margin=st.integers(0, 4),
    channels_last=st.booleans(),
)
def test_filled_tiles_equal_reflect_padded_slices(
    h: int, w: int, tile: int, margin: int, channels_last: bool
) -> None:
    """Every tile, border tiles included, is the slice of the reflect-padded scene."""
    image = np.random.default_rng(h * 41 + w).normal(size=(3, h, w)).astype(np.float32)
    ys, xs = tile_layout(h, tile, margin), tile_layout(w, tile, margin)
    reach_y = max(y + s for y, s in ys) - margin
    reach_x = max(x + s for x, s in xs) - margin
    ry = reflect_index(-margin, reach_y + margin, h)
    rx = reflect_index(-margin, reach_x + margin, w)
    for y, th in ys:
        for x, tw in xs:
            want = image[:, ry[y : y + th][:, None], rx[x : x + tw][None, :]]
            dst = np.full((th, tw, 3) if channels_last else (3, th, tw), np.nan, np.float32)
            _fill_tile(image, dst, y, x, margin, ry, rx, channels_last)
            got = dst.transpose(2, 0, 1) if channels_last else dst
            np.testing.assert_array_equal(got, want)


_UNET = UNet(3, num_classes=2, width=4, depth=2).eval()


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 150),
    w=st.integers(1, 120),
    margin=st.sampled_from([0, 4, 8]),
    rows=st.integers(1, 120),
    cols=st.integers(1, 150),
    tta=st.booleans(),
)
def test_cells_equal_the_whole_scene(
    h: int, w: int, margin: int, rows: int, cols: int, tta: bool
) -> None:
    """A U-Net (context from every side) predicted cell by cell (strips of rows cut into
    bands of columns), each cell given only the rows and columns it reads, gives the whole
    scene's probabilities (to float rounding: batches of another size round differently in
    oneDNN), and the same bits every time."""
    image = np.random.default_rng(h * 1000 + w).normal(size=(3, h, w)).astype(np.float32)
    kw = dict(tile=32, margin=margin, batch=3, tta=tta, multiple=4)
    whole = predict_probs(_UNET, image, **kw)
    strips, bands = plan_strips(h, 32, margin, rows, 4), plan_strips(w, 32, margin, cols, 4)
    for cut, n in ((strips, h), (bands, w)):
        assert cut[0].top == 0 and cut[-1].bottom == n
        assert all(a.bottom == b.top for a, b in itertools.pairwise(cut))
    for s, c in itertools.product(strips, bands):
        (a, b), (c0, c1) = s.read, c.read
        assert 0 <= a <= max(s.top - margin, 0) and b <= h
        assert 0 <= c0 <= max(c.top - margin, 0) and c1 <= w
        part = predict_probs(_UNET, image[:, a:b, c0:c1], strip=s, cols=c, **kw)
        want = whole[:, s.top : s.bottom, c.top : c.bottom]
        np.testing.assert_allclose(part, want, rtol=0, atol=2e-6)
        again = predict_probs(_UNET, image[:, a:b, c0:c1].copy(), strip=s, cols=c, **kw)
        np.testing.assert_array_equal(part, again)


def test_strip_window_of_the_wrong_height_is_refused() -> None:
    s = plan_strips(100, 32, 4, 24)[1]
    with pytest.raises(ValueError, match="was given 10 rows"):
        predict_probs(_UNET, np.zeros((3, 10, 20), np.float32), tile=32, margin=4, strip=s)
    with pytest.raises(ValueError, match="was given 20 columns"):
        predict_probs(_UNET, np.zeros((3, 40, 20), np.float32), tile=32, margin=4, cols=s)
