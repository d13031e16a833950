"""`python -m mhmodels summary`: the Table 1 comparison as users run it."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "mhmodels", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_summary_prints_ours_beside_the_paper():
    result = run("summary", "multi_max", "mobilenet_v2")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.startswith(("multi_max", "mobilenet_v2"))}
    assert rows["multi_max"][1:5] == ["1.00", "4.392", "4.39", "+0.04%"]
    assert rows["multi_max"][5:7] == ["349.2", "349"]
    assert rows["mobilenet_v2"][1:4] == ["1.25", "5.009", "5.01"]


def test_summary_width_flag_and_layers():
    result = run("summary", "multi_avg", "--width=0.75", "--layers")
    assert result.returncode == 0, result.stderr
    assert "250.0" in result.stdout
    assert "classifier" in result.stdout and "block15_project" in result.stdout


def test_unknown_model_and_command_fail_cleanly():
    result = run("summary", "multi_mx")
    assert result.returncode != 0
    assert "did you mean 'multi_max'" in result.stderr
    assert "Traceback" not in result.stderr
    result = run("frobnicate")
    assert result.returncode == 2 and "unknown command" in result.stderr
