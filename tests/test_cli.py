"""`python -m mhmodels summary`: the Table 1 comparison as users run it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


# -- one CLI plumbing for every command (mhmodels.cli) ---------------------------------------

def run_plain(*args, module="mhmodels", timeout=300, **env_extra):
    """As a user runs it: no TF_CPP_MIN_LOG_LEVEL exported."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=str(ROOT), **env_extra)
    return subprocess.run([sys.executable, "-m", *module.split(), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_every_command_help_lists_its_own_flags():
    expected = {"benchmark": ("--models", "--quantization", "--output_dir"),
                "summary": ("--width", "--image_size", "--[no]layers"),
                "train": ("--model_dir", "--init_weights", "--keep_checkpoints")}
    for command, names in expected.items():
        result = run_plain(command, "--help")
        assert result.returncode == 0, result.stderr
        for name in names:
            assert f"\n  {name}\n" in result.stdout, (command, name)
        assert "--verbosity" in result.stdout
    other = run_plain("--help", module="mhmodels.train")
    assert other.returncode == 0 and "\n  --model_dir\n" in other.stdout


def test_search_help_groups_flags_by_concern():
    result = run_plain("--help", module="search")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    headings = ["data flags:", "supernet flags:", "controller flags:", "reward flags:",
                "hardware flags:", "distribution flags:", "output flags:"]
    positions = [out.index(h) for h in headings]
    assert positions == sorted(positions)
    def group(heading):
        start = out.index(heading)
        end = min([p for p in positions if p > start] + [len(out)])
        return out[start:end]
    assert "--dataset" in group("data flags:") and "--beta" in group("reward flags:")
    assert "--rl_learning_rate" in group("controller flags:")
    assert "--strategy" in group("distribution flags:") and "--hardware" in group(
        "hardware flags:")
    assert "--keep_checkpoints" in group("output flags:")
    assert "other flags:" not in out  # every flag has its group


@pytest.mark.parametrize("args, message", [
    (["--hardware=cpu_flot"], "error: --hardware: unknown hardware 'cpu_flot'"),
    (["--steps=0"], "error: --steps=0: must be >= 1"),
    (["--beta=0.2"], "error: --beta=0.2: must be <= 0"),
    (["--warmup_fraction=2"], "error: --warmup_fraction=2.0: must be in [0, 1]"),
    (["--dataset=folder:/nonexistent/x"], "error: --dataset=folder:/nonexistent/x: no such"),
    (["--model_dir=/proc/no/run"], "error: --model_dir=/proc/no/run: cannot create files"),
])
def test_search_flag_errors_are_one_line_before_tensorflow(tmp_path, args, message):
    import time
    start = time.perf_counter()
    result = run_plain(f"--model_dir={tmp_path / 'run'}", *args, "--nomeasure", module="search")
    seconds = time.perf_counter() - start
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "run").exists()
    assert seconds < 4.0  # TensorFlow alone takes longer to import here


def test_tensorflow_and_absl_info_logs_are_off_unless_verbosity(tmp_path):
    import re
    quiet = run_plain("summary", "mobilenet_v3_small")
    assert quiet.returncode == 0, quiet.stderr
    assert not re.search(r"^I\d{4} |absl::InitializeLog|oneDNN", quiet.stderr, re.M), \
        quiet.stderr
    loud = run_plain("summary", "mobilenet_v3_small", "--verbosity=0")
    assert loud.returncode == 0
    if "oneDNN" in loud.stderr:  # this TensorFlow build announces itself at INFO
        assert re.search(r"^I\d{4} ", loud.stderr, re.M)
    bad = run_plain("summary", "--width=abc")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("module, args", [
    ("search", ["--nomeasure"]),
    ("mhmodels.train", ["--model=multi_max"]),
    ("mhmodels", ["summary", "multi_max"]),
])
def test_mhmodels_home_that_is_a_file_fails_at_start_up(tmp_path, module, args):
    import time
    home = tmp_path / "home_file"
    home.write_text("not a directory")
    start = time.perf_counter()
    result = run_plain(*args, f"--model_dir={tmp_path / 'run'}" if module != "mhmodels" else
                       "--width=1.0", module=module, MHMODELS_HOME=str(home / "sub"))
    seconds = time.perf_counter() - start
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"error: $MHMODELS_HOME={home / 'sub'}: {home} is a file, not a directory (mhmodels "
        "keeps downloads, zoo entries and cost models there); set MHMODELS_HOME to a directory")
    assert seconds < 4.0 and not (tmp_path / "run").exists()  # before TensorFlow, before work


def test_hints_name_the_search_module_that_runs_here(tmp_path):
    """A checkout runs `search.X`; an installed copy (or any other directory) `mhmodels.search.X`."""
    code = ("from mhmodels.cli import command\n"
            "print(command('search.cost_model'), command('search'), command('mhmodels.train'))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    here = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert here.stdout.split("python -m ")[1:] == ["search.cost_model ", "search ",
                                                   "mhmodels.train\n"]
    elsewhere = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=60)
    assert elsewhere.stdout.split("python -m ")[1:] == [
        "mhmodels.search.cost_model ", "mhmodels.search ", "mhmodels.train\n"]
    # ... and that name runs from there
    ran = subprocess.run([sys.executable, "-m", "mhmodels.search.cost_model", "--help"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and "--fit" in ran.stdout, ran.stderr
