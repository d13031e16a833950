"""The spec format: JSON round trips, validation errors that name the problem, width rules."""
import json

import pytest

import mhmodels
from mhmodels.spec import LayerSpec, ModelSpec, SpecError, round8, scale_filters


def minimal(**overrides):
    data = {"name": "tiny", "stem": {"kind": "conv", "filters": 16, "stride": 2},
            "blocks": [{"kind": "ibn", "filters": 24, "stride": 2, "expansion": 3}]}
    data.update(overrides)
    return data


@pytest.mark.parametrize("name", mhmodels.list_models())
def test_zoo_specs_round_trip_through_json(name):
    spec = mhmodels.get_spec(name)
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec
    assert json.loads(spec.to_json())["format_version"] == 1


def test_round8_follows_the_mobilenet_rule():
    assert [round8(v) for v in (3, 12, 16 * 1.25, 24 * 0.35, 960 * 0.75, 1280 * 1.25)] == \
        [8, 16, 24, 8, 720, 1600]
    assert round8(50) == 48 and round8(44) == 48  # never more than 10% down
    assert round8(36) == 40  # 32 would be 11% down


def test_width_scaling_rules():
    assert scale_filters(1280, 0.5, "round8", shrink=False) == 1280   # last layer kept for w < 1
    assert scale_filters(1280, 1.25, "round8", shrink=False) == 1600  # ... but grows for w > 1
    assert scale_filters(64, 1.25, "truncate") == 80 and scale_filters(100, 0.75, "truncate") == 75


@pytest.mark.parametrize("mutation, message", [
    ({"blocks": [{"kind": "bottleneck", "filters": 8}]}, "field 'kind' is 'bottleneck'"),
    ({"blocks": [{"kind": "ibn", "filters": 0}]}, "field 'filters' must be a positive integer"),
    ({"blocks": [{"kind": "ibn", "filters": 8, "kernel": 4}]}, "field 'kernel'"),
    ({"blocks": [{"kind": "ibn", "filters": 8, "stride": 3}]}, "field 'stride'"),
    ({"blocks": [{"kind": "ibn", "filters": 8, "stride": True}]}, "field 'stride' must be 1 or 2"),
    ({"blocks": [{"kind": "ibn", "filters": 8, "kernel": 3.0}]}, "field 'kernel' must be 1, 3"),
    ({"blocks": [{"kind": "ibn", "filters": 8, "expansion": True}]}, "field 'expansion'"),
    ({"blocks": [{"kind": "ibn", "filters": 8, "activation": "gelu"}]}, "field 'activation'"),
    ({"blocks": [{"kind": "ds", "filters": 8, "expansion": 4}]}, "only applies to ibn"),
    ({"blocks": [{"kind": "ibn", "filters": 8, "colour": "red"}]}, "unknown field(s) ['colour']"),
    ({"blocks": [{"kind": "fused_ibn", "filters": 8, "stride": 2}]}, "must be 1 for a fused_ibn"),
    ({"blocks": []}, "at least one block"),
    ({"stem": {"kind": "ibn", "filters": 8}}, "stem must be a conv"),
    ({"width_rounding": "round7"}, "width_rounding"),
    ({"format_version": 9}, "format_version 9 is not supported"),
    ({"layers": []}, "unknown field(s) ['layers']"),
])
def test_malformed_specs_name_the_problem(mutation, message):
    with pytest.raises(SpecError) as err:
        ModelSpec.from_dict(minimal(**mutation), source="test.json")
    assert message in str(err.value)
    assert "test.json" in str(err.value)


def test_missing_fields_and_bad_json():
    data = minimal()
    del data["stem"]
    with pytest.raises(SpecError, match="missing required field 'stem'"):
        ModelSpec.from_dict(data)
    with pytest.raises(SpecError, match="not valid JSON"):
        ModelSpec.from_json("{'name': 1,}")
    with pytest.raises(SpecError, match="blocks\\[0\\]: missing required field 'filters'"):
        ModelSpec.from_dict(minimal(blocks=[{"kind": "ibn"}]))


def test_default_fields_are_omitted_from_json():
    layer = LayerSpec(kind="ibn", filters=32, kernel=5, expansion=6)
    assert layer.to_dict() == {"kind": "ibn", "filters": 32, "kernel": 5, "expansion": 6}
