"""A pip user's mhmodels: the wheel, installed into fresh venvs, run from outside the checkout.

Builds the wheel from a copy of the checkout (the checkout stays clean), then:
  * an empty venv: `pip install <wheel>` installs no TensorFlow and `import mhmodels` says which
    extra to pick; `pip install <wheel>[cpu]` gets one; `quantize` fails with the QAT install
    command, which then works; README's snippets and the README main job run there, from a
    directory outside the checkout, writing nothing into site-packages;
  * a venv with `tensorflow` (the CUDA build) preinstalled: installing mhmodels leaves that
    distribution as it was (same version, same files, no tensorflow-cpu beside it) and working.

Slow: two TensorFlow installs (from pip's cache on CI; --no-compile skips byte-compiling
TensorFlow's thousands of modules), README's snippets and a 4-step search. Measured on the
shared 2-core development machine before --no-compile: 17 min wall, 7.4 min CPU. The
TensorFlow distribution preinstalled in the second venv is $MHMODELS_TEST_TF_DIST (default
`tensorflow`, at the version of the TensorFlow running the test).
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mhmodels
from mhmodels.qat import install_command

from readme_blocks import python_blocks, runnable

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (REPO / ".git").exists() or shutil.which("git") is None,
                                 reason="needs the git checkout (e.g. not under Bazel's sandbox)")]
TF_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-tpu", "tensorflow-intel",
                    "tf-nightly", "tensorflow-macos")
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
         "PYTHONNOUSERSITE": "1"}


def run(cmd, cwd, env=None, timeout=900, check=True):
    """Run `cmd` (a list) in a clean environment: no PYTHONPATH, so nothing from the checkout."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    full_env.update(QUIET)
    full_env.update(env or {})
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def tensorflow_version() -> str:
    from importlib import metadata
    for dist in TF_DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise RuntimeError("no TensorFlow distribution in the test's environment")


def installed(venv: Path) -> dict[str, str]:
    """{distribution name (normalised): version} of a venv."""
    out = run([venv / "bin" / "python", "-m", "pip", "list", "--format=json"], cwd=venv).stdout
    return {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(out)}


def make_venv(path: Path) -> Path:
    run([sys.executable, "-m", "venv", "--clear", path], cwd=path.parent)
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the checkout's tracked and untracked-unignored files."""
    work = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    source = work / "src"
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", source],
        cwd=work)
    (built,) = (work / "dist").glob("mhmodels-*.whl")
    return built


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A working directory that is not the checkout (nothing importable from it)."""
    return tmp_path_factory.mktemp("user")


def site_packages(venv: Path) -> Path:
    (path,) = (venv / "lib").glob("python3*/site-packages")
    return path


def tree_state(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_wheel_contents(wheel):
    import zipfile
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mhmodels/search/__main__.py" in names and "mhmodels/zoo/models/multi_max.json" in names
    assert "mhmodels/zoo/cost_models/cpu_float.json" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert not any(n.startswith(("search/", "zoo/", "tests/")) for n in names)
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    assert not [r for r in base if r.split()[1].lower().startswith(("tensorflow-cpu",
                                                                    "tensorflow-tpu",
                                                                    "tensorflow>", "tensorflow[",
                                                                    "tensorflow ", "tf-keras"))]
    assert any("ethos-u-vela>=5.2" in r for r in base)
    assert "License-Expression: Apache-2.0" in metadata


def test_empty_venv_gets_a_tensorflow_from_an_extra_and_runs_the_readme(wheel, outside,
                                                                          tmp_path_factory):
    venv = make_venv(tmp_path_factory.mktemp("empty") / "venv")
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", "--no-compile", wheel], cwd=outside)
    assert not set(installed(venv)) & set(TF_DISTRIBUTIONS)  # no TensorFlow forced on anyone
    proc = run([python, "-c", "import mhmodels"], cwd=outside, check=False)
    assert proc.returncode == 1 and mhmodels.NO_TENSORFLOW_MESSAGE in proc.stderr

    run([python, "-m", "pip", "install", "-q", "--no-compile", f"{wheel}[cpu]"], cwd=outside)
    assert installed(venv).get("tensorflow-cpu") == tensorflow_version()
    assert "tensorflow" not in installed(venv)

    # QAT: quantize says what to install; that command works and brings no second TensorFlow.
    code = ("import mhmodels; mhmodels.quantize(mhmodels.build('mobilenet_v2', 0.35, "
            "input_shape=(32, 32, 3), num_classes=3))")
    proc = run([python, "-c", code], cwd=outside, check=False)
    assert proc.returncode == 1 and "ImportError" in proc.stderr
    assert install_command() in proc.stderr
    before = installed(venv)
    run([venv / "bin" / "pip", *install_command().split()[1:], "-q", "--no-compile"],
        cwd=outside)
    after = installed(venv)
    added = set(after) - set(before)
    assert added == {"tf-keras", "tensorflow-model-optimization"}, added
    assert {k: v for k, v in after.items() if k in before} == before  # nothing changed

    packages = site_packages(venv) / "mhmodels"
    shipped = tree_state(packages)
    home = outside / "home"
    env = {"MHMODELS_HOME": str(home)}
    # README's snippets, from a directory outside the checkout.
    for i, block in enumerate(python_blocks()):
        script = outside / f"readme_{i}.py"
        script.write_text(runnable(block, small=True))
        run([python, script], cwd=outside, env=env)

    # README's main job, from the installed copy, tiny.
    model_dir = outside / "runs" / "demo"
    proc = run([python, "-m", "mhmodels.search", f"--model_dir={model_dir}", "--steps=4",
                "--batch_size=8", "--checkpoint_every=2", "--log_every=2", "--noprogress",
                "--nocalibrate",  # (tested in test_search_loop; a minute here)
                f"--zoo_dir={home / 'zoo'}", "--entry_name=pip_demo", "--compare=mobilenet_v2",
                "--measure_image_size=32"], cwd=outside, env=env)
    entry = json.loads((home / "zoo" / "pip_demo.json").read_text())
    assert entry["name"] == "pip_demo" and entry["provenance"]["hardware"]
    assert "pip_demo" in proc.stdout
    assert tree_state(packages) == shipped  # nothing written over or beside shipped files


def test_preinstalled_tensorflow_is_left_alone(wheel, outside, tmp_path_factory):
    dist = os.environ.get("MHMODELS_TEST_TF_DIST", "tensorflow")
    venv = make_venv(tmp_path_factory.mktemp("with_tf") / "venv")
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", "--no-compile", f"{dist}=={tensorflow_version()}"],
        cwd=outside)
    before = installed(venv)
    record = next(site_packages(venv).glob(f"{dist.replace('-', '_')}-*.dist-info/RECORD"))
    record_text = record.read_text()
    cuda = run([python, "-c", "import tensorflow as tf; print(tf.test.is_built_with_cuda())"],
               cwd=outside).stdout.strip()

    run([python, "-m", "pip", "install", "-q", "--no-compile", wheel], cwd=outside)
    after = installed(venv)
    assert after[dist] == before[dist] and record.read_text() == record_text
    assert not (set(after) & set(TF_DISTRIBUTIONS)) - {dist}  # no second TensorFlow
    changed = {k for k in before if after.get(k) != before[k]}
    assert not changed, {k: (before[k], after.get(k)) for k in changed}
    code = textwrap.dedent("""
        import numpy as np, tensorflow as tf, mhmodels
        model = mhmodels.build('multi_max', 0.35, input_shape=(64, 64, 3), num_classes=5)
        out = model(np.zeros((1, 64, 64, 3), 'float32'), training=False)
        print(tf.test.is_built_with_cuda(), model.name, tuple(out.shape))
        """)
    out = run([python, "-c", code], cwd=outside).stdout.split()
    assert out == [cuda, "multi_max_0.35_64", "(1,", "5)"]
