"""The zoo's experiment configs: summaries, one CIFAR-10 step on mock data, augmentation."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from experiments import cifar10, imagenet, zoo_digits
from jaxdl import models, train
from jaxdl.data import augment


def _summary_total(config) -> int:
    """The total that `--mode=summary` prints, read back from its text."""
    lines = []
    train.summary(config, print_fn=lines.append)
    total = next(line for line in "\n".join(lines).splitlines() if line.startswith("total parameters"))
    return int(total.split()[-1].replace(",", ""))


@pytest.mark.parametrize("arch", list(zoo_digits.ARCHS))
def test_zoo_digits_summary_counts_the_models_parameters(arch):
    config = zoo_digits.get_config(arch)
    train.check_config(config)
    model = train.make_model(config.model, config.dataset.num_classes)
    x = jax.ShapeDtypeStruct((1, *config.dataset.input_shape), jnp.float32)
    expected = models.count_params(jax.eval_shape(functools.partial(model.init, train=False),
                                                  jax.random.PRNGKey(0), x))
    assert _summary_total(config) == expected


def test_zoo_digits_table_has_every_architecture_with_its_params():
    config = zoo_digits.get_config("all")
    rows = [row for _, row in sorted(config.rows.items(), key=lambda r: r[1].index)]
    assert [row.labels.model for row in rows] == list(zoo_digits.ARCHS)
    for row in rows:
        assert row.labels.params == _summary_total(row.config) and row.labels.depth >= 5
        assert row.config.num_seeds == config.num_seeds == 1


def test_imagenet_resnet50_summary_has_the_papers_parameter_count():
    assert _summary_total(imagenet.get_config("resnet50")) == 25_557_032


def test_one_cifar10_step_on_mock_data(tmp_path):
    config = cifar10.get_config("resnet18")
    config.model.width = 0.0625
    config.num_epochs = None
    config.num_steps = 2
    config.batch_size = 4
    config.log_every = config.eval_every = config.checkpoint_every = 1
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        result = train.train_and_evaluate(config, str(tmp_path), print_fn=lambda s: None)
    assert result["step"] == 2 and 0.0 <= result["test_accuracy"] <= 1.0
    assert np.isfinite(result["test_loss"])


def test_one_imagenet_step_and_eval_streamed_on_mock_data(tmp_path):
    config = imagenet.get_config("resnet18")
    assert config.dataset.stream and config.augment.crop == "inception"
    config.model.width = 0.0625
    config.num_epochs = None
    config.num_steps = 1
    config.batch_size = 4
    config.eval_batch_size = 3  # 5 validation images: one padded batch
    config.dataset.host_threads = 2
    config.log_every = config.eval_every = config.checkpoint_every = 1
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        shapes = {tfds.data_source("imagenet2012", split="train")[i]["image"].shape for i in range(5)}
        lines = []
        result = train.train_and_evaluate(config, str(tmp_path), print_fn=lines.append)
    assert len(shapes) > 1  # mocked images of varied sizes, cropped to one
    assert "streamed" in lines[0]
    assert result["step"] == 1 and 0.0 <= result["test_accuracy"] <= 1.0
    assert np.isfinite(result["test_loss"])


def _convolutions_in_loops(mlir: str) -> int:
    """Convolutions inside `stablehlo.while` bodies, following calls to private functions."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"func\.func \w* ?@([\w.$-]+)", mlir)]
    funcs = {name: mlir[a:b] for (a, name), (b, _) in zip(starts, starts[1:] + [(len(mlir), "")])}

    def reach(text, seen):
        convs = text.count("stablehlo.convolution")
        for callee in set(re.findall(r"call @([\w.$-]+)", text)) - seen:
            seen.add(callee)
            convs += reach(funcs.get(callee, ""), seen)
        return convs

    total = 0
    for m in re.finditer(r"stablehlo\.while", mlir):
        i, depth, regions = m.end(), 0, 0
        while regions < 2:  # the cond and the do region
            c = mlir[i]
            depth += (c == "{") - (c == "}")
            regions += c == "}" and depth == 0
            i += 1
        total += reach(mlir[m.end():i], set())
    return total


@pytest.mark.parametrize("num", [1, 3])
def test_unrolled_steps_have_no_convolution_in_a_loop(num):
    # XLA:CPU runs convolutions inside a while loop many times slower (12 s against
    # 0.5 s for a ResNet-18 step); `steps_per_call=1` is the conv nets' setting.
    model = models.LeNet5(num_classes=10, width=0.25)
    x, y = jnp.zeros((8, 32, 32, 1)), jnp.zeros((8,), jnp.int32)
    state = jax.eval_shape(lambda: train.create_state(jax.random.PRNGKey(0), model,
                                                      optax.sgd(0.1), x[:1]))

    def lowered(unroll):
        fn = functools.partial(train.train_steps, batch_size=4, num=num, unroll=unroll)
        return jax.jit(fn).lower(state, x, y).as_text()
    assert _convolutions_in_loops(lowered(True)) == 0
    assert _convolutions_in_loops(lowered(False)) > 0  # the check sees a rolled loop


# ---------------------------------------------------------------- augmentation

@pytest.mark.parametrize("padding", [1, 4])
def test_random_crop_is_a_shift_of_the_zero_padded_image(padding, key):
    x = np.asarray(jax.random.normal(key, (16, 8, 9, 3)))
    crop_key = jax.random.PRNGKey(7)
    out = np.asarray(augment.random_crop(crop_key, jnp.asarray(x), padding))
    offsets = np.asarray(jax.random.randint(crop_key, (16, 2), 0, 2 * padding + 1))
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    for image, (i, j), got in zip(padded, offsets, out):
        np.testing.assert_array_equal(got, image[i:i + 8, j:j + 9])
    assert len({tuple(o) for o in offsets}) > 1  # the offsets differ between images
    centred = np.all(offsets == padding, axis=1)
    np.testing.assert_array_equal(out[centred], x[centred])  # offset p: the image itself


def test_random_flip_mirrors_exactly_the_chosen_images(key):
    x = np.asarray(jax.random.normal(key, (32, 5, 6, 2)))
    flip_key = jax.random.PRNGKey(3)
    out = np.asarray(augment.random_flip(flip_key, jnp.asarray(x)))
    chosen = np.asarray(jax.random.bernoulli(flip_key, 0.5, (32, 1, 1, 1))).reshape(-1)
    assert 0 < chosen.sum() < 32
    np.testing.assert_array_equal(out[chosen], x[chosen][:, :, ::-1])
    np.testing.assert_array_equal(out[~chosen], x[~chosen])


def test_augment_is_crop_then_flip_with_split_keys(key):
    x = jax.random.normal(key, (8, 6, 6, 1))
    k = jax.random.PRNGKey(5)
    crop_key, flip_key = jax.random.split(k)
    expected = augment.random_flip(flip_key, augment.random_crop(crop_key, x, 2))
    np.testing.assert_array_equal(augment.augment(k, x, 2, True), expected)
    np.testing.assert_array_equal(augment.augment(k, x, 0, False), x)
