"""Per-layer grouped-conv forms (mhmodels.grouped_forms): the U85 rule picks the form vela
measured faster, and a model built in a per-layer form is the same function, mixed."""
import sys
from pathlib import Path

import numpy as np
import pytest

from mhmodels.builder import build_model, with_grouped_conv
from mhmodels.export import grouped_conv_form
from mhmodels.grouped_forms import GROUPED_CONV_FORMS, layer_form
from mhmodels.spec import ModelSpec

ROOT = Path(__file__).resolve().parent.parent


def u85(height, in_channels, out_channels, groups, kernel=3, stride=1) -> str:
    return layer_form("auto:u85", height=height, in_channels=in_channels,
                      out_channels=out_channels, groups=groups, kernel=kernel, stride=stride)


# (height, in, out, groups) -> the form vela 5.2 priced lower on ethos_u85 (one block in a
# stem + head network, benchmarks/grouped_forms.py --mode=layers; native / split ms).
MEASURED = [
    ((28, 256, 256, 8), "split"),     # ibn_g32 e4, stage 1: 1.586 / 1.153
    ((56, 128, 128, 4), "split"),     # ibn_g32 e4, stage 0: 3.364 / 3.289
    ((56, 32, 128, 4), "split"),      # fused g32 e4 (8 in, 32 out per group): 2.337 / 2.313
    ((56, 32, 160, 4), "native"),     # fused g32 e5 (8 in, 40 out per group): 2.537 / 3.094
    ((56, 64, 256, 8, 3, 2), "split"),  # fused g32 e4 entering stage 1, in a whole network
                                          # (multi_hw_grouped seed 11 arch 16): 2.940 / 2.505
    ((56, 64, 256, 8), "native"),     # the same conv at stride 1 (stage 0): 2.490 / 2.613
    ((28, 64, 384, 16), "native"),    # fused g32 e6 (4 in, 24 out per group): 1.112 / 2.943
    ((14, 320, 1920, 64), "native"),  # fused g32 e6 x2, stage 3: 1.052 / 10.273
    ((14, 1920, 1920, 60), "native"),  # ibn_g32 e6 x2, stage 3: 1.677 / 2.160
    ((14, 960, 960, 15), "split"),    # ibn_g64 e6, stage 3: 0.962 / 0.841
]


@pytest.mark.parametrize("geometry,form", MEASURED)
def test_u85_rule_picks_the_measured_form(geometry, form):
    assert u85(*geometry) == form


def test_whole_forms_and_targets():
    assert set(GROUPED_CONV_FORMS) >= {"native", "split", "auto:u85"}
    for form in ("native", "split"):
        assert layer_form(form, height=28, in_channels=64, out_channels=384, groups=16,
                          kernel=3, stride=1) == form
    assert u85(28, 64, 64, 1) == "native"  # one group: no grouped conv to split
    assert u85(None, 256, 256, 8) == "split" and u85(None, 64, 384, 16) == "native"
    assert [grouped_conv_form(t) for t in ("ethos_u55", "ethos-u65", "ethos_u85", "cpu_int8",
                                           "cpu_float")] == \
        ["split", "split", "auto:u85", "native", "native"]
    with pytest.raises(ValueError, match="grouped_conv must be one of"):
        layer_form("auto:u99", height=28, in_channels=64, out_channels=64, groups=2,
                   kernel=3, stride=1)


def test_rule_is_faster_on_two_vela_probes():
    """Two of the probe networks the rule was read from, priced again by vela: the rule's
    form is the cheaper one (28x28: split by 27%; fused e6 of 4 inputs per group: native,
    2.6x)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import grouped_forms as gf
    from mhmodels.tflite_writer import write_tflite
    from search.hardware import get_hardware
    from search.space import get_space
    space, hw = get_space("multi_hw_grouped"), get_hardware("ethos_u85")
    for block_type, expansion, expected in (("ibn_g32", 4, "split"),
                                            ("fused_ibn_g32", 6, "native")):
        spec, p = gf.probe_network(space, 1, 1, block_type, expansion, 3, 1.0, 224)
        ms = {form: hw.measure_tflite(write_tflite(spec, grouped_conv=form)).latency_ms
              for form in ("native", "split", "auto:u85")}
        assert gf._layer_form("auto:u85", p) == expected
        assert ms["auto:u85"] == ms[expected] < ms["split" if expected == "native"
                                                   else "native"], ms


# A fused block of 4 groups of 8 inputs (native under the U85 rule) and a grouped ibn of 2
# groups of 32 at 16x16 (split): one model, both forms.
MIXED = ModelSpec.from_dict({
    "name": "mixed_test", "stem": {"kind": "conv", "filters": 32, "stride": 2},
    "blocks": [{"kind": "fused_ibn", "filters": 32, "expansion": 4, "group_size": 32},
               {"kind": "ibn", "filters": 64, "stride": 2, "expansion": 2, "group_size": 32}],
    "head": [{"kind": "conv", "filters": 128, "kernel": 1}]})
SHAPE = (32, 32, 3)


def test_mixed_model_is_the_same_function():
    model = build_model(MIXED, 1.0, input_shape=SHAPE, num_classes=10)
    rng = np.random.default_rng(0)  # non-trivial BN statistics, so a mis-sliced BN shows
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                               for w in layer.get_weights()])
    images = rng.uniform(-1, 1, (2, *SHAPE)).astype("float32")
    expected = model(images, training=False).numpy()
    mixed = with_grouped_conv(model, "auto:u85")
    names = [layer.name for layer in mixed.layers]
    assert "block0_fused" in names and "block0_fused_g0" not in names  # native
    assert "block1_group_g1" in names and "block1_group" not in names  # split
    np.testing.assert_allclose(mixed(images, training=False).numpy(), expected, atol=1e-5)
    for form in ("split", "native"):
        back = with_grouped_conv(mixed, form)
        np.testing.assert_allclose(back(images, training=False).numpy(), expected, atol=1e-5)


def test_paper_space_files_are_unchanged():
    """A spec without grouped convs is the same file, byte for byte, in every form."""
    import mhmodels
    from mhmodels.tflite_writer import write_tflite
    spec = mhmodels.get_spec("multi_max")
    files = {form: write_tflite(spec, 0.5, input_shape=(64, 64, 3), grouped_conv=form)
             for form in GROUPED_CONV_FORMS}
    assert len(set(files.values())) == 1
