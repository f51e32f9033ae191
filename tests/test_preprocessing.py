"""Preprocessing: exact, invertible coordinate maps for both modes and any model size; the rasters
follow the same maps; the model input is what the spec says."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sam2oct.errors import ConfigError
from sam2oct.model.preprocessing import (IMAGENET_MEAN, IMAGENET_STD, PREPROCESS_MODES, FrameGeometry, check_mode,
                                   model_input)

MODES = ["stretch", "pad-equalize"]
SHAPES = [(496, 768), (768, 496), (512, 512), (1000, 1000), (2048, 1500), (1, 700), (700, 1), (1, 1), (37, 53)]

sizes = st.integers(1, 4000)
model_sizes = st.sampled_from([32, 512, 1000, 1024])
modes = st.sampled_from(MODES)
unit = st.floats(0, 1, allow_nan=False)


def test_modes_are_the_two_of_the_spec():
    assert set(PREPROCESS_MODES) == set(MODES)
    with pytest.raises(ConfigError) as info:
        check_mode("resize")
    assert info.value.option == "preprocess" and "'resize'" in str(info.value)
    with pytest.raises(ConfigError):
        FrameGeometry.for_image(10, 10, size=512, mode="pad")


# --- point maps ----------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(h=sizes, w=sizes, size=model_sizes, mode=modes, pts=st.lists(st.tuples(unit, unit), min_size=1, max_size=8))
def test_point_maps_are_inverse(h, w, size, mode, pts):
    geo = FrameGeometry.for_image(h, w, size=size, mode=mode)
    rel = np.array(pts)
    p = rel * (w, h)  # image pixels
    q = rel * (size, size)  # model pixels
    assert np.allclose(geo.to_image(geo.to_model(p)), p, rtol=0, atol=1e-9)
    assert np.allclose(geo.to_model(geo.to_image(q)), q, rtol=0, atol=1e-9)
    assert geo.to_model(p).shape == (len(pts), 2)


@settings(max_examples=300, deadline=None)
@given(h=sizes, w=sizes, size=model_sizes, mode=modes)
def test_image_corners_map_to_content_box(h, w, size, mode):
    geo = FrameGeometry.for_image(h, w, size=size, mode=mode)
    x0, y0, bw, bh = geo.content_box
    corners = geo.to_model([[0, 0], [w, h]])
    assert np.allclose(corners, [[x0, y0], [x0 + bw, y0 + bh]], rtol=0, atol=1e-9)
    assert 0 <= x0 and 0 <= y0 and x0 + bw <= size and y0 + bh <= size
    if mode == "stretch":
        assert (x0, y0, bw, bh) == (0, 0, size, size)
    else:
        # Centred (left and right margins differ by at most a pixel), aspect ratio kept.
        assert 0 <= (size - bw - x0) - x0 <= 1 and 0 <= (size - bh - y0) - y0 <= 1
        r = min(1.0, size / max(h, w))
        for side, n in ((bw, w), (bh, h)):
            assert abs(side - n * r) <= 0.5 or (side == 1 and n * r < 1)  # rounded, at least 1
        if max(h, w) <= size:
            assert (bw, bh) == (w, h)  # never enlarged
        else:
            assert max(bw, bh) == size


@pytest.mark.parametrize("h, w", SHAPES)
def test_stretch_corners_with_size_512(h, w):
    geo = FrameGeometry.for_image(h, w, size=512, mode="stretch")
    assert np.array_equal(geo.to_model([[0, 0], [w, h], [w / 2, h / 2]]), [[0, 0], [512, 512], [256, 256]])


@pytest.mark.parametrize("h, w, size, box", [
    (496, 768, 1024, (128, 264, 768, 496)),  # smaller than S: centred, not resized
    (496, 768, 512, (0, 90, 512, 331)),  # wider than S: shrunk to 512 x 331
    (2048, 1024, 1024, (256, 0, 512, 1024)),  # taller than S
    (512, 512, 512, (0, 0, 512, 512)),
    (1, 2000, 512, (0, 255, 512, 1)),  # 1 x N keeps one row
])
def test_pad_content_box_by_hand(h, w, size, box):
    geo = FrameGeometry.for_image(h, w, size=size, mode="pad-equalize")
    assert geo.content_box == box
    x0, y0, bw, bh = box
    assert np.allclose(geo.to_model([[w, h]]), [[x0 + bw, y0 + bh]])


# --- raster maps agree with the point maps ----------------------------------------------------------

def centre_grid(n):
    x, y = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
    return np.stack([x.ravel(), y.ravel()], 1)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(2, 300), w=st.integers(2, 300), size=st.sampled_from([32, 64]), mode=modes)
def test_raster_ramp_follows_point_map(h, w, size, mode):
    # An image whose pixels hold their own centre coordinates, moved into model space, must hold
    # at each model pixel centre the image coordinate that to_image gives for it.
    xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    geo = FrameGeometry.for_image(h, w, size=size, mode=mode)
    out = geo.raster_to_model(torch.from_numpy(np.stack([xs, ys]))[None])[0].numpy()
    assert out.shape == (2, size, size)
    u = geo.to_image(centre_grid(size))
    # Away from the borders by the filter's reach; antialiased shrinking is within ~1/15 pixel.
    reach = np.array([max(1, 1 / geo.scale_x) + 1, max(1, 1 / geo.scale_y) + 1])
    inside = np.all((u >= reach) & (u <= np.array([w, h]) - reach), axis=1)
    shrink = geo.scale_x < 1 or geo.scale_y < 1
    tol = 0.1 * max(1, 1 / geo.scale_x, 1 / geo.scale_y) if shrink else 1e-9
    for c in range(2):
        assert np.abs(out[c].ravel()[inside] - u[inside, c]).max(initial=0) <= tol
    if mode == "pad-equalize":
        x0, y0, bw, bh = geo.content_box
        outside = np.ones((size, size), bool)
        outside[y0:y0 + bh, x0:x0 + bw] = False
        assert np.all(out[:, outside] == 0)


@pytest.mark.parametrize("h, w, r, c", [(37, 53, 20, 31), (50, 20, 10, 5)])
def test_one_hot_pixel_pad_mode_lands_exactly(h, w, r, c):
    geo = FrameGeometry.for_image(h, w, size=64, mode="pad-equalize")
    img = torch.zeros(1, 1, h, w, dtype=torch.float64)
    img[0, 0, r, c] = 1
    out = geo.raster_to_model(img)[0, 0]
    (x, y), = geo.to_model([[c, r]]).astype(int)
    assert out[y, x] == 1 and out.sum() == 1


@pytest.mark.parametrize("h, w, r, c, mode", [(37, 53, 20, 31, "stretch"), (300, 200, 150, 60, "stretch"),
                                              (300, 200, 150, 60, "pad-equalize"), (20, 300, 9, 200, "stretch")])
def test_one_hot_pixel_centroid(h, w, r, c, mode):
    geo = FrameGeometry.for_image(h, w, size=64, mode=mode)
    img = torch.zeros(1, 1, h, w, dtype=torch.float64)
    img[0, 0, r, c] = 1
    out = geo.raster_to_model(img)[0, 0].numpy()
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    centroid = np.array([(out * xs).sum(), (out * ys).sum()]) / out.sum()
    assert np.allclose(centroid, geo.to_model([[c + 0.5, r + 0.5]])[0], atol=0.1)


def smooth_image(h, w):
    y, x = np.mgrid[0:h, 0:w] + 0.5
    return np.sin(2 * np.pi * x / w) * np.cos(np.pi * y / h) + 0.3 * (x / w)


@pytest.mark.parametrize("h, w", [(496, 768), (768, 496), (1500, 1200), (100, 100)])
@pytest.mark.parametrize("mode", MODES)
def test_raster_round_trip(h, w, mode):
    geo = FrameGeometry.for_image(h, w, size=256, mode=mode)
    x = torch.from_numpy(smooth_image(h, w))[None, None]
    back = geo.raster_to_image(geo.raster_to_model(x))
    assert back.shape == x.shape
    err = (back - x).abs()[..., 4:-4, 4:-4]  # interior; borders are resampled from padding
    assert err.max() < 0.02, float(err.max())
    if mode == "pad-equalize" and max(h, w) <= 256:
        assert torch.equal(back, x)  # no resizing at all


@pytest.mark.parametrize("mode", MODES)
def test_raster_to_image_from_low_res(mode):
    # Low-res logits (S/4) come back at the image size, aligned with the content box.
    geo = FrameGeometry.for_image(120, 200, size=512, mode=mode)
    low = torch.zeros(1, 2, 128, 128)
    x0, y0, bw, bh = (v // 4 for v in geo.content_box)
    low[:, 1, y0:y0 + bh, x0:x0 + bw] = 1.0
    img = geo.raster_to_image(low)
    assert img.shape == (1, 2, 120, 200)
    assert torch.allclose(img[0, 1, 2:-2, 2:-2], torch.ones(116, 196), atol=1e-6)


# --- model input -----------------------------------------------------------------------------------

def test_stretch_input_reproduces_reference(tiny_npz):
    bscan = tiny_npz["bscan_u8"]
    geo = FrameGeometry.for_image(*bscan.shape, size=1024, mode="stretch")
    x = model_input(bscan / 255.0, geo)
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    gray = x[0] * std + mean  # undo the ImageNet normalisation per channel
    ref = torch.from_numpy(tiny_npz["gray1024"])
    for c in range(3):
        assert (gray[c] - ref).abs().max() < 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_input_size_follows_model_size(mode):
    geo = FrameGeometry.for_image(300, 500, size=512, mode=mode)
    assert model_input(np.random.default_rng(0).random((300, 500)), geo).shape == (1, 3, 512, 512)


def test_pad_equalize_input():
    rng = np.random.default_rng(3)
    h, w = 200, 300
    gray = np.clip(rng.normal(0.25, 0.08, (h, w)), 0, 1)  # dark, narrow histogram
    geo = FrameGeometry.for_image(h, w, size=512, mode="pad-equalize")
    x = model_input(gray, geo)[0].numpy()
    assert x.shape == (3, 512, 512)
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2])
    assert x.min() >= 0 and x.max() == 1.0  # [0, 1], not normalised
    x0, y0, bw, bh = geo.content_box
    assert (x0, y0, bw, bh) == (106, 156, 300, 200)
    content = x[0, y0:y0 + bh, x0:x0 + bw]
    rest = x[0].copy()
    rest[y0:y0 + bh, x0:x0 + bw] = 0
    assert not rest.any()  # zero padding outside the content box
    # Equalised: the histogram is flat, i.e. the empirical CDF is close to the identity.
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs((content <= q).mean() - q) < 0.03
    # Ordering of pixels is preserved (equalisation is monotone).
    order = np.argsort(gray.ravel(), kind="stable")
    assert np.all(np.diff(content.ravel()[order]) >= 0)
