"""tf.data input pipelines: the embedded digits set, an image folder, or any TFDS dataset.

One entry point, `make_dataset`, yields `(images float32 [B, H, W, 3] in [-1, 1], labels int32
[B])` from

* ``'digits'``: the default small set that ships inside scikit-learn (1,797 8x8 digits, 10
  classes), so that search and tests run with no download at all;
* ``'folder:<path>'`` (or ``'folder'`` with ``data_dir=<path>``): one subfolder per class, with
  optional ``train/``, ``validation/`` (or ``val/``) and ``test/`` split folders;
* any other name: a TFDS dataset that is already prepared in ``data_dir`` (``imagenet2012``
  from a manual download dir included). Nothing here ever downloads: an unprepared dataset is an
  error that says how to prepare it.

Besides the dataset's own splits every source has TuNAS's ``'search_train'`` /
``'search_valid'``: a deterministic, disjoint partition of ``'train'``, so the architecture search
can measure the reward on images the shared weights never trained on, while the real validation
set stays untouched for the final report (TuNAS holds out 50,000 ImageNet train images).

Preprocessing is ResNet-style, as in TuNAS and the paper: training = random-resized crop (area
8%-100%, aspect 3/4-4/3) + horizontal flip, eval = 87.5% central crop; both resized to
``image_size`` and scaled to [-1, 1] (MobileNet convention, x / 127.5 - 1). The digits get a mild
augmentation instead (a shift of at most one 8x8 pixel, never a flip: digits are not
flip-invariant).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

__all__ = [
    "DatasetInfo",
    "DatasetNotPreparedError",
    "make_dataset",
    "dataset_info",
    "held_out_count",
    "DIGITS",
    "SEARCH_SPLITS",
    "IMAGE_EXTENSIONS",
]

log = logging.getLogger(__name__)

DIGITS = "digits"
SEARCH_TRAIN, SEARCH_VALID = "search_train", "search_valid"
SEARCH_SPLITS = (SEARCH_TRAIN, SEARCH_VALID)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

# TuNAS holds out 50,000 ImageNet train images; small sets hold out 20% of their train split.
# One rule gives both: min(50,000, 20% of train).
IMAGENET_HELD_OUT = 50_000
SMALL_HELD_OUT_FRACTION = 0.2
EVAL_CROP_FRACTION = 0.875  # 224 / 256: the ResNet / MobileNet eval crop
FOLDER_VALIDATION_FRACTION = 0.1  # a folder without split subfolders
DIGITS_VALIDATION_FRACTION = 0.15
DIGITS_TEST_FRACTION = 0.15
_DIGITS_SPLIT_SEED = 20200101  # fixed: the digits splits must never depend on a user seed
_DIGITS_MAX = 16.0  # load_digits pixel values are 0..16
_AUTOTUNE = tf.data.AUTOTUNE


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not prepared in data_dir; the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training loop need to know before reading a dataset."""

    name: str
    num_classes: int
    num_examples: dict[str, int]
    class_names: tuple[str, ...] | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.num_examples)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def held_out_count(num_train: int, held_out: int | float | None = None) -> int:
    """Number of train examples held out as 'search_valid'.

    ``held_out``: None = min(50,000, 20% of train) (TuNAS's ImageNet count, a fifth of a small
    set); a float in (0, 1) = that fraction; an int = that count. Both parts must stay non-empty.
    """
    if num_train < 2:
        raise ValueError(f"Cannot hold out part of a train split of {num_train} example(s).")
    if held_out is None:
        count = min(IMAGENET_HELD_OUT, round(SMALL_HELD_OUT_FRACTION * num_train))
    elif isinstance(held_out, bool):
        raise ValueError(f"held_out must be an int count or a float fraction, got {held_out!r}.")
    elif isinstance(held_out, (int, np.integer)):
        count = int(held_out)
        if not 0 < count < num_train:
            raise ValueError(
                f"held_out={count} must be between 1 and {num_train - 1} "
                f"(the train split has {num_train} examples)."
            )
    elif isinstance(held_out, float):
        if not 0.0 < held_out < 1.0:
            raise ValueError(f"held_out fraction must be in (0, 1), got {held_out}.")
        count = round(held_out * num_train)
    else:
        raise ValueError(f"held_out must be an int count or a float fraction, got {held_out!r}.")
    return int(min(max(count, 1), num_train - 1))


def _stable_hash(key: str, salt: str) -> int:
    """A hash that is the same in every process and Python version (unlike hash())."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def _hash_partition(keys: Sequence[str], count: int, salt: str) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``keys`` into (rest, held) with exactly ``count`` held.

    The ``count`` keys with the smallest salted hash are held: reproducible, disjoint, and
    independent of the order in which the keys were listed.
    """
    order = sorted(range(len(keys)), key=lambda i: (_stable_hash(keys[i], salt), keys[i]))
    held = np.zeros(len(keys), dtype=bool)
    held[order[:count]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def _unknown_split(split: str, valid: Sequence[str], what: str) -> ValueError:
    return ValueError(
        f"Unknown split {split!r} for {what}; valid splits: {', '.join(map(repr, valid))}."
    )


# --------------------------------------------------------------------------------------------
# Preprocessing (all graph code: runs inside tf.data maps)
# --------------------------------------------------------------------------------------------


def _normalize(image: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1], the MobileNet input convention."""
    return tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0) / 127.5 - 1.0


def _center_window(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """[y, x, h, w] of the central square holding 87.5% of the shorter side.

    Cropping it and resizing to S equals resizing the shorter side to S / 0.875 and cropping
    the central S x S, with one resize fewer (and it lets JPEGs decode only the crop).
    """
    short = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.maximum(tf.cast(EVAL_CROP_FRACTION * short, tf.int32), 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def _crop_window(shape: tf.Tensor, seed: tf.Tensor, training: bool) -> tf.Tensor:
    """[y, x, h, w] crop window for an image of ``shape`` [H, W, C].

    Training: the Inception / ResNet random-resized crop; if 10 attempts find no valid box the
    op returns the whole image, which (as in the TPU ResNet reference) falls back to the eval
    crop rather than squashing the whole image.
    """
    height, width = tf.cast(shape[0], tf.int32), tf.cast(shape[1], tf.int32)
    center = _center_window(height, width)
    if not training:
        return center
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.stack([height, width, 3]),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.1,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    failed = tf.logical_and(tf.equal(size[0], height), tf.equal(size[1], width))
    return tf.where(failed, center, window)


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Grayscale / RGBA / RGB uint8 image -> RGB."""
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    raise ValueError(f"Cannot use an image with {channels} channels.")


def _crop_decoded(image: tf.Tensor, seed: tf.Tensor, training: bool) -> tf.Tensor:
    window = _crop_window(tf.shape(image), seed, training)
    return tf.slice(image, tf.stack([window[0], window[1], 0]), tf.stack([window[2], window[3], 3]))


def _crop_encoded(contents: tf.Tensor, seed: tf.Tensor, training: bool) -> tf.Tensor:
    """Decode + crop; a JPEG decodes only the crop window (the bulk of ImageNet's cost)."""

    def jpeg() -> tf.Tensor:
        window = _crop_window(tf.image.extract_jpeg_shape(contents), seed, training)
        return tf.image.decode_and_crop_jpeg(contents, window, channels=3)

    def other() -> tf.Tensor:
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
        return _crop_decoded(tf.ensure_shape(image, [None, None, 3]), seed, training)

    return tf.ensure_shape(tf.cond(tf.io.is_jpeg(contents), jpeg, other), [None, None, 3])


def _resnet_preprocess(
    data: tf.Tensor, seed: tf.Tensor, *, encoded: bool, training: bool, image_size: int
) -> tf.Tensor:
    """ResNet-style crop (+ flip when training), resize, scale to [-1, 1]."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if encoded:
        image = _crop_encoded(data, crop_seed, training)
    else:
        image = _crop_decoded(_to_rgb(data), crop_seed, training)
    if training:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return _normalize(image)


def _digits_preprocess(
    image: tf.Tensor, seed: tf.Tensor, *, training: bool, image_size: int
) -> tf.Tensor:
    """8x8 values 0..16 -> 0..255, mild shift when training, bilinear upscale, gray -> RGB."""
    image = tf.cast(image, tf.float32)[..., tf.newaxis] * (255.0 / _DIGITS_MAX)
    if training:  # shift by at most one pixel (zero background), never flip
        padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]])
        offset = tf.random.stateless_uniform([2], seed, minval=0, maxval=3, dtype=tf.int32)
        image = tf.slice(padded, [offset[0], offset[1], 0], [8, 8, 1])
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return _normalize(tf.image.grayscale_to_rgb(image))


def _bytes_match(data: tf.Tensor, signature: bytes) -> tf.Tensor:
    """Whether ``signature`` occurs anywhere in the uint8 vector ``data``."""
    length = len(signature)
    n = tf.size(data)
    hits = tf.ones([tf.maximum(n - length + 1, 0)], tf.bool)
    for i, byte in enumerate(signature):
        hits = tf.logical_and(hits, tf.equal(data[i : n - length + 1 + i], byte))
    return tf.reduce_any(hits)


def _starts_with(head: tf.Tensor, signature: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(head[: len(signature)], list(signature)))


def _checked_image_bytes(path: tf.Tensor) -> tf.Tensor:
    """Read an image file; a non-image or truncated file fails with an error naming the file.

    TF's decoders report a bad file without its name; checking the format signature and the
    JPEG / PNG end markers here turns the common cases (empty, wrong format, cut-off download)
    into an InvalidArgumentError whose message holds the path.
    """
    contents = tf.io.read_file(path)
    data = tf.io.decode_raw(contents, tf.uint8)
    head = tf.pad(data[:8], [[0, 8 - tf.size(data[:8])]])
    is_jpeg = tf.logical_and(
        _starts_with(head, b"\xff\xd8\xff"), _bytes_match(data[2:], b"\xff\xd9")
    )
    is_png = tf.logical_and(
        _starts_with(head, b"\x89PNG\r\n\x1a\n"), _bytes_match(data, b"IEND")
    )
    is_gif = _starts_with(head, b"GIF8")
    is_bmp = _starts_with(head, b"BM")
    valid = tf.reduce_any(tf.stack([is_jpeg, is_png, is_gif, is_bmp]))
    check = tf.debugging.Assert(
        valid,
        ["Corrupt, truncated or unsupported image file (need a complete JPEG/PNG/GIF/BMP):", path],
    )
    with tf.control_dependencies([check]):
        return tf.identity(contents)


# --------------------------------------------------------------------------------------------
# Pipeline assembly
# --------------------------------------------------------------------------------------------


def _finish(
    ds: tf.data.Dataset,
    preprocess: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    *,
    training: bool,
    batch_size: int,
    shuffle_buffer: int,
    seed: int | None,
    repeat: bool | None,
    drop_remainder: bool | None,
    skip_corrupt: bool = False,
    label_offset: int = 0,
) -> tf.data.Dataset:
    """Shuffle, repeat, parallel preprocess, batch, prefetch.

    Every random op is stateless, seeded by (seed, element index), so a given seed reproduces
    the exact batches; without a seed the order of parallel work is left free (faster).
    Evaluation pipelines are always deterministic.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    deterministic = seed is not None or not training
    base_seed = seed if seed is not None else random.SystemRandom().randrange(2**62)
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def map_fn(index: tf.Tensor, element: tuple[tf.Tensor, tf.Tensor]):
        data, label = element
        element_seed = tf.stack([tf.constant(base_seed, tf.int64), index])
        image = preprocess(data, element_seed)
        return image, tf.cast(label, tf.int32) + label_offset

    ds = ds.enumerate().map(map_fn, num_parallel_calls=_AUTOTUNE, deterministic=deterministic)
    if skip_corrupt:
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(
        batch_size,
        drop_remainder=drop_remainder,
        num_parallel_calls=_AUTOTUNE,
        deterministic=deterministic,
    )
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.prefetch(_AUTOTUNE).with_options(options)


# --------------------------------------------------------------------------------------------
# Digits (scikit-learn, embedded)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Load the 1,797 digits once and split them, stratified, 70/15/15.

    The split is a fixed-seed permutation per class, so every run, process and machine sees
    the same train / validation / test images. Values: (images, labels, indices into
    load_digits()).
    """
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    digits = load_digits()
    images = digits.images.astype(np.float32)  # [1797, 8, 8], 0..16
    labels = digits.target.astype(np.int32)
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = round(DIGITS_VALIDATION_FRACTION * len(idx))
        n_test = round(DIGITS_TEST_FRACTION * len(idx))
        parts["validation"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    split_idx = {name: np.sort(np.concatenate(p)) for name, p in parts.items()}
    return {name: (images[i], labels[i], i) for name, i in split_idx.items()}


def _digits_split(split: str, held_out: int | float | None) -> tuple[np.ndarray, np.ndarray]:
    arrays = _digits_arrays()
    if split in arrays:
        return arrays[split][:2]
    if split in SEARCH_SPLITS:
        images, labels, original_index = arrays["train"]
        keys = [f"digits/{i}" for i in original_index]
        rest, held = _hash_partition(keys, held_out_count(len(keys), held_out), "search")
        chosen = held if split == SEARCH_VALID else rest
        return images[chosen], labels[chosen]
    raise _unknown_split(split, ("train", "validation", "test", *SEARCH_SPLITS), "'digits'")


def _digits_info(held_out: int | float | None) -> DatasetInfo:
    counts = {s: len(_digits_split(s, held_out)[1]) for s in ("train", "validation", "test")}
    counts |= {s: len(_digits_split(s, held_out)[1]) for s in SEARCH_SPLITS}
    return DatasetInfo(DIGITS, 10, counts, tuple(str(i) for i in range(10)))


# --------------------------------------------------------------------------------------------
# Image folder
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Folder:
    root: Path
    class_names: tuple[str, ...]
    files: dict[str, tuple[list[str], list[int]]]  # split -> (absolute paths, labels)


def _list_images(directory: Path) -> list[str]:
    """Image files under ``directory`` (recursive, sorted, hidden files skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if not fname.startswith(".") and fname.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(dirpath, fname))
    return found


def _class_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_split(directory: Path, class_names: Sequence[str]) -> tuple[list[str], list[int]]:
    present = _class_dirs(directory)
    unknown = sorted(set(present) - set(class_names))
    if unknown:
        raise ValueError(
            f"{directory} has class folders {unknown} that the train split {list(class_names)} "
            "does not have."
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        if name in present:
            found = _list_images(directory / name)
            paths += found
            labels += [label] * len(found)
    return paths, labels


_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM")
_checked_folders: set[tuple[str, int]] = set()


def _check_image_headers(root: Path, paths: Sequence[str]) -> None:
    """Name every file that is not a JPEG / PNG / GIF / BMP before any training starts.

    Reads the first bytes of each file (cheap next to decoding it); otherwise a text file named
    x.jpg fails mid-training under a graph traceback. Once per folder and file count.
    """
    key = (str(root), len(paths))
    if key in _checked_folders:
        return
    bad = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as err:
            bad.append(f"{path} ({err.strerror})")
            continue
        if not head.startswith(_IMAGE_SIGNATURES):
            bad.append(f"{path} ({'empty' if not head else 'not a JPEG/PNG/GIF/BMP image'})")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"Image folder {root}: {len(bad)} file(s) are not images: "
                         f"{', '.join(bad[:5])}{more}. Remove or replace them.")
    _checked_folders.add(key)


def _scan_folder(root: str | os.PathLike, held_out: int | float | None) -> _Folder:
    """List a class-per-subfolder image tree and derive every split (no image is read)."""
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise FileNotFoundError(f"Image folder not found: {root_path}")
    if not root_path.is_dir():
        raise NotADirectoryError(f"Image folder is not a directory: {root_path}")
    subdirs = _class_dirs(root_path)
    split_dirs: dict[str, Path] = {}
    if "train" in subdirs:
        split_dirs["train"] = root_path / "train"
        for alias, split in (("validation", "validation"), ("val", "validation"), ("test", "test")):
            if alias in subdirs and split not in split_dirs:
                split_dirs[split] = root_path / alias
        class_names = tuple(_class_dirs(split_dirs["train"]))
        class_root = split_dirs["train"]
    else:
        class_names = tuple(subdirs)
        class_root = root_path
    if not class_names:
        raise ValueError(
            f"No class subfolders in {class_root}: expected one subfolder of images per class."
        )
    files: dict[str, tuple[list[str], list[int]]] = {}
    if split_dirs:
        for split, directory in split_dirs.items():
            files[split] = _scan_split(directory, class_names)
    else:
        paths, labels = _scan_split(root_path, class_names)
        if len(paths) >= 2:
            rel = [os.path.relpath(p, root_path) for p in paths]
            n_val = held_out_count(len(paths), FOLDER_VALIDATION_FRACTION)
            train_idx, val_idx = _hash_partition(rel, n_val, "validation")
            files["train"] = ([paths[i] for i in train_idx], [labels[i] for i in train_idx])
            files["validation"] = ([paths[i] for i in val_idx], [labels[i] for i in val_idx])
        else:
            files["train"] = (paths, labels)
    train_paths, train_labels = files["train"]
    if not train_paths:
        raise ValueError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {class_root}."
        )
    empty = [name for i, name in enumerate(class_names) if i not in set(train_labels)]
    if empty:
        log.warning("Image folder %s: classes with no train images: %s", class_root, empty)
    if len(train_paths) >= 2:
        rel = [os.path.relpath(p, root_path) for p in train_paths]
        rest, held = _hash_partition(rel, held_out_count(len(rel), held_out), "search")
        files[SEARCH_TRAIN] = ([train_paths[i] for i in rest], [train_labels[i] for i in rest])
        files[SEARCH_VALID] = ([train_paths[i] for i in held], [train_labels[i] for i in held])
    return _Folder(root_path, class_names, files)


def _folder_path(name: str, data_dir: str | None) -> str:
    path = name.split(":", 1)[1] if ":" in name else ""
    path = path or (data_dir or "")
    if not path:
        raise ValueError("An image folder needs a path: name='folder:<path>' or data_dir=<path>.")
    return path


# --------------------------------------------------------------------------------------------
# TFDS
# --------------------------------------------------------------------------------------------


def _tfds_builder(name: str, data_dir: str | None, manual_dir: str | None) -> Any:
    """A prepared TFDS builder; never downloads.

    A dataset that is not prepared is prepared here only when it is a manual-download dataset
    (e.g. imagenet2012) and the caller passed ``manual_dir``; GCS and every URL stay untouched.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"Unknown dataset {name!r}: use 'digits', 'folder:<path>' or a TFDS dataset name "
            f"(data_dir={data_dir!r}). TFDS said: {str(e).splitlines()[0]}"
        ) from e
    if builder.is_prepared():
        return builder
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    where = builder.data_dir
    if instructions and manual_dir is not None:
        if not Path(manual_dir).is_dir():
            raise FileNotFoundError(f"manual_dir not found: {manual_dir}")
        log.info("Preparing TFDS %s from manual_dir %s into %s", name, manual_dir, where)
        config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
        builder.download_and_prepare(download_config=config)
        return builder
    if instructions:
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} is not prepared in {where}, and it cannot be downloaded: "
            f"put its manual files in a directory and pass manual_dir=<dir> (or run `tfds build "
            f"{name} --manual_dir=<dir> --data_dir=<data_dir>`). TFDS's instructions:\n"
            f"{instructions.strip()}"
        )
    raise DatasetNotPreparedError(
        f"TFDS dataset {name!r} is not prepared in {where}. This library never downloads: run "
        f"`tfds build {name} --data_dir=<data_dir>` on a machine with internet access, copy "
        "that data_dir here and pass data_dir=<data_dir>."
    )


def _tfds_keys(builder: Any) -> tuple[str, str]:
    """(image key, label key) of a TFDS dataset: its supervised keys, else the typed features."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    keys = builder.info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return keys
    image_keys = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    label_keys = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    if not image_keys or not label_keys:
        raise ValueError(
            f"TFDS dataset {builder.name!r} has no image + class-label features: {features}"
        )
    return image_keys[0], label_keys[0]


def _tfds_split_sizes(builder: Any, held_out: int | float | None) -> dict[str, int]:
    sizes = {name: int(info.num_examples) for name, info in builder.info.splits.items()}
    if sizes.get("train", 0) >= 2:
        n_held = held_out_count(sizes["train"], held_out)
        sizes[SEARCH_TRAIN] = sizes["train"] - n_held
        sizes[SEARCH_VALID] = n_held
    return sizes


def _tfds_split_expr(builder: Any, split: str, held_out: int | float | None) -> str:
    """TFDS split string for ``split``; the search splits are exact slices of 'train'.

    TFDS shuffles examples when it prepares a dataset, so the first N records of 'train' are a
    fixed pseudo-random subset: slicing is a reproducible, disjoint hold-out that reads only
    the shards it needs.
    """
    sizes = _tfds_split_sizes(builder, held_out)
    if split in SEARCH_SPLITS and split in sizes:
        n_held = sizes[SEARCH_VALID]
        return f"train[:{n_held}]" if split == SEARCH_VALID else f"train[{n_held}:]"
    if split in sizes:
        return split
    if "[" in split or "+" in split:  # a TFDS slicing expression, checked by TFDS itself
        return split
    raise _unknown_split(split, tuple(sizes), f"TFDS dataset {builder.name!r}")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _kind(name: str) -> str:
    if name == DIGITS:
        return "digits"
    if name == "folder" or name.startswith("folder:"):
        return "folder"
    return "tfds"


def dataset_info(
    name: str,
    data_dir: str | None = None,
    *,
    held_out: int | float | None = None,
    manual_dir: str | None = None,
) -> DatasetInfo:
    """Classes and per-split example counts (search splits included) of a dataset."""
    kind = _kind(name)
    if kind == "digits":
        return _digits_info(held_out)
    if kind == "folder":
        folder = _scan_folder(_folder_path(name, data_dir), held_out)
        counts = {split: len(paths) for split, (paths, _) in folder.files.items()}
        return DatasetInfo(name, len(folder.class_names), counts, folder.class_names)
    builder = _tfds_builder(name, data_dir, manual_dir)
    _, label_key = _tfds_keys(builder)
    label_feature = builder.info.features[label_key]
    names = getattr(label_feature, "names", None)
    return DatasetInfo(
        name,
        int(label_feature.num_classes),
        _tfds_split_sizes(builder, held_out),
        tuple(names) if names else None,
    )


def make_dataset(
    name: str,
    split: str,
    *,
    image_size: int = 224,
    batch_size: int,
    training: bool,
    data_dir: str | None = None,
    shuffle_buffer: int = 10_000,
    seed: int | None = None,
    repeat: bool | None = None,
    drop_remainder: bool | None = None,
    held_out: int | float | None = None,
    manual_dir: str | None = None,
    skip_corrupt: bool = False,
    label_offset: int = 0,
) -> tf.data.Dataset:
    """A batched, prefetched ``(images float32 [B,S,S,3] in [-1,1], labels int32 [B])`` dataset.

    Args:
      name: ``'digits'``, ``'folder:<path>'`` (or ``'folder'`` + ``data_dir``) or a TFDS name.
      split: ``'train'``, ``'validation'``, ``'test'`` where the source has them, or TuNAS's
        ``'search_train'`` / ``'search_valid'`` (a disjoint partition of ``'train'``). TFDS also
        accepts its own slicing expressions such as ``'train[:10%]'``.
      image_size: output side S.
      batch_size: examples per batch.
      training: random crop / flip (shift for digits) and shuffling, else the central crop.
      data_dir: TFDS data dir (or the image folder for ``name='folder'``).
      shuffle_buffer: shuffle buffer of the TFDS records; the in-memory sets (digits, a
        folder's file list) are always shuffled whole, which costs nothing there.
      seed: makes shuffling and augmentation reproducible; without it training runs faster,
        with a non-deterministic order.
      repeat: repeat forever; default: ``training``.
      drop_remainder: drop the last short batch (static batch size); default: ``training``.
      held_out: size of ``'search_valid'``: a count, a fraction, or None for
        min(50,000, 20% of train) (TuNAS's 50,000 on ImageNet).
      manual_dir: for a manual-download TFDS dataset (imagenet2012: the ILSVRC2012 tars) that
        is not prepared yet: prepare it from there (once; it can take hours for ImageNet).
      skip_corrupt: skip undecodable images (each is logged) instead of failing on the first.
      label_offset: added to every label, e.g. 1 for the 1001-class (background = 0) ImageNet
        heads of the MobileNet checkpoints.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}.")
    kind = _kind(name)
    if kind == "digits":
        ds, preprocess, shuffle_buffer = _digits_source(split, held_out, training, image_size)
    elif kind == "folder":
        ds, preprocess, shuffle_buffer = _folder_source(name, split, data_dir, held_out,
                                                        skip_corrupt, training, image_size)
    else:
        ds, preprocess = _tfds_source(name, split, data_dir, manual_dir, held_out, seed,
                                      training, image_size)
    return _finish(ds, preprocess, shuffle_buffer=shuffle_buffer, training=training,
                   batch_size=batch_size, seed=seed, repeat=repeat,
                   drop_remainder=drop_remainder, skip_corrupt=skip_corrupt,
                   label_offset=label_offset)


_Preprocess = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _resnet_fn(encoded: bool, training: bool, image_size: int) -> _Preprocess:
    """(image or its encoded bytes, seed) -> the ResNet-style crop in [-1, 1]."""
    def fn(data: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
        return _resnet_preprocess(data, s, encoded=encoded, training=training,
                                  image_size=image_size)

    return fn


def _digits_source(split: str, held_out, training: bool, image_size: int
                   ) -> tuple[tf.data.Dataset, _Preprocess, int]:
    """scikit-learn's digits, in memory: (dataset, preprocessing, shuffle buffer)."""
    images, labels = _digits_split(split, held_out)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).cache()

    def digits_fn(data: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
        return _digits_preprocess(data, s, training=training, image_size=image_size)

    return ds, digits_fn, len(labels)


def _folder_source(name: str, split: str, data_dir, held_out, skip_corrupt: bool,
                   training: bool, image_size: int
                   ) -> tuple[tf.data.Dataset, _Preprocess, int]:
    """A folder of images, one subfolder per class: (dataset of paths, preprocessing that
    reads and decodes them, shuffle buffer)."""
    folder = _scan_folder(_folder_path(name, data_dir), held_out)
    if not skip_corrupt:  # a non-image is named now, not mid-training
        _check_image_headers(folder.root, list(dict.fromkeys(
            p for paths, _ in folder.files.values() for p in paths)))
    if split not in folder.files:
        raise _unknown_split(split, tuple(folder.files), f"image folder {folder.root}")
    paths, labels = folder.files[split]
    if not paths:
        raise ValueError(f"Split {split!r} of image folder {folder.root} has no images.")
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(labels, tf.int32)))
    decode = _resnet_fn(True, training, image_size)

    def folder_fn(path: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
        return decode(_checked_image_bytes(path), s)

    return ds, folder_fn, len(paths)


def _tfds_source(name: str, split: str, data_dir, manual_dir, held_out, seed,
                 training: bool, image_size: int) -> tuple[tf.data.Dataset, _Preprocess]:
    """A TFDS dataset (never downloaded here): (dataset of (image, label), preprocessing)."""
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir, manual_dir)
    image_key, label_key = _tfds_keys(builder)
    expr = _tfds_split_expr(builder, split, held_out)
    encoded = isinstance(builder.info.features[image_key], tfds.features.Image)
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    read_config.options.deterministic = seed is not None or not training
    try:
        ds = builder.as_dataset(
            split=expr,
            shuffle_files=training,
            read_config=read_config,
            decoders={image_key: tfds.decode.SkipDecoding()} if encoded else None,
        )
    except (ValueError, KeyError, AssertionError) as e:
        raise ValueError(
            f"Bad split {split!r} for TFDS dataset {name!r} ({e}); valid splits: "
            f"{', '.join(map(repr, _tfds_split_sizes(builder, held_out)))}."
        ) from e
    ds = ds.map(lambda ex: (ex[image_key], ex[label_key]), num_parallel_calls=_AUTOTUNE)
    return ds, _resnet_fn(encoded, training, image_size)
