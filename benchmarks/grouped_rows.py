"""Usage: mkdir -p /tmp/gmeas && venv/bin/python benchmarks/grouped_rows.py <model,model,...>

Table-1 rows of the V2 models, both grouped-conv forms: CPU float/int8 (LiteRT, 1 thread,
XNNPACK) and vela U55/U65/U85; written to /tmp/gmeas/results.json."""
import json, sys, time
import numpy as np
import mhmodels
from mhmodels import export as E, vela
from mhmodels.latency import measure_interleaved
from mhmodels.builder import with_grouped_conv
from mhmodels.images import sample_photos

names = sys.argv[1].split(",")
calib = sample_photos(size=224, crops_per_image=2)[:16]
files, rows = {}, {}
t0 = time.time()
for name in names:
    model = mhmodels.build(name, 1.0)
    p = mhmodels.profile(model)
    rows[name] = {"params_m": round(p.params_m, 3), "madds_m": round(p.madds_m, 1)}
    grouped = any(l.group_size for l in mhmodels.get_spec(name).blocks)
    for form in (("native", "split") if grouped else ("native",)):
        m = with_grouped_conv(model, form)
        for q in ("float", "int8"):
            path = f"/tmp/gmeas/{name}_{form}_{q}.tflite"
            r = E.export_tflite(m, path, quantization=q,
                                representative_data=calib if q == "int8" else None,
                                calibration_samples=16)
            files[(name, form, q)] = path
            if q == "int8":
                for npu in ("ethos_u55", "ethos_u65", "ethos_u85"):
                    est = vela.estimate_tflite(path, vela.preset(npu))
                    rows[name][f"{npu}_{form}_ms"] = round(est.latency_ms, 3)
                    rows[name][f"{npu}_{form}_cpu_ops"] = est.cpu_ops
        print(name, form, round(time.time() - t0), flush=True)
res = measure_interleaved({k: v for k, v in files.items()}, rounds=3, runs=10, min_time_s=0.3)
for (name, form, q), r in res.items():
    rows[name][f"cpu_{q}_{form}_ms"] = round(r.min_ms, 2)
    rows[name][f"cpu_{q}_{form}_median_ms"] = round(r.median_ms, 2)
json.dump(rows, open("/tmp/gmeas/results.json", "w"), indent=1)
print(json.dumps(rows, indent=1))
