"""The foundation end to end: data pipeline, train loop, seeds axis, resume, launcher errors."""
import json
import os
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import mnist1d, mnist1d_table
from jaxdl import data, loop, train
from jaxdl.errors import UserError
from jaxdl.nn import conv as conv_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(model="mlp", steps=30, dataset="digits"):
    """A config of the standard shape, small enough for a test."""
    config = mnist1d.get_config(model)
    config.dataset.name = dataset
    config.num_steps = steps
    config.batch_size = 32
    config.log_every = 10
    config.eval_every = 15
    config.checkpoint_every = 15
    config.steps_per_call = 5
    return config


# ---------------------------------------------------------------- data

def test_offline_datasets_have_documented_sizes():
    digits_train, digits_test = data.load("digits", "train"), data.load("digits", "test")
    assert (len(digits_train), len(digits_test)) == (1437, 360)
    assert digits_train.x.shape[1:] == (8, 8, 1) and 0 <= digits_train.x.min() < digits_train.x.max() <= 1
    # Stratified: every class keeps its share of the 1,797 digits in the test split.
    counts = np.bincount(digits_test.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    m_train, m_test = data.load("mnist1d", "train"), data.load("mnist1d", "test")
    assert (len(m_train), len(m_test)) == (4000, 1000)
    assert m_train.x.shape[1:] == (40, 1) and m_train.num_classes == 10


def test_mnist1d_matches_its_generator_and_shuffle_is_one_fixed_permutation():
    from mnist1d.data import get_dataset_args, make_dataset

    ref = make_dataset(get_dataset_args())
    ours = data.load("mnist1d", "train")
    # TFDS stores examples in its own order; compare as sets of (signal, label) rows.
    order = lambda x: np.lexsort(np.round(x, 4).T[::-1])  # noqa: E731
    np.testing.assert_allclose(ours.x[order(ours.x[:, :, 0]), :, 0], ref["x"][order(ref["x"])], rtol=1e-6)
    shuffled = data.load("mnist1d/shuffled", "train")
    # Same labels per example; the positions of every signal are permuted the same way.
    assert sorted(shuffled.y.tolist()) == sorted(ours.y.tolist())
    assert not np.allclose(np.sort(ours.x[:, :, 0], 0), np.sort(shuffled.x[:, :, 0], 0))
    # Matching per-position value distributions reveal one common permutation.
    stats = lambda x: np.round(np.sort(x[:, :, 0], axis=0)[::97], 4)  # noqa: E731
    a, b = stats(ours.x), stats(shuffled.x)
    perm = [next(j for j in range(40) if np.allclose(a[:, i], b[:, j])) for i in range(40)]
    assert sorted(perm) == list(range(40)) and perm != list(range(40))


def test_batches_are_deterministic_and_cover_each_epoch_once():
    key = jax.random.PRNGKey(3)
    n, b = 103, 10
    epoch0 = np.concatenate([np.asarray(data.batch_indices(key, jnp.int32(s), n, b)) for s in range(10)])
    assert len(set(epoch0.tolist())) == 100  # without replacement; the ragged rest is dropped
    again = np.asarray(data.batch_indices(key, jnp.int32(4), n, b))
    np.testing.assert_array_equal(again, epoch0[40:50])
    epoch1 = np.asarray(data.batch_indices(key, jnp.int32(10), n, b))
    assert not np.array_equal(epoch1, epoch0[:10])  # a new permutation each epoch
    other_seed = np.asarray(data.batch_indices(jax.random.PRNGKey(4), jnp.int32(0), n, b))
    assert not np.array_equal(other_seed, epoch0[:10])


@pytest.mark.parametrize("n", [1, 7, 1000, 1626, 4000, 70000])  # one, two and three sorts
def test_epoch_permutations_are_jax_random_permutation(n):
    key = jax.random.PRNGKey(n)
    epochs = jnp.arange(3) + 5
    want = np.stack([np.asarray(jax.random.permutation(jax.random.fold_in(key, e), n)) for e in range(5, 8)])
    np.testing.assert_array_equal(np.asarray(jax.jit(data.epoch_permutations, static_argnums=2)(key, epochs, n)), want)
    # vmapped over replicas' keys (K seeds), as inside the K-seed train step
    keys = jax.random.split(key, 2)
    got = jax.jit(jax.vmap(data.epoch_permutations, in_axes=(0, None, None)), static_argnums=2)(keys, epochs, n)
    for k in range(2):
        want = np.stack([np.asarray(jax.random.permutation(jax.random.fold_in(keys[k], e), n)) for e in range(5, 8)])
        np.testing.assert_array_equal(np.asarray(got[k]), want)


def test_epoch_permutations_sort_on_the_device_off_the_cpu():
    def perms(key):
        return data.epoch_permutations(key, jnp.arange(2), 4000)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    gpu = jax.export.export(jax.jit(perms), platforms=["cuda"])(key).mlir_module()
    assert "stablehlo.sort" in gpu and "callback" not in gpu
    cpu = jax.jit(perms).lower(key).as_text()
    assert "callback" in cpu and "stablehlo.sort" not in cpu


def test_epoch_permutations_keep_permutations_dtype_with_x64():
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(0)
        got = jax.jit(data.epoch_permutations, static_argnums=2)(key, jnp.arange(2), 50)
        want = np.stack([np.asarray(jax.random.permutation(jax.random.fold_in(key, e), 50)) for e in range(2)])
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), want)


def test_catalogue_dataset_offline_fails_fast_with_a_clear_message(tmp_path):
    start = time.time()
    with pytest.raises(UserError, match="cifar10.*not prepared.*download=True"):
        data.load("cifar10", "train", directory=str(tmp_path))
    assert time.time() - start < 10
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- train loop

def _digits_state(config, seed=0):
    ds = data.load("digits", "train")
    model = train.make_model(config.model, 10)
    tx = train.optim_lib.make_optimizer(config.optim, 100)
    state = train.create_state(jax.random.PRNGKey(seed), model, tx, jnp.asarray(ds.x[:1]))
    return state, jnp.asarray(ds.x), jnp.asarray(ds.y)


def test_train_step_compiles_once():
    state, x, y = _digits_state(tiny_config())
    step = jax.jit(chex.assert_max_traces(train.train_step, n=1), donate_argnums=0)
    losses = []
    for s in range(5):
        state, metrics = step(state, {"x": x[32 * s:32 * (s + 1)], "y": y[32 * s:32 * (s + 1)]})
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 5 and np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("unroll", [True, False])
def test_chunked_steps_draw_the_batches_of_batch_indices(unroll, prefetch, monkeypatch):
    """Calls of several steps (crossing epoch boundaries, the second starting mid-epoch)
    equal one step per batch_indices batch, with the call's batches gathered up front or per step."""
    monkeypatch.setattr(loop, "PREFETCH_BYTES", 1 << 30 if prefetch else 0)
    config = tiny_config()
    config.batch_size = 400  # 3 steps per epoch: 7 steps span 3 epochs, the next 4 start at step 7
    state, x, y = _digits_state(config)
    chunked, losses = state, []
    for num in (7, 4):
        chunked, metrics = jax.jit(lambda s, num=num: train.train_steps(
            s, x, y, batch_size=400, num=num, unroll=unroll))(chunked)
        losses.extend(np.asarray(metrics["loss"]))
    ref = state
    data_key = jax.random.fold_in(state.key, train._DATA)
    for s in range(11):
        idx = data.batch_indices(data_key, jnp.int32(s), x.shape[0], 400)
        ref, m = jax.jit(train.train_step)(ref, {"x": x[idx], "y": y[idx]})
        np.testing.assert_allclose(losses[s], m["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(chunked.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_one_train_step_on_mock_mnist(tmp_path):
    config = tiny_config(steps=2, dataset="mnist")
    config.batch_size = 4
    config.log_every = config.eval_every = config.checkpoint_every = 1
    config.steps_per_call = 1
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        result = train.train_and_evaluate(config, str(tmp_path), print_fn=lambda s: None)
    assert result["step"] == 2 and 0.0 <= result["test_accuracy"] <= 1.0
    assert np.isfinite(result["test_loss"])
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]


@pytest.mark.parametrize("model, dataset", [("mlp", "digits"), ("cnn", "mnist1d")])
def test_k_seed_vmapped_run_equals_k_separate_runs(tmp_path, model, dataset):
    # The CNN's convolutions are matrix products over seeds (`jaxdl.nn.conv.replicas`)
    # and the CPU's per-layer plan alone: the same numbers either way.
    config = tiny_config(model, steps=20, dataset=dataset)
    config.num_seeds = 3
    together = train.train_and_evaluate(config, str(tmp_path / "k3"), print_fn=lambda s: None)
    for k in range(3):
        single = tiny_config(model, steps=20, dataset=dataset)
        single.seed = k
        alone = train.train_and_evaluate(single, str(tmp_path / f"s{k}"), print_fn=lambda s: None)
        np.testing.assert_allclose(together["test_accuracy_per_seed"][k], alone["test_accuracy"], atol=1e-5)
        np.testing.assert_allclose(together["test_loss_per_seed"][k], alone["test_loss"], rtol=1e-5)
    assert together["test_accuracy_std"] >= 0 and "test_accuracy" in together


def test_only_several_seeds_trace_convolutions_as_replicas():
    seen = []

    def fn(x):
        seen.append(conv_lib._REPLICAS.get())
        return x
    train.over_seeds(fn, 1)(jnp.zeros((1, 2)))
    train.over_seeds(fn, 3)(jnp.zeros((3, 2)))
    assert seen == [False, True] and not conv_lib._REPLICAS.get()


def test_training_learns_digits_and_writes_its_workdir(tmp_path):
    config = tiny_config(steps=300)
    config.log_every, config.eval_every, config.checkpoint_every = 100, 150, 150
    result = train.train_and_evaluate(config, str(tmp_path), print_fn=lambda s: None)
    assert result["test_accuracy"] > 0.9
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [100, 150, 200, 300]
    assert {"train_loss", "train_accuracy", "lr"} <= set(log[0]) and "test_accuracy" in log[1]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["150", "300"]
    assert json.loads((tmp_path / "results.json").read_text())["test_accuracy"] == result["test_accuracy"]
    evaluated = train.evaluate_workdir(config, str(tmp_path), print_fn=lambda s: None)
    assert evaluated["step"] == 300 and evaluated["test_accuracy"] == result["test_accuracy"]
    # Rerunning a finished run resumes at its end and changes nothing.
    again = train.train_and_evaluate(config, str(tmp_path), print_fn=lambda s: None)
    assert again["test_accuracy"] == result["test_accuracy"]
    # A different model in the same workdir is refused, naming what differs.
    other = tiny_config(model="logreg", steps=300)
    with pytest.raises(UserError, match="model"):
        train.train_and_evaluate(other, str(tmp_path), print_fn=lambda s: None)


@pytest.mark.parametrize("field,value,match", [
    ("batch_size", 0, "batch_size"),
    ("num_seeds", 0, "num_seeds"),
    ("optim.lr", 0.0, "optim.lr"),
    ("optim.name", "adm", "did you mean 'adam'"),
    ("optim.schedule", "cosin", "did you mean 'cosine'"),
    ("model.name", "MPL", "did you mean 'MLP'"),
    ("batch_size", 5000, "larger than"),
])
def test_bad_config_is_refused_before_any_work(tmp_path, field, value, match):
    config = tiny_config()
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(UserError, match=match):
        train.train_and_evaluate(config, str(tmp_path / "w"), print_fn=lambda s: None)
    assert not (tmp_path / "w").exists()


def test_table_task_writes_rows(tmp_path):
    config = mnist1d_table.get_config()
    assert list(config.rows) and len(config.rows) == 6
    config.num_steps = 10
    config.num_seeds = 2
    config.rows = {k: config.rows[k] for k in ("cnn_shuffled", "logreg")}  # two rows suffice
    for row in config.rows.values():
        row.config.steps_per_call = 5
    from jaxdl.tasks import table

    out = table.train_and_evaluate(config, str(tmp_path), print_fn=lambda s: None)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rows == out["rows"]
    assert [(r["model"], r["shuffled"]) for r in rows] == [("logreg", False), ("cnn", True)]
    for r in rows:
        assert r["seeds"] == 2 and 0 <= r["test_accuracy_mean"] <= 1 and r["test_accuracy_std"] >= 0
    assert (tmp_path / "results.md").read_text().count("\n|") == 4


# ---------------------------------------------------------------- launcher

def launch(*args, workdir=None, timeout=120):
    cmd = [sys.executable, os.path.join(ROOT, "launch.py"), *args]
    if workdir is not None:
        cmd.append(f"--workdir={workdir}")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("args,match", [
    (["--config=experiments/no_such_file.py"], "no_such_file.py"),
    (["--config.model.name=ResNet999"], "unknown model 'ResNet999'"),
    (["--config.optim.lr=abc"], "optim.lr"),
    (["--config.dataset.name=cifar10"], "'cifar10' is not prepared"),
    (["--config.no_such_field=1"], "no_such_field"),
    (["--config=experiments/mnist1d.py:mlp", "--config.model.no_such_field=1"], "no_such_field"),
])
def test_launcher_bad_input_is_one_line_and_leaves_workdir_alone(tmp_path, args, match):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("x")
    start = time.time()
    proc = launch(*args, workdir=workdir)
    assert time.time() - start < 10 * (3 if os.environ.get("CI") else 1)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert os.listdir(workdir) == ["keep.txt"]


def _params(workdir, step):
    from jaxdl.checkpoint import Checkpoints

    ckpt = Checkpoints(str(workdir))
    raw = ckpt.read(step)
    ckpt.close()
    return jax.tree.leaves(raw["params"])


def test_divergence_stops_the_run_naming_the_step_and_keeping_the_checkpoint(tmp_path):
    config = tiny_config(steps=60)
    config.log_every = config.checkpoint_every = 20
    config.optim.name = "sgd"
    config.optim.lr = 1e-3
    config.optim.schedule = "step"  # the learning rate jumps to 1e32 at step 30
    config.optim.step_boundaries = (0.5,)
    config.optim.step_factor = 1e35
    with pytest.raises(train.TrainingDiverged, match=r"non-finite .* step 3\d; the last good checkpoint is .*/20"):
        train.train_and_evaluate(config, str(tmp_path), print_fn=lambda s: None)
    assert sorted(d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == ["20"]
    assert all(np.all(np.isfinite(p)) for p in _params(tmp_path, 20))
