"""The streaming input path: host crops against PIL/NumPy, the data order, determinism, and training
bit for bit like the device-resident path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import imagenet, mnist1d
from jaxdl import data, loop, train, train_stream
from jaxdl.checkpoint import Checkpoints
from jaxdl.data import stream
from jaxdl.errors import UserError


def coordinates(h, w):
    """An (h, w, 3) uint8 image whose pixel (i, j) holds (i, j, 7): crops reveal where they came from."""
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([i, j, np.full_like(i, 7)], -1).astype(np.uint8)


def photo(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- crops against an oracle

@pytest.mark.parametrize("h,w,size", [(10, 14, 4), (9, 9, 4), (7, 12, 7), (5, 6, 1)])
def test_center_crop_is_the_centre(h, w, size):
    out = stream.center_crop(coordinates(h, w), size)
    assert out.shape == (size, size, 3)
    top, left = int(out[0, 0, 0]), int(out[0, 0, 1])
    np.testing.assert_array_equal(out, coordinates(h, w)[top:top + size, left:left + size])
    bottom, right = h - top - size, w - left - size
    assert bottom - top in (0, 1) and right - left in (0, 1)  # centred; an odd margin's extra pixel below/right


def test_center_crop_refuses_a_window_larger_than_the_image():
    with pytest.raises(ValueError, match="does not fit"):
        stream.center_crop(coordinates(5, 9), 6)


@pytest.mark.parametrize("h,w,expected", [(375, 500, (256, 341)), (500, 375, (341, 256)), (23, 33, (256, 367)),
                                          (256, 256, (256, 256))])
def test_resize_shorter_side_is_pils_bilinear_resize(h, w, expected):
    image = photo(h, w)
    out = stream.resize_shorter(image, 256)
    assert out.shape == (*expected, 3)
    oracle = np.asarray(Image.fromarray(image).resize(expected[::-1], Image.BILINEAR))
    np.testing.assert_array_equal(out, oracle)


def test_resize_of_other_channel_counts_is_per_channel():
    image = photo(12, 20)[:, :, :2]
    out = stream.resize(image, 6, 10)
    for c in range(2):
        np.testing.assert_array_equal(out[:, :, c], np.asarray(Image.fromarray(image[:, :, c]).resize((10, 6),
                                                                                                    Image.BILINEAR)))


def test_random_crop_is_a_window_and_reaches_every_edge():
    h, w, size = 12, 20, 8
    tops, lefts = set(), set()
    for p in range(300):
        out = stream.random_crop(stream.example_rng((1, 2), 0, p), coordinates(h, w), size)
        top, left = int(out[0, 0, 0]), int(out[0, 0, 1])
        np.testing.assert_array_equal(out, coordinates(h, w)[top:top + size, left:left + size])
        tops.add(top)
        lefts.add(left)
    assert tops == set(range(h - size + 1)) and lefts == set(range(w - size + 1))


def _boxes(h, w, num=2000):
    return np.array([stream.inception_box(stream.example_rng((3, 4), 0, p), h, w) for p in range(num)])


def test_inception_box_respects_its_area_and_aspect_ranges():
    h, w = 375, 500
    boxes = _boxes(h, w)
    top, left, bh, bw = boxes.T
    assert np.all((top >= 0) & (left >= 0) & (bh >= 1) & (bw >= 1) & (top + bh <= h) & (left + bw <= w))
    # The sides are rounded to pixels: allow half a pixel on each.
    assert np.all((bh + 0.5) * (bw + 0.5) >= 0.08 * h * w) and np.all((bh - 0.5) * (bw - 0.5) <= h * w)
    assert np.all((bw + 0.5) / (bh - 0.5) >= 3 / 4) and np.all((bw - 0.5) / (bh + 0.5) <= 4 / 3)
    area, aspect = bh * bw / (h * w), bw / bh
    assert area.min() < 0.1 and area.max() > 0.9  # the whole range is drawn
    assert aspect.min() < 0.78 and aspect.max() > 1.28
    assert len({(t, x) for t, x in zip(top, left)}) > 1000  # positions vary


@pytest.mark.parametrize("h,w,fallback", [(1, 1, (0, 0, 1, 1)), (3, 500, (0, 248, 3, 4)), (500, 3, (248, 0, 4, 3))])
def test_inception_box_of_extreme_images_falls_back_to_the_clipped_centre(h, w, fallback):
    boxes = _boxes(h, w, num=200)
    top, left, bh, bw = boxes.T
    assert np.all((top >= 0) & (left >= 0) & (bh >= 1) & (bw >= 1) & (top + bh <= h) & (left + bw <= w))
    # No draw fits a 3×500 strip: the centred window with the aspect ratio clipped to 4/3 (or 3/4).
    assert {tuple(b) for b in boxes} == {fallback}


@pytest.mark.parametrize("h,w", [(375, 500), (23, 33), (1, 1), (300, 4)])
def test_random_resized_crop_is_its_box_resized_by_pil(h, w):
    image = photo(h, w, seed=h)
    for p in range(5):
        out = stream.random_resized_crop(stream.example_rng((5, 6), 1, p), image, 32)
        top, left, bh, bw = stream.inception_box(stream.example_rng((5, 6), 1, p), h, w)
        oracle = np.asarray(Image.fromarray(image[top:top + bh, left:left + bw]).resize((32, 32), Image.BILINEAR))
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, oracle)


def test_flip_mirrors_about_half_of_the_images():
    image = photo(6, 9)
    pre = stream.Preprocess(flip=True)
    flipped = []
    for p in range(64):
        out = pre(image, stream.example_rng((0, 1), 2, p))
        assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
        flipped.append(np.array_equal(out, image[:, ::-1]))
    assert 16 < sum(flipped) < 48


@pytest.mark.parametrize("crop", ["inception", "random", "center"])
def test_host_preprocessing_is_a_function_of_key_step_and_position(crop):
    pre = stream.Preprocess(crop=crop, size=24, resize=28, scale=(28, 40), flip=True)
    image = photo(45, 60)
    run = lambda key, step, pos: pre(image, stream.example_rng(key, step, pos))  # noqa: E731
    ref = run((1, 2), 3, 4)
    assert ref.shape == (24, 24, 3)
    np.testing.assert_array_equal(run((1, 2), 3, 4), ref)
    others = [run((1, 9), 3, 4), run((1, 2), 5, 4), run((1, 2), 3, 6)]
    if crop == "center":  # only the flip is random
        assert all(np.array_equal(o, ref) or np.array_equal(o, ref[:, ::-1]) for o in others)
    else:
        assert not any(np.array_equal(o, ref) for o in others)


# ---------------------------------------------------------------- the data order

def _digits_stream(batch_size=400, num_steps=6, seeds=(0, 1), **kwargs):
    source, info = data.data_source("digits", "train")
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    data_keys = jax.vmap(lambda k: jax.random.fold_in(k, loop.DATA))(keys)
    aug_keys = jax.vmap(lambda k: jax.random.fold_in(k, loop.AUGMENT))(keys)
    return stream.TrainStream(source, "image", "label", data_keys, aug_keys, batch_size, num_steps,
                              kwargs.pop("preprocess", stream.Preprocess()), **kwargs), data_keys


def test_host_batches_are_the_rows_of_batch_indices_across_epochs():
    ds = data.load("digits", "train")
    ts, data_keys = _digits_stream(threads=3)
    batches = list(ts.host_batches(1, 6))  # 3 steps per epoch: steps 1–5 span two epochs
    assert len(batches) == 5
    for s, (x, y) in enumerate(batches, start=1):
        assert x.dtype == np.uint8 and x.shape == (2, 400, 8, 8, 1) and y.shape == (2, 400)
        for k in range(2):
            idx = np.asarray(data.batch_indices(data_keys[k], jnp.int32(s), len(ds), 400))
            np.testing.assert_array_equal(x[k].astype(np.float32) / 16, ds.x[idx])
            np.testing.assert_array_equal(y[k], ds.y[idx])


@pytest.mark.parametrize("kwargs", [{"threads": 4}, {"threads": 2, "processes": 2}])
def test_stream_is_the_same_whatever_its_threads_or_processes(kwargs):
    pre = stream.Preprocess(flip=True)
    ref = list(_digits_stream(preprocess=pre, threads=1)[0].host_batches(2, 5))
    got = list(_digits_stream(preprocess=pre, **kwargs)[0].host_batches(2, 5))
    for (x, y), (rx, ry) in zip(got, ref, strict=True):
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
    assert any(not np.array_equal(x[0, :, :, ::-1], x[0]) for x, _ in got)  # flips happened


def test_stream_called_step_by_step_and_restarted_gives_the_same_device_batches():
    pre = stream.Preprocess(flip=True)
    ref = list(_digits_stream(preprocess=pre, threads=1)[0].host_batches(2, 5))
    # Called step by step, restarted at another step: the same batches on the device.
    ts = _digits_stream(preprocess=pre, threads=2)[0]
    for s in (2, 3, 3, 4, 2):
        x, y = ts(s, 1)
        assert x.shape == (2, 1, 400, 8, 8, 1)
        np.testing.assert_array_equal(np.asarray(x)[:, 0], ref[s - 2][0])
        np.testing.assert_array_equal(np.asarray(y)[:, 0], ref[s - 2][1])
    x, y = ts(3, 2)  # two steps in one call: a step axis of 2
    np.testing.assert_array_equal(np.asarray(x), np.stack([ref[1][0], ref[2][0]], axis=1))
    with pytest.raises(ValueError, match="the stream ends at step 6"):
        ts(6, 1)
    ts.close()


def test_eval_batches_are_the_split_padded_and_masked():
    ds = data.load("digits", "test")
    source, _ = data.data_source("digits", "test")
    batches = list(stream.eval_batches(source, "image", "label", 100, stream.Preprocess(), threads=2))
    assert [b[0].shape for b in batches] == [(100, 8, 8, 1)] * 4
    x, y, mask = (np.concatenate([np.asarray(b[i]) for b in batches]) for i in range(3))
    np.testing.assert_array_equal(mask, np.arange(400) < 360)
    np.testing.assert_array_equal(x[:360].astype(np.float32) / 16, ds.x)
    np.testing.assert_array_equal(y[:360], ds.y)


# ---------------------------------------------------------------- training

def _config(stream_path, steps=5, seeds=2):
    config = mnist1d.get_config("mlp")
    config.dataset.name = "digits"
    config.dataset.stream = stream_path
    config.dataset.host_threads = 2
    config.num_seeds = seeds
    config.num_steps = steps
    config.batch_size = 400  # 3 steps per epoch
    config.steps_per_call = 2
    config.log_every = 2
    config.eval_every = config.checkpoint_every = 100  # at the end only: Orbax saves dominate tiny runs
    return config


def _params(workdir, step):
    ckpts = Checkpoints(str(workdir))
    raw = ckpts.read(step)
    ckpts.close()
    return jax.tree.leaves(raw["params"])


def test_streaming_trains_bit_for_bit_like_the_device_resident_path(tmp_path):
    device = train.train_and_evaluate(_config(False), str(tmp_path / "device"), print_fn=lambda s: None)
    lines = []
    streamed = train.train_and_evaluate(_config(True), str(tmp_path / "stream"), print_fn=lines.append)
    assert "streamed" in lines[0]
    for a, b in zip(_params(tmp_path / "device", 5), _params(tmp_path / "stream", 5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert device["test_accuracy_per_seed"] == streamed["test_accuracy_per_seed"]
    assert device["test_loss_per_seed"] == streamed["test_loss_per_seed"]
    logs = [loop.MetricsLog(str(tmp_path / w)).read() for w in ("device", "stream")]
    assert [r["train_loss_per_seed"] for r in logs[0]] == [r["train_loss_per_seed"] for r in logs[1]]


def test_streaming_resume_ends_with_the_uninterrupted_parameters(tmp_path):
    def config(steps):
        c = _config(True, steps=steps, seeds=1)
        c.augment = {"flip": True}  # host randomness must resume too
        return c

    whole = train.train_and_evaluate(config(8), str(tmp_path / "whole"), print_fn=lambda s: None)
    train.train_and_evaluate(config(4), str(tmp_path / "cut"), print_fn=lambda s: None)  # stops mid-epoch
    lines = []
    resumed = train.train_and_evaluate(config(8), str(tmp_path / "cut"), print_fn=lines.append)
    assert lines[0].startswith("resumed from") and lines[0].endswith("at step 4")
    for a, b in zip(_params(tmp_path / "whole", 8), _params(tmp_path / "cut", 8), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    evaluated = train.evaluate_workdir(config(8), str(tmp_path / "cut"), print_fn=lambda s: None)
    assert evaluated["step"] == 8 and evaluated["test_loss"] == whole["test_loss"]


def test_device_normalisation_is_the_in_memory_formula():
    config = imagenet.get_config("resnet18")
    x = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    got = jax.jit(train_stream.normaliser(config, np.uint8, signal=False))(x)
    mean, std = np.float32(imagenet.IMAGENET_MEAN), np.float32(imagenet.IMAGENET_STD)
    # XLA divides by multiplying with the reciprocal: equal to float32 rounding, not bit for bit.
    np.testing.assert_allclose(got, (x.astype(np.float32) / 255 - mean) / std, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("overrides,match", [
    ({"augment.crop_padding": 4}, "crop_padding is the in-memory path's"),
    ({"augment.crop": "incepton"}, "unknown crop 'incepton' .augment.crop.; did you mean 'inception'"),
    ({"dataset.resize": 200}, "dataset.resize must be an integer >= 224"),
    ({"augment.crop_area": (0.5, 1.5)}, "augment.crop_area must satisfy"),
    ({"augment.crop_scale": (200, 300)}, "augment.crop_scale must be integers >= dataset.image_size"),
    ({"dataset.host_processes": -1}, "dataset.host_processes must be an integer >= 0"),
    ({"dataset.image_size": None}, "augment.crop='inception' needs dataset.image_size"),
])
def test_bad_streaming_config_is_refused_before_any_work(tmp_path, overrides, match):
    config = imagenet.get_config("resnet18")
    for field, value in overrides.items():
        section, name = field.split(".")
        config[section][name] = value
    with pytest.raises(UserError, match=match):
        train.train_and_evaluate(config, str(tmp_path / "w"), print_fn=lambda s: None)
    assert not (tmp_path / "w").exists()


def test_streamed_flip_of_signals_is_refused(tmp_path):
    config = mnist1d.get_config("mlp")
    config.dataset.stream = True
    config.augment = {"flip": True}
    with pytest.raises(UserError, match=r"augment.flip applies to images; 'mnist1d' has inputs of shape \(40,\)"):
        train.train_and_evaluate(config, str(tmp_path / "w"), print_fn=lambda s: None)
    assert not (tmp_path / "w").exists()
