"""What a run leaves for people: progress output, TensorBoard events, pictures, the report.

One short launcher run of the default experiment (MNIST-1D CNN, 40 steps, its data
prepared afresh) is shared by the tests of this file, as a user would see it: through a
pipe, with `CI` unset.
"""
import fcntl
import functools
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
import textwrap

import numpy as np
import pytest
from PIL import Image

from jaxdl import pictures
from jaxdl.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["--config.num_steps=40", "--config.log_every=10", "--config.eval_every=20",
       "--config.checkpoint_every=20"]


def launch(*args, env=None, timeout=300):
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def without_ci(**extra):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    return {**env, **extra}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, completed process) of the default experiment, shortened, its data prepared in this run."""
    base = tmp_path_factory.mktemp("default")
    workdir = base / "w"
    env = without_ci(TFDS_DATA_DIR=str(base / "tfds"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *RUN, f"--workdir={workdir}"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    return workdir, proc


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- progress

def _check_lines(proc, steps):
    assert "\r" not in proc.stdout and "\r" not in proc.stderr  # no bar redraws, TFDS's included
    lines = proc.stdout.splitlines()
    train = [line for line in lines if line.startswith("step ") and "steps/s" in line]
    assert [line.split()[1] for line in train] == [f"{s}/40" for s in steps]
    assert all("loss" in line and "ETA" in line for line in train)


def test_progress_in_a_pipe_is_one_line_per_update(run):
    _, proc = run
    assert "Downloading and preparing dataset" in proc.stdout  # the data was prepared in this run
    _check_lines(proc, (10, 20, 30, 40))


_BAR_SCRIPT = textwrap.dedent("""
    from jaxdl import progress
    bar = progress.Bar(30, print_fn=print)
    for i in range(3):
        bar.update(10)
        bar.postfix({"loss": 1.0 / (i + 1)})
        bar.print(f"step {10 * (i + 1)}/30")
    bar.close()
    print(sum(progress.track(range(5), desc="eval")))
""")


def _in_a_terminal(env) -> str:
    """Output of `_BAR_SCRIPT` with stdout and stderr on a pseudo-terminal."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # rows, columns
    proc = subprocess.Popen([sys.executable, "-c", _BAR_SCRIPT], stdout=follower, stderr=follower,
                            cwd=ROOT, env=env)
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, out
    return out.decode()


def test_a_terminal_gets_a_live_bar_unless_ci_is_set():
    live = _in_a_terminal(without_ci())
    assert "\r" in live.replace("\r\n", "\n") and "30/30" in live and "loss" in live
    quiet = _in_a_terminal(without_ci(CI="1"))
    assert "\r" not in quiet.replace("\r\n", "\n")  # a terminal turns \n into \r\n; nothing else
    assert quiet.replace("\r\n", "\n").splitlines() == ["step 10/30", "step 20/30", "step 30/30", "10"]


# ---------------------------------------------------------------- TensorBoard

def _tensorboard(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(workdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _check_events_match_metrics(workdir):
    acc = _tensorboard(workdir)
    expected = {}
    for r in _records(workdir):
        for k, v in r.items():
            if k != "step" and isinstance(v, float):
                expected.setdefault(k, []).append((r["step"], v))
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        np.testing.assert_allclose([v for _, v in got], [v for _, v in points], rtol=1e-6, err_msg=tag)
    return acc


def test_tensorboard_events_hold_metrics_jsonl_and_the_pictures(run):
    workdir, _ = run
    acc = _check_events_match_metrics(workdir)
    assert {"train_loss", "train_accuracy", "lr", "test_loss", "test_accuracy"} <= set(acc.Tags()["scalars"])
    images = acc.Tags()["images"]
    assert sorted(images) == sorted(f"pictures/{os.path.splitext(f)[0]}" for f in pictures.FILES)
    shot = acc.Images("pictures/confusion_matrix")
    assert [i.step for i in shot] == [40]
    with Image.open(workdir / "pictures" / "confusion_matrix.png") as im:
        assert (shot[0].width, shot[0].height) == im.size


def test_resume_with_ci_set_prints_lines_and_rewrites_the_events_without_duplicate_steps(run, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(run[0], workdir)
    # A run killed after logging step 40 but before its checkpoint: it resumes at 20.
    shutil.rmtree(workdir / "checkpoints" / "40")
    before = _records(workdir)
    proc = launch(*RUN, f"--workdir={workdir}", env={"CI": "true"})
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout and "at step 20" in proc.stdout
    _check_lines(proc, (30, 40))
    assert [r["step"] for r in _records(workdir)] == [r["step"] for r in before]
    _check_events_match_metrics(workdir)
    assert len([f for f in os.listdir(workdir) if ".tfevents." in f]) == 1


# ---------------------------------------------------------------- pictures

def _check_png(path, size=None):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        if size is not None:
            assert im.size == size, path
        assert im.size[0] >= 200 and im.size[1] >= 200
        pixels = np.asarray(im.convert("RGB"), np.float32)
    assert pixels.var() > 0, f"{path} is blank"


# (width, height) in pixels: the figure sizes of jaxdl.pictures at 100 dpi.
SIZES = {"learning_curves.png": (1260, 340), "padding.png": (900, 660), "pooling.png": (1000, 740),
         "edges.png": (1280, 680), "confusion_matrix.png": (800, 700), "feature_maps.png": (700, 500)}


def test_the_default_run_draws_every_picture(run):
    workdir, _ = run
    assert sorted(os.listdir(workdir / "pictures")) == sorted(pictures.FILES)
    assert "](pictures/edges.png)" in (workdir / "report.md").read_text()  # the launcher's report
    for name in pictures.FILES:
        _check_png(workdir / "pictures" / name, SIZES.get(name))


def test_image_models_draw_their_kernels_on_the_photograph(tmp_path, key):
    import jax

    from jaxdl import models

    x = jax.random.uniform(key, (1, 32, 32, 1))
    lenet = models.LeNet5(num_classes=10)
    variables = jax.jit(functools.partial(lenet.init, train=False))(key, x)
    paths = pictures.model_pictures(str(tmp_path / "lenet"), lenet.apply, variables, np.asarray(x), layer="C3")
    assert [os.path.basename(p) for p in paths] == ["filters.png", "feature_maps.png", "edges.png",
                                                    "padding.png", "pooling.png"]
    for p in paths:
        _check_png(p)
    rows = pictures.capture(lenet.apply, variables, x)
    assert pictures.first_layer(rows)["kernel"].shape == (5, 5, 1, 6)
    taught = pictures.learned_on_photo(pictures.first_layer(rows)["kernel"], pictures.photograph(4))
    assert len(taught) == 3 and taught[0][2].shape == pictures.photograph(4).shape[:2]
    # A dense first layer is drawn in the input's shape, one tile per unit.
    mlp = models.MLP(num_classes=10, features=(12,))
    mlp_vars = jax.jit(functools.partial(mlp.init, train=False))(key, x[:, :8, :8])
    _check_png(pictures.filters(mlp_vars["params"]["hidden1"]["kernel"], str(tmp_path / "mlp.png"), (8, 8, 1)))
    with pytest.raises(UserError, match="layers: C1, "):
        pictures.model_pictures(str(tmp_path), lenet.apply, variables, np.asarray(x), layer="C9")


# ---------------------------------------------------------------- report

def test_report_mode_reads_the_run_from_its_workdir(run, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(run[0], workdir)
    shutil.rmtree(workdir / "pictures")
    proc = launch(f"--workdir={workdir}", "--mode=report", env=without_ci())  # no --config
    assert proc.returncode == 0, proc.stderr
    assert f"config {workdir / 'config.json'}" in proc.stdout
    md = (workdir / "report.md").read_text()
    page = (workdir / "report.html").read_text()
    results = json.loads((workdir / "results.json").read_text())
    assert f"| test_accuracy | {results['test_accuracy']:.4g} |" in md
    assert "total parameters" in md and '"name": "CNN1D"' in md
    for name in pictures.FILES:
        assert f"](pictures/{name})" in md and f'src="pictures/{name}"' in page
        _check_png(workdir / "pictures" / name, SIZES.get(name))
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "http" not in page


def test_a_report_without_a_checkpoint_says_why_its_model_pictures_are_missing(run, tmp_path):
    from jaxdl import report

    workdir = tmp_path / "w"
    shutil.copytree(run[0], workdir)
    shutil.rmtree(workdir / "checkpoints")
    shutil.rmtree(workdir / "pictures")
    lines = []
    report.write_report(report.workdir_config(str(workdir)), str(workdir), print_fn=lines.append)
    assert any(line.startswith("no pictures of the model: no checkpoint in") for line in lines), lines
    assert sorted(os.listdir(workdir / "pictures")) == ["edges.png", "learning_curves.png", "padding.png",
                                                        "pooling.png"]
    assert "](pictures/learning_curves.png)" in (workdir / "report.md").read_text()
    with pytest.raises(UserError, match="no checkpoint"):
        report.make_pictures(report.workdir_config(str(workdir)), str(workdir), print_fn=lines.append)


@pytest.mark.parametrize("mode", ["report", "pictures"])
def test_report_on_a_workdir_without_a_run_is_one_line(tmp_path, mode):
    proc = launch(f"--workdir={tmp_path}", f"--mode={mode}", timeout=60)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "holds no run" in err[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and os.listdir(tmp_path) == []
