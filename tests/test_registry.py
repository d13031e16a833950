"""Names -> specs: the built-in zoo, extra zoo dirs, clear errors, weights by path."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import mhmodels
from mhmodels import registry
from mhmodels.spec import SpecError

BUILT_IN = ["mobilenet_edgetpu", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large",
            "mobilenet_v3_large_min", "mobilenet_v3_small", "multi_avg", "multi_max",
            "proxylessnas_mobile"]


def test_list_models_has_the_nine_builtins():
    assert set(BUILT_IN) <= set(mhmodels.list_models())


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError) as err:
        mhmodels.build("multi_mx")
    assert "unknown model 'multi_mx'" in str(err.value)
    assert "did you mean 'multi_max'" in str(err.value)
    with pytest.raises(ValueError, match="mobilenet_v3_large"):
        mhmodels.get_spec("MobileNetV3Large")


def write_entry(directory: Path, name: str, **changes) -> Path:
    data = json.loads(mhmodels.get_spec("multi_max").to_json())
    data.update(name=name, **changes)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_extra_zoo_dir_entry_builds_without_code_change(tmp_path, monkeypatch):
    write_entry(tmp_path, "my_net", provenance={"searched_by": "test"},
                blocks=[{"kind": "fused_ibn", "filters": 48, "stride": 2, "expansion": 4}])
    monkeypatch.setenv(registry.ZOO_PATH_ENV, str(tmp_path))
    assert "my_net" in mhmodels.list_models()
    assert mhmodels.get_entry("my_net").provenance == {"searched_by": "test"}
    model = mhmodels.build("my_net", 0.5, input_shape=(32, 32, 3), num_classes=3)
    assert model.get_layer("block0_fused").kernel.shape == (3, 3, 16, 64)


@pytest.mark.parametrize("mutate, message", [
    (lambda d, p: p.write_text("{not json"), "not valid JSON"),
    (lambda d, p: p.rename(d / "other_name.json"), "does not match the file name"),
    (lambda d, p: p.write_text(p.read_text().replace('"blocks"', '"blokcs"')), "unknown field"),
])
def test_malformed_zoo_entries_are_errors(tmp_path, monkeypatch, mutate, message):
    path = write_entry(tmp_path, "broken")
    mutate(tmp_path, path)
    monkeypatch.setenv(registry.ZOO_PATH_ENV, str(tmp_path))
    with pytest.raises(SpecError, match=message):
        mhmodels.list_models()


def test_a_name_defined_twice_is_an_error(tmp_path, monkeypatch):
    shutil.copy(registry.builtin_zoo_dir() / "models" / "multi_max.json", tmp_path)
    monkeypatch.setenv(registry.ZOO_PATH_ENV, str(tmp_path))
    with pytest.raises(SpecError, match="'multi_max' is defined twice"):
        mhmodels.list_models()


def test_missing_zoo_dir_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.ZOO_PATH_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nope"):
        mhmodels.list_models()


def test_register_and_clash():
    spec = mhmodels.get_spec("mobilenet_v2")
    with pytest.raises(SpecError, match="already exists"):
        mhmodels.register(spec)
    from dataclasses import replace
    mine = replace(spec, name="my_v2")
    mhmodels.register(mine)
    try:
        assert mhmodels.get_spec("my_v2") == mine
        with pytest.raises(SpecError, match="already exists"):
            mhmodels.register(mine)
    finally:
        mhmodels.unregister("my_v2")
    assert "my_v2" not in mhmodels.list_models()


def test_weights_from_a_local_path_restore_logits(tmp_path):
    model = mhmodels.build("multi_max", 0.35, input_shape=(32, 32, 3), num_classes=4)
    images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    path = tmp_path / "mm.weights.h5"
    model.save_weights(str(path))
    again = mhmodels.build("multi_max", 0.35, input_shape=(32, 32, 3), num_classes=4,
                           weights=str(path))
    np.testing.assert_array_equal(again(images, training=False).numpy(),
                                  model(images, training=False).numpy())


def test_imagenet_weights_not_published_is_a_clear_error(tmp_path, monkeypatch):
    manifest = tmp_path / "weights.json"
    manifest.write_text(json.dumps({"format_version": 1, "checkpoints": []}))
    monkeypatch.setenv("MHMODELS_WEIGHTS_MANIFEST", str(manifest))
    with pytest.raises(ValueError, match="multi_avg"):
        mhmodels.build("multi_avg", weights="imagenet")
    with pytest.raises(ValueError, match="1001"):
        mhmodels.build("multi_avg", weights="imagenet", num_classes=10)


def test_weights_load_into_a_headless_model(tmp_path):
    model = mhmodels.build("mobilenet_v3_small", 0.5, input_shape=(32, 32, 3), num_classes=5)
    path = tmp_path / "v3s.weights.h5"
    model.save_weights(str(path))
    features = mhmodels.build("mobilenet_v3_small", 0.5, input_shape=(32, 32, 3),
                              num_classes=5, include_top=False, weights=str(path))
    np.testing.assert_array_equal(features.get_layer("head0").kernel.numpy(),
                                  model.get_layer("head0").kernel.numpy())
