"""Names -> specs: the built-in zoo, extra zoo dirs, clear errors, weights by path."""
import json
import os
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


@pytest.mark.parametrize("mutate, bad_name, message", [
    (lambda d, p: p.write_text("{not json"), "broken", "not valid JSON"),
    (lambda d, p: p.rename(d / "other_name.json"), "other_name", "does not match the file name"),
    (lambda d, p: p.write_text(p.read_text().replace('"blocks"', '"blokcs"')), "broken",
     "unknown field"),
    (lambda d, p: p.write_bytes(b"\xff\xfe\x00garbage"), "broken", "not valid JSON"),
])
def test_a_malformed_entry_fails_only_its_own_name(tmp_path, monkeypatch, mutate, bad_name,
                                                   message):
    path = write_entry(tmp_path, "broken")
    write_entry(tmp_path, "good_net")
    mutate(tmp_path, path)
    monkeypatch.setenv(registry.ZOO_PATH_ENV, str(tmp_path))
    with pytest.warns(UserWarning, match=message):
        names = mhmodels.list_models()
    assert "good_net" in names and set(BUILT_IN) <= set(names) and bad_name not in names
    with pytest.raises(SpecError, match=message):
        mhmodels.get_spec(bad_name)
    assert mhmodels.build("multi_max", 0.25, input_shape=(32, 32, 3)).output_shape == (None, 1001)
    assert mhmodels.get_spec("good_net").name == "good_net"


def test_hidden_and_non_regular_files_are_not_entries(tmp_path, monkeypatch):
    import warnings
    write_entry(tmp_path, "good_net")
    (tmp_path / ".good_net.json.swp").write_text("editor swap")
    (tmp_path / ".hidden.json").write_text("{not json")
    (tmp_path / ".#good_net.json").symlink_to("user@host.1234:1700000000")  # Emacs lock link
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    # the same directory listed twice (once through a symlink) is scanned once
    (tmp_path.parent / f"{tmp_path.name}_link").symlink_to(tmp_path)
    monkeypatch.setenv(registry.ZOO_PATH_ENV, os.pathsep.join(
        [str(tmp_path), str(tmp_path), str(tmp_path.parent / f"{tmp_path.name}_link")]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing here deserves a warning
        names = mhmodels.list_models()
    assert "good_net" in names
    assert not {"folder", "dangling", "hidden"} & set(names)


def test_a_name_defined_twice_fails_that_name_only(tmp_path, monkeypatch):
    shutil.copy(registry.builtin_zoo_dir() / "models" / "multi_max.json", tmp_path)
    monkeypatch.setenv(registry.ZOO_PATH_ENV, str(tmp_path))
    with pytest.warns(UserWarning, match="'multi_max' is defined twice"):
        assert "multi_avg" in mhmodels.list_models()
    with pytest.raises(SpecError, match="'multi_max' is defined twice"):
        mhmodels.build("multi_max")
    mhmodels.build("multi_avg", 0.25, input_shape=(32, 32, 3))


def test_missing_zoo_dir_is_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.ZOO_PATH_ENV, str(tmp_path / "nope"))
    with pytest.warns(UserWarning, match="nope"):
        assert "multi_max" in mhmodels.list_models()
    # what the docstring promises is what it does: no FileNotFoundError / SpecError
    raises = mhmodels.list_models.__doc__.split("Raises:")[1]
    assert "Error" not in raises and "warning" in raises


def test_user_zoo_dir_is_listed(tmp_path, monkeypatch):
    from mhmodels.files import user_zoo_dir
    monkeypatch.setenv("MHMODELS_HOME", str(tmp_path))
    monkeypatch.delenv(registry.ZOO_PATH_ENV, raising=False)
    assert user_zoo_dir() == tmp_path / "zoo" / "models"
    assert "mine" not in mhmodels.list_models()  # no user zoo yet: no warning, no error
    user_zoo_dir().mkdir(parents=True)
    write_entry(user_zoo_dir(), "mine")
    assert mhmodels.get_entry("mine").source == str(user_zoo_dir() / "mine.json")


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
