"""Runs of `tests/test_parallel.py` that need their own process: several devices, or several processes.

`python tests/parallel_worker.py mesh OUT.json` (with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`): trains the MNIST-1D CNN and a
ResNet-18 with batch norm on 1 device, on 8 (`data` axis) and on a 4 × 2 mesh with the
state sharded (`fsdp`), 20 steps each, and resumes a mesh run from a checkpoint; writes
the per-step losses, the final parameters' and statistics' differences and the
shardings it saw.

`python tests/parallel_worker.py process ADDRESS N I WORKDIR STEPS OUT.npz`: process I
of N joined by `jax.distributed` at ADDRESS trains the MNIST-1D CNN for STEPS steps in
WORKDIR (resuming from its checkpoints), then writes the final state this process holds.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from experiments import cifar10, mnist1d  # noqa: E402
from jaxdl import loop, parallel, train  # noqa: E402
from jaxdl.checkpoint import Checkpoints  # noqa: E402
from jaxdl.errors import UserError  # noqa: E402

STEPS = 20


def cnn_config(steps: int = STEPS) -> ml_collections.ConfigDict:
    config = mnist1d.get_config("cnn")
    config.num_steps = steps
    config.batch_size = 96  # 12 per device on 8 devices
    config.log_every = 1
    config.eval_every = config.checkpoint_every = 10
    config.steps_per_call = 1
    return config


def resnet_config() -> ml_collections.ConfigDict:
    """ResNet-18 (small-input stem, batch norm, width 1/8) on mocked CIFAR-10 with its augmentation.

    The learning rate is small on purpose: at the recipe's 0.1, rounding differences of
    1e-7 (the order of reductions differs between 1 and 8 devices) grow to 1e-2 within
    20 steps, as they do on one device when the initial parameters are perturbed by 1e-7.
    """
    config = cifar10.get_config("resnet18")
    config.model.width = 0.125
    config.num_epochs = None
    config.num_steps = STEPS
    config.batch_size = 32
    config.optim.lr = 1e-4
    config.log_every = 1
    config.eval_every = config.checkpoint_every = STEPS
    config.steps_per_call = 1
    return config


def losses(workdir: str) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["train_loss"] for line in f]


def final_state(workdir: str, parts: tuple[str, ...] | None = None) -> list[np.ndarray]:
    """The leaves of the latest checkpoint's state (of its `parts`, e.g. params, batch_stats)."""
    ckpts = Checkpoints(workdir)
    state = ckpts.read(ckpts.latest_step())
    ckpts.close()
    if parts is not None:
        state = [state[p] for p in parts if p in state]
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


def state_arrays(state) -> dict[str, np.ndarray]:
    """A train state's leaves by path (e.g. `.params['out']['kernel']`), as NumPy arrays."""
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def state_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """The largest difference of two lists of arrays, relative to the largest value of any of them."""
    scale = max(float(np.max(np.abs(x))) for x in a)
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b)) / scale


def mesh(out: str) -> None:
    import tensorflow_datasets as tfds

    tmp = os.path.dirname(os.path.abspath(out))
    result = {"devices": jax.device_count()}
    quiet = lambda s: None
    for name, make in (("cnn", cnn_config), ("resnet", resnet_config)):
        runs = {}
        for devices, fsdp in ((1, 1), (8, 1), (8, 2)):
            config = make()
            config.parallel = ml_collections.ConfigDict({"devices": devices, "fsdp": fsdp})
            workdir = os.path.join(tmp, f"{name}_{devices}_{fsdp}")
            if name == "resnet":  # CIFAR-10 from the catalogue, mocked
                with tfds.testing.mock_data(num_examples=256, policy=tfds.testing.MockPolicy.USE_CODE):
                    train.train_and_evaluate(config, workdir, print_fn=quiet)
            else:
                train.train_and_evaluate(config, workdir, print_fn=quiet)
            runs[devices, fsdp] = workdir
        base = runs[1, 1]
        for key in ((8, 1), (8, 2)):
            tag = f"{name}_{key[0]}x{key[1]}"
            result[f"{tag}_losses"] = losses(runs[key])
            parts = ("params", "batch_stats")
            result[f"{tag}_state_diff"] = state_diff(final_state(base, parts), final_state(runs[key], parts))
        result[f"{name}_1_losses"] = losses(base)

    # The fsdp layout shards the state; the ResNet's batch-norm statistics are in it.
    config = cnn_config()
    config.parallel = ml_collections.ConfigDict({"devices": 8, "fsdp": 2})
    _, _, _, init = train._setup(config)
    shardings = train.state_shardings(config, init)
    specs = {jax.tree_util.keystr(p): str(s.spec) for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
    result["fsdp_specs"] = specs
    for field, value, error in (("batch_size", 100, "batch_error"), ("fsdp", 3, "fsdp_error")):
        bad = cnn_config()
        if field == "fsdp":
            bad.parallel = ml_collections.ConfigDict({"devices": 0, "fsdp": value})
        else:
            bad.batch_size = value
        try:
            train.train_and_evaluate(bad, os.path.join(tmp, error), print_fn=quiet)
            result[error] = None
        except UserError as e:
            result[error] = str(e)
        result[error + "_workdir_left"] = os.path.exists(os.path.join(tmp, error))

    # Resume on the mesh: 10 steps, then the same command to 20, equals 20 straight.
    whole, cut = os.path.join(tmp, "cnn_8_2"), os.path.join(tmp, "cnn_cut")
    first = cnn_config(10)
    first.parallel = config.parallel
    train.train_and_evaluate(first, cut, print_fn=quiet)
    lines = []
    second = cnn_config()
    second.parallel = config.parallel
    train.train_and_evaluate(second, cut, print_fn=lines.append)
    result["resumed_line"] = next((line for line in lines if line.startswith("resumed")), "")
    result["resume_state_equal"] = all(np.array_equal(a, b) for a, b in zip(final_state(whole), final_state(cut)))
    result["resume_losses_equal"] = losses(whole) == losses(cut)
    with open(out, "w") as f:
        json.dump(result, f)


def process(address: str, count: int, index: int, workdir: str, steps: int, out: str) -> None:
    parallel.initialize(address, count, index, timeout_s=120)
    config = cnn_config(steps)
    train.train_and_evaluate(config, workdir, print_fn=lambda s: None)
    _, _, _, init = train._setup(config)
    state = loop.restore_latest(workdir, init, train.state_shardings(config, init))
    np.savez(out, **state_arrays(parallel.to_host(state)), process_count=jax.process_count(),
             devices=jax.device_count())
    jax.distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "mesh":
        mesh(sys.argv[2])
    else:
        address, count, index, workdir, steps, out = sys.argv[2:]
        process(address, int(count), int(index), workdir, int(steps), out)
