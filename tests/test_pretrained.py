"""Converters of published checkpoints, proven on the publishers' own code (offline).

The fixtures (tests/fixtures/keras_applications, made by tools/make_keras_fixtures.py) are
keras.applications MobileNets built by the publisher's Keras 2 code with random weights and
saved in the published legacy HDF5 format under keras's file names, with the logits the
publisher's model gave on real photos. Here they are converted into our models and compared
with those logits and with Keras 3's keras.applications loading the same file.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import mhmodels
from mhmodels import pretrained as P
from mhmodels.features import endpoint_blocks
from mhmodels import weights as W
from mhmodels.images import sample_photos

FIXTURES = Path(__file__).parent / "fixtures" / "keras_applications"
INDEX = json.loads((FIXTURES / "index.json").read_text())
# TF Model Garden checkpoints (tools/make_model_garden_fixtures.sh, a side venv)
MG_FIXTURES = Path(__file__).parent / "fixtures" / "model_garden"
MG_INDEX = json.loads((MG_FIXTURES / "index.json").read_text())
TOLERANCE = 1e-4  # relative: max |ours - theirs| / max |theirs|


def rel_err(ours, theirs) -> float:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def copy_fixture(source: Path, target_dir: Path) -> Path:
    """`source` copied into `target_dir`, gunzipped if stored as `.gz` (the fixtures are the
    publishers' files byte for byte once unpacked)."""
    if source.suffix != ".gz":
        return Path(shutil.copy(source, target_dir / source.name))
    target = target_dir / source.name[: -len(".gz")]
    with gzip.open(source) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The fixtures gunzipped: byte for byte the files keras' save_weights wrote."""
    out = tmp_path_factory.mktemp("keras_h5")
    return {model_id: copy_fixture(FIXTURES / entry["file"], out)
            for model_id, entry in INDEX.items()}


def photos(entry) -> np.ndarray:
    return sample_photos(size=entry["input_size"], crops_per_image=2)


def check_converted(ours, theirs: np.ndarray, entry: dict, tampered: str) -> None:
    """`ours` on the fixture's photos ([-1, 1]) gives the publisher's logits; reversing the
    first tensor of layer `tampered` puts it far off (a lost tensor would show)."""
    assert theirs.std() > 0.1  # random weights gave informative logits, not a constant
    got = ours(photos(entry), training=False).numpy()
    assert got.shape == theirs.shape == (4, entry["classes"])
    assert rel_err(got, theirs) <= TOLERANCE
    layer = ours.get_layer(tampered)
    first, *rest = layer.get_weights()
    layer.set_weights([first[..., ::-1].copy(), *rest])
    assert rel_err(ours(photos(entry), training=False).numpy(), theirs) > 1e-3


@pytest.mark.parametrize("source, model_id", [("keras_applications", m) for m in sorted(INDEX)]
                         + [("model_garden", m) for m in sorted(MG_INDEX)])
def test_converted_logits_equal_the_publishers_model(files, mg_checkpoints, source, model_id):
    """keras.applications .h5 files and Model Garden TF2 checkpoints, both fed [-1, 1]."""
    entry = (INDEX if source == "keras_applications" else MG_INDEX)[model_id]
    shape = (entry["input_size"], entry["input_size"], 3)
    if source == "keras_applications":
        ours = P.from_keras_applications(files[model_id], model_id, entry["alpha"],
                                         input_shape=shape)
        check_converted(ours, np.load(FIXTURES / entry["logits"]), entry, "block1_dw_bn")
        return
    ours = P.from_model_garden(mg_checkpoints[model_id], model_id, entry["width"],
                               input_shape=shape)
    normalization = ours.get_layer("input_normalization")  # the one rule: [-1, 1] in
    pixels = (photos(entry) + 1.0) * 127.5
    np.testing.assert_allclose(normalization(photos(entry)).numpy(),
                               P.model_garden_input(pixels), rtol=1e-5, atol=1e-5)
    # theirs were fed model_garden_input(pixels), ours the same photos in [-1, 1]
    check_converted(ours, np.load(MG_FIXTURES / entry["logits"]), entry, "block3_project")


@pytest.mark.parametrize("model_id", ["mobilenet_v2", "mobilenet_v3_large"])
def test_keras3_keras_applications_reading_the_same_file_agrees(files, model_id):
    """Keras 3's own loader of the published files (what keras.applications users run),
    with MobileNetV3's built-in rescaling fed [0, 255] pixels: ours on preprocess_input."""
    import keras

    entry = INDEX[model_id]
    size = entry["input_size"]
    kwargs = dict(alpha=entry["alpha"], input_shape=(size, size, 3), classes=entry["classes"],
                  weights=str(files[model_id]), classifier_activation=None)
    if entry["function"].startswith("MobileNetV3"):
        kwargs.update(include_preprocessing=True, minimalistic=entry["minimalistic"])
    reference = getattr(keras.applications, entry["function"])(**kwargs)
    pixels = (photos(entry) + 1.0) * 127.5  # back to [0, 255]
    fed = pixels if entry["function"].startswith("MobileNetV3") else pixels / 127.5 - 1.0
    theirs = reference(fed, training=False).numpy()
    ours = P.from_keras_applications(files[model_id], model_id, entry["alpha"],
                                     input_shape=(size, size, 3))
    got = ours(mhmodels.preprocess_input(pixels), training=False).numpy()
    assert rel_err(got, theirs) <= TOLERANCE


def test_every_layer_maps_to_one_published_name():
    for model_id, family in P.KERAS_FAMILIES.items():
        model = mhmodels.build(model_id, input_shape=(64, 64, 3), num_classes=1000)
        names = [P.published_name(family, layer.name) for layer in model.layers if layer.weights]
        assert len(names) == len(set(names)), model_id
    with pytest.raises(P.CheckpointMismatch, match="no counterpart"):
        P.published_name("keras_v1", "block0_fused")


def test_refusals_say_why_and_never_load_into_a_different_network(files):
    v3 = mhmodels.get_spec("mobilenet_v3_large")
    with pytest.raises(P.ArchitectureMismatch, match="keeps its stem at 16 channels"):
        P.checkpoint_spec(v3, "keras_v3", 1.25)
    with pytest.raises(P.ArchitectureMismatch, match=r"6x the last block's channels \(192\)"):
        P.checkpoint_spec(mhmodels.get_spec("mobilenet_v3_small"), "keras_v3", 0.35)
    assert P.checkpoint_spec(v3, "keras_v3", 0.75) == v3  # published widths: our own spec
    with pytest.raises(P.ArchitectureMismatch, match="multiples of 32"):
        P.from_keras_applications(files["mobilenet_v1"], "mobilenet_v1", 0.25,
                                  input_shape=(112, 112, 3))
    with pytest.raises(P.CheckpointMismatch, match=r"has shape .* needs"):  # another width
        P.from_keras_applications(files["mobilenet_v2"], "mobilenet_v2", 0.5,
                                  input_shape=(96, 96, 3))
    with pytest.raises(P.CheckpointMismatch, match="is a keras.applications MobileNetV2 file"):
        P.from_keras_applications(files["mobilenet_v2"], "mobilenet_v1", 0.35,
                                  input_shape=(96, 96, 3))
    with pytest.raises(ValueError, match="1000-class head"):
        mhmodels.build("mobilenet_v1", 0.25, input_shape=(128, 128, 3), num_classes=1001,
                       weights=str(files["mobilenet_v1"]))


def test_build_loads_a_keras_applications_file_by_path(files):
    entry = INDEX["mobilenet_v2"]
    model = mhmodels.build("mobilenet_v2", entry["alpha"], input_shape=(96, 96, 3),
                           weights=str(files["mobilenet_v2"]))
    theirs = np.load(FIXTURES / entry["logits"])
    assert model.output_shape == (None, 10)  # the class count comes from the file
    assert rel_err(model(photos(entry), training=False).numpy(), theirs) <= TOLERANCE
    features = mhmodels.build("mobilenet_v2", entry["alpha"], input_shape=(96, 96, 3),
                              include_top=False, pooling="avg",
                              weights=str(files["mobilenet_v2"]))
    np.testing.assert_array_equal(features.get_layer("head0").kernel.numpy(),
                                  model.get_layer("head0").kernel.numpy())


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """(folder, base URL): a local HTTP server of that folder; proxies off, the user cache
    (MHMODELS_HOME, KERAS_HOME) in tmp_path."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: _Quiet(*a, directory=root,
                                                                          **k))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("MHMODELS_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def use_manifest(monkeypatch, path: Path, entries: list[dict]) -> None:
    path.write_text(json.dumps({"format_version": 1, "checkpoints": entries}))
    monkeypatch.setenv("MHMODELS_WEIGHTS_MANIFEST", str(path))


@pytest.fixture
def published(files, http_root, tmp_path, monkeypatch):
    """A local HTTP server serving the MobileNetV1 0.25 / 128 fixture under its published name,
    and a manifest entry for it like the shipped one (unpinned: keras publishes no hash)."""
    root, base = http_root
    shutil.copy(files["mobilenet_v1"], root / "mobilenet_2_5_128_tf.h5")
    shipped = {(c.model, c.width, c.resolution): c for c in W.load_manifest()}
    entry = dict(json.loads(W.manifest_path().read_text())["checkpoints"][
        list(shipped).index(("mobilenet_v1", 0.25, 128))])
    entry["url"] = f"{base}/mobilenet_2_5_128_tf.h5"
    (root / "multi_avg_int8.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(300))
    tflite = dict(next(c for c in json.loads(W.manifest_path().read_text())["checkpoints"]
                       if c["model"] == "multi_avg" and c["format"] == "tflite_int8"))
    tflite["url"] = f"{base}/multi_avg_int8.tflite"
    use_manifest(monkeypatch, tmp_path / "weights.json", [entry, tflite])
    return entry


def test_build_weights_imagenet_downloads_converts_and_decodes(published):
    entry = INDEX["mobilenet_v1"]
    with pytest.warns(W.UnpinnedCheckpointWarning, match="unpinned"):
        model = mhmodels.build("mobilenet_v1", 0.25, input_shape=(128, 128, 3),
                               weights="imagenet")
    assert model.output_shape == (None, 1000)  # keras.applications' layout, not our 1001
    logits = model(photos(entry), training=False).numpy()
    assert rel_err(logits, np.load(FIXTURES / entry["logits"])) <= TOLERANCE
    top = mhmodels.decode_predictions(logits, top=3)
    assert len(top) == 4 and all(len(row) == 3 for row in top)
    best = int(np.argmax(logits[0]))
    assert top[0][0] == (*mhmodels.preprocessing.imagenet_classes()[best], float(logits[0, best]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second use: verified against the recorded sha256
        mhmodels.build("mobilenet_v1", 0.25, input_shape=(128, 128, 3), weights="imagenet")
    with pytest.raises(ValueError, match="ImageNet head"):
        mhmodels.build("mobilenet_v1", 0.25, input_shape=(128, 128, 3), weights="imagenet",
                       num_classes=10)


def test_shipped_manifest_lists_the_keras_applications_checkpoints():
    ckpts = W.load_manifest()
    keras_files = [c for c in ckpts if c.source == "keras_applications"]
    assert len(keras_files) == 16 + 22 + 5  # V1 4x4, V2 as TF-slim, V3 large/small/large-min
    by_key = {(c.model, c.width, c.resolution): c for c in keras_files}
    v3 = by_key[("mobilenet_v3_large", 1.0, 224)]
    assert v3.md5 == "59e551e166be033d707958cf9e29a6a7" and v3.pinned and v3.top1 == 75.6
    v2 = by_key[("mobilenet_v2", 1.4, 224)]
    assert not v2.pinned and v2.classes == 1000 and v2.top1 == 75.0
    assert v2.cache_filename == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.4_224.h5"
    assert by_key[("mobilenet_v1", 0.25, 128)].url.endswith("/mobilenet_2_5_128_tf.h5")
    for c in keras_files:  # every one is buildable exactly (no refusal at published widths)
        P.checkpoint_spec(mhmodels.get_spec(c.model), P.KERAS_FAMILIES[c.model], c.width,
                          (c.resolution, c.resolution, 3))


# --------------------------------------------------------------------------------------------
# Input rule and class names
# --------------------------------------------------------------------------------------------


def test_preprocess_input_maps_pixels_to_minus_one_one():
    pixels = np.array([[[[0, 127.5, 255]]]], dtype=np.float32)
    np.testing.assert_allclose(mhmodels.preprocess_input(pixels), [[[[-1.0, 0.0, 1.0]]]])
    as_uint8 = mhmodels.preprocess_input(np.full((2, 4, 4, 3), 255, np.uint8))
    assert as_uint8.dtype == np.float32 and np.all(as_uint8 == 1.0)
    unit = mhmodels.preprocess_input(np.array([[0.0, 0.5, 1.0]]), value_range=(0, 1))
    np.testing.assert_allclose(unit, [[-1.0, 0.0, 1.0]])
    import tensorflow as tf

    tensor = mhmodels.preprocess_input(tf.constant(pixels))
    np.testing.assert_allclose(np.asarray(tensor), [[[[-1.0, 0.0, 1.0]]]])
    with pytest.raises(ValueError, match="3 RGB channels"):
        mhmodels.preprocess_input(np.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="high > low"):
        mhmodels.preprocess_input(pixels, value_range=(1, 1))


def test_decode_predictions_handles_both_layouts_explicitly():
    classes = mhmodels.preprocessing.imagenet_classes()
    assert len(classes) == 1000 and classes[0] == ("n01440764", "tench")
    assert classes[999] == ("n15075141", "toilet tissue")
    keras_row = np.zeros((1, 1000))
    keras_row[0, 1], keras_row[0, 0] = 5.0, 2.0
    assert mhmodels.decode_predictions(keras_row, top=2) == [
        [("n01443537", "goldfish", 5.0), ("n01440764", "tench", 2.0)]]
    ours_row = np.zeros((1, 1001))  # background first: index i + 1 is keras class i
    ours_row[0, 2], ours_row[0, 0] = 5.0, 4.0
    assert mhmodels.decode_predictions(ours_row, top=2) == [
        [("n01443537", "goldfish", 5.0), ("background", "background", 4.0)]]
    with pytest.raises(ValueError, match="10 classes"):
        mhmodels.decode_predictions(np.zeros((1, 10)))
    with pytest.raises(ValueError, match="have 1001"):
        mhmodels.decode_predictions(keras_row, layout=1001)
    with pytest.raises(ValueError, match="top must be"):
        mhmodels.decode_predictions(keras_row, top=0)


# --------------------------------------------------------------------------------------------
# python -m mhmodels weights list | fetch
# --------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mhmodels", "weights", *args],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ),
                          cwd=Path(__file__).parent.parent)


def test_cli_lists_the_shipped_table_and_says_unpinned(monkeypatch, tmp_path):
    monkeypatch.delenv("MHMODELS_WEIGHTS_MANIFEST", raising=False)
    monkeypatch.setenv("MHMODELS_HOME", str(tmp_path))
    done = _cli("list", "--model=mobilenet_v3_large")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("mobilenet")]
    assert [(r[1], r[2], r[3], r[4], r[6], r[7]) for r in rows] == [
        ("0.75", "224", "1000", "keras_h5", "73.30", "minus_one_one"),
        ("1.00", "224", "1000", "keras_h5", "75.60", "minus_one_one")]
    assert all(line.endswith("md5 (published)") for line in done.stdout.splitlines()[2:4])
    v1 = _cli("list", "--model=mobilenet_v1").stdout
    assert v1.count("unpinned; sha256 recorded at first download") == 16
    bad = _cli("fetch")
    assert bad.returncode != 0 and "exactly one model" in bad.stderr


def test_cli_fetches_a_published_tflite_file(published):
    done = _cli("fetch", "multi_avg", "--format=tflite_int8", "--noprogress")
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.read_bytes()[4:8] == b"TFL3" and "unpinned" in done.stderr
    assert "takes imagenet_mean_std input" in done.stderr  # the Model Garden's convention
    missing = _cli("fetch", "multi_max", "--format=tflite_int8", "--noprogress")
    assert missing.returncode == 2 and "no checkpoints for 'multi_max'" in missing.stderr


def test_fetch_exports_a_tflite_from_converted_weights_once(published):
    from ai_edge_litert.interpreter import Interpreter

    from mhmodels import weights_cli

    entry = INDEX["mobilenet_v1"]
    with pytest.warns(W.UnpinnedCheckpointWarning):
        path = weights_cli.fetch_file("mobilenet_v1", 0.25, "tflite_float", None, progress=False)
    assert path.name == "mobilenet_v1-w0.25-r128-imagenet-float.tflite"
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    x = photos(entry)[:1]
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert rel_err(got, np.load(FIXTURES / entry["logits"])[:1]) <= TOLERANCE
    mtime = path.stat().st_mtime_ns
    assert weights_cli.fetch_file("mobilenet_v1", 0.25, "tflite_float", 128,
                                  progress=False) == path
    assert path.stat().st_mtime_ns == mtime  # cached, not exported again
    converted = weights_cli.fetch_file("mobilenet_v1", 0.25, "keras", None, progress=False)
    model = mhmodels.build("mobilenet_v1", 0.25, input_shape=(128, 128, 3), num_classes=1000,
                           weights=str(converted))
    assert rel_err(model(x, training=False).numpy(),
                   np.load(FIXTURES / entry["logits"])[:1]) <= TOLERANCE


def test_load_weights_into_a_built_model_for_fine_tuning(files):
    entry = INDEX["mobilenet_v2"]
    reference = P.from_keras_applications(files["mobilenet_v2"], "mobilenet_v2", 0.35,
                                          input_shape=(96, 96, 3))
    mine = mhmodels.build("mobilenet_v2", 0.35, input_shape=(96, 96, 3), num_classes=3)
    with pytest.raises(P.CheckpointMismatch, match="10-class classifier, the model 3"):
        P.load_weights(mine, str(files["mobilenet_v2"]))
    P.load_weights(mine, str(files["mobilenet_v2"]), skip_mismatched_head=True)
    np.testing.assert_array_equal(mine.get_layer("head0").kernel.numpy(),
                                  reference.get_layer("head0").kernel.numpy())
    same = mhmodels.build("mobilenet_v2", 0.35, input_shape=(96, 96, 3), num_classes=10)
    P.load_weights(same, str(files["mobilenet_v2"]))
    assert rel_err(same(photos(entry), training=False).numpy(),
                   np.load(FIXTURES / entry["logits"])) <= TOLERANCE
    small = mhmodels.build("mobilenet_v3_small", 0.5, input_shape=(64, 64, 3), num_classes=10)
    with pytest.raises(P.ArchitectureMismatch, match="publisher's exact network"):
        P.load_weights(small, str(files["mobilenet_v3_small"]))  # keras keeps a 16-ch stem


def test_a_background_first_checkpoint_fills_a_1000_class_model(tmp_path):
    """1001 classes (ours, the Model Garden's) -> 1000 (TFDS imagenet2012, keras): the same
    logits without class 0, so `train --mode=eval --init_weights=...` scores on ImageNet."""
    x = photos({"input_size": 64})
    ours = mhmodels.build("multi_avg", 0.35, input_shape=(64, 64, 3))  # 1001 classes
    ours.save_weights(str(tmp_path / "ours.weights.h5"))
    keras_layout = mhmodels.build("multi_avg", 0.35, input_shape=(64, 64, 3), num_classes=1000)
    P.load_weights(keras_layout, str(tmp_path / "ours.weights.h5"))
    # float32 logits of magnitude ~30 from two differently shaped matmuls: a few ulps apart
    # (3.8e-6 seen on an AVX2 host); a wrong class mapping is off by whole units
    np.testing.assert_allclose(keras_layout(x, training=False).numpy(),
                               ours(x, training=False).numpy()[:, 1:], rtol=1e-5, atol=1e-5)
    other = mhmodels.build("multi_avg", 0.35, input_shape=(64, 64, 3), num_classes=999)
    with pytest.raises(P.CheckpointMismatch, match="1001-class classifier, the model 999"):
        P.load_weights(other, str(tmp_path / "ours.weights.h5"))


# --------------------------------------------------------------------------------------------
# Multi-scale features
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["multi_avg", "mobilenet_v3_small", "mobilenet_v1"])
def test_feature_extractor_endpoints_are_the_classifiers_tensors(name):
    model = mhmodels.build(name, 0.5, input_shape=(64, 64, 3), num_classes=10)
    features = mhmodels.feature_extractor(model)
    x = photos({"input_size": 64})
    maps = [m.numpy() for m in features(x, training=False)]
    assert [m.shape[1:3] for m in maps] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    ends = endpoint_blocks(mhmodels.get_spec(name))
    spec = mhmodels.get_spec(name)
    for stride, got in zip((4, 8, 16, 32), maps):
        index = int(ends[stride][len("block"):])  # last block at that stride
        if index + 1 < len(spec.blocks):  # the next block halves the resolution
            assert spec.blocks[index + 1].stride == 2
        tap = model.get_layer([l.name for l in model.layers
                               if l.name.split("_")[0] == ends[stride]][-1])
        probe = type(model)(model.inputs[0], tap.output)
        np.testing.assert_array_equal(got, probe(x, training=False).numpy())
    assert features.get_layer("stem").kernel is model.get_layer("stem").kernel  # shared
    with pytest.raises(ValueError, match="strides"):
        mhmodels.feature_extractor(model, strides=(64,))


def test_feature_extractor_on_pretrained_weights(files):
    model = mhmodels.build("mobilenet_v2", 0.35, input_shape=(96, 96, 3),
                           weights=str(files["mobilenet_v2"]), include_top=False)
    c4, c8, c16, c32 = mhmodels.feature_extractor(model).output_shape
    assert (c4[1:3], c8[1:3], c16[1:3], c32[1:3]) == ((24, 24), (12, 12), (6, 6), (3, 3))
    assert (c4[3], c32[3]) == (8, 112)  # round8(24 * 0.35), round8(320 * 0.35)


def test_build_features_only_gives_the_classifiers_tensors_with_pretrained_weights(files):
    """build(features_only=True, weights=...): the stride 4/8/16/32 maps are the tensors the
    pretrained classifier computes at the end of each stride, to the last bit."""
    shape = (96, 96, 3)
    classifier = mhmodels.build("mobilenet_v2", 0.35, input_shape=shape,
                                weights=str(files["mobilenet_v2"]))
    backbone = mhmodels.build("mobilenet_v2", 0.35, input_shape=shape, features_only=True,
                              weights=str(files["mobilenet_v2"]))
    x = photos({"input_size": 96})
    maps = [m.numpy() for m in backbone(x, training=False)]
    assert [m.shape for m in maps] == [(4, 24, 24, 8), (4, 12, 12, 16), (4, 6, 6, 32),
                                       (4, 3, 3, 112)]
    ends = endpoint_blocks(mhmodels.get_spec("mobilenet_v2"))
    taps = [[l for l in classifier.layers if l.name.split("_")[0] == ends[s]][-1].output
            for s in (4, 8, 16, 32)]
    expected = type(classifier)(classifier.inputs[0], taps)(x, training=False)
    for got, want in zip(maps, expected):
        np.testing.assert_array_equal(got, want.numpy())
    assert np.abs(maps[-1]).mean() > 0.01  # real activations, not zeros
    stride8, stride32 = mhmodels.build("mobilenet_v2", 0.35, input_shape=(None, None, 3),
                                       features_only=True, out_indices=(2, -1)).output_shape
    assert (stride8, stride32) == ((None, None, None, 16), (None, None, None, 112))


@pytest.mark.parametrize("kwargs, message", [
    ({"out_indices": (1, 2)}, "features_only=True"),
    ({"features_only": True, "out_indices": (5,)}, "out_indices must be"),
    ({"features_only": True, "out_indices": (1, 1)}, "out_indices must be"),
    ({"features_only": True, "pooling": "avg"}, "pooling does not apply"),
])
def test_build_features_only_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mhmodels.build("multi_max", 0.5, input_shape=(64, 64, 3), **kwargs)


# --------------------------------------------------------------------------------------------
# TF Model Garden checkpoints (fixtures: tools/make_model_garden_fixtures.sh, a side venv)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mg_checkpoints(tmp_path_factory):
    """The checkpoints as the Model Garden wrote them (the data shard is stored gzipped)."""
    out = tmp_path_factory.mktemp("model_garden")
    for path in MG_FIXTURES.glob("*_ckpt.*"):
        copy_fixture(path, out)
    return {name: out / entry["checkpoint"] for name, entry in MG_INDEX.items()}


def test_model_garden_mismatches_are_refused(mg_checkpoints):
    with pytest.raises(P.CheckpointMismatch, match="has shape"):
        P.from_model_garden(mg_checkpoints["multi_avg"], "multi_avg", 0.5,
                            input_shape=(64, 64, 3))
    with pytest.raises(P.CheckpointMismatch):
        P.from_model_garden(mg_checkpoints["multi_avg"], "multi_max", 0.35,
                            input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="no Model Garden converter"):
        P.from_model_garden(mg_checkpoints["multi_avg"], "mobilenet_v2", 0.35)


def test_build_weights_loads_a_model_garden_checkpoint(mg_checkpoints, tmp_path):
    """A TF checkpoint is several files and the Model Garden publishes none for these models
    (zoo/weights.json), so it is loaded from a local path: `weights='<prefix>.index'`."""
    entry = MG_INDEX["multi_avg"]
    index = str(mg_checkpoints["multi_avg"]) + ".index"
    model = mhmodels.build("multi_avg", 0.35, input_shape=(64, 64, 3), weights=index)
    assert model.output_shape == (None, 10)  # the class count comes from the checkpoint
    assert model.layers[1].name == "input_normalization"  # [-1, 1] in, like every model
    theirs = np.load(MG_FIXTURES / entry["logits"])
    assert rel_err(model(photos(entry), training=False).numpy(), theirs) <= TOLERANCE
    plain = mhmodels.build("multi_avg", 0.35, input_shape=(64, 64, 3), num_classes=10)
    with pytest.raises(P.ArchitectureMismatch, match="input normalisation"):
        P.load_weights(plain, index)  # never loaded into a network fed another input
    P.load_model_garden(plain, mg_checkpoints["multi_avg"])  # what that would give: off by
    assert rel_err(plain(photos(entry), training=False).numpy(), theirs) > 1e-3  # 5.6e-3
    import keras

    from mhmodels.qat import build_args_of  # QAT / export rebuild the same input layer
    expected = mhmodels.preprocessing.input_normalization("imagenet_mean_std")
    assert build_args_of(model)["input_normalization"] == expected
    model.save(tmp_path / "m.keras")  # ... also for a model reloaded from a .keras file
    reloaded = build_args_of(keras.models.load_model(tmp_path / "m.keras"))
    np.testing.assert_allclose(reloaded["input_normalization"], expected, rtol=1e-7)


def test_shipped_manifest_names_every_input_convention():
    raw = json.loads(W.manifest_path().read_text())["checkpoints"]
    assert all(e["input"] == {"keras_applications": "minus_one_one",
                              "model_garden": "imagenet_mean_std"}[e["source"]] for e in raw)
    scale, offset = mhmodels.preprocessing.input_normalization("imagenet_mean_std")
    pixels = np.array([0.0, 127.5, 255.0])[:, None] * np.ones(3)
    np.testing.assert_allclose(mhmodels.preprocess_input(pixels) * scale + offset,
                               P.model_garden_input(pixels), rtol=1e-6)
    assert mhmodels.preprocessing.input_normalization("minus_one_one") is None
    with pytest.raises(ValueError, match="unknown input convention"):
        mhmodels.preprocessing.input_normalization("caffe")


def image_folder(root: Path, classes: int, per_class: int, size: int = 80) -> Path:
    """train/ and validation/ splits of `classes` class folders of real photo crops (PNG)."""
    from PIL import Image

    crops = sample_photos(size=size, crops_per_image=classes * per_class)  # 2 photos
    pixels = np.clip(np.round((crops + 1.0) * 127.5), 0, 255).astype(np.uint8)
    for i, image in enumerate(pixels):
        split = ("train", "validation")[i % 2]
        folder = root / split / f"class{(i // 2) % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    return root


def _train_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "mhmodels.train", "--model=multi_avg",
                           "--width=0.35", "--image_size=64", "--batch_size=4",
                           "--noprogress", *args],
                          capture_output=True, text=True, timeout=600, env=env,
                          cwd=Path(__file__).parent.parent)


@pytest.mark.slow  # two training-CLI runs, ~70 s
def test_train_evaluates_and_fine_tunes_a_model_garden_checkpoint_offline(
        mg_checkpoints, tmp_path):
    """`python -m mhmodels.train --mode=eval --init_weights=<prefix>.index` converts and
    scores the checkpoint exactly as mhmodels.build(weights=<file>) does on the same images;
    `--mode=train` starts from it with a new 3-class head, and evaluating that run scores it
    as its final weights in the checkpoint's network do."""
    import tensorflow as tf

    from mhmodels import data as D

    index = str(mg_checkpoints["multi_avg"]) + ".index"
    data = image_folder(tmp_path / "data", classes=10, per_class=1)
    done = _train_cli("--mode=eval", f"--init_weights={index}", f"--dataset=folder:{data}",
                      f"--model_dir={tmp_path / 'e'}")
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((tmp_path / "e" / "eval_validation.json").read_text())
    model = mhmodels.build("multi_avg", 0.35, input_shape=(64, 64, 3), weights=index)

    def check_scores(got: dict, model, folder: Path, count: int) -> None:
        logits, labels = [], []
        for x, y in D.make_dataset(f"folder:{folder}", "validation", image_size=64,
                                   batch_size=4, training=False):
            logits.append(model(x, training=False).numpy())
            labels.append(y.numpy())
        logits, labels = np.concatenate(logits), np.concatenate(labels)
        loss = float(np.mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))
        assert got["count"] == len(labels) == count
        assert got["top1"] == pytest.approx(float(np.mean(logits.argmax(1) == labels)),
                                            abs=1e-6)
        assert got["loss"] == pytest.approx(loss, rel=1e-5)  # 1.1e-4 off without input layer

    check_scores(got, model, data, 10)

    three = image_folder(tmp_path / "three", classes=3, per_class=2)
    done = _train_cli("--mode=train", f"--init_weights={index}", f"--dataset=folder:{three}",
                      "--steps=1",
                      "--learning_rate=1e-9", "--seed=0", f"--model_dir={tmp_path / 't'}")
    assert done.returncode == 0, done.stderr[-3000:]
    from mhmodels.builder import build_model
    from mhmodels.loading import load_weights

    tuned = build_model(mhmodels.get_spec("multi_avg"), 0.35, input_shape=(64, 64, 3),
                        num_classes=3, input_normalization=mhmodels.preprocessing.
                        input_normalization("imagenet_mean_std"))
    load_weights(tuned, tmp_path / "t" / "final.weights.h5")
    source = P.from_model_garden(mg_checkpoints["multi_avg"], "multi_avg", 0.35,
                                 input_shape=(64, 64, 3))
    for name in ("stem", "block3_project", "head0"):  # the body started from the checkpoint
        np.testing.assert_allclose(tuned.get_layer(name).kernel.numpy(),
                                   source.get_layer(name).kernel.numpy(), atol=1e-5)
    assert tuned.get_layer("classifier").kernel.shape == (source.get_layer(
        "classifier").kernel.shape[0], 3)
    # Evaluating the run rebuilds the checkpoint's network, input layer included (run.json).
    done = _train_cli("--mode=eval", f"--dataset=folder:{three}", f"--model_dir={tmp_path / 't'}")
    assert done.returncode == 0, done.stderr[-3000:]
    check_scores(json.loads((tmp_path / "t" / "eval_validation.json").read_text()), tuned,
                 three, 6)


# Every (model, width) keras.applications publishes, built full size by the publisher's code.
PUBLISHED_WIDTHS = [("mobilenet_v1", "MobileNet", w, {}) for w in (0.25, 0.5, 0.75, 1.0)]
PUBLISHED_WIDTHS += [("mobilenet_v2", "MobileNetV2", w, {})
                     for w in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)]
PUBLISHED_WIDTHS += [(m, fn, w, {"include_preprocessing": False})
                     for m, fn in (("mobilenet_v3_large", "MobileNetV3Large"),
                                   ("mobilenet_v3_small", "MobileNetV3Small"))
                     for w in (0.75, 1.0)]
PUBLISHED_WIDTHS += [("mobilenet_v3_large_min", "MobileNetV3Large", 1.0,
                      {"include_preprocessing": False, "minimalistic": True})]
SMALL_MODE = {("mobilenet_v1", 1.0), ("mobilenet_v2", 1.4), ("mobilenet_v3_small", 0.75)}


@pytest.mark.slow
@pytest.mark.parametrize("model_id, function, width, kwargs", PUBLISHED_WIDTHS)
def test_every_published_width_converts_exactly(full_size, tmp_path, model_id, function,
                                                width, kwargs):
    """The published files' architectures at their real widths and 1000 classes (the weights
    do not depend on the resolution): tf_keras.applications with random weights -> ours."""
    if not full_size and (model_id, width) not in SMALL_MODE:
        pytest.skip("MHMODELS_TEST_FULL=1 runs every published width")
    import importlib.util

    import tf_keras

    spec = importlib.util.spec_from_file_location(
        "make_keras_fixtures", Path(__file__).parent.parent / "tools" / "make_keras_fixtures.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    reference = getattr(tf_keras.applications, function)(
        weights=None, alpha=width, input_shape=(128, 128, 3), classifier_activation=None,
        **kwargs)
    tool.randomize(reference, np.random.default_rng(0))
    path = tmp_path / "published.h5"
    reference.save_weights(str(path))
    x = photos({"input_size": 128})[:2]
    ours = P.from_keras_applications(path, model_id, width, input_shape=(128, 128, 3))
    assert ours.output_shape == (None, 1000)
    assert rel_err(ours(x, training=False).numpy(),
                   reference(x, training=False).numpy()) <= TOLERANCE
