"""Cost models: fit quality on the shipped data, persistence / validation, numpy vs TF,
CSV hardware, and the resumable latency collection."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from search import collect_latency
from search.cost_model import (DEFAULT_DIR, CostModelError, LinearCostModel, build_layout, fit,
                               load_cost_model, mape, spearman)
from search.hardware import get_hardware, list_hardware, parse_hardware_list, read_latency_csv
from search.space import get_space

DATA = DEFAULT_DIR / "data" / "cpu_latency.csv"
SHIPPED = ("cpu_float", "cpu_int8", "cpu_ref_float")
ZOO_MAPE_LIMIT = 12.0


@pytest.fixture(scope="module")
def space():
    return get_space("multi_hw")


def random_choices(space, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([space.sample(rng) for _ in range(n)])


# -- fit quality on the shipped data ----------------------------------------------------------

@pytest.mark.parametrize("hardware", ["cpu_float", "cpu_int8"])
def test_fit_on_shipped_data_meets_goals(hardware):
    model = fit(DATA, hardware)
    m = model.metrics
    assert m["holdout_archs"] >= 10
    assert m["holdout_spearman"] >= 0.95, m
    assert m["holdout_mape"] <= 7.0, m
    # Pooled out-of-fold predictions of a 5-fold CV over all rows: a steadier estimate.
    assert m["cv_spearman"] >= 0.95, m
    assert m["cv_mape"] <= 7.0, m


@pytest.mark.parametrize("hardware", ["cpu_float", "cpu_int8"])
def test_zoo_models_predicted_from_other_rows(hardware, space):
    """Multi-MAX / Multi-AVG (measured as anchor rows) predicted by a fit without their rows:
    the depthwise-heavy corner of the space, away from typical uniform samples."""
    import mhmodels
    from search.cost_model import build_layout, fit_arrays, read_dataset
    keys = [space.encode(space.canonical(space.choices_for(mhmodels.get_spec(n))))
            for n in ("multi_max", "multi_avg")]
    choices, y, _ = read_dataset(DATA, hardware, space)
    held = np.isin(np.array([space.encode(c) for c in choices]), keys)
    assert held.sum() == 2
    layout = build_layout(space, 224)
    w, b, _ = fit_arrays(layout, len(space.stages), choices[~held], y[~held])
    pred = layout.design(choices[held]) @ w + b
    assert mape(pred, y[held]) <= ZOO_MAPE_LIMIT, (pred, y[held])


def test_ref_float_fit_is_sane():
    m = fit(DATA, "cpu_ref_float").metrics
    assert m["cv_spearman"] >= 0.9, m
    assert m["cv_mape"] <= 12.0, m


@pytest.mark.parametrize("hardware", SHIPPED)
def test_shipped_models_load_and_match_their_metrics(hardware, space):
    model = load_cost_model(hardware, space=space)
    assert model.hardware == hardware and model.space_name == "multi_hw"
    assert model.image_size == 224
    assert model.normalizer_ms and model.normalizer_ms > 0
    assert model.metrics["num_archs"] >= 50
    # The shipped weights reproduce the measured latencies they were fitted on.
    with open(DATA, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["arch"] != "mobilenet_v1"]
    choices = np.stack([space.parse(r["arch"]) for r in rows])
    y = np.array([float(r[f"{hardware}_ms"]) for r in rows])
    pred = model.predict(choices)
    assert spearman(pred, y) >= 0.95
    assert mape(pred, y) <= 10.0


def test_more_blocks_cost_more(space):
    """Monotonic in the obvious direction: adding an (expansion 6) block costs time."""
    model = load_cost_model("cpu_float")
    c = space.canonical(random_choices(space, 1, seed=3)[0])
    for s in range(len(space.stages)):
        c[space.index[f"stage{s}/num_blocks"]] = 0
        c[space.index[f"stage{s}/block1/expansion"]] = 5
    more = c.copy()
    more[space.index["stage2/num_blocks"]] = 1
    assert model.predict(more) > model.predict(c)


# -- numpy vs TF --------------------------------------------------------------------------------

def test_predict_tf_matches_numpy(space):
    tf = pytest.importorskip("tensorflow")
    model = load_cost_model("cpu_float")
    c = random_choices(space, 64, seed=1)
    ref = model.predict(c)
    assert ref.shape == (64,)
    np.testing.assert_allclose(model.predict_tf(tf.constant(c)).numpy(), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(model.predict_tf(tf.constant(c, tf.int32)).numpy(), ref,
                               atol=1e-4, rtol=1e-6)
    one = tf.function(model.predict_tf)(tf.constant(c[0], tf.int32))
    assert one.dtype == tf.float32 and one.shape == ()
    assert abs(float(one) - model.predict(c[0])) < 1e-4
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        @tf.function
        def step(x):
            return strategy.run(model.predict_tf, args=(x,))
        out = strategy.experimental_local_results(step(tf.constant(c[:4], tf.int32)))[0]
    np.testing.assert_allclose(out.numpy(), ref[:4], atol=1e-4)


def test_predict_batched_equals_single(space):
    model = load_cost_model("cpu_int8")
    c = random_choices(space, 5, seed=2)
    batch = model.predict(c)
    assert [model.predict(x) for x in c] == pytest.approx(list(batch))
    with pytest.raises(ValueError, match="shape"):
        model.predict(c[:, :10])
    with pytest.raises(ValueError, match="range"):
        bad = c.copy()
        bad[0, 0] = 99
        model.predict(bad)


def test_layout_equal_archs_equal_features(space):
    """Choices of absent blocks do not change the prediction (canonical keys are enough)."""
    model = load_cost_model("cpu_float")
    c = random_choices(space, 20, seed=5)
    canon = np.stack([space.canonical(x) for x in c])
    np.testing.assert_allclose(model.predict(c), model.predict(canon))


# -- persistence and validation ------------------------------------------------------------

def test_roundtrip_and_shape_validation(tmp_path, space):
    model = load_cost_model("cpu_float")
    path = model.save(tmp_path / "cpu_float.json")
    data = json.loads(path.read_text())
    assert data["format_version"] == 1 and data["space"]["name"] == "multi_hw"
    assert data["space"]["decision_sizes"] == list(space.num_choices)
    assert path.stat().st_size < 200_000
    again = load_cost_model("cpu_float", directory=tmp_path)
    c = random_choices(space, 8)
    np.testing.assert_allclose(again.predict(c), model.predict(c), atol=1e-6)

    def broken(edit, name):
        d = json.loads(path.read_text())
        edit(d)
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(d))
        return name

    with pytest.raises(CostModelError, match="decision"):
        load_cost_model(broken(lambda d: d["space"].update(decision_sizes=[4] * 70), "sizes"),
                        directory=tmp_path)
    with pytest.raises(CostModelError, match="weights"):
        load_cost_model(broken(lambda d: d.update(weights=d["weights"][:-3]), "short"),
                        directory=tmp_path)
    with pytest.raises(CostModelError, match="format_version"):
        load_cost_model(broken(lambda d: d.update(format_version=99), "future"),
                        directory=tmp_path)
    with pytest.raises(CostModelError, match="malformed"):
        load_cost_model(broken(lambda d: d.pop("bias"), "nobias"), directory=tmp_path)
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(CostModelError, match="JSON"):
        load_cost_model("garbage", directory=tmp_path)
    with pytest.raises(FileNotFoundError, match="cpu_float"):
        load_cost_model("nonexistent_hw", directory=tmp_path)
    other = get_space("multi_hw")
    other.name = "other"
    with pytest.raises(CostModelError, match=r"no cpu_float cost model for space 'other' .* "
                                             r"is fitted for 'multi_hw'\); collect and fit one"):
        load_cost_model("cpu_float", directory=tmp_path, space=other)
    # No U85 model describes the whole grouped space (docs/grouped.md says why): one line
    # saying so and naming the reduced space that has one, not two 70-number lists.
    with pytest.raises(CostModelError, match=r"^no ethos_u85 cost model for space "
                                             r"'multi_hw_grouped' in [^\n]*--space=multi_hw_grouped"
                                             r" \.\.\.$") as err:
        load_cost_model("ethos_u85", space=get_space("multi_hw_grouped"))
    assert "the reduced space multi_hw_grouped@ethos_u85 has one" in str(err.value)
    assert len(str(err.value)) < 600
    with pytest.raises(CostModelError, match=r"cpu_float.json is fitted for space 'multi_hw', "
                                             r"not 'other'$"):
        load_cost_model(str(path), space=other)


# -- hardware ------------------------------------------------------------------------------

def test_builtin_hardware():
    hws = parse_hardware_list("cpu_float,cpu_int8,cpu_ref_float")
    assert [h.quantization for h in hws] == ["float", "int8", "float"]
    assert [h.use_xnnpack for h in hws] == [True, True, False]
    assert "csv:<path>" in list_hardware()
    with pytest.raises(ValueError, match="did you mean cpu_float"):
        get_hardware("cpu_flaot")
    with pytest.raises(ValueError, match="twice"):
        parse_hardware_list("cpu_float,cpu_float")


def test_csv_hardware(tmp_path, space):
    c = random_choices(space, 3, seed=7)
    path = tmp_path / "pixel4_gpu.csv"
    with path.open("w") as f:
        f.write("arch,latency_ms\nmobilenet_v1,4.78\n")
        for i, x in enumerate(c):
            f.write(f"{space.encode(space.canonical(x))},{5.0 + i}\n")
    hw = get_hardware(f"csv:{path}")
    assert hw.name == "pixel4_gpu" and not hw.measurable
    assert hw.measure_choices(space, c[1]) == 6.0
    assert hw.lookup(space, c[2]) == 7.0
    assert hw.normalizer_ms() == 4.78
    missing = random_choices(space, 1, seed=99)[0]
    with pytest.raises(KeyError, match="no latency"):
        hw.lookup(space, missing)
    with pytest.raises(ValueError, match="cannot measure"):
        hw.measure_tflite(b"")

    with pytest.raises(FileNotFoundError):
        read_latency_csv(tmp_path / "nope.csv")
    nonorm = tmp_path / "nonorm.csv"
    nonorm.write_text("arch,latency_ms\n1-2,3\n")
    with pytest.raises(KeyError, match="mobilenet_v1"):
        get_hardware(f"csv:{nonorm}").normalizer_ms()


@pytest.mark.parametrize("text, message", [
    ("arch,ms\nx,1\n", "latency_ms"),
    ("arch,latency_ms\nx,fast\n", "line 2"),
    ("arch,latency_ms\nx,-1\n", "positive"),
    ("arch,latency_ms\n", "no rows"),
])
def test_read_latency_csv_rejects_bad_files(tmp_path, text, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_latency_csv(bad)


def test_csv_hardware_fits_a_cost_model(tmp_path, space):
    """A CSV of latencies measured elsewhere goes through the same fit."""
    src = DATA
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    out = tmp_path / "phone.csv"
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "image_size", "phone_ms"])
        for r in rows:
            w.writerow([r["arch"], r["image_size"], r["cpu_float_ms"]])
    model = fit(out, "phone")
    assert model.metrics["holdout_spearman"] > 0.9
    # The csv:<path> hardware format (arch,latency_ms) fits the same way.
    phone = tmp_path / "pixel4_cpu.csv"
    with phone.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "latency_ms"])
        for r in rows:
            w.writerow([r["arch"], r["cpu_int8_ms"]])
    model = fit(None, f"csv:{phone}")
    assert model.hardware == "pixel4_cpu" and model.normalizer_ms > 0
    assert model.metrics["holdout_spearman"] > 0.9
    model.save(tmp_path / "pixel4_cpu.json")
    assert load_cost_model(f"csv:{phone}", directory=tmp_path).hardware == "pixel4_cpu"


# -- collection ---------------------------------------------------------------------------

def fake_measure(model, hardware, image_size, overrides):
    row = {"madds_m": 1.0, "params_m": 1.0}
    for hw in hardware:
        for suffix in ("ms", "median_ms", "min_ms"):
            row[f"{hw.name}_{suffix}"] = float(model.count_params()) / 1e6
    return row


def test_collection_appends_resumes_and_repairs(tmp_path, monkeypatch, space):
    monkeypatch.setattr(collect_latency, "measure_model", fake_measure)
    hws = parse_hardware_list("cpu_float,cpu_int8")
    out = tmp_path / "d.csv"
    assert collect_latency.collect(hws, 2, out, image_size=32, progress=False,
                                   anchors=["multi_max"]) == 2
    lines = out.read_text().splitlines()
    assert lines[0].split(",") == collect_latency.columns_for(hws)
    assert lines[1].startswith("mobilenet_v1,32,")
    multi_max = space.choices_for(__import__("mhmodels").get_spec("multi_max"))
    assert lines[2].split(",")[0] == space.encode(space.canonical(multi_max))
    assert len(lines) == 4
    # An interrupted write leaves half a line: it is dropped, the run continues.
    with out.open("a") as f:
        f.write("1-2-3,32,0.5")
    assert collect_latency.collect(hws, 4, out, image_size=32, progress=False) == 4
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [r["arch"] for r in rows]
    assert len(keys) == 5 and len(set(keys)) == 5 and keys[0] == "mobilenet_v1"
    assert keys[1:3] == [l.split(",")[0] for l in lines[2:4]]  # earlier rows kept, in order
    for k in keys[1:]:
        assert space.encode(space.canonical(space.parse(k))) == k
    # Already complete: nothing new is measured.
    assert collect_latency.collect(hws, 4, out, image_size=32, progress=False) == 4
    assert len(out.read_text().splitlines()) == 6
    with pytest.raises(ValueError, match="columns"):
        collect_latency.collect(parse_hardware_list("cpu_float"), 4, out, image_size=32,
                                progress=False)
    with pytest.raises(ValueError, match="image sizes"):
        collect_latency.collect(hws, 5, out, image_size=64, progress=False)


def test_biased_sampling(space):
    rng = np.random.default_rng(0)
    types = [i for i, d in enumerate(space.decisions) if d.name.endswith("/type")]
    for _ in range(5):
        assert not collect_latency.sample(space, rng, fused_prob=0.0)[types].any()
        assert collect_latency.sample(space, rng, fused_prob=1.0)[types].all()


@pytest.mark.slow
def test_collection_measures_for_real(tmp_path):
    """One real architecture, small image, float: exported and timed through LiteRT."""
    out = tmp_path / "real.csv"
    hw = parse_hardware_list("cpu_float,cpu_ref_float")
    collect_latency.collect(hw, 1, out, image_size=32, overrides={"runs": 3, "warmup": 1},
                            progress=False)
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for r in rows:
        assert 0 < float(r["cpu_float_min_ms"]) <= float(r["cpu_float_ms"]) <= \
            float(r["cpu_float_median_ms"]) * 1.0001
        assert float(r["madds_m"]) > 0


def test_shipped_model_ranks_freshly_measured_archs(space):
    """Re-measure a few unseen architectures at 224 and compare to the shipped predictions."""
    hw = get_hardware("cpu_float")
    model = load_cost_model("cpu_float")
    rng = np.random.default_rng(12345)
    true, pred = [], []
    for _ in range(6):
        c = space.sample(rng)
        true.append(hw.measure_choices(space, c))  # the file written from the spec directly
        pred.append(model.predict(c))
    # Six points, re-measured on a shared machine (thread CPU time): a real but tolerant bar.
    # The host CPU may differ from the one the model was fitted on (cloud machines differ by
    # ~2x); a faster or slower host scales every latency alike, which the search's
    # MobileNet-normalised metric cancels. So: the ranking, and the error after one
    # least-squares scale factor, which itself must stay within a plausible host range.
    true, pred = np.asarray(true), np.asarray(pred, np.float64).reshape(-1)
    assert spearman(pred, true) >= 0.8, (true, pred)
    scale = float(pred @ true / (pred @ pred))
    assert 0.25 <= scale <= 4.0, (scale, true, pred)
    assert mape(scale * pred, true) <= 15.0, (scale, true, pred)


# -- fit input validation and where fits go -----------------------------------------------

def _small_csv(path, space, n=30, normaliser=True, extra_rows=(), seed=3):
    rng = np.random.default_rng(seed)
    lines = ["arch,image_size,cpu_float_ms"]
    if normaliser:
        lines.append("mobilenet_v1,64,2.5")
    for x in random_choices(space, n, seed=seed):
        lines.append(f"{space.encode(space.canonical(x))},64,{rng.uniform(1, 5):.3f}")
    lines += list(extra_rows)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind, message", [
    ("few", "5 architectures measured for cpu_float; a fit needs at least 20"),
    ("negative", "line 33: cpu_float_ms -1.0 must be a positive number"),
    ("text", "line 33: cpu_float_ms 'n/a' is not a number"),
    ("no_mobilenet", "no mobilenet_v1 row"),
    ("bad_key", "line 33: architecture '1-2-3' is not a key"),
    ("sizes", "mixes image sizes [64, 224]"),
])
def test_fit_rejects_bad_data_with_file_and_line(tmp_path, space, kind, message):
    extra = {"negative": ["{k},64,-1"], "text": ["{k},64,n/a"], "bad_key": ["1-2-3,64,1.0"],
             "sizes": ["{k},224,1.0"]}.get(kind, [])
    key = space.encode(space.canonical(random_choices(space, 1, seed=42)[0]))
    data = _small_csv(tmp_path / "lat.csv", space, n=5 if kind == "few" else 30,
                      normaliser=kind != "no_mobilenet",
                      extra_rows=[r.format(k=key) for r in extra])
    with pytest.raises(ValueError) as err:
        fit(data, "cpu_float")
    assert message in str(err.value) and str(data) in str(err.value)


def test_fit_goes_to_the_user_dir_and_never_over_shipped_files(tmp_path, space, monkeypatch):
    import os
    import subprocess
    import sys
    from search.cost_model_report import fit_and_save
    monkeypatch.setenv("MHMODELS_HOME", str(tmp_path / "home"))
    shipped = DEFAULT_DIR / "cpu_float.json"
    before = shipped.read_bytes()
    data = _small_csv(tmp_path / "lat.csv", space)
    with pytest.raises(PermissionError, match="shipped"):
        fit_and_save(data, "cpu_float", DEFAULT_DIR, plot=False)
    assert shipped.read_bytes() == before
    model = load_cost_model("cpu_float", directory=DEFAULT_DIR, space=space)
    with pytest.raises(PermissionError, match="shipped"):  # not even a new file in there
        model.save(DEFAULT_DIR / "my_new_hw.json")
    assert not (DEFAULT_DIR / "my_new_hw.json").exists()
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), MHMODELS_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "search.cost_model", "--fit", f"--data={data}",
                           "--hardware=cpu_float", "--noplot"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert shipped.read_bytes() == before
    mine = tmp_path / "home" / "cost_models" / "cpu_float.json"
    assert json.loads(mine.read_text())["metrics"]["num_archs"] == 30
    assert oct(mine.stat().st_mode & 0o777) == "0o644"
    # the search reads the user's refit before the shipped model, and says which
    loaded = load_cost_model("cpu_float", space=space)
    assert loaded.source == str(mine) and loaded.image_size == 64
    proc = subprocess.run([sys.executable, "-m", "search.cost_model", "--fit", f"--data={data}",
                           "--hardware=cpu_float", f"--output_dir={DEFAULT_DIR}"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ")
    assert "never overwritten" in proc.stderr and "Traceback" not in proc.stderr
    assert shipped.read_bytes() == before


def test_a_fit_for_a_reduced_space_is_that_space_s_model(tmp_path, space):
    """A fit on a reduced space's data is named by the space's own name (not its file's path,
    which made a nested junk path); that space reads it before its base's, the base never."""
    from search.cost_model_report import fit_and_save
    from search.space import ReducedSpace, write_space_file
    space_file = tmp_path / "spaces" / "mine.json"
    space_file.parent.mkdir()
    write_space_file(ReducedSpace(space, {"type": ["ibn"]}, "multi_hw@mine"), space_file)
    out = tmp_path / "out"
    model = fit_and_save(_small_csv(tmp_path / "lat.csv", space), "cpu_float", out,
                         space_name=str(space_file), plot=False)
    assert model.space_name == "multi_hw"  # the base's decisions
    mine = out / "cpu_float.multi_hw@mine.json"
    assert sorted(p.name for p in out.rglob("*")) == [mine.name]
    assert load_cost_model("cpu_float", directory=out, space=get_space(str(space_file))
                           ).source == str(mine)
    with pytest.raises(FileNotFoundError, match="no cost model"):  # not the base's model
        load_cost_model("cpu_float", directory=out, space=space)


def test_a_cost_model_without_normaliser_stops_the_search_before_it_starts(tmp_path, space):
    from search.loop import SearchConfig, run_search
    model = load_cost_model("cpu_float", space=space)
    model.normalizer_ms = None
    model.save(tmp_path / "cpu_float.json")
    config = SearchConfig(model_dir=str(tmp_path / "run"), hardware=("cpu_float",),
                          metric="single", cost_model_dir=str(tmp_path), steps=2)
    with pytest.raises(ValueError, match="no normalizer_ms"):
        run_search(config, write_entry=False)
    assert not (tmp_path / "run").exists()
    import os
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "search", f"--model_dir={tmp_path / 'run'}",
                           "--hardware=cpu_float", "--metric=single",
                           f"--cost_model_dir={tmp_path}"], cwd=root,
                          env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --hardware=cpu_float: the "
                                                           "cost model")
    assert "no normalizer_ms" in proc.stderr and len(proc.stderr.splitlines()) == 1


# -- the host a CPU cost model describes, host calibration, repeated rows ---------------------

def test_host_record_roundtrips_and_a_mismatch_is_one_line(tmp_path, space, capsys):
    from search.config import check_cost_models
    from search.cost_model import current_host, host_mismatch
    from search.loop import SearchConfig
    model = load_cost_model("cpu_int8", space=space)
    assert model.host["isa"] == ["avx2", "avx512_vnni", "avx512f"]
    assert model.host["cpu_model"].startswith("unknown")
    here = current_host()
    assert here["threads"] == 1 and here["machine"] and isinstance(here["isa"], list)
    avx2_only = dict(here, isa=["avx2"], cpu_model="AMD EPYC 7B13")
    message = host_mismatch(model, avx2_only)
    assert message is not None and "\n" not in message
    assert "differs in isa" in message and "--calibrate --hardware=cpu_int8" in message
    vnni = dict(here, isa=sorted({"avx2", "avx512f", "avx512_vnni", "amx_int8"}))
    assert host_mismatch(model, vnni) is None  # an unknown CPU's features are a lower bound
    assert host_mismatch(load_cost_model("ethos_u85", space=space), avx2_only) is None
    grouped = load_cost_model("cpu_int8", space=get_space("multi_hw_grouped"))
    assert "refit it here: python -m search.collect_latency --hardware=cpu_int8 --space=" \
        "multi_hw_grouped ... && python -m search.cost_model --fit ..." in host_mismatch(
            grouped, dict(avx2_only, cpu_model="Some Other CPU"))  # --calibrate: paper space
    model.host = dict(here, cpu_model="Some Other CPU")  # a known host: compared exactly
    model.save(tmp_path / "cpu_int8.json")
    again = load_cost_model("cpu_int8", directory=tmp_path, space=space)
    assert again.host == model.host
    assert host_mismatch(again, here).count("differs in cpu_model") == 1
    assert host_mismatch(again, dict(here, cpu_model="Some Other CPU")) is None
    config = SearchConfig(model_dir=str(tmp_path / "run"), hardware=("cpu_int8",),
                          metric="single", cost_model_dir=str(tmp_path), steps=2)
    capsys.readouterr()
    check_cost_models(config)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --hardware=cpu_int8: cost model ")


def test_merge_keeps_the_cpu_rows_host_and_warns_on_two(tmp_path, space, capsys):
    """Merged CPU collections keep the host record the fit copies into the cost model (it was
    dropped once, so a shipped CPU model said nothing of its host)."""
    from search.cost_model import current_host
    here = current_host()
    arch = space.encode(space.canonical(space.sample(np.random.default_rng(0))))
    config = {"hardware": {"cpu_float": get_hardware("cpu_float").config()}, "host": here}
    files = []
    for i, rows in enumerate([[("mobilenet_v1", 10.0)], [("mobilenet_v1", 10.0), (arch, 7.5)]]):
        f = tmp_path / f"s{i}.csv"
        f.write_text("arch,image_size,cpu_float_ms\n" +
                     "".join(f"{a},224,{ms}\n" for a, ms in rows))
        collect_latency.config_path(f).write_text(json.dumps(config))
        files.append(f)
    merged = tmp_path / "merged.csv"
    assert collect_latency.merge(files, merged) == 1
    assert collect_latency.read_host(merged) == here
    assert "differ" not in capsys.readouterr().err  # equal normaliser rows: no averaging note
    other = dict(config, host=dict(here, cpu_model="Some Other CPU"))
    collect_latency.config_path(files[1]).write_text(json.dumps(other))
    collect_latency.merge(files, tmp_path / "two.csv")
    assert "different hosts" in capsys.readouterr().err
    assert collect_latency.read_host(tmp_path / "two.csv") == here


def test_the_loader_prefers_a_model_calibrated_on_this_host(tmp_path, space, monkeypatch):
    from search.cost_model import calibrated_file_name, current_host, host_id
    monkeypatch.setenv("MHMODELS_HOME", str(tmp_path))
    user = tmp_path / "cost_models"
    model = load_cost_model("cpu_float", space=space)
    model.bias = 123.0
    model.save(user / "cpu_float.json")  # a plain user refit
    other = dict(current_host(), cpu_model="Another CPU")
    model.bias, model.host = 456.0, other
    model.save(user / calibrated_file_name("cpu_float", other))
    assert load_cost_model("cpu_float", space=space).bias == 123.0  # not another host's
    model.bias, model.host = 789.0, current_host()
    mine = model.save(user / f"cpu_float@{host_id(current_host())}.json")
    loaded = load_cost_model("cpu_float", space=space)
    assert loaded.bias == 789.0 and loaded.source == str(mine)
    assert calibrated_file_name("ethos_u85") is None



def test_a_new_search_calibrates_its_cpu_models_once_per_host(tmp_path, monkeypatch, space):
    """`python -m search` (--calibrate, the default) calibrates the CPU hardware it searches
    for, once per host, and leaves given models, other spaces and resumed searches alone."""
    from search.config import SearchConfig, calibrate_cpu_cost_models
    from search.cost_model import calibrated_file_name
    monkeypatch.setenv("MHMODELS_HOME", str(tmp_path))
    run = tmp_path / "run"

    def config(**kw):
        return SearchConfig(**{"model_dir": str(run), "hardware": ("cpu_float", "ethos_u55"),
                               "progress": False, **kw})
    assert calibrate_cpu_cost_models(config(cost_model_dir=str(DEFAULT_DIR)), 10, 32) == []
    assert calibrate_cpu_cost_models(config(space="multi_hw_grouped"), 10, 32) == []
    assert calibrate_cpu_cost_models(config(hardware=("ethos_u55", "ethos_u85")), 10, 32) == []
    run.mkdir()
    (run / "search_config.json").write_text("{}")  # a search to resume: its models stay
    assert calibrate_cpu_cost_models(config(), 10, 32) == []
    (run / "search_config.json").unlink()
    assert not (tmp_path / "cost_models").exists()
    quick = {"runs": 3, "warmup": 1, "min_time_s": 0.01}
    assert calibrate_cpu_cost_models(config(), 10, 32, quick) == ["cpu_float"]
    path = tmp_path / "cost_models" / calibrated_file_name("cpu_float")
    model = load_cost_model("cpu_float", space=space)
    assert model.source == str(path) and model.image_size == 32
    assert model.metrics["num_archs"] == 10 and model.metrics["rounds"] == 2
    assert calibrate_cpu_cost_models(config(), 10, 32) == []  # once per host

def test_calibration_fit_picks_rescale_for_a_uniformly_slower_host(space):
    from search.cost_model import fit_calibration
    base = load_cost_model("cpu_int8", space=space)
    choices = random_choices(space, 40, seed=11)
    noise = np.random.default_rng(1).uniform(0.98, 1.02, 40)
    y = 3.5 * base.predict(choices) * noise  # an AVX2 host: int8 3.5x slower at everything
    model = fit_calibration(choices, y, 14.6, "cpu_int8", 224, base)
    report = model.metrics["calibration"]
    assert model.metrics["method"] == "rescale"
    assert report["rescale"]["scale"] == pytest.approx(3.5, rel=0.03)
    assert report["rescale"]["holdout_mape"] < min(1.0, report["refit"]["holdout_mape"])
    assert report["base_unchanged"]["holdout_mape"] > 70.0
    assert mape(model.predict(choices), y) < 2.0 and model.normalizer_ms == 14.6
    with pytest.raises(ValueError, match="at least 10"):
        fit_calibration(choices[:9], y[:9], 14.6, "cpu_int8", 224, base)


def test_calibration_measures_this_host_and_the_loader_prefers_it(tmp_path, monkeypatch, space):
    """Tiny mode: 10 architectures at 32x32, float only, 2 rounds of 3 runs."""
    from search.cost_model import calibrate_cost_model, current_host, host_mismatch
    monkeypatch.setenv("MHMODELS_HOME", str(tmp_path))
    path = calibrate_cost_model("cpu_float", num_archs=10, image_size=32, rounds=2,
                                overrides={"runs": 3, "warmup": 1, "min_time_s": 0.01},
                                progress=False)
    assert path.parent == tmp_path / "cost_models" and path.name.startswith("cpu_float@")
    model = load_cost_model("cpu_float", space=space)
    assert model.source == str(path) and model.image_size == 32
    assert model.host == current_host() and host_mismatch(model) is None
    rows = list(csv.DictReader(open(model.metrics["data"])))
    assert [r["arch"] for r in rows][0] == "mobilenet_v1" and len(rows) == 11
    assert model.normalizer_ms == pytest.approx(float(rows[0]["cpu_float_ms"]))
    assert all(float(r["madds_m"]) > 0 and float(r["cpu_float_ms"]) > 0 for r in rows)
    assert model.metrics["num_archs"] == 10 and model.metrics["method"] == "refit"
    assert 0 < model.metrics["holdout_mape"] < 100
    with pytest.raises(ValueError, match="not 'ethos_u85'"):
        calibrate_cost_model("ethos_u85", num_archs=10)


def test_repeated_architectures_are_averaged_or_refused(tmp_path, space, capsys):
    key = space.encode(space.canonical(random_choices(space, 1, seed=42)[0]))
    data = _small_csv(tmp_path / "lat.csv", space, extra_rows=[f"{key},64,2.0", f"{key},64,2.2"])
    model = fit(data, "cpu_float")
    assert model.metrics["num_archs"] == 31  # 30 + one architecture measured twice
    assert model.metrics["holdout_archs"] + model.metrics["train_archs"] == 31
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 rows measure 1 architectures more than once" in err[0]
    from search.cost_model import read_dataset
    choices, y, _ = read_dataset(data, "cpu_float", space)
    assert y[[space.encode(c) for c in choices].index(key)] == pytest.approx(2.1)
    bad = _small_csv(tmp_path / "bad.csv", space, extra_rows=[f"{key},64,2.0", f"{key},64,20"])
    with pytest.raises(ValueError, match=r"lines 33, 34 measure the same architecture at 2, 20"):
        fit(bad, "cpu_float")


def test_collections_are_pooled_only_when_measured_alike(tmp_path, space, capsys):
    """fit(data=[a, b]): streams collected into separate files (e.g. with other hardware
    columns) fit as one dataset, an architecture in both once; files of another configuration,
    another host or another input size are refused, naming both files."""
    config = {"cpu_float": {"tool": "litert", "format": "float", "threads": 1}}
    host = {"cpu_model": "Test CPU", "machine": "x86_64", "isa": ["avx2"], "litert": "1.0"}

    def collection(name, seed, extra=(), cfg=config, hst=host):
        path = _small_csv(tmp_path / f"{name}.csv", space, n=25, seed=seed, extra_rows=extra)
        (tmp_path / f"{name}.hardware.json").write_text(json.dumps({"hardware": cfg,
                                                                    "host": hst}))
        return path

    shared = space.encode(space.canonical(random_choices(space, 1, seed=42)[0]))
    a = collection("a", 3, [f"{shared},64,2.0"])
    b = collection("b", 4, [f"{shared},64,2.2"])
    model = fit([a, b], "cpu_float")
    assert model.metrics["num_archs"] == 25 + 25 + 1 and model.metrics["data"] == "a.csv,b.csv"
    assert "2 rows measure 1 architectures more than once" in capsys.readouterr().err
    assert model.normalizer_ms == pytest.approx(2.5) and model.host == host
    assert fit(f"{a},{b}", "cpu_float").metrics["num_archs"] == 51  # the flag's form
    other_config = collection("c", 5, cfg={"cpu_float": {**config["cpu_float"], "threads": 2}})
    other_host = collection("d", 6, hst={**host, "cpu_model": "Other CPU"})
    for other, message in ((other_config, "data of different configurations cannot be pooled"),
                           (other_host, "CPU timings of two hosts cannot be pooled")):
        with pytest.raises(ValueError, match=message) as err:
            fit([a, other], "cpu_float")
        assert str(a) in str(err.value) and str(other) in str(err.value)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope.csv'} does not exist"):
        fit([a, tmp_path / "nope.csv"], "cpu_float")  # not "records no cpu_float configuration"


def test_ethos_u85_error_stays_where_it_was_measured(space):
    """The U85 model (docs/hardware.md): held-out MAPE 3.3% on 7,024 architectures (4.9% on
    1,615, 5.5% on 848, 7.0% on 306: its error was variance and fell with data), with no
    bias on small models. The zoo models sit in the error's tail (-15.5% / +5.7%; 99th
    percentile 16%) although they are in its data.
    Bounds at today's values, so a regression fails."""
    import mhmodels
    from search.cost_model import read_datasets
    model = load_cost_model("ethos_u85", space=space)
    assert model.metrics["num_archs"] >= 7000
    assert model.metrics["data"] == "npu_latency.csv,npu_latency_u85.csv"
    assert model.metrics["holdout_mape"] <= 3.3 and model.metrics["cv_mape"] <= 3.3
    assert model.metrics["holdout_spearman"] >= 0.99
    rows = {r["arch"]: r for r in csv.DictReader(open(DEFAULT_DIR / "data" / "npu_latency.csv"))}
    for name, bound in (("multi_max", 16.0), ("multi_avg", 6.0)):
        choices = space.canonical(space.choices_for(mhmodels.get_spec(name)))
        true = float(rows[space.encode(choices)]["ethos_u85_ms"])
        assert abs(model.predict(choices) / true - 1) * 100 <= bound
    # No intercept bias: the fastest sixth of the data is predicted within 1% on average
    # (+0.4%; +1.6-1.8% with the 306- and 1,615-row models).
    choices, ms, _ = read_datasets([DEFAULT_DIR / "data" / "npu_latency.csv",
                                    DEFAULT_DIR / "data" / "npu_latency_u85.csv"],
                                   "ethos_u85", space)
    fastest = np.asarray(ms) <= np.quantile(ms, 1 / 6)
    ratio = model.predict(np.asarray(choices)[fastest]) / np.asarray(ms)[fastest]
    assert abs(ratio.mean() - 1) <= 0.01 and fastest.sum() > 1000


# -- the grouped space's NPU cost models (issue #20) ----------------------------------------------

GROUPED_DATA = DEFAULT_DIR / "data" / "npu_latency_grouped.csv"
GROUPED_SHIPPED = ("ethos_u55", "ethos_u65")  # ethos_u85: its reduced space's (below)
GROUPED_U85_DATA = DEFAULT_DIR / "data" / "npu_latency_grouped_u85.csv"


@pytest.fixture(scope="module")
def grouped_space():
    return get_space("multi_hw_grouped")


@pytest.mark.parametrize("hardware", GROUPED_SHIPPED)
def test_grouped_shipped_models_meet_the_goal_and_load_by_space(hardware, grouped_space):
    model = load_cost_model(hardware, space=grouped_space)
    assert Path(model.source).name == f"{hardware}.multi_hw_grouped.json"
    m = model.metrics
    assert model.space_name == "multi_hw_grouped" and m["num_archs"] >= 400
    assert m["holdout_spearman"] >= 0.95 and m["holdout_mape"] <= 7.0, m
    with open(GROUPED_DATA, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["arch"] != "mobilenet_v1"]
    choices = np.stack([grouped_space.parse(r["arch"]) for r in rows])
    pred = model.predict(choices)
    y = np.array([float(r[f"{hardware}_ms"]) for r in rows])
    assert spearman(pred, y) >= 0.95 and mape(pred, y) <= 7.0
    # the paper space still loads its own model, not the grouped one
    assert Path(load_cost_model(hardware, space=get_space("multi_hw")).source).name == \
        f"{hardware}.json"


def test_grouped_refit_on_a_subset_predicts_the_rest(grouped_space):
    """150 architectures fit, the other ~390 held out: the goal holds on U55 (vela)."""
    from search.cost_model import fit_arrays, read_dataset
    choices, y, _ = read_dataset(GROUPED_DATA, "ethos_u55", grouped_space)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:150], order[150:]
    layout = build_layout(grouped_space, 224)
    w, b, _ = fit_arrays(layout, len(grouped_space.stages), choices[train], y[train])
    pred = layout.design(choices[test]) @ w + b
    assert len(test) >= 300
    assert spearman(pred, y[test]) >= 0.95 and mape(pred, y[test]) <= 7.0


def test_the_u85_model_of_the_grouped_space_is_its_reduced_space_s(grouped_space):
    """multi_hw_grouped@ethos_u85 (no fused blocks at 56x56 / 28x28, which the U85 prices by
    context) has its own shipped U85 model meeting the goal, refitted here on 80% of its data
    and checked on the rest; it refuses an architecture with a fused block at stage 0."""
    from search.cost_model import fit_arrays, read_dataset
    reduced = get_space("multi_hw_grouped@ethos_u85")
    model = load_cost_model("ethos_u85", space=reduced)
    assert Path(model.source).name == "ethos_u85.multi_hw_grouped@ethos_u85.json"
    m = model.metrics
    assert m["num_archs"] >= 4000 and m["holdout_spearman"] >= 0.95, m
    assert m["holdout_mape"] <= 7.0, m
    choices, y, _ = read_dataset(GROUPED_U85_DATA, "ethos_u85", grouped_space)
    assert all(reduced.check(c) is not None for c in choices[:50])  # sampled inside the mask
    order = np.random.default_rng(1).permutation(len(y))
    cut = int(0.8 * len(y))
    layout = build_layout(grouped_space, 224)
    # the shipped fit's lambdas: their CV search would take 4x the time and test nothing new
    w, b, _ = fit_arrays(layout, len(grouped_space.stages), choices[order[:cut]],
                         y[order[:cut]], lam1=m["lambda_stage"], lam2=m["lambda_onehot"],
                         lam0=m["lambda_physical"])
    pred = layout.design(choices[order[cut:]]) @ w + b
    assert spearman(pred, y[order[cut:]]) >= 0.95 and mape(pred, y[order[cut:]]) <= 7.0
    fused = grouped_space.sample(np.random.default_rng(0))
    fused[grouped_space.index["stage0/block0/type"]] = grouped_space.block_types.index(
        "fused_ibn")
    with pytest.raises(ValueError, match="outside space 'multi_hw_grouped@ethos_u85'"):
        reduced.check(fused)


def test_data_of_another_space_is_refused(grouped_space):
    """The paper space's keys parse in the grouped space (its type indices are a prefix) but
    mean other blocks: the file's recorded space decides, before any row is read."""
    from search.cost_model import read_dataset
    with pytest.raises(ValueError, match=r"npu_latency_u85.csv holds architectures of space "
                                         r"'multi_hw', not 'multi_hw_grouped': fit it with "
                                         r"--space=multi_hw$"):
        read_dataset(DEFAULT_DIR / "data" / "npu_latency_u85.csv", "ethos_u85",
                     get_space("multi_hw_grouped@ethos_u85"))
    assert len(read_dataset(GROUPED_U85_DATA, "ethos_u85",
                            get_space("multi_hw_grouped@ethos_u85"))[1]) == 4200


def test_grouped_layout_sees_group_sizes(grouped_space):
    """Group sizes 32 and 64 of a grouped block are different table entries with MAdds in
    the grouped columns; the paper space has none of them."""
    from search.cost_model import PHYSICAL
    layout = build_layout(grouped_space, 224)
    cols = [PHYSICAL.index(n) for n in ("group3_madds", "group5_madds", "group_ops")]
    assert layout.descriptors[:, cols].sum() > 0
    paper = build_layout(get_space("multi_hw"), 224)
    assert paper.descriptors[:, cols].sum() == 0
    c = np.zeros(len(grouped_space.decisions), np.int64)
    c[grouped_space.index["stage2/block0/expansion"]] = 3
    rows = []
    for t in ("ibn", "ibn_g32", "ibn_g64"):
        c[grouped_space.index["stage2/block0/type"]] = grouped_space.block_types.index(t)
        rows.append(layout.design(c[None])[0] @ layout.descriptors)
    madds = [r[PHYSICAL.index("group3_madds")] for r in rows]
    assert madds[0] == 0 < madds[1] < madds[2]


@pytest.mark.parametrize("hardware", ["ethos_u85", "cpu_float"])
def test_one_network_under_several_encodings_gets_one_price(space, hardware):
    """Filter ratios that round to the same channel count (stage 0: ratios 0.5-1.25 are all
    32 channels) encode one network several ways; the shipped models read every choice
    through space.choice_representatives, so they price it once, in numpy and in TF (the raw
    choices differed by up to 14% on the U85)."""
    import tensorflow as tf
    model = load_cost_model(hardware, space=space)
    rep = space.choice_representatives()
    ratio = space.index["stage0/filter_ratio"]
    assert [space.stage_filters(0, r) for r in range(7)] == [32] * 5 + [64] * 2
    assert list(rep[ratio, :7]) == [0, 0, 0, 0, 0, 5, 5]
    rng = np.random.default_rng(0)
    a = np.stack([space.sample(rng) for _ in range(64)])
    b = a.copy()
    for s in range(len(space.stages)):
        d = space.index[f"stage{s}/filter_ratio"]
        for n in range(len(b)):
            b[n, d] = rng.choice(np.flatnonzero(rep[d] == rep[d, a[n, d]]))
    assert np.mean(np.any(a != b, axis=1)) > 0.5
    assert all(space.decode(x).to_dict() == space.decode(y).to_dict() for x, y in zip(a, b))
    np.testing.assert_allclose(model.predict(b), model.predict(a), rtol=1e-12)
    np.testing.assert_allclose(model.predict_tf(tf.constant(b)).numpy(), model.predict(a),
                               rtol=1e-5)
