"""Reliability: exact resume after SIGKILL, the divergence guard, checkpoint integrity,
environment faults, determinism, and a battery of user mistakes through the launcher."""
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import mnist1d
from jaxdl import checkpoint, data, loop, train, validate
from jaxdl.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.py")


def launch(*args, env=None, timeout=300):
    """The launcher as a user runs it: a fresh interpreter."""
    return subprocess.run([sys.executable, LAUNCH, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, **(env or {})})


def start(*args, env=None, stdout=None):
    return subprocess.Popen([sys.executable, LAUNCH, *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=stdout or subprocess.DEVNULL, stderr=subprocess.STDOUT)


def wait_for(condition, timeout=180, what="a condition"):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def logged_steps(workdir) -> list[int]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.endswith("\n")]


def state_leaves(workdir, step) -> list[np.ndarray]:
    ckpts = checkpoint.Checkpoints(str(workdir))
    raw = ckpts.read(step)
    ckpts.close()
    return [np.asarray(a) for a in jax.tree.leaves(raw)]


def assert_same_state(a_dir, b_dir, step):
    a, b = state_leaves(a_dir, step), state_leaves(b_dir, step)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)  # bitwise: no tolerance


def results_without_time(workdir) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        return {k: v for k, v in json.load(f).items() if k != "train_time_s"}


def tmp_folders(workdir) -> list[str]:
    ckpt_dir = os.path.join(workdir, "checkpoints")
    return [d for d in os.listdir(ckpt_dir) if checkpoint.TMP_SUFFIX in d] if os.path.isdir(ckpt_dir) else []


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module", autouse=True)
def digits_prepared():
    """Prepared once, so that no launcher run below prints TFDS's progress bars on stderr."""
    data.load("digits", "train")


# ---------------------------------------------------------------- exact resume after SIGKILL

RESUME = ["--config=experiments/mnist1d.py:mlp", "--config.dataset.name=digits", "--config.num_steps=2000",
          "--config.batch_size=32", "--config.num_seeds=2", "--config.log_every=10", "--config.eval_every=500",
          "--config.checkpoint_every=200", "--config.steps_per_call=1"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The resume test's run, never interrupted."""
    workdir = tmp_path_factory.mktemp("reference") / "w"
    proc = launch(*RESUME, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    return workdir


def test_sigkill_at_three_steps_one_inside_a_checkpoint_write_resumes_bitwise(reference_run, tmp_path):
    workdir = tmp_path / "killed"
    ckpt_dir = workdir / "checkpoints"
    args = [*RESUME, f"--workdir={workdir}"]
    kills, resumed = [], []

    def run_and_kill(condition, what, env=None):
        with open(tmp_path / f"run{len(kills)}.out", "w+") as out:
            proc = start(*args, env=env, stdout=out)
            try:
                wait_for(lambda: condition() or proc.poll() is not None, what=what)
                assert proc.poll() is None, f"the run ended before {what}"
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.wait()
            kills.append(max(logged_steps(workdir), default=0))
            out.seek(0)
            resumed.append(out.read())

    # 1: between two checkpoints.
    run_and_kill(lambda: max(logged_steps(workdir), default=0) >= 300, "step 300")
    # 2: inside the write of checkpoint 1000: the run pauses there (test hook) and dies there.
    run_and_kill(lambda: (ckpt_dir / f"1000{checkpoint.TMP_SUFFIX}").is_dir(), "the write of checkpoint 1000",
                 env={checkpoint.PAUSE_ENV: "1000"})
    assert (ckpt_dir / f"1000{checkpoint.TMP_SUFFIX}").is_dir() and not (ckpt_dir / "1000").exists()
    # 3: later, after the half-written checkpoint was replaced.
    run_and_kill(lambda: max(logged_steps(workdir), default=0) >= 1500, "step 1500")
    last = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    final = launch(*args)
    assert final.returncode == 0, final.stderr

    assert kills[0] < 1000 <= kills[1] < kills[2] < 2000, kills
    assert "resumed from" not in resumed[0]
    assert "checkpoints/200 at step 200" in resumed[1]
    assert "checkpoints/800 at step 800" in resumed[2]  # 1000 never completed
    assert f"checkpoints/{last} at step {last}" in final.stdout
    assert_same_state(reference_run, workdir, 2000)
    # The log is the uninterrupted run's, byte for byte: no step missing, none twice.
    assert read_bytes(workdir / "metrics.jsonl") == read_bytes(reference_run / "metrics.jsonl")
    assert logged_steps(workdir) == list(range(10, 2001, 10))
    assert results_without_time(workdir) == results_without_time(reference_run)
    assert tmp_folders(workdir) == []


def test_two_runs_with_the_same_seed_write_identical_logs(reference_run, tmp_path):
    proc = launch(*RESUME, f"--workdir={tmp_path / 'again'}")
    assert proc.returncode == 0, proc.stderr
    log = read_bytes(tmp_path / "again" / "metrics.jsonl")
    assert log == read_bytes(reference_run / "metrics.jsonl")
    losses = [json.loads(line)["train_loss_per_seed"] for line in log.decode().splitlines()]
    assert len(losses) == 200 and len({tuple(x) for x in losses}) == 200  # a real log, not a constant
    assert_same_state(reference_run, tmp_path / "again", 2000)


# ---------------------------------------------------------------- the divergence guard

DIVERGING_CONFIG = '''
from experiments import mnist1d


def get_config(arg=None):
    config = mnist1d.get_config("mlp")
    config.dataset.name = "digits"
    config.num_steps, config.batch_size, config.steps_per_call = 60, 32, 5
    config.log_every, config.eval_every, config.checkpoint_every = 10, 1000, 20
    config.optim.name, config.optim.lr = "sgd", 1e-3
    # The learning rate jumps to 1e32 after half the run (step 30).
    config.optim.schedule, config.optim.step_boundaries, config.optim.step_factor = "step", (0.5,), 1e35
    return config
'''


def first_non_finite_step(config) -> int:
    """The oracle: steps one at a time, outside the loop, until the loss or gradient is not finite."""
    train_ds, _, num_steps, init = train._setup(config)
    step = jax.jit(lambda s, x, y: train.train_steps(s, x, y, batch_size=config.batch_size, num=1, unroll=True))
    step = jax.vmap(step, in_axes=(0, None, None))
    state, x, y = jax.jit(init)(), jax.numpy.asarray(train_ds.x), jax.numpy.asarray(train_ds.y)
    for s in range(1, num_steps + 1):
        state, m = step(state, x, y)
        if not (np.all(np.isfinite(m["loss"])) and np.all(np.isfinite(m["grad_norm"]))):
            return s
    raise AssertionError("the config does not diverge")


def test_divergence_exits_3_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config_file = tmp_path / "diverging.py"
    config_file.write_text(DIVERGING_CONFIG)
    workdir = tmp_path / "w"
    proc = launch(f"--config={config_file}", f"--workdir={workdir}")
    assert proc.returncode == 3
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    namespace = {}
    exec(DIVERGING_CONFIG, namespace)
    bad = first_non_finite_step(namespace["get_config"]())
    assert 30 < bad <= 40
    assert err[0] == (f"error: training diverged: non-finite loss or gradient at step {bad}; the last good "
                      f"checkpoint is {workdir}/checkpoints/20 (step 20), kept; rerun with a lower "
                      f"--config.optim.lr to resume from it")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["20"]
    assert all(np.all(np.isfinite(a)) for a in state_leaves(workdir, 20))
    assert logged_steps(workdir) == [10, 20, 30] and not (workdir / "results.json").exists()
    # The kept checkpoint is a place to continue from once the cause is fixed.
    fixed = launch(f"--config={config_file}", f"--workdir={workdir}", "--config.optim.step_factor=1.0")
    assert fixed.returncode == 0, fixed.stderr
    assert f"resumed from {workdir}/checkpoints/20 at step 20" in fixed.stdout
    assert logged_steps(workdir) == [10, 20, 30, 40, 50, 60]
    with open(workdir / "results.json") as f:
        assert np.isfinite(json.load(f)["test_loss"])


# ---------------------------------------------------------------- checkpoint integrity (API)

def small_config(steps=30):
    config = mnist1d.get_config("mlp")
    config.dataset.name = "digits"
    config.num_steps, config.batch_size, config.steps_per_call = steps, 32, 5
    config.log_every = config.eval_every = config.checkpoint_every = 10
    return config


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished run with checkpoints 10, 20 and 30."""
    workdir = tmp_path_factory.mktemp("small") / "w"
    train.train_and_evaluate(small_config(), str(workdir), print_fn=quiet)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20", "30"]
    return workdir


def data_files(step_dir) -> list[str]:
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
                  for f in fs if os.sep + "d" + os.sep in os.path.join(r, f))


def truncate_data(step_dir):
    for f in data_files(step_dir):
        os.truncate(f, os.path.getsize(f) // 2)


def flip_one_bit(step_dir, at=0.5):
    """Flips the lowest bit of the byte at fraction `at` of the largest data file."""
    f = max(data_files(step_dir), key=os.path.getsize)
    b = bytearray(read_bytes(f))
    b[int(len(b) * at)] ^= 0x01
    with open(f, "wb") as out:
        out.write(b)


def delete_metadata(step_dir):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


def empty_manifest(step_dir):
    open(os.path.join(step_dir, "manifest", "metadata"), "w").close()


@pytest.mark.parametrize("damage", [truncate_data, flip_one_bit, delete_metadata, empty_manifest],
                         ids=lambda f: f.__name__)
def test_damaged_latest_checkpoint_is_named_and_deleting_it_resumes_from_the_previous(small_run, tmp_path, damage):
    workdir = tmp_path / "w"
    shutil.copytree(small_run, workdir)
    damage(str(workdir / "checkpoints" / "30"))
    before = snapshot(workdir)
    latest = workdir / "checkpoints" / "30"
    with pytest.raises(checkpoint.CheckpointError) as e:
        train.train_and_evaluate(small_config(), str(workdir), print_fn=quiet)
    assert str(e.value).startswith(f"checkpoint {latest} is damaged (")
    assert str(e.value).endswith(f"delete it to resume from the previous checkpoint (step 20): rm -r {latest}")
    assert snapshot(workdir) == before
    shutil.rmtree(latest)  # the documented way back
    lines = []
    train.train_and_evaluate(small_config(), str(workdir), print_fn=lines.append)
    assert f"resumed from {workdir}/checkpoints/20 at step 20" in lines
    assert_same_state(small_run, workdir, 30)
    assert read_bytes(workdir / "metrics.jsonl") == read_bytes(small_run / "metrics.jsonl")


def test_a_flipped_bit_passes_orbax_and_is_caught_by_the_digest(small_run, tmp_path):
    """Why the manifest exists: Orbax reads most such damage back without complaint."""
    good = state_leaves(small_run, 30)
    # Each chunk is a zstd frame without a checksum. Most flipped bits decode to other
    # numbers without an error; a flip that breaks a frame's structure (its headers or the
    # end of a Huffman stream) is reported by Orbax. Try positions until one is silent.
    for at in np.arange(1, 16) / 16:
        workdir = tmp_path / f"w{at:.4f}"
        shutil.copytree(small_run, workdir)
        flip_one_bit(str(workdir / "checkpoints" / "30"), at)
        try:
            raw = state_leaves(workdir, 30)  # the unverified read
        except ValueError:  # "ZSTD_decompressStream() failed: Data corruption detected"
            continue
        if any(not np.array_equal(a, b) for a, b in zip(raw, good)):
            break
    else:
        pytest.fail("every flipped bit was noticed by Orbax or changed nothing")
    _, _, _, init = train._setup(small_config())
    ckpts = checkpoint.Checkpoints(str(workdir))
    with pytest.raises(checkpoint.CheckpointError, match="arrays differ from the digest"):
        ckpts.restore(30, loop.abstract_state(init))
    ckpts.close()


def test_restoring_a_checkpoint_never_unpickles(small_run, monkeypatch):
    """Every way into pickle raises while a checkpoint is found, checked and restored."""
    import _pickle
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint restore unpickled")

    for module in (pickle, _pickle):
        for name in ("load", "loads", "Unpickler"):
            monkeypatch.setattr(module, name, refuse)
    np_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: refuse() if k.get("allow_pickle") else np_load(*a, **k))
    unpickled = []
    sys.addaudithook(lambda event, args: unpickled.append(args) if event == "pickle.find_class" else None)
    _, _, _, init = train._setup(small_config())
    ckpts = checkpoint.Checkpoints(str(small_run))
    state = ckpts.restore(ckpts.latest_step(), loop.abstract_state(init))
    ckpts.close()
    assert int(state.step[0]) == 30 and unpickled == []


def test_resuming_with_another_optimiser_names_the_field(small_run, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(small_run, workdir)
    config = small_config()
    config.optim.name = "sgd"  # Adam's moments are not in an SGD state
    with pytest.raises(UserError, match=r"another shape .*; the config differs from the run's in optim\.name: "):
        train.train_and_evaluate(config, str(workdir), print_fn=quiet)


def test_checkpoints_written_before_manifests_still_restore(small_run, tmp_path):
    import orbax.checkpoint as ocp

    _, _, _, init = train._setup(small_config())
    like = loop.abstract_state(init)
    ckpts = checkpoint.Checkpoints(str(small_run))
    state = ckpts.restore(30, like)
    ckpts.close()
    legacy = ocp.CheckpointManager(str(tmp_path / "checkpoints"), options=ocp.CheckpointManagerOptions(create=True))
    legacy.save(30, args=ocp.args.StandardSave(state))
    legacy.wait_until_finished()
    legacy.close()
    again = checkpoint.Checkpoints(str(tmp_path)).restore(30, like)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- environment faults (API)

def test_full_disk_during_a_checkpoint_leaves_the_previous_one_and_a_rerun_resumes(small_run, tmp_path, monkeypatch):
    from etils import epath

    path_cls = type(epath.Path(str(tmp_path)))
    write_text = path_cls.write_text

    def full_disk(self, *args, **kwargs):  # Orbax's metadata writes, as on a full tmpfs
        if f"20{checkpoint.TMP_SUFFIX}" in str(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_text(self, *args, **kwargs)

    workdir = tmp_path / "w"
    monkeypatch.setattr(path_cls, "write_text", full_disk)
    with pytest.raises(checkpoint.CheckpointError) as e:
        train.train_and_evaluate(small_config(), str(workdir), print_fn=quiet)
    assert str(e.value) == (f"cannot write checkpoint {workdir}/checkpoints/20: No space left on device; the last "
                            f"complete checkpoint is {workdir}/checkpoints/10, and rerunning the same command "
                            f"resumes from it (free space or pass another --workdir)")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10"]  # no half-written folder
    monkeypatch.setattr(path_cls, "write_text", write_text)
    lines = []
    train.train_and_evaluate(small_config(), str(workdir), print_fn=lines.append)
    assert f"resumed from {workdir}/checkpoints/10 at step 10" in lines
    assert_same_state(small_run, workdir, 30)
    assert read_bytes(workdir / "metrics.jsonl") == read_bytes(small_run / "metrics.jsonl")


def folder_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def test_a_really_full_disk_through_the_launcher_is_one_line_and_a_rerun_resumes(small_run, tmp_path):
    """A tmpfs with room for one checkpoint and a half: tensorstore's own write fails."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size = int(1.5 * folder_bytes(small_run / "checkpoints" / "10")) + 64 * 1024
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        workdir = disk / "w"
        args = [*BASE, "--config.num_steps=30", f"--workdir={workdir}"]
        full = launch(*args)
        assert full.returncode == 2
        assert full.stderr.strip().splitlines() == [
            f"error: cannot write checkpoint {workdir}/checkpoints/20: No space left on device; the last complete "
            f"checkpoint is {workdir}/checkpoints/10, and rerunning the same command resumes from it (free space "
            f"or pass another --workdir)"]
        assert sorted(os.listdir(workdir / "checkpoints")) == ["10"]
        subprocess.run(["mount", "-o", f"remount,size={8 * size}", str(disk)], check=True)
        again = launch(*args)
        assert again.returncode == 0, again.stderr
        assert f"resumed from {workdir}/checkpoints/10 at step 10" in again.stdout
        assert read_bytes(workdir / "metrics.jsonl") == read_bytes(small_run / "metrics.jsonl")
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_log_line_cut_by_a_kill_is_written_again(small_run, tmp_path):
    """The disk as a kill leaves it mid-append of step 30's record, before checkpoint 30."""
    workdir = tmp_path / "w"
    shutil.copytree(small_run, workdir)
    shutil.rmtree(workdir / "checkpoints" / "30")
    os.remove(workdir / "results.json")
    log = read_bytes(workdir / "metrics.jsonl")
    last = log.rstrip(b"\n").rfind(b"\n") + 1
    (workdir / "metrics.jsonl").write_bytes(log[:last + (len(log) - last) // 2])
    train.train_and_evaluate(small_config(), str(workdir), print_fn=quiet)
    assert read_bytes(workdir / "metrics.jsonl") == log
    assert_same_state(small_run, workdir, 30)


PREPARE_AND_HANG = '''
import sys, time
from jaxdl.data import builders
generate = builders.Digits._generate_examples

def slow(self, indices):
    for i, example in enumerate(generate(self, indices)):
        if i == 100:
            open(sys.argv[2], "w").close()
            time.sleep(600)
        yield example

builders.Digits._generate_examples = slow
from jaxdl import data
data.load("digits", "train", directory=sys.argv[1])
'''


def test_killed_dataset_preparation_is_redone_by_the_rerun(tmp_path):
    data_dir = tmp_path / "tfds"  # does not exist yet: it is created
    paused = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-c", PREPARE_AND_HANG, str(data_dir), str(paused)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: paused.exists() or proc.poll() is not None, what="the preparation to pause")
        assert proc.poll() is None
        incomplete = [d for d in os.listdir(data_dir / "digits") if d.startswith("incomplete.")]
        assert incomplete, os.listdir(data_dir / "digits")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    ours = data.load("digits", "train", directory=str(data_dir))
    reference = data.load("digits", "train")  # prepared uninterrupted in the test data dir
    np.testing.assert_array_equal(ours.x, reference.x)
    np.testing.assert_array_equal(ours.y, reference.y)


# ---------------------------------------------------------------- the bad-input battery (launcher)

BASE = ["--config=experiments/mnist1d.py:mlp", "--config.dataset.name=digits", "--config.num_steps=20",
        "--config.batch_size=32", "--config.log_every=10", "--config.eval_every=10",
        "--config.checkpoint_every=10", "--config.steps_per_call=5"]
SEG = ["--config=experiments/segment_digit_scenes.py"]
DET = ["--config=experiments/detect_digit_scenes.py"]
ALEXNET = ["--config=experiments/zoo_digits.py:alexnet", "--config.model.small_input=False"]

# (id, arguments, workdir, what the one error line must contain). Workdirs: "new" does not
# exist, "run" holds a finished run of BASE, "run+..." the same run with one thing damaged,
# "file" is a regular file, "under_file" a path below one. "{tmp}" is the case's folder.
MISTAKES = [
    ("lr_negative", BASE + ["--config.optim.lr=-1"], "new",
     ["optim.lr must be a finite number > 0, got -1.0", "--config.optim.lr="]),
    ("lr_infinite", BASE + ["--config.optim.lr=inf"], "new", ["optim.lr must be a finite number > 0, got inf"]),
    ("lr_not_a_number", BASE + ["--config.optim.lr=fast"], "new", ["--config.optim.lr=fast", "convert"]),
    ("batch_zero", BASE + ["--config.batch_size=0"], "new", ["batch_size must be an integer >= 1, got 0"]),
    ("batch_fraction", BASE + ["--config.batch_size=3.5"], "new", ["--config.batch_size=3.5", "int"]),
    ("seeds_zero", BASE + ["--config.num_seeds=0"], "new", ["num_seeds must be an integer >= 1, got 0"]),
    ("steps_zero", BASE + ["--config.num_steps=0"], "new", ["num_steps must be an integer >= 1"]),
    ("epochs_negative", BASE + ["--config.num_epochs=-2"], "run", ["num_epochs must be an integer >= 1"]),
    ("eval_batch_zero", BASE + ["--config.eval_batch_size=0"], "new", ["eval_batch_size must be an integer >= 1"]),
    ("keep_no_checkpoint", BASE + ["--config.keep_checkpoints=0"], "new", ["keep_checkpoints must be an integer"]),
    ("momentum_one", BASE + ["--config.optim.momentum=1.0"], "new", ["optim.momentum must be in [0, 1)"]),
    ("warmup_negative", BASE + ["--config.optim.warmup_steps=-5"], "new",
     ["optim.warmup_steps must be an integer >= 0"]),
    ("image_size_zero", BASE + ["--config.dataset.image_size=0"], "new",
     ["dataset.image_size must be an integer >= 1"]),
    ("layer_width_zero", BASE + ["--config.model.features=(100, 0)"], "new",
     ["model.features must be layer widths, integers >= 1, got (100, 0)"]),
    ("unroll_not_bool", BASE + ["--config.unroll=sometimes"], "new", ["--config.unroll=sometimes", "boolean"]),
    ("model_typo", BASE + ["--config.model.name=MPL"], "new", ["unknown model 'MPL'", "did you mean 'MLP'"]),
    ("optimizer_typo", BASE + ["--config.optim.name=adm"], "new", ["unknown optimizer 'adm'", "did you mean 'adam'"]),
    ("schedule_typo", BASE + ["--config.optim.schedule=cosin"], "new", ["did you mean 'cosine'"]),
    ("dataset_typo", BASE + ["--config.dataset.name=digts"], "new",
     ["unknown dataset 'digts'", "did you mean 'digits'"]),
    ("variant_typo", BASE + ["--config.dataset.name=mnist1d/shufled"], "new", ["did you mean 'mnist1d/shuffled'"]),
    ("task_typo", BASE + ["--config.task=clasification"], "new", ["unknown task", "did you mean 'classification'"]),
    ("activation_typo", BASE + ["--config.model.activation=relux"], "new",
     ["unknown activation 'relux'", "did you mean 'relu'"]),
    ("unknown_field", BASE + ["--config.optim.learning_rate=0.1"], "new", ["unknown config field", "--mode=show"]),
    ("config_file_missing", ["--config=experiments/mnist1d_cnn.py"], "new", ["mnist1d_cnn.py"]),
    ("config_argument_typo", ["--config=experiments/mnist1d.py:transformer"], "new",
     ["unknown model 'transformer'", "valid: logreg, mlp, cnn"]),
    ("config_without_get_config", ["--config={tmp}/notes.py"], "new", ["no get_config()"]),
    ("mode_typo", BASE + ["--mode=trian"], "new", ["--mode=trian", "train"]),
    ("stray_argument", BASE + ["lr=0.1"], "new", ["unexpected arguments ['lr=0.1']", "--config.a.b=value"]),
    ("segmenter_for_classification", BASE + ["--config.model.name=UNet"], "new",
     ["'UNet' is a segmentation model", "task is 'classification'", "--config.task=segmentation"]),
    ("classifier_for_segmentation", SEG + ["--config.model.name=ResNet18"], "new",
     ["'ResNet18' is a classification model", "experiments/segment_digit_scenes.py"]),
    ("classification_config_as_segmentation", BASE + ["--config.task=segmentation"], "new",
     ["'MLP' is a classification model", "task is 'segmentation'"]),
    ("detection_config_as_classification", DET + ["--config.task=classification"], "new",
     ["is a detection model", "--config.task=detection"]),
    ("scene_dataset_for_classification", BASE + ["--config.dataset.name=digit_scenes"], "new",
     ["'digit_scenes' is for detection and segmentation", "digits"]),
    ("batch_larger_than_dataset", BASE + ["--config.batch_size=5000"], "new",
     ["batch_size 5000 is larger than the 1437 training examples", "lower --config.batch_size"]),
    ("alexnet_on_8x8", ALEXNET + ["--config.dataset.image_size=8"], "new",
     ["'AlexNet' cannot take inputs of shape (8, 8, 1)", "67×67"]),
    ("catalogue_dataset_offline", BASE + ["--config.dataset.name=cifar10"], "new",
     ["'cifar10' is not prepared", "--config.dataset.download=True"]),
    ("workdir_is_a_file", BASE, "file", ["is a file, not a folder", "--workdir"]),
    ("workdir_below_a_file", BASE, "under_file", ["cannot create workdir", "is a file", "--workdir"]),
    ("data_dir_below_a_file", BASE + ["--config.dataset.data_dir={tmp}/notes.py/tfds"], "new",
     ["cannot prepare dataset 'digits'", "--config.dataset.data_dir"]),
    ("eval_without_checkpoint", BASE + ["--mode=eval"], "new", ["no checkpoint in", "--mode=train"]),
    ("resume_with_another_model", BASE + ["--config.model.features=(50,)"], "run",
     ["holds a run with a different config (model.features)", "another --workdir"]),
    ("resume_with_another_optimizer", BASE + ["--config.optim.name=sgd"], "run",
     ["another shape", "differs from the run's in optim.name"]),
    ("resume_from_damaged_checkpoint", BASE, "run+flipped_bit",
     ["checkpoints/20 is damaged", "previous checkpoint (step 10): rm -r "]),
    ("resume_with_damaged_config_json", BASE, "run+torn_config", ["config.json is damaged", "delete it"]),
]


class ForkedLauncher:
    """`tests/forked_launcher.py`: runs of the real launch.py without paying its imports each time."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "forked_launcher.py")],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, argv, out_dir):
        out, err = os.path.join(out_dir, "stdout"), os.path.join(out_dir, "stderr")
        request = {"argv": list(argv), "cwd": ROOT, "stdout": out, "stderr": err}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self.proc.stdout.readline())["rc"]
        with open(out) as f, open(err) as g:
            return subprocess.CompletedProcess(argv, rc, f.read(), g.read())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def forked(tmp_path_factory):
    launcher = ForkedLauncher()
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def base_run(forked, tmp_path_factory):
    """A finished run of BASE (which also prepares `digits`, so no case prints progress bars)."""
    tmp = tmp_path_factory.mktemp("base_run")
    proc = forked([*BASE, f"--workdir={tmp / 'w'}"], str(tmp))
    assert proc.returncode == 0, proc.stderr
    return tmp / "w"


def snapshot(path) -> dict:
    """Every file's bytes and modification time, every folder's listing."""
    out = {}
    for root, dirs, files in os.walk(path):
        out[os.path.relpath(root, path)] = sorted(dirs + files)
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = (hashlib.sha256(read_bytes(p)).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def make_workdir(kind: str, tmp, base_run):
    """The case's workdir and a function that says whether it is as it was."""
    (tmp / "notes.py").write_text("# notes, not a config\n")
    if kind == "new":
        workdir = tmp / "w"
        return workdir, lambda: not workdir.exists()
    if kind == "file":
        return tmp / "notes.py", lambda: (tmp / "notes.py").read_text() == "# notes, not a config\n"
    if kind == "under_file":
        return tmp / "notes.py" / "w", lambda: (tmp / "notes.py").is_file()
    workdir = tmp / "w"
    shutil.copytree(base_run, workdir)
    damage = kind.partition("+")[2]
    if damage == "flipped_bit":
        flip_one_bit(str(workdir / "checkpoints" / "20"))
    elif damage == "torn_config":
        text = (workdir / "config.json").read_text()
        (workdir / "config.json").write_text(text[:len(text) // 2])
    before = snapshot(workdir)
    return workdir, lambda: snapshot(workdir) == before


@pytest.mark.parametrize("case,args,kind,expected", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_without_traceback_and_the_workdir_is_untouched(
        forked, base_run, tmp_path, case, args, kind, expected):
    workdir, untouched = make_workdir(kind, tmp_path, base_run)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args] + [f"--workdir={workdir}"]
    proc = forked(argv, str(tmp_path))
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), proc.stderr
    for part in expected:
        assert part in err[0], (part, err[0])
    assert "Traceback" not in proc.stdout + proc.stderr
    assert untouched(), f"{case}: the workdir changed"
    assert "training " not in proc.stdout  # the loop never started


@pytest.mark.parametrize("case", ["batch_larger_than_dataset"])
def test_forked_launcher_answers_as_a_fresh_interpreter_does(forked, base_run, tmp_path, case):
    """The battery's shortcut is faithful: same status, same stderr as `python launch.py`."""
    args = next(m[1] for m in MISTAKES if m[0] == case) + [f"--workdir={tmp_path / 'w'}"]
    fresh, shared = launch(*args), forked(args, str(tmp_path))
    assert (fresh.returncode, fresh.stderr) == (shared.returncode, shared.stderr)
    assert fresh.returncode == 2 and fresh.stderr.startswith("error: ")


def test_the_battery_has_at_least_25_mistakes():
    assert len({m[0] for m in MISTAKES}) == len(MISTAKES) >= 25


# ---------------------------------------------------------------- validation reads no data

def test_every_shipped_config_passes_validation():
    """The checks refuse mistakes, not the project's own experiments."""
    import glob
    import importlib

    checked = 0
    for path in sorted(glob.glob(os.path.join(ROOT, "experiments", "[a-z]*.py"))):
        module = importlib.import_module("experiments." + os.path.basename(path)[:-3])
        args = list(getattr(module, "MODELS", None) or getattr(module, "ARCHS", None) or [None])
        for arg in args:
            config = module.get_config(arg)
            if config.get("dataset") and config.dataset.name == "voc_segmentation":
                continue  # a placeholder the docstring asks to replace (--config.dataset.name=NAME)
            validate.check_config(config)
            checked += 1
    assert checked >= 25


def test_only_tensorstores_late_callbacks_are_dropped_from_unraisable_reports(monkeypatch):
    import asyncio
    import types

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpoint._drop_late_tensorstore_callbacks()
    checkpoint._drop_late_tensorstore_callbacks()  # installed once, not stacked
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        late = e
    other = RuntimeError("Event loop is closed")  # the same words from elsewhere are kept
    from orbax.checkpoint._src.serialization import serialization

    # An Orbax array read closed unfinished (GeneratorExit, wrapped by Orbax) is dropped;
    # another coroutine's, or the same read failing otherwise, is kept.
    read = serialization._read_array_index_and_device_put(None, None, None, global_shape=None, new_shard_shape=None,
                                                          dtype=None, byte_limiter=None, strict=True, dll=None,
                                                          memory_kind=None)
    closed = Exception("Encountered error while reading array index")
    closed.__cause__ = GeneratorExit()

    async def elsewhere():
        pass

    stranger = elsewhere()
    reports = [(late, None), (other, None), (late, "an object"), (ValueError("x"), None), (closed, read),
               (closed, stranger), (ValueError("x"), read)]
    for exc, obj in reports:
        sys.unraisablehook(types.SimpleNamespace(object=obj, exc_value=exc, exc_traceback=exc.__traceback__))
    read.close()
    stranger.close()
    assert [u.object for u in seen] == [None, "an object", None, stranger, read]
    assert seen[0].exc_value is other and seen[1].exc_value is late and isinstance(seen[2].exc_value, ValueError)
