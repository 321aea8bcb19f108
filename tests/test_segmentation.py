"""Segmentation: metrics and loss against NumPy, joint augmentation, one step per segmenter."""
import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from experiments import segment_digit_scenes, segment_pets
from jaxdl.errors import UserError
from jaxdl.segmentation import augment, losses, metrics
from jaxdl.tasks import segmentation as task
from jaxdl.train import create_state


def _oracle(labels, preds, k, ignore=255):
    c = np.zeros((k, k), np.int64)
    for t, p in zip(labels.ravel(), preds.ravel()):
        if t != ignore:
            c[t, p] += 1
    iou = [c[i, i] / (c[i].sum() + c[:, i].sum() - c[i, i]) if c[i].sum() + c[:, i].sum() else np.nan
           for i in range(k)]
    return c, np.array(iou), np.trace(c) / c.sum()


def test_confusion_and_iou_match_numpy():
    rng = np.random.default_rng(0)
    k = 6  # class 5 appears nowhere; class 4 only in the predictions
    labels = rng.integers(0, 4, (3, 7, 9))
    labels[0, :2] = 255
    preds = rng.integers(0, 5, (3, 7, 9))
    c_ref, iou_ref, acc_ref = _oracle(labels, preds, k)
    # Summed per batch, as over a test set.
    c = sum(np.asarray(metrics.confusion_matrix(jnp.asarray(labels[i:i + 1]), jnp.asarray(preds[i:i + 1]), k))
            for i in range(3))
    np.testing.assert_array_equal(c, c_ref)
    m = metrics.segmentation_metrics(c)
    np.testing.assert_allclose(m["per_class_iou"], iou_ref)
    assert np.isnan(m["per_class_iou"][5]) and m["per_class_iou"][4] == 0
    np.testing.assert_allclose(m["miou"], np.mean(iou_ref[:5]))
    np.testing.assert_allclose(m["pixel_accuracy"], acc_ref)
    assert m["pixels"] == (labels != 255).sum()


def test_pixel_cross_entropy_ignores_and_weights():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (2, 3, 4))
    labels[0, 0] = 255
    w = np.array([1.0, 2.0, 0.5, 1.0, 3.0], np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != 255
    ce = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(losses.pixel_cross_entropy(logits, labels), ce[valid].mean(), rtol=1e-5)
    wy = w[np.where(valid, labels, 0)] * valid
    np.testing.assert_allclose(losses.pixel_cross_entropy(logits, labels, class_weights=w),
                               (wy * ce).sum() / wy.sum(), rtol=1e-5)


@pytest.mark.parametrize("crop", [dict(padding=3), dict(crop_size=5)])
def test_joint_crop_flip_keeps_mask_aligned(crop):
    image = jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 2))
    mask = (image[..., 0] > 0.5).astype(jnp.uint8)  # derived from the image
    fn = jax.jit(functools.partial(augment.joint_crop_flip, flip=True, mask_fill=0, **crop))
    x, m = fn(jax.random.PRNGKey(2), image, mask)
    np.testing.assert_array_equal(m, (x[..., 0] > 0.5).astype(jnp.uint8))
    assert m.dtype == mask.dtype and x.shape[:3] == m.shape
    x2, m2 = fn(jax.random.PRNGKey(2), image, mask)  # deterministic by key
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(m, m2)
    if "padding" in crop:  # something moved, and padded mask pixels take mask_fill
        assert not np.array_equal(x, image)
        _, m3 = augment.joint_crop_flip(jax.random.PRNGKey(2), image, mask + 1, padding=3, mask_fill=7)
        assert set(np.unique(m3)) <= {1, 2, 7}


_VGG = {"name": "VGG11", "width": 0.0625, "small_input": True}
SEGMENTERS = {
    "fcn32s": dict(name="FCN32s", backbone=_VGG, fc_channels=8, fc_kernel=3, upsample="bilinear"),
    "fcn16s": dict(name="FCN16s", backbone=_VGG, fc_channels=8, fc_kernel=3, upsample="learned"),
    "fcn8s": dict(name="FCN8s", backbone=_VGG, fc_channels=8, fc_kernel=3, upsample="learned"),
    "unet": dict(name="UNet", features=(4, 8, 16), upsample="learned"),
    "unet_resnet": dict(name="UNet", backbone={"name": "ResNet18", "width": 0.125, "small_input": True},
                        backbone_features=("stage1", "stage2", "stage3")),
}


def _model(spec):
    config = segment_digit_scenes.get_config()
    config.model = ml_collections.ConfigDict(spec)
    return task.make_model(config, num_classes=3)


@pytest.mark.parametrize("variant", SEGMENTERS)
def test_one_train_step_and_no_recompilation(variant):
    chex.clear_trace_counter()
    model = _model(SEGMENTERS[variant])
    images = jax.random.randint(jax.random.PRNGKey(0), (6, 32, 32, 1), 0, 256).astype(jnp.uint8)
    masks = (images[..., 0] // 100).astype(jnp.uint8)  # classes 0, 1, 2
    masks = masks.at[0, :4].set(255)
    state = create_state(jax.random.PRNGKey(0), model, optax.adam(1e-2), jnp.zeros((1, 32, 32, 1)))
    logits = model.apply(state.variables(), jnp.zeros((2, 32, 32, 1)))
    assert logits.shape == (2, 32, 32, 3) and logits.dtype == jnp.float32
    @chex.assert_max_traces(n=1)
    def steps(state, data):
        return task.train_steps(state, data, batch_size=2, num=1, unroll=True, padding=2, flip=True,
                                mask_fill=255, ignore_label=255)

    step = jax.jit(steps, donate_argnums=0)
    before = jax.tree.map(np.asarray, state.params)
    for _ in range(2):
        state, m = step(state, {"images": images, "masks": masks})
    assert int(state.step) == 2 and np.all(np.isfinite(m["loss"]))
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), before, state.params))
    assert any(changed)


def test_unknown_segmenter_and_missing_backbone_say_why():
    with pytest.raises(UserError, match="did you mean 'FCN8s'"):
        _model({"name": "FCN8"})
    with pytest.raises(UserError, match="needs a VGG backbone"):
        _model({"name": "FCN8s"})


def test_pets_config_trains_on_mock_data_and_resumes(tmp_path):
    config = segment_pets.get_config()
    config.dataset.image_size = 32
    config.batch_size = 2
    config.num_steps = 1
    config.eval_batch_size = 3
    config.num_pictures = 2
    config.augment.padding = 2
    config.model.fc_channels = 8
    config.model.fc_kernel = 1
    config.model.backbone = ml_collections.ConfigDict(_VGG)
    config.optim.warmup_steps = 0
    lines = []
    # The mocked masks and images have different sizes; both are resized to 32×32.
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        result = task.train_and_evaluate(config, str(tmp_path), print_fn=lines.append)
        config.num_steps = 2
        again = task.train_and_evaluate(config, str(tmp_path), print_fn=lines.append)
    assert any(line.startswith("resumed from") for line in lines)
    assert result["step"] == 1 and again["step"] == 2
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["per_class_iou"]) == {"background", "pet"}
    assert {"miou", "pixel_accuracy"} <= set(saved)
    names = sorted(os.listdir(tmp_path / "pictures"))
    assert [n for n in names if n.startswith("test_")] == ["test_000.png", "test_001.png"]
    assert {"learning_curves.png", "filters.png", "feature_maps.png", "edges.png"} <= set(names)
    assert [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())][-1] == 2
