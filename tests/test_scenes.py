"""The `digit_scenes` dataset: sizes, determinism, train/test digit separation, masks, loader."""
import numpy as np
import pytest

from jaxdl import data
from jaxdl.data import builders, scenes
from jaxdl.errors import UserError


def _examples(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small scene set, prepared once for the module."""
    builder = scenes.DigitScenes(data_dir=str(tmp_path_factory.mktemp("scenes")),
                                 file_format="array_record", num_train=60, num_test=30)
    builder.download_and_prepare(file_format="array_record")
    return builder


def test_default_dataset_has_documented_shapes():
    train, test = scenes.load_scenes("digit_scenes", "train"), scenes.load_scenes("digit_scenes", "test")
    assert (len(train), len(test)) == (2000, 500)
    assert train.images.shape == (2000, 64, 64, 1) and train.images.dtype == np.float32
    assert train.boxes.shape == (2000, 4, 4) and train.labels.shape == train.mask.shape == (2000, 4)
    assert train.segmentation.shape == (2000, 64, 64) and train.num_classes == 10
    counts = train.mask.sum(1)
    assert counts.min() == 1 and counts.max() == 4
    assert 0 <= train.images.min() and train.images.max() <= 1
    assert "digit_scenes" in data.offline_names() and data.is_offline("digit_scenes")
    with pytest.raises(UserError, match="classification"):
        data.load("digit_scenes", "train")


def test_scenes_are_a_function_of_the_seed(small, tmp_path):
    again = scenes.DigitScenes(data_dir=str(tmp_path), file_format="array_record", num_train=60, num_test=30)
    again.download_and_prepare(file_format="array_record")
    for split in ("train", "test"):
        a = sorted(_examples(small, split), key=lambda e: e["image"].tobytes())
        b = sorted(_examples(again, split), key=lambda e: e["image"].tobytes())
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x["image"], y["image"])
            np.testing.assert_array_equal(np.stack(x["objects"]["bbox"]), np.stack(y["objects"]["bbox"]))
            np.testing.assert_array_equal(x["segmentation_mask"], y["segmentation_mask"])
    other = scenes.scene_config(num_train=60, num_test=30, seed=1)
    digits = np.zeros((5, 8, 8), np.float32) + 1
    first = scenes.make_scene(small.builder_config, "train", 0, digits, np.arange(5), np.arange(5))
    second = scenes.make_scene(other, "train", 0, digits, np.arange(5), np.arange(5))
    assert not np.array_equal(first["objects"]["bbox"], second["objects"]["bbox"])


def test_train_and_test_scenes_use_disjoint_digits(small):
    split = builders.digits_split()
    for name in ("train", "test"):
        used = np.concatenate([e["objects"]["digit_id"] for e in _examples(small, name)])
        assert np.isin(used, split[name]).all()
        assert not np.isin(used, split["test" if name == "train" else "train"]).any()


def test_boxes_masks_and_overlaps_agree(small):
    from sklearn.datasets import load_digits

    targets = load_digits().target
    for e in _examples(small, "train"):
        boxes = np.stack(e["objects"]["bbox"])
        labels = np.asarray(e["objects"]["label"])
        np.testing.assert_array_equal(labels, targets[np.asarray(e["objects"]["digit_id"])])
        assert np.all((0 <= boxes) & (boxes <= 1)) and np.all(boxes[:, :2] < boxes[:, 2:])
        for i in range(len(boxes)):
            others = np.delete(boxes, i, axis=0)
            if len(others):
                assert scenes._iou(boxes[i], others).max() <= 0.2 + 1e-6
        # Every labelled pixel lies inside a box of its digit, and every box holds ink.
        mask = e["segmentation_mask"]
        ys, xs = np.nonzero(mask)
        s = mask.shape[0]
        for y, x in zip(ys, xs):
            inside = ((boxes[:, 0] * s <= y) & (y < boxes[:, 2] * s) & (boxes[:, 1] * s <= x)
                      & (x < boxes[:, 3] * s) & (labels + 1 == mask[y, x]))
            assert inside.any()
        image = e["image"][:, :, 0]
        assert np.all((image > 255 * scenes.INK_THRESHOLD) == (mask > 0))


def test_scene_options_name_their_config_and_are_checked():
    assert scenes.scene_config().name == "default"
    assert scenes.scene_config(image_size=96, max_digits=6).name == "image_size96-max_digits6"
    with pytest.raises(UserError, match="unknown digit_scenes option"):
        scenes.scene_config(canvas=96)
    with pytest.raises(UserError, match="max_size <= image_size"):
        scenes.scene_config(image_size=16)


def test_bad_boxes_name_the_example():
    scenes.check_boxes(np.array([[0.0, 0.1, 1.0, 0.5]], np.float32), "ok")
    for box in ([0.5, 0.1, 0.2, 0.4], [0.1, 0.1, 0.4, 1.2], [0.1, -0.1, 0.4, 0.4], [np.nan, 0, 1, 1]):
        with pytest.raises(UserError, match=r"example 7 of 'x' has box 1 ="):
            scenes.check_boxes(np.array([[0.1, 0.1, 0.2, 0.2], box], np.float32), "example 7 of 'x'")
