"""The search's settings and their validation, without TensorFlow.

`validate_config` is the one set of rules for a search's settings: the CLI runs it while
parsing flags (a bad flag is one line, before TensorFlow loads) and `run_search` runs it again
before anything is written, so a refused command never leaves a `search_config.json` behind
that the corrected command would then disagree with.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Fields of the config that must match when resuming from a checkpoint.
RESUME_KEYS = ("space", "space_digest", "hardware", "metric", "beta", "target", "dataset", "image_size",
               "batch_size", "valid_batch_size", "steps", "warmup_fraction", "rl_delay_fraction",
               "learning_rate",
               "momentum", "optimizer", "weight_decay", "rl_learning_rate", "supernet_width",
               "seed", "num_replicas")

OPTIMIZERS = ("momentum", "rmsprop")
FINAL_CHOICES = ("on_target", "argmax")  # how the final architecture is read off the policy

# The paper's beta (-0.07) was set for a reward whose accuracy came from ImageNet batches of the
# TPU v2-32 job (32 cores x 128 images). The accuracy of an n-image batch has a standard
# deviation of up to 0.5 / sqrt(n), so at the proxy's 128 images the same latency penalty is
# drowned by noise 5.7x larger. `scaled_beta` keeps the paper's ratio of penalty to noise:
# missing T by 10% costs about one standard deviation of the batch accuracy, as -0.07 does at
# 4096 images (10% x 0.07 = 0.007 ~ 0.5 / sqrt(4096) = 0.0078).
PAPER_BETA = -0.07
PAPER_VALID_BATCH = 32 * 128
VALID_BATCH_FACTOR = 4  # held-out reward batch = 4x the training batch unless set


def scaled_beta(valid_batch: int) -> float:
    """beta for a reward measured on ``valid_batch`` images, at the paper's penalty/noise ratio."""
    return PAPER_BETA * (PAPER_VALID_BATCH / float(valid_batch)) ** 0.5


def resolve_reward_settings(config: "SearchConfig") -> None:
    """Fill in the defaults that depend on other settings: the held-out batch, then beta."""
    if config.valid_batch_size is None:
        config.valid_batch_size = VALID_BATCH_FACTOR * int(config.batch_size)
    if config.beta is None:
        config.beta = round(scaled_beta(config.valid_batch_size), 6)
RESULT_JSON = "result.json"  # written when a search finishes: its entry, for a rerun to report


@dataclass
class SearchConfig:
    """Everything a search run depends on (the CLI flags map 1:1 onto these fields)."""

    model_dir: str
    hardware: tuple[str, ...] = ("cpu_float", "cpu_int8", "ethos_u55", "ethos_u85")
    metric: str = "max"
    beta: float | None = None  # None: scaled_beta(valid_batch_size)
    target: float = 1.0
    space: str = "multi_hw"
    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int = 32
    batch_size: int = 32  # per replica
    valid_batch_size: int | None = None  # per replica, the reward's accuracy; None: 4x batch
    steps: int | None = None
    epochs: float | None = None
    warmup_fraction: float = 0.25
    rl_delay_fraction: float = 0.5  # the paper's (TuNAS: 0.25)
    learning_rate: float = 0.05
    momentum: float = 0.9
    optimizer: str = "momentum"
    weight_decay: float = 4e-5
    rl_learning_rate: float = 0.05
    supernet_width: float = 0.25
    seed: int = 0
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    summary_every: int = 10
    log_every: int = 50
    entry_name: str | None = None
    zoo_dir: str | None = None  # default: the user zoo, $MHMODELS_HOME/zoo/models
    cost_model_dir: str | None = None  # default: $MHMODELS_HOME/cost_models, then shipped
    max_steps: int | None = None  # stop (without a final checkpoint) at this step: tests
    steps_per_loop: int = 1  # search steps per host call (a tf.function loop): TPU jobs
    jit_compile: bool = False  # compile the replica step with XLA (TPUs always do)
    progress: bool = False
    final: str = "on_target"  # the final architecture: FINAL_CHOICES
    target_tolerance: float = 0.02  # final='on_target': |f/T - 1| of the predicted f
    num_replicas: int = field(default=1, repr=False)  # filled in by run_search
    space_digest: str | None = field(default=None, repr=False)  # filled in: a reduced mask


def _check(ok: bool, flag: str, value, rule: str) -> None:
    if not ok:
        raise ValueError(f"--{flag}={value}: {rule}")


def validate_config(config: SearchConfig, *, check_files: bool = True,
                    check_hardware: bool = True) -> None:
    """Raise ValueError (one line naming the flag) for any setting a search cannot run with.

    check_files: also check what lies outside the config (the dataset folder exists, the
    model and zoo directories are writable). check_hardware: the names are search.hardware
    names (not when the caller brings its own cost models). Cost models are checked by
    `check_cost_models`.
    """
    _check_hardware_and_reward(config, check_hardware)
    _check_schedule(config)
    if config.entry_name is not None:
        from mhmodels.registry import NAME_PATTERN
        _check(bool(NAME_PATTERN.match(config.entry_name)), "entry_name", config.entry_name,
               f"must match {NAME_PATTERN.pattern} (lower case letters, digits, underscores; "
               "a letter first)")
    _check(bool(config.model_dir), "model_dir", config.model_dir, "is required")
    if check_files:
        _check_outside(config)


def _check_hardware_and_reward(config: SearchConfig, check_hardware: bool) -> None:
    from . import reward as reward_lib
    from .hardware import get_hardware
    hardware = list(config.hardware)
    _check(bool(hardware), "hardware", "", "name at least one hardware")
    for name in hardware if check_hardware else ():
        try:
            get_hardware(name)
        except (ValueError, TypeError) as err:
            raise ValueError(f"--hardware: {err}") from None
    dupes = sorted({h for h in hardware if hardware.count(h) > 1})
    _check(not dupes, "hardware", ",".join(hardware), f"{', '.join(dupes)} listed twice")
    try:
        reward_lib.check_metric(config.metric, len(hardware))
    except ValueError as err:
        raise ValueError(f"--metric={config.metric}: {err}") from None
    _check(config.beta is None or config.beta <= 0, "beta", config.beta,
           "must be <= 0 (a latency penalty)")
    _check(config.target > 0, "target", config.target, "must be > 0")
    _check(0 <= config.target_tolerance < 1, "target_tolerance", config.target_tolerance,
           "must be in [0, 1) (a relative distance to --target)")
    _check(config.final in FINAL_CHOICES, "final", config.final,
           f"must be one of {', '.join(FINAL_CHOICES)}")


def _check_schedule(config: SearchConfig) -> None:
    """Data, steps, optimizers and the run's cadence."""
    _check(config.image_size >= 8, "image_size", config.image_size, "must be >= 8")
    _check(config.batch_size >= 1, "batch_size", config.batch_size, "must be >= 1")
    _check(config.valid_batch_size is None or config.valid_batch_size >= 1, "valid_batch_size",
           config.valid_batch_size, "must be >= 1")
    if config.steps is not None and config.epochs is not None:
        raise ValueError("pass --steps or --epochs, not both")
    if config.steps is not None:
        _check(config.steps >= 1, "steps", config.steps, "must be >= 1")
    if config.epochs is not None:
        _check(config.epochs > 0, "epochs", config.epochs, "must be > 0")
    for name in ("warmup_fraction", "rl_delay_fraction"):
        value = getattr(config, name)
        _check(0 <= value <= 1, name, value, "must be in [0, 1] (a fraction of the steps)")
    _check(config.learning_rate > 0, "learning_rate", config.learning_rate, "must be > 0")
    _check(0 <= config.momentum < 1, "momentum", config.momentum, "must be in [0, 1)")
    _check(config.optimizer in OPTIMIZERS, "optimizer", config.optimizer,
           f"must be one of {', '.join(OPTIMIZERS)}")
    _check(config.weight_decay >= 0, "weight_decay", config.weight_decay, "must be >= 0")
    _check(config.rl_learning_rate >= 0, "rl_learning_rate", config.rl_learning_rate,
           "must be >= 0")
    _check(config.supernet_width > 0, "supernet_width", config.supernet_width, "must be > 0")
    for name in ("checkpoint_every", "summary_every", "log_every", "steps_per_loop"):
        value = getattr(config, name)
        _check(isinstance(value, int) and value >= 1, name, value, "must be an integer >= 1")
    _check(isinstance(config.keep_checkpoints, int) and config.keep_checkpoints >= 0,
           "keep_checkpoints", config.keep_checkpoints, "must be an integer >= 0")
    if config.max_steps is not None:
        _check(config.max_steps >= 1, "max_steps", config.max_steps, "must be >= 1")


def _check_outside(config: SearchConfig) -> None:
    """What lies outside the config: the dataset folder, writable model and zoo dirs."""
    from mhmodels.files import check_writable_dir
    if config.dataset.startswith("folder"):
        path = config.dataset.split(":", 1)[1] if ":" in config.dataset else ""
        path = path or config.data_dir or ""
        _check(bool(path), "dataset", config.dataset, "needs a path: folder:<path> or "
               "--data_dir=<path>")
        _check(os.path.isdir(os.path.expanduser(path)), "dataset", config.dataset,
               f"no such image folder {path}")
    if config.zoo_dir:
        from mhmodels.files import HOME_ENV, is_shipped
        _check(not is_shipped(config.zoo_dir), "zoo_dir", config.zoo_dir,
               "is inside mhmodels' shipped files, which are never written; leave --zoo_dir "
               f"out for the user zoo under ${HOME_ENV} (copy an entry in by hand to ship it)")
    for flag, directory in (("model_dir", config.model_dir), ("zoo_dir", config.zoo_dir)):
        if directory:
            try:
                check_writable_dir(directory, f"--{flag}")
            except OSError as err:
                raise ValueError(str(err)) from None


def check_cost_models(config: SearchConfig) -> list:
    """Load every hardware's cost model (a missing or unfitting one is a ValueError); a CPU
    model measured on another host is a one-line warning on stderr."""
    from .cost_model import host_mismatch, load_cost_model
    from .space import get_space
    try:
        space = get_space(config.space)
    except (KeyError, ValueError) as err:
        raise ValueError(f"--space={config.space}: {err}") from None
    models = []
    for hw in config.hardware:
        try:
            model = load_cost_model(hw, config.cost_model_dir, space=space)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"--hardware={hw}: {err}") from None
        if not model.normalizer_ms or not float(model.normalizer_ms) > 0:
            raise ValueError(f"--hardware={hw}: the cost model {model.source} has no "
                             "normalizer_ms (its data had no mobilenet_v1 row): refit it")
        mismatch = host_mismatch(model)
        if mismatch:
            print(f"warning: --hardware={hw}: {mismatch}", file=sys.stderr)
        models.append(model)
    return models


CONFIG_FILE = "search_config.json"  # a search's flags in its --model_dir (search.loop)


def calibrate_cpu_cost_models(config: SearchConfig, num_archs: int, image_size: int = 224,
                              overrides: dict | None = None) -> list[str]:
    """Calibrate the search's CPU cost models to this host where none is yet (written to the
    user location, `$MHMODELS_HOME/cost_models`, which the loader then prefers), so the
    latency target means this host's latency: the shipped CPU models describe the host they
    were measured on (another host measured MobileNetV1 in int8 at 0.6x to 3.6x their
    prediction). Nothing is done for --cost_model_dir (the models given are used as given),
    for a space other than multi_hw (calibration refits that space's models), or for a
    search being resumed (its cost models must not change). `overrides`: the timing's
    (runs, warmup, ...; tests). -> the hardware calibrated."""
    from .cost_model import calibrate_cost_models, calibrated_file_name, cost_model_dirs
    from .space import get_space
    if config.cost_model_dir or get_space(config.space).name != "multi_hw":
        return []
    if "://" in str(config.model_dir) or (Path(config.model_dir) / CONFIG_FILE).exists():
        return []
    names = {hw: calibrated_file_name(hw) for hw in config.hardware}  # None: not this CPU
    todo = [hw for hw, name in names.items()
            if name and not any((d / name).is_file() for d in cost_model_dirs())]
    if todo:
        print(f"calibrating the {', '.join(todo)} cost model(s) to this host: "
              f"{num_archs} architectures and MobileNetV1 timed at {image_size}x{image_size} "
              "(once per host; --nocalibrate skips it)", flush=True)
        calibrate_cost_models(todo, num_archs=num_archs, rounds=2, image_size=image_size,
                              overrides=overrides, progress=config.progress)
    return todo


# --------------------------------------------------------------------------------------------
# The zoo entry

def default_zoo_dir() -> Path:
    """The user zoo (`$MHMODELS_HOME/zoo/models`), listed by mhmodels' registry."""
    from mhmodels.files import user_zoo_dir
    return user_zoo_dir()


def check_entry_name(name: str, zoo_dir: str | os.PathLike | None = None) -> Path:
    """The path the entry will be written to; raises if the name is invalid or taken."""
    from mhmodels.registry import NAME_PATTERN
    import mhmodels
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"entry name {name!r} must match {NAME_PATTERN.pattern} (lower case "
                         "letters, digits, underscores; a letter first)")
    directory = Path(zoo_dir) if zoo_dir else default_zoo_dir()
    path = directory / f"{name}.json"
    if path.exists():
        raise FileExistsError(f"zoo entry {path} already exists; pick another --entry_name "
                              "(entries are never overwritten)")
    if name in mhmodels.list_models():
        raise FileExistsError(f"a model named {name!r} already exists "
                              f"({mhmodels.get_entry(name).source}); pick another --entry_name")
    return path


def make_zoo_visible(zoo_dir: str | os.PathLike | None) -> None:
    """Let mhmodels.build find entries written outside the zoo dirs it lists (by name)."""
    if not zoo_dir:
        return
    from mhmodels.registry import ZOO_PATH_ENV, zoo_dirs
    target = os.path.realpath(zoo_dir)
    if any(os.path.realpath(d) == target for d in zoo_dirs()):
        return
    parts = [p for p in os.environ.get(ZOO_PATH_ENV, "").split(os.pathsep) if p]
    os.environ[ZOO_PATH_ENV] = os.pathsep.join(parts + [str(zoo_dir)])


def finished_entry_name(model_dir: str) -> str | None:
    """The entry name a finished search in `model_dir` published (local dirs), else None."""
    path = os.path.join(model_dir, RESULT_JSON)
    if "://" in model_dir or not os.path.isfile(path):
        return None
    from mhmodels.files import read_json
    record = read_json(path, "search result")
    return record.get("entry_name") if record.get("finished") else None
