"""jaxdl launcher: `python launch.py --config=experiments/x.py[:arg] --workdir=W --mode=train`.

Only --config, --workdir and --mode are flags; everything else is a config override,
e.g. `--config.optim.lr=0.05`. With no flags it trains the MNIST-1D CNN
(`experiments/mnist1d.py:cnn`) on offline data.

Modes that read a finished run (`eval`, `pictures`, `report`) take its own
`W/config.json` when `--config` is not given: `python launch.py --workdir=W --mode=report`.

Several processes (hosts) train one model together when each is started with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or the environment
variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or with
`--distributed` alone on a cluster JAX detects by itself (Cloud TPU pods, SLURM, Open MPI).
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "experiments", "mnist1d.py") + ":cnn"
MODES = ("train", "eval", "summary", "show", "pictures", "report")
# Modes that read a finished run: without --config they take the run's own W/config.json.
WORKDIR_MODES = ("eval", "pictures", "report")
# What ml_collections raises for an override of a field the config does not have.
OVERRIDE_ERRORS = (KeyError, AttributeError, ValueError, TypeError)


def _fail(message: str, code: int = 2):
    """Prints `error: <first line>` and exits with `code` at once.

    Every file of the run is written and closed by now. What an orderly interpreter exit
    would still run are library threads (Orbax's, tensorstore's) winding down after the
    failure, whose tracebacks on stderr would bury the one line that matters.
    """
    lines = str(message).strip().splitlines() or ["unknown error"]
    print(f"error: {lines[0]}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _reason(e: BaseException) -> str:
    """The innermost cause of a config-loading error, as one line."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1].strip("\"'") if lines else type(e).__name__


def _config_error(e: BaseException):
    """An unknown field in an override, or a config file without `get_config`."""
    reason = _reason(e)
    if "get_config" in reason:
        _fail("the config file has no get_config(); it must define get_config(arg=None) -> ConfigDict")
    _fail(f"unknown config field {reason!r} in a --config.* override; list the fields with --mode=show")


try:  # config_flags parses --config.* overrides while the flag is defined
    config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "Experiment config file, `path.py` or `path.py:arg`.",
        lock_config=True)
except OVERRIDE_ERRORS as e:
    _config_error(e)
flags.DEFINE_string("workdir", None, "Where checkpoints and logs go (default: runs/<config name>).")
flags.DEFINE_enum("mode", "train", MODES, "train: train (resuming from the workdir); "
                  "eval: evaluate the workdir's latest checkpoint; summary: print the model's "
                  "layers and parameter counts; show: print the config; pictures: draw the run's "
                  "pictures in W/pictures; report: pictures, then W/report.md and W/report.html.")
flags.DEFINE_string("coordinator_address", None, "Several processes: HOST:PORT of process 0's coordinator "
                    "(default $JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "Several processes: how many (default $JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "Several processes: this one's index, 0 … N-1 (default $JAX_PROCESS_ID).")
flags.DEFINE_bool("distributed", False, "Join the other processes of a cluster JAX detects by itself "
                  "(Cloud TPU pod, SLURM, Open MPI) with jax.distributed.initialize().")
FLAGS = flags.FLAGS


def _parse(argv):
    """absl's parser, with flag and config-file errors as one line instead of a traceback."""
    try:
        argv = FLAGS(argv)
        FLAGS.config.keys()  # loads the config file now, so its errors surface here
    except OSError as e:
        _fail(f"cannot load the config file: {_reason(e)}")
    except flags.Error as e:
        first, reason = str(e).splitlines()[0].rstrip(":"), _reason(e)
        _fail(first if reason in first else f"{first}: {reason}")
    except OVERRIDE_ERRORS as e:
        _config_error(e)
    return argv


def default_workdir() -> str:
    """runs/<config file stem>[_<arg>], e.g. runs/mnist1d_cnn."""
    path = config_flags.get_config_filename(FLAGS["config"])
    name = os.path.splitext(os.path.basename(path))[0]
    spec = FLAGS["config"].serialize().partition("=")[2]
    if ":" in spec:
        name += "_" + spec.split(":", 1)[1].replace(",", "_").replace("/", "_")
    return os.path.join("runs", name)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; config values are set as --config.a.b=value")
    if not FLAGS["verbosity"].present:  # libraries' INFO logs drown the progress lines
        logging.set_verbosity(logging.WARNING)
    import jax

    from jaxdl import parallel, report, tasks, validate
    from jaxdl.errors import UserError
    from jaxdl.loop import TrainingDiverged

    config = FLAGS.config
    if FLAGS.mode == "show":
        print(config)
        return
    try:
        address = FLAGS.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
        count = FLAGS.num_processes if FLAGS.num_processes is not None else parallel.env_int("JAX_NUM_PROCESSES")
        index = FLAGS.process_id if FLAGS.process_id is not None else parallel.env_int("JAX_PROCESS_ID")
        if FLAGS.distributed or address or count is not None or index is not None:
            parallel.initialize(address, count, index)
    except UserError as e:
        _fail(str(e))
    workdir = FLAGS.workdir or default_workdir()
    source = config_flags.get_config_filename(FLAGS["config"])
    if FLAGS.mode in WORKDIR_MODES and not FLAGS["config"].present:
        if any(a.startswith("--config.") for a in sys.argv[1:]):
            _fail(f"--config.* overrides need --config with --mode={FLAGS.mode}; without it the run's own "
                  f"{os.path.join(workdir, 'config.json')} is used as it is")
        try:
            config = report.workdir_config(workdir)
        except UserError as e:
            _fail(str(e))
        source = os.path.join(workdir, "config.json")
    if parallel.is_main_process():
        processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
        print(f"jaxdl: {jax.device_count()} {jax.devices()[0].platform} device(s){processes}; "
              f"config {source}; workdir {workdir}", flush=True)
    if jax.process_count() > 1 and FLAGS.mode not in ("train", "eval"):
        _fail(f"--mode={FLAGS.mode} runs in one process; start it without the multi-process flags")
    try:
        validate.check_config(config)  # every value, before any data is read or anything written
        if FLAGS.mode == "pictures":
            report.make_pictures(config, workdir)
            return
        if FLAGS.mode == "report":
            report.write_report(config, workdir)
            return
        task = tasks.get(config.get("task", "classification"))
        run = {"train": "train_and_evaluate", "eval": "evaluate_workdir", "summary": "summary"}
        if not hasattr(task, run[FLAGS.mode]):
            _fail(f"--mode={FLAGS.mode} is not available for task {config.task!r}; use --mode=train")
        if FLAGS.mode == "train":
            validate.check_workdir(workdir)
        getattr(task, run[FLAGS.mode])(config, workdir)
        if FLAGS.mode == "train" and parallel.is_main_process():  # the report puts the pictures on one page
            report.write_report(config, workdir, pictures=False)
    except UserError as e:
        _fail(str(e))
    except TrainingDiverged as e:
        _fail(f"training diverged: {e}", code=3)
    except OSError as e:  # the machine's, not the code's: a full disk, a lost mount, permissions
        _fail(f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}; "
              f"rerun the same command once it is fixed to resume from the last checkpoint")
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume from the last checkpoint", code=130)
    except Exception:
        if jax.process_count() == 1:
            raise
        # The other processes wait in a collective for this one: exit at once (they stop when
        # the coordinator misses its heartbeat) instead of waiting at JAX's shutdown barrier.
        import traceback

        traceback.print_exc()
        _fail(f"process {jax.process_index()} failed (traceback above)", code=1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
