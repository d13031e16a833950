"""benchmarks/grouped_blocks.py --small: real vela numbers (Ethos-U55, 64x64, two stages) that
place grouped blocks between depthwise and full convolution, and a CSV consistent with itself."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grouped_blocks")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "grouped_blocks.py"), "--small",
         f"--output_dir={out}"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (out / "grouped_blocks.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return out, proc.stdout, {(int(r["stage"]), r["variant"]): r for r in rows}


def test_grouped_blocks_small(small_run):
    out, stdout, rows = small_run
    assert (out / "grouped_blocks.png").stat().st_size > 0
    assert "ethos_u55 x dw" in (out / "grouped_blocks.md").read_text()
    assert "| 1 (8²x64) | ibn_g32 | 32 |" in stdout  # 64 / stem 2 / stage 2 / stage 2
    ms = lambda s, v: float(rows[(s, v)]["ethos_u55_ms"])  # noqa: E731
    madds = lambda s, v: float(rows[(s, v)]["madds_m"])  # noqa: E731
    assert {s for s, _ in rows} == {0, 1} and len(rows) == 14
    for s in (0, 1):
        # MAdds: depthwise < g32 < g64 < full, regular and fused.
        assert madds(s, "ibn") < madds(s, "ibn_g32") < madds(s, "ibn_g64") < madds(s, "ibn_full")
        assert madds(s, "fused_ibn_g32") < madds(s, "fused_ibn_g64") < madds(s, "fused_ibn")
        # U55 time: the full convs cost more than the depthwise block, and the grouped
        # regular blocks sit between depthwise and full.
        assert ms(s, "fused_ibn") > ms(s, "ibn") > 0
        assert ms(s, "ibn") < ms(s, "ibn_g32") < ms(s, "ibn_g64") < ms(s, "ibn_full")
        for (stage, variant), r in rows.items():
            if stage != s:
                continue
            # The ratio and per-MAdd columns are the ms columns divided.
            assert float(r["ethos_u55_ratio_to_dw"]) == pytest.approx(
                ms(s, variant) / ms(s, "ibn"), rel=1e-3)
            assert float(r["madds_ratio_to_dw"]) == pytest.approx(
                madds(s, variant) / madds(s, "ibn"), rel=1e-3)
            assert float(r["ethos_u55_ms_per_gmadd"]) == pytest.approx(
                ms(s, variant) / (madds(s, variant) / 1e3), rel=1e-3)
        # Per MAdd the U55 runs a grouped conv better than depthwise, a full conv best.
        per = lambda v: float(rows[(s, v)]["ethos_u55_ms_per_gmadd"])  # noqa: E731
        assert per("ibn_full") < per("ibn_g32") < per("ibn")
    # Marginal MAdds are the probed blocks' alone (baseline subtracted): 3 blocks at 16x16,
    # 32 -> 128 expand 1x1, full 3x3 128 -> 128, 128 -> 32 project.
    assert madds(0, "ibn_full") == pytest.approx(
        3 * (2 * 32 * 128 + 9 * 128 * 128) * 16 * 16 / 1e6, abs=1e-4)
