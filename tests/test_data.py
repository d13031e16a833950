"""Tests of mhmodels.data on real data that exists offline: scikit-learn's digits, image files
written here, a TFDS dataset prepared here, and TFDS's real imagenet2012 builder run on
ILSVRC-shaped tar files made here. Nothing is downloaded."""
from __future__ import annotations

import collections
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from archives import tar_bytes
from mhmodels import data


def _collect(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _keys(images: np.ndarray, labels: np.ndarray) -> collections.Counter:
    """Multiset of (label, image) that identifies examples across pipelines."""
    return collections.Counter(
        (int(y), np.round(x, 4).tobytes()) for x, y in zip(images, labels)
    )


def _write(path: Path, image: np.ndarray, fmt: str = "png") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    encode = tf.io.encode_png if fmt == "png" else lambda im: tf.io.encode_jpeg(im, quality=100)
    path.write_bytes(encode(tf.constant(image, tf.uint8)).numpy())


def _solid(color: tuple[int, int, int], shape: tuple[int, int] = (40, 30)) -> np.ndarray:
    return np.broadcast_to(np.array(color, np.uint8), (*shape, 3)).copy()


# ------------------------------------------------------------------------------------ digits


def test_digits_info_counts_and_classes():
    info = data.dataset_info("digits")
    n = info.num_examples
    assert info.num_classes == 10 and info.class_names == tuple("0123456789")
    assert n["train"] + n["validation"] + n["test"] == 1797
    assert 0.68 < n["train"] / 1797 < 0.72 and 0.13 < n["test"] / 1797 < 0.17
    assert n["search_train"] + n["search_valid"] == n["train"]
    assert n["search_valid"] == round(0.2 * n["train"])
    assert data.dataset_info("digits", held_out=100).num_examples["search_valid"] == 100


def test_digits_eval_values_are_the_sklearn_images():
    from sklearn.datasets import load_digits

    digits = load_digits()
    expected = digits.images * (255 / 16) / 127.5 - 1  # [1797, 8, 8]
    images, labels = _collect(
        data.make_dataset("digits", "test", image_size=8, batch_size=50, training=False)
    )
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert images.shape == (data.dataset_info("digits").num_examples["test"], 8, 8, 3)
    assert set(labels.tolist()) == set(range(10))
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    for image, label in zip(images, labels):  # each is an sklearn image of its own class
        diff = np.abs(expected[digits.target == label] - image[..., 0]).max(axis=(1, 2))
        assert diff.min() < 1e-5


def test_digits_upscaled_pipeline_shapes_range_and_determinism():
    kwargs = dict(image_size=32, batch_size=64, training=False)
    a_images, a_labels = _collect(data.make_dataset("digits", "validation", **kwargs))
    b_images, b_labels = _collect(data.make_dataset("digits", "validation", **kwargs))
    assert a_images.shape[1:] == (32, 32, 3)
    assert a_images.min() == -1.0 and a_images.max() == 1.0  # background and full ink
    np.testing.assert_array_equal(a_images[..., 0], a_images[..., 2])  # gray replicated
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, b_labels)


def test_digits_search_splits_partition_train_deterministically():
    kw = dict(image_size=8, batch_size=512, training=False)
    train = _keys(*_collect(data.make_dataset("digits", "train", **kw)))
    s_train = _collect(data.make_dataset("digits", "search_train", **kw))
    s_valid = _collect(data.make_dataset("digits", "search_valid", **kw))
    assert _keys(*s_train) + _keys(*s_valid) == train  # disjoint, and together all of train
    again = _collect(data.make_dataset("digits", "search_valid", **kw))
    np.testing.assert_array_equal(s_valid[0], again[0])
    assert len(s_valid[1]) == data.dataset_info("digits").num_examples["search_valid"]


def test_digits_training_is_seeded_shift_without_flip():
    from sklearn.datasets import load_digits

    kw = dict(image_size=8, batch_size=32, training=True, seed=3)
    first = [(x.numpy(), y.numpy()) for x, y in data.make_dataset("digits", "train", **kw).take(3)]
    second = [(x.numpy(), y.numpy()) for x, y in data.make_dataset("digits", "train", **kw).take(3)]
    other = next(iter(data.make_dataset("digits", "train", **{**kw, "seed": 4})))
    for (xa, ya), (xb, yb) in zip(first, second):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert first[0][0].shape == (32, 8, 8, 3)  # static batch: drop_remainder when training
    assert not np.array_equal(first[0][1], other[1].numpy())
    # Every augmented image is an original of its class shifted by <= 1 pixel: never flipped.
    digits = load_digits()
    scaled = digits.images * (255 / 16) / 127.5 - 1
    padded = np.pad(scaled, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    shifts = {  # label -> [n, 9 shifts, 8, 8]
        label: np.stack(
            [
                padded[digits.target == label][:, dy : dy + 8, dx : dx + 8]
                for dy in range(3)
                for dx in range(3)
            ],
            1,
        )
        for label in range(10)
    }
    for images, labels in first:
        for image, label in zip(images, labels):
            diff = np.abs(shifts[int(label)] - image[None, None, ..., 0]).max(axis=(2, 3))
            assert diff.min() < 1e-4


def test_bad_split_and_held_out_errors():
    with pytest.raises(ValueError, match="search_valid"):
        data.make_dataset("digits", "valid", batch_size=8, training=False)
    with pytest.raises(ValueError, match="held_out"):
        data.dataset_info("digits", held_out=1.5)
    with pytest.raises(ValueError, match="held_out"):
        data.held_out_count(100, 100)
    assert data.held_out_count(1_281_167) == 50_000  # TuNAS's ImageNet hold-out
    assert data.held_out_count(1_000) == 200
    assert data.held_out_count(1_000, 0.05) == 50


# ------------------------------------------------------------------------------- image folder

COLORS = {"cat": (200, 30, 40), "ant": (20, 180, 60), "bee": (40, 50, 220)}


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """root/train/<class>/* and root/val/<class>/*, PNG and JPEG, created in unsorted order."""
    for split, count in (("train", 4), ("val", 2)):
        for name, color in COLORS.items():
            for i in range(count):
                ext = "png" if i % 2 == 0 else "JPEG"  # ImageNet folders use .JPEG
                _write(tmp_path / split / name / f"{name}_{i}.{ext}", _solid(color), ext.lower())
    return tmp_path


def test_folder_labels_follow_sorted_class_names(split_folder: Path):
    info = data.dataset_info(f"folder:{split_folder}")
    assert info.class_names == ("ant", "bee", "cat") and info.num_classes == 3
    assert info.num_examples["train"] == 12 and info.num_examples["validation"] == 6
    assert info.num_examples["search_train"] + info.num_examples["search_valid"] == 12
    assert "test" not in info.num_examples
    kw = dict(data_dir=str(split_folder), image_size=24, batch_size=4, training=False)
    images, labels = _collect(data.make_dataset("folder", "validation", **kw))
    assert images.shape == (6, 24, 24, 3) and sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    for image, label in zip(images, labels):
        expected = np.array(COLORS[info.class_names[label]]) / 127.5 - 1
        np.testing.assert_allclose(image.mean(axis=(0, 1)), expected, atol=0.03)


def test_folder_training_pipeline_is_seeded(split_folder: Path):
    kw = dict(image_size=16, batch_size=5, training=True, seed=7)
    a = next(iter(data.make_dataset(f"folder:{split_folder}", "train", **kw)))
    b = next(iter(data.make_dataset(f"folder:{split_folder}", "train", **kw)))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert a[0].shape == (5, 16, 16, 3)
    assert -1.0 <= a[0].numpy().min() <= a[0].numpy().max() <= 1.0


def test_folder_without_split_dirs_gets_hash_splits(tmp_path: Path):
    for name in ("b", "a"):
        for i in range(15):
            _write(tmp_path / name / f"{i}.png", _solid((i * 10, 0, 0), (12, 12)))
    info = data.dataset_info(f"folder:{tmp_path}")
    n = info.num_examples
    assert info.class_names == ("a", "b")
    assert n["train"] + n["validation"] == 30 and n["validation"] == 3
    assert n["search_valid"] == round(0.2 * n["train"])
    kw = dict(image_size=12, batch_size=64, training=False)
    train = _keys(*_collect(data.make_dataset(f"folder:{tmp_path}", "train", **kw)))
    valid = _keys(*_collect(data.make_dataset(f"folder:{tmp_path}", "validation", **kw)))
    s_train = _keys(*_collect(data.make_dataset(f"folder:{tmp_path}", "search_train", **kw)))
    s_valid = _keys(*_collect(data.make_dataset(f"folder:{tmp_path}", "search_valid", **kw)))
    assert not set(train) & set(valid) and sum((train + valid).values()) == 30
    assert s_train + s_valid == train
    assert data.dataset_info(f"folder:{tmp_path}").num_examples == n  # deterministic


def test_eval_crop_is_the_central_87_5_percent(tmp_path: Path):
    image = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    _write(tmp_path / "only" / "x.png", image)
    _write(tmp_path / "only" / "y.png", image)
    kw = dict(image_size=87, batch_size=1, training=False)
    out, _ = _collect(data.make_dataset(f"folder:{tmp_path}", "train", **kw))
    side = int(0.875 * 100)  # 87 of the shorter side, centred
    np.testing.assert_allclose(out[0], image[7 : 7 + side, 57 : 57 + side] / 127.5 - 1, atol=1e-5)


def _bmp(image: np.ndarray) -> bytes:
    """A 24-bit BMP (TF has no BMP encoder): rows bottom-up, BGR, padded to 4 bytes."""
    height, width, _ = image.shape
    row = width * 3 + (-width * 3) % 4
    pixels = b"".join(
        image[y, :, ::-1].tobytes() + b"\0" * (row - width * 3) for y in range(height - 1, -1, -1)
    )
    header = b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54)
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + dib + pixels


def test_folder_reads_bmp_like_png(tmp_path: Path):
    image = np.random.default_rng(2).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    _write(tmp_path / "a" / "p.png", image)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "q.bmp").write_bytes(_bmp(image))
    kw = dict(image_size=6, batch_size=2, training=False, held_out=1)
    got = {}
    for split in ("train", "validation"):
        images, labels = _collect(data.make_dataset(f"folder:{tmp_path}", split, **kw))
        got[int(labels[0])] = images[0]
    np.testing.assert_array_equal(got[0], got[1])


def test_training_crop_windows_follow_resnet_ranges():
    shape = tf.constant([100, 200, 3])
    for i in range(200):
        y, x, h, w = data._crop_window(shape, tf.constant([5, i], tf.int64), True).numpy()
        assert 0 <= y and 0 <= x and y + h <= 100 and x + w <= 200
        if (h, w) != (87, 87):  # else the eval-crop fallback
            assert 0.08 * 0.9 <= h * w / 20_000 <= 1.0
            assert 0.75 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_corrupt_image_error_names_the_file(tmp_path: Path):
    _write(tmp_path / "a" / "good.png", _solid((1, 2, 3)))
    _write(tmp_path / "b" / "good.jpg", _solid((1, 2, 3)), "jpg")
    (tmp_path / "a" / "broken.png").write_bytes(b"this is not an image at all")
    (tmp_path / "b" / "notes.jpg").write_text("")  # empty
    kw = dict(image_size=8, batch_size=2, training=False, held_out=1)
    # named when the pipeline is made (a header scan), before any training step
    with pytest.raises(ValueError, match="2 file.s. are not images") as err:
        data.make_dataset(f"folder:{tmp_path}", "train", **kw)
    assert "broken.png (not a JPEG/PNG/GIF/BMP image)" in str(err.value)
    assert "notes.jpg (empty)" in str(err.value)
    (tmp_path / "b" / "notes.jpg").unlink()
    _, labels = _collect(
        data.make_dataset(f"folder:{tmp_path}", "train", skip_corrupt=True, **kw)
    )
    info = data.dataset_info(f"folder:{tmp_path}", held_out=1)
    assert len(labels) == info.num_examples["train"] - 1


def test_truncated_jpeg_error_names_the_file(tmp_path: Path):
    _write(tmp_path / "a" / "ok.png", _solid((1, 2, 3)))
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
    full = tf.io.encode_jpeg(tf.constant(noise)).numpy()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cut.jpg").write_bytes(full[: len(full) // 2])
    kw = dict(image_size=8, batch_size=2, training=False, held_out=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="cut.jpg"):
        for split in ("train", "validation"):  # 2 files: one per split, by hash
            _collect(data.make_dataset(f"folder:{tmp_path}", split, **kw))


def test_folder_errors_are_clear(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        data.make_dataset(f"folder:{missing}", "train", batch_size=2, training=True)
    with pytest.raises(ValueError, match="No class subfolders"):
        data.dataset_info(f"folder:{tmp_path}")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="No images"):
        data.dataset_info(f"folder:{tmp_path}")
    _write(tmp_path / "cls" / "1.png", _solid((0, 0, 0)))
    _write(tmp_path / "cls" / "2.png", _solid((0, 0, 0)))
    with pytest.raises(ValueError, match="'train'"):
        data.make_dataset(f"folder:{tmp_path}", "test", batch_size=2, training=False)
    with pytest.raises(ValueError, match="path"):
        data.make_dataset("folder", "train", batch_size=2, training=False)


# ------------------------------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory) -> str:
    """A real TFDS dataset (grayscale PNG 28x28, like mnist) prepared locally."""
    import tensorflow_datasets as tfds

    data_dir = tmp_path_factory.mktemp("tfds")
    rng = np.random.default_rng(0)

    def examples(n: int, offset: int):
        return [
            (i, {"image": rng.integers(0, 256, (28, 28, 1), np.uint8), "label": (i + offset) % 3})
            for i in range(n)
        ]

    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(names=["x", "y", "z"]),
        }
    )
    tfds.dataset_builders.store_as_tfds_dataset(
        name="mhmodels_tiny_gray",
        version="1.0.0",
        features=features,
        split_datasets={"train": examples(40, 0), "test": examples(10, 1)},
        data_dir=data_dir,
    )
    return str(data_dir)


def test_tfds_dataset_pipeline_and_held_out_split(tiny_tfds: str):
    name = "mhmodels_tiny_gray"
    info = data.dataset_info(name, data_dir=tiny_tfds)
    assert info.num_classes == 3 and info.class_names == ("x", "y", "z")
    assert info.num_examples == {"train": 40, "test": 10, "search_train": 32, "search_valid": 8}
    kw = dict(data_dir=tiny_tfds, image_size=32, batch_size=16, training=False)
    images, labels = _collect(data.make_dataset(name, "test", **kw))
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.float32
    assert -1 <= images.min() < -0.9 and 0.9 < images.max() <= 1
    np.testing.assert_array_equal(images[..., 0], images[..., 1])  # gray -> RGB
    assert sorted(labels.tolist()) == sorted([(i + 1) % 3 for i in range(10)])
    train = _keys(*_collect(data.make_dataset(name, "train", **kw)))
    s_valid = _collect(data.make_dataset(name, "search_valid", **kw))
    s_train = _keys(*_collect(data.make_dataset(name, "search_train", **kw)))
    assert len(s_valid[1]) == 8 and _keys(*s_valid) + s_train == train
    again = _collect(data.make_dataset(name, "search_valid", **kw))
    np.testing.assert_array_equal(s_valid[0], again[0])
    x, y = next(iter(data.make_dataset(name, "train", **{**kw, "training": True, "seed": 0})))
    assert x.shape == (16, 32, 32, 3) and y.dtype == tf.int32
    with pytest.raises(ValueError, match="'search_train'"):
        data.make_dataset(name, "validation", **kw)


def test_tfds_unprepared_or_unknown_fails_fast_without_download(tmp_path: Path):
    start = time.monotonic()
    with pytest.raises(data.DatasetNotPreparedError, match="tfds build mnist"):
        data.make_dataset("mnist", "train", data_dir=str(tmp_path), batch_size=2, training=True)
    with pytest.raises(data.DatasetNotPreparedError, match="manual_dir"):
        data.dataset_info("imagenet2012", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.dataset_info("no_such_dataset_xyz", data_dir=str(tmp_path))
    assert time.monotonic() - start < 30


SYNSETS = ("n01440764", "n01443537")  # ImageNet class ids 0 and 1


def _jpeg(level: int, shape: tuple[int, int]) -> bytes:
    return tf.io.encode_jpeg(tf.constant(_solid((level,) * 3, shape)), quality=100).numpy()


@pytest.fixture(scope="module")
def imagenet_dirs(tmp_path_factory) -> tuple[str, str]:
    """ILSVRC2012-shaped train/val tars (2 synsets x 3 images, 4 val images) for a manual_dir."""
    manual = tmp_path_factory.mktemp("manual")
    train = {
        f"{syn}.tar": tar_bytes(
            {f"{syn}_{i}.JPEG": _jpeg(20 + 10 * i, (50 + i, 70)) for i in range(3)}
        )
        for syn in SYNSETS
    }
    (manual / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes(train))
    val = {f"ILSVRC2012_val_{i:08d}.JPEG": _jpeg(40 * i, (60, 45)) for i in range(1, 5)}
    (manual / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(val))
    return str(manual), str(tmp_path_factory.mktemp("tfds_imagenet"))


def test_imagenet2012_from_manual_dir(imagenet_dirs: tuple[str, str]):
    import tensorflow_datasets as tfds

    manual_dir, data_dir = imagenet_dirs
    kw = dict(data_dir=data_dir, image_size=40, batch_size=4, training=False)
    images, labels = _collect(
        data.make_dataset("imagenet2012", "validation", manual_dir=manual_dir, **kw)
    )
    info = data.dataset_info("imagenet2012", data_dir=data_dir)  # prepared now: no manual_dir
    assert info.num_classes == 1000
    assert info.num_examples == {"train": 6, "validation": 4, "search_train": 5, "search_valid": 1}
    # The true ILSVRC2012 validation labels of val images 1..4, matched by their grey level.
    names = tfds.core.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()
    truth = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt").read_text().split()
    assert images.shape == (4, 40, 40, 3)
    for image, label in zip(images, labels):
        index = round((image.mean() + 1) * 127.5 / 40)
        assert label == names.index(truth[index - 1])
    train_images, train_labels = _collect(data.make_dataset("imagenet2012", "train", **kw))
    assert sorted(train_labels.tolist()) == [0, 0, 0, 1, 1, 1]
    shifted = _collect(data.make_dataset("imagenet2012", "train", label_offset=1, **kw))[1]
    assert sorted(shifted.tolist()) == [1, 1, 1, 2, 2, 2]
    s_train = _keys(*_collect(data.make_dataset("imagenet2012", "search_train", **kw)))
    s_valid = _keys(*_collect(data.make_dataset("imagenet2012", "search_valid", **kw)))
    assert s_train + s_valid == _keys(train_images, train_labels)
    train_kw = {**kw, "training": True, "seed": 1}
    x, _ = next(iter(data.make_dataset("imagenet2012", "train", **train_kw)))
    assert x.shape == (4, 40, 40, 3) and -1 <= x.numpy().min() <= x.numpy().max() <= 1
