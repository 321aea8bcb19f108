"""Train-step speed of jaxdl against PyTorch (eager and `torch.compile`) and plain Flax.

  python -m benchmarks.run                      # every model (about 15 minutes on 2 cores)
  python -m benchmarks.run --time_to_accuracy   # also the MNIST-1D table and LeNet-5 on digits

Writes `benchmarks/RESULTS.md` and `benchmarks/results.json` (`--out_dir`). For each
model the contenders run in turns, A B C A B C …, `--rounds` times, so a load change
on a shared machine hits all of them alike; the tables give medians over the rounds
and the median of the per-round ratios. Every contender takes the same batch from
memory each step: forward, cross-entropy, backward, SGD with momentum 0.9.

Contenders:
  jaxdl            `jaxdl.train.compile_steps(jaxdl.train.train_step, ...)` (`jax.jit`
                   with jaxdl's compiler options) on a `jaxdl.models` model, as the
                   launcher builds it; one step per call
  jaxdl, launcher  `jaxdl.train.train_steps` with the launcher config's
                   `steps_per_call`/`unroll` (MLP and 1D CNN): several steps per call,
                   their batches gathered from the device-resident train set
  plain Flax       the same model in `flax.linen` layers, a hand-written Optax step
  PyTorch          the same model in `torch.nn`, eager; and under `torch.compile`

Both frameworks use 2 threads (`torch.set_num_threads`, XLA's
`intra_op_parallelism_threads`). The share of the machine's peak divides the model's
FLOPs per step (XLA's cost analysis of the plain-Flax step) by the step time and by
the better of a 2048² f32 matrix product in JAX and in PyTorch, timed in the same rounds.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

THREADS = 2
# XLA reads its flags when the backend starts: before jax is imported.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}")

# torch.compile keeps compiled kernels on disk; a fresh directory per run makes its
# compilation time a cold one, as JAX's (no persistent cache is configured).
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # set by the parent in the memory probes
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxdl-bench-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

try:
    import torch
except ImportError:
    sys.exit("the benchmarks need PyTorch: pip install -e '.[bench]'")

import datetime  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import flax_plain, torch_models  # noqa: E402
from experiments import mnist1d  # noqa: E402
from jaxdl import train  # noqa: E402
from jaxdl.models import count_params  # noqa: E402

torch.set_num_threads(THREADS)

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["mlp", "cnn1d", "lenet5", "resnet18", "vgg11"], "models to time")
flags.DEFINE_integer("rounds", 7, "turns per contender (ResNet-18, VGG-11)")
flags.DEFINE_integer("small_rounds", 31, "turns per contender for the MLP, 1D CNN and LeNet-5, a third as long")
flags.DEFINE_float("min_chunk_s", 0.3, "each timed turn runs whole steps for at least this long")
flags.DEFINE_bool("torch_compile", True, "include torch.compile (its compilation takes minutes)")
flags.DEFINE_bool("memory", True, "measure each contender's peak memory in a process of its own")
flags.DEFINE_bool("time_to_accuracy", False, "also time the MNIST-1D table and LeNet-5 on digits")
flags.DEFINE_string("out_dir", os.path.dirname(os.path.abspath(__file__)), "where the results go")
flags.DEFINE_string("probe", None, "internal: MODEL:CONTENDER, print its peak memory and exit")
flags.DEFINE_float("quiet_load", 0.0, "before timing each model, wait until the 1-minute load average "
                   "is at most this (0: do not wait); at most --max_wait_s")
flags.DEFINE_integer("max_wait_s", 900, "longest wait for --quiet_load, per model")
flags.DEFINE_bool("render_only", False, "rewrite RESULTS.md from results.json (and notes.md), timing nothing")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = "python -m benchmarks.run --time_to_accuracy"
LR = 0.01

def _launcher(model: str) -> tuple[int, bool]:
    config = mnist1d.get_config(model)
    return config.steps_per_call, config.unroll


# name: (batch, input shape, jaxdl model config, steps per call and unroll of the launcher)
SPECS = {
    "mlp": (100, (40,), mnist1d.MODELS["mlp"], _launcher("mlp")),
    "cnn1d": (100, (40,), mnist1d.MODELS["cnn"], _launcher("cnn")),
    "lenet5": (128, (32, 32, 1), {"name": "LeNet5"}, None),
    "resnet18": (64, (32, 32, 3), {"name": "ResNet18", "small_input": True}, None),
    "vgg11": (64, (32, 32, 3), {"name": "VGG11", "small_input": True}, None),
}
TITLES = {"mlp": "MLP 40-100-100-10", "cnn1d": "1D CNN (MNIST-1D)", "lenet5": "LeNet-5",
          "resnet18": "ResNet-18 (32×32)", "vgg11": "VGG-11 (32×32)"}
# jaxdl against each peer: at least this many times its samples/s.
TARGETS = {"mlp": 3.0, "cnn1d": 2.0, "lenet5": 1.0, "resnet18": 1.0, "vgg11": 1.0}
PEAK_TARGET = {"resnet18": 0.5, "vgg11": 0.5}
MLP_TARGET = 500_000
# Steps of milliseconds: timed in more, shorter turns, and with PyTorch on one thread
# as a reference (its second thread costs these more than it brings on a loaded machine).
SMALL_MODELS = ("mlp", "cnn1d", "lenet5")
N_TRAIN = 4000  # MNIST-1D's train split, for the launcher's device-resident steps
# Other steps per call (and unroll) timed for the tiny models, beside the launcher's.
CHUNKS = ((10, True), (50, False))


# ---------------------------------------------------------------------------- contenders

class Contender:
    """Something that runs `unit` training samples per call of `run()` and blocks."""

    def __init__(self, name, run, unit, compile_s, params=None, flops=None, memory=None):
        self.name, self.run, self.unit, self.compile_s = name, run, unit, compile_s
        self.params, self.flops, self.memory = params, flops, memory
        self.hlo = None  # the compiled program's HLO text, for `op_profile`


def _data(name, seed=0):
    batch, shape, _, _ = SPECS[name]
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, *shape)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int32)


def _cost(compiled) -> tuple[float | None, dict]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()
    memory = {"temp_mb": mem.temp_size_in_bytes / 2**20,
              "argument_mb": mem.argument_size_in_bytes / 2**20} if mem is not None else {}
    return (float(cost["flops"]) if cost and "flops" in cost else None), memory


def _jaxdl_model(name):
    return train.make_model(ml_collections.ConfigDict(SPECS[name][2]), num_classes=10)


def jaxdl_step(name):
    x, y = (jnp.asarray(a) for a in _data(name))
    model = _jaxdl_model(name)
    state = train.create_state(jax.random.PRNGKey(0), model, optax.sgd(LR, momentum=0.9), x[:1])
    batch = {"x": x, "y": y}
    t = time.perf_counter()
    jitted = train.compile_steps(train.train_step, None, None, ())
    compiled = jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    flops, memory = _cost(compiled)
    box = [state]

    def run():  # the jitted function, not `compiled`: its C++ dispatch path is what users get
        box[0], metrics = jitted(box[0], batch)
        jax.block_until_ready(metrics["loss"])
    c = Contender("jaxdl", run, x.shape[0], compile_s, count_params(state.params), flops, memory)
    c.hlo = compiled.as_text()
    return c


def jaxdl_steps(name, num, unroll, label):
    batch, shape, _, _ = SPECS[name]
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.normal(size=(N_TRAIN, *shape)).astype(np.float32))
    ys = jnp.asarray(rng.integers(0, 10, N_TRAIN).astype(np.int32))
    model = _jaxdl_model(name)
    state = train.create_state(jax.random.PRNGKey(0), model, optax.sgd(LR, momentum=0.9), xs[:1])
    fn = functools.partial(train.train_steps, batch_size=batch, num=num, unroll=unroll)
    t = time.perf_counter()
    jitted = train.compile_steps(fn, None, None, ())
    jitted.lower(state, xs, ys).compile()
    compile_s = time.perf_counter() - t
    box = [state]

    def run():
        box[0], metrics = jitted(box[0], xs, ys)
        jax.block_until_ready(metrics["loss"])
    return Contender(label, run, num * batch, compile_s, count_params(state.params))


def flax_step(name):
    x, y = (jnp.asarray(a) for a in _data(name))
    model = flax_plain.MODELS[name]()
    tx = optax.sgd(LR, momentum=0.9)
    key = jax.random.PRNGKey(0)
    params, stats, opt = flax_plain.init(model, tx, x[:1], key)
    t = time.perf_counter()
    step = jnp.zeros((), jnp.int32)
    jitted = flax_plain.make_step(model, tx)
    compiled = jitted.lower(params, stats, opt, step, x, y, key).compile()
    compile_s = time.perf_counter() - t
    flops, memory = _cost(compiled)
    box = [params, stats, opt, step]

    def run():
        *box[:], loss = jitted(*box, x, y, key)  # new params, batch_stats, opt_state, step
        jax.block_until_ready(loss)
    c = Contender("plain Flax", run, x.shape[0], compile_s, count_params(params), flops, memory)
    c.hlo = compiled.as_text()
    return c


def _torch_input(name, x):
    x = torch.from_numpy(x)
    return x.permute(0, 3, 1, 2).contiguous() if x.ndim == 4 else x  # NCHW, PyTorch's layout


def torch_step(name, compiled=False, threads=THREADS):
    x, y = _data(name)
    x, y = _torch_input(name, x), torch.from_numpy(y).long()
    torch.manual_seed(0)
    model = torch_models.MODELS[name]()
    params = torch_models.count_params(model)
    model.train()
    net = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    def run():
        torch.set_num_threads(threads)
        try:
            step()
        finally:
            torch.set_num_threads(THREADS)
    t = time.perf_counter()
    run()  # eager: allocates; compiled: traces and compiles forward and backward
    compile_s = time.perf_counter() - t
    label = "torch.compile" if compiled else "PyTorch" if threads == THREADS else f"PyTorch, {threads} thread"
    return Contender(label, run if threads != THREADS else step, x.shape[0], compile_s, params)


def matmul_peaks(n=2048):
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)).astype(np.float32))
    mm = jax.jit(lambda a, b: a @ b)
    ta = torch.from_numpy(np.asarray(a))
    flops = 2.0 * n ** 3

    def jax_run():
        mm(a, a).block_until_ready()
    return ([Contender("matmul, JAX", jax_run, 1, 0.0, flops=flops),
             Contender("matmul, PyTorch", lambda: torch.mm(ta, ta), 1, 0.0, flops=flops)])


def _chunk_label(num: int, unroll: bool) -> str:
    return f"jaxdl, {num} per call, {'unrolled' if unroll else 'rolled'}"


def build(name, with_compile=True):
    """All contenders of one model, in the order they take turns."""
    contenders = [jaxdl_step(name), flax_step(name), torch_step(name)]
    if with_compile:
        try:
            contenders.append(torch_step(name, compiled=True))
        except Exception as e:  # noqa: BLE001 - report any compiler failure and go on
            print(f"  torch.compile failed for {name}: {type(e).__name__}: {str(e)[:200]}")
    if name in SMALL_MODELS:
        contenders.append(torch_step(name, threads=1))
    launcher = SPECS[name][3]
    if launcher:
        num, unroll = launcher
        contenders.append(jaxdl_steps(name, num, unroll, "jaxdl, launcher"))
        contenders.append(jaxdl_steps(name, 1, False, "jaxdl, train_steps ×1"))
        for n, u in CHUNKS:
            contenders.append(jaxdl_steps(name, n, u, _chunk_label(n, u)))
    return contenders


# ---------------------------------------------------------------------------- profile

CATEGORIES = ("convolution, YNNPACK", "convolution, Eigen", "convolution, XLA's own loop", "matrix product",
              "transposes and copies", "pooling windows", "elementwise and reductions")
# The dimension orders of a convolution XLA:CPU can hand to its Eigen convolution.
_CANONICAL = ("b0f_0io->b0f", "b01f_01io->b01f", "b012f_012io->b012f")


def _hlo_roots(hlo: str) -> tuple[dict, dict, set]:
    """(computation → opcode of its ROOT, fusion instruction → the computation it calls,
    the convolution instructions in canonical form with no input dilation)."""
    roots, calls, canonical, current = {}, {}, set(), None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if head:
            current = head.group(1)
            continue
        root = re.search(r"ROOT %[\w.\-]+ = .*?\s([a-z][\w\-]*)\(", line)
        if root and current:
            roots[current] = root.group(1)
        call = re.search(r"%([\w.\-]+) = .* fusion\(.*calls=%([\w.\-]+)", line)
        if call:
            calls[call.group(1)] = call.group(2)
        conv = re.search(r"%([\w.\-]+) = \S+ convolution\(.*dim_labels=(\S+?),", line)
        if conv and conv.group(2) in _CANONICAL and "lhs_dilate" not in line:
            canonical.add(conv.group(1))
    return roots, calls, canonical


def _category(op: str, roots: dict, calls: dict, canonical: set) -> str:
    root = roots.get(calls.get(op, ""), "")
    if op in calls and ("ynn" in op or "xnn" in op):
        return CATEGORIES[0] if root == "convolution" else CATEGORIES[3] if root == "dot" else CATEGORIES[6]
    if op in canonical:
        return CATEGORIES[1]
    if "conv" in op:
        return CATEGORIES[2]
    if "dot" in op or root == "dot":
        return CATEGORIES[3]
    if "transpose" in op or op.startswith("copy"):
        return CATEGORIES[4]
    if "select-and-scatter" in op or "reduce-window" in op:
        return CATEGORIES[5]
    return CATEGORIES[6]


def op_profile(c: Contender, min_s: float = 1.0) -> dict:
    """Milliseconds per step in each kind of XLA operation (summed over threads), from
    jax.profiler, over at least 3 steps and `min_s` seconds of them (one step of a few
    milliseconds descheduled by the shared machine would otherwise set the numbers)."""
    from jax.profiler import ProfileData
    roots, calls, canonical = _hlo_roots(c.hlo)
    steps = max(3, _calibrate(c, min_s))
    with tempfile.TemporaryDirectory(prefix="jaxdl-profile-") as d:
        jax.profiler.start_trace(d)
        t = time.perf_counter()
        for _ in range(steps):
            c.run()
        wall = time.perf_counter() - t
        jax.profiler.stop_trace()
        files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if f.endswith(".xplane.pb")]
        data = ProfileData.from_file(sorted(files)[-1])
    ms = {}  # operation -> milliseconds per step, summed over threads
    starts, ends = {}, []  # an operation's starts; ("end: op" marks, time) of work it left to Eigen's threads
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name and "PjRtCpuClient" not in line.name:
                continue
            for ev in line.events:
                if ev.name.startswith("ThunkExecutor") or "Await" in ev.name:
                    continue
                if ev.name.startswith("end: "):
                    ends.append((ev.name[5:], ev.start_ns + ev.duration_ns))
                    continue
                starts.setdefault(ev.name, []).append(ev.start_ns)
                ms[ev.name] = ms.get(ev.name, 0.0) + ev.duration_ns / 1e6 / steps
    # A convolution or matrix product XLA hands to Eigen's thread pool returns before the
    # work is done, and each thread marks the end of its part; such an operation counts,
    # per thread, from its start to that thread's mark.
    handed = {}
    eigen = (CATEGORIES[1], CATEGORIES[3])
    for name, end in ends:
        before = [t for t in starts.get(name, ()) if t <= end]
        if before and _category(name, roots, calls, canonical) in eigen and name not in calls:
            handed[name] = handed.get(name, 0.0) + (end - max(before)) / 1e6 / steps
    ms.update(handed)
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for name, value in ms.items():
        totals[_category(name, roots, calls, canonical)] += value
    return {"wall_ms_per_step": wall * 1e3 / steps, "ms_per_step": totals, "steps": steps}


TORCH_CATEGORIES = ("convolution", "matrix product", "copies", "pooling",
                    "elementwise, reductions, compiled kernels", "between operations")


def _torch_category(op: str) -> str:
    if "convolution" in op:  # aten::mkldnn_convolution, aten::convolution_backward, ...
        return TORCH_CATEGORIES[0]
    if op in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"):
        return TORCH_CATEGORIES[1]
    if op in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy"):
        return TORCH_CATEGORIES[2]
    if "pool" in op:
        return TORCH_CATEGORIES[3]
    return TORCH_CATEGORIES[4]  # under torch.compile its generated kernels count here


def torch_profile(c: Contender, min_s: float = 1.0) -> dict:
    """Milliseconds per step in each kind of PyTorch operation (their own time, without the
    operations they call), from `torch.profiler` over at least 3 steps and `min_s` seconds of
    them. PyTorch's CPU operations run one after another on the calling thread, each spread
    over the threads inside it, so these are wall times: with the time between operations
    (Python, dispatch, the profiler's own) they add up to the step's."""
    from torch.profiler import ProfilerActivity, profile
    steps = max(3, _calibrate(c, min_s))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            c.run()
        wall = time.perf_counter() - t
    totals = dict.fromkeys(TORCH_CATEGORIES, 0.0)
    for event in prof.key_averages():
        totals[_torch_category(event.key)] += event.self_cpu_time_total / 1e3 / steps
    wall_ms = wall * 1e3 / steps
    totals[TORCH_CATEGORIES[-1]] = max(0.0, wall_ms - sum(totals.values()))
    return {"wall_ms_per_step": wall_ms, "ms_per_step": totals, "steps": steps}


# ---------------------------------------------------------------------------- timing

def _calibrate(c: Contender, min_s: float) -> int:
    c.run()
    t = time.perf_counter()
    c.run()
    return max(1, math.ceil(min_s / max(time.perf_counter() - t, 1e-6)))


# Untimed steps at the start of each turn, for at least this long (and at least one).
# After a turn of PyTorch's, its OpenMP threads spin on both cores for a while: timed in
# 40-call buckets right after one (2026-12-06, 15 turns), jaxdl's MLP step took 385 µs
# in the first bucket (about 15 ms) and 218–244 µs in the nine after it.
WARMUP_S = 0.03


def interleave(contenders, rounds, min_s):
    """Per contender, the samples/s of each round; all take turns in every round.

    Each round takes the contenders in a new random order (seeded), so none always
    follows the same one, and each turn times its steps after `WARMUP_S` of untimed
    ones, so what the previous contender left running is not charged to it.
    """
    order = np.random.default_rng(0)
    reps = [_calibrate(c, min_s) for c in contenders]
    rates = [[] for _ in contenders]
    for _ in range(rounds):
        for k in order.permutation(len(contenders)):
            t = time.perf_counter()
            contenders[k].run()
            while time.perf_counter() - t < WARMUP_S:
                contenders[k].run()
            t = time.perf_counter()
            for _ in range(reps[k]):
                contenders[k].run()
            rates[k].append(reps[k] * contenders[k].unit / (time.perf_counter() - t))
    return rates


def _vm(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) / 1024


PROBE_STEPS, PROBE_S = 3, 1.0  # the memory probe's steps: at least 3, and a second of them


def probe(spec: str) -> None:
    """Peak resident memory of one contender's steps, in this process alone, and per step
    its page faults (first touches of memory the C library mapped afresh) and its system
    and user CPU seconds."""
    name, label = spec.split(":", 1)
    make = {"jaxdl": lambda: jaxdl_step(name), "plain Flax": lambda: flax_step(name),
            "PyTorch": lambda: torch_step(name), "torch.compile": lambda: torch_step(name, True)}
    c = make[label]()
    c.run()
    with open("/proc/self/clear_refs", "w") as f:  # resets the peak (VmHWM) to the current RSS
        f.write("5")
    resting = _vm("VmRSS")
    steps = max(PROBE_STEPS, _calibrate(c, PROBE_S))  # CPU times count in clock ticks
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        c.run()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"peak_rss_mb": _vm("VmHWM"), "resting_rss_mb": resting, "steps": steps,
                      "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
                      "system_s_per_step": (after.ru_stime - before.ru_stime) / steps,
                      "user_s_per_step": (after.ru_utime - before.ru_utime) / steps}))


def probe_memory(name: str, label: str) -> dict | None:
    cmd = [sys.executable, "-m", "benchmarks.run", f"--probe={name}:{label}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        print(f"  memory probe {name}:{label} failed: {out.stderr.strip()[-300:]}")
        return None
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------- time to accuracy

def _launch(config: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="jaxdl-bench-") as workdir:
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "launch.py", f"--config={config}", f"--workdir={workdir}"],
                             cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if out.returncode:
            raise RuntimeError(f"{config} failed: {out.stderr.strip()[-500:]}")
        with open(os.path.join(workdir, "results.json")) as f:
            results = json.load(f)
    return {"command": f"python launch.py --config={config}", "wall_s": round(wall, 1), "results": results}


def time_to_accuracy() -> dict:
    from jaxdl import data  # the datasets are prepared once, before anything is timed
    for name in ("mnist1d", "mnist1d/shuffled", "digits"):
        data.load(name, "train")
    runs = {"mnist1d_table": _launch("experiments/mnist1d_table.py"),
            "lenet5_digits": _launch("experiments/zoo_digits.py:lenet5")}
    runs["measured"] = datetime.datetime.now().isoformat(timespec="minutes")
    return runs


# ---------------------------------------------------------------------------- results

def _median(values):
    return float(np.median(values)) if values else float("nan")


def measure_model(name: str) -> dict:
    print(f"{name}: building and compiling")
    contenders = build(name, FLAGS.torch_compile)
    params = {c.name: c.params for c in contenders}
    if len(set(params.values())) != 1:
        raise AssertionError(f"{name}: the contenders' parameter counts differ: {params}")
    peaks = matmul_peaks()
    if FLAGS.quiet_load:
        deadline = time.time() + FLAGS.max_wait_s
        while os.getloadavg()[0] > FLAGS.quiet_load and time.time() < deadline:
            time.sleep(10)
    print(f"{name}: timing " + ", ".join(c.name for c in contenders) + f" (load {os.getloadavg()[0]:.1f})")
    # Short turns and many rounds for the small models: a turn pair then sees one load.
    small = name in SMALL_MODELS
    rounds, min_s = (FLAGS.small_rounds, FLAGS.min_chunk_s / 3) if small else (FLAGS.rounds, FLAGS.min_chunk_s)
    rates = interleave(contenders + peaks, rounds, min_s)
    by_name = dict(zip([c.name for c in contenders + peaks], rates))
    result = {"batch": SPECS[name][0], "input_shape": list(SPECS[name][1]), "params": contenders[0].params,
              "measured": datetime.datetime.now().isoformat(timespec="minutes"), "rounds": rounds,
              "load_average": os.getloadavg()[0], "contenders": {}, "ratios": {}}
    for c in contenders:
        r = by_name[c.name]
        result["contenders"][c.name] = {"samples_per_s": _median(r), "samples_per_s_rounds": r,
                                        "steps_per_call": c.unit // SPECS[name][0],
                                        "compile_s": round(c.compile_s, 2), "cost_analysis_flops": c.flops,
                                        "xla_memory": c.memory}
    for ours in ("jaxdl", "jaxdl, launcher"):
        if ours not in by_name:
            continue
        for peer in ("plain Flax", "PyTorch", "torch.compile", "PyTorch, 1 thread"):
            if peer in by_name:
                result["ratios"][f"{ours} / {peer}"] = _median(
                    [a / b for a, b in zip(by_name[ours], by_name[peer])])
    peak = {p.name: _median(by_name[p.name]) * p.flops for p in peaks}
    result["peak_flops"] = max(peak.values())
    result["matmul_flops"] = peak
    flops = result["contenders"]["plain Flax"]["cost_analysis_flops"]
    result["model_flops_per_step"] = flops
    for c in contenders:
        entry = result["contenders"][c.name]
        steps_per_s = entry["samples_per_s"] / SPECS[name][0]
        entry["achieved_flops"] = steps_per_s * flops if flops else None
        entry["share_of_peak"] = steps_per_s * flops / result["peak_flops"] if flops else None
    for c in contenders:
        if c.hlo is not None:
            result["contenders"][c.name]["profile"] = op_profile(c)
        elif c.name in ("PyTorch", "torch.compile"):
            result["contenders"][c.name]["profile"] = torch_profile(c)
    if FLAGS.memory:
        for label in ("jaxdl", "plain Flax", "PyTorch", "torch.compile"):
            if label in result["contenders"]:
                result["contenders"][label]["memory"] = probe_memory(name, label)
    return result


def targets(results: dict) -> list[dict]:
    rows = []
    models = results["models"]
    for name, minimum in TARGETS.items():
        if name not in models:
            continue
        ours = "jaxdl, launcher" if "jaxdl, launcher" in models[name]["contenders"] else "jaxdl"
        for peer in ("PyTorch", "torch.compile"):
            key = f"{ours} / {peer}"
            if key in models[name]["ratios"]:
                value = models[name]["ratios"][key]
                rows.append({"target": f"{TITLES[name]}: {key} ≥ {minimum:g}×", "value": f"{value:.2f}×",
                             "met": value >= minimum})
        # As users run it (the launcher's steps per call), and one step per call.
        for mine in dict.fromkeys((ours, "jaxdl")):
            value = models[name]["ratios"][f"{mine} / plain Flax"]
            rows.append({"target": f"{TITLES[name]}: {mine} / plain Flax ≥ 1×", "value": f"{value:.2f}×",
                         "met": value >= 1.0})
    for name, minimum in PEAK_TARGET.items():
        if name in models:
            value = models[name]["contenders"]["jaxdl"]["share_of_peak"]
            rows.append({"target": f"{TITLES[name]}: jaxdl ≥ {minimum:.0%} of the matmul peak",
                         "value": f"{value:.0%}", "met": value >= minimum})
    if "mlp" in models:
        c = models["mlp"]["contenders"]
        ours = "jaxdl, launcher" if "jaxdl, launcher" in c else "jaxdl"
        value = c[ours]["samples_per_s"]
        rows.append({"target": f"MLP: {ours} ≥ {MLP_TARGET:,} samples/s", "value": f"{value:,.0f}",
                     "met": value >= MLP_TARGET})
    return rows


def _fmt_rate(v):
    return f"{v:,.0f}" if v == v else "–"


def _throughput_row(name: str, r: dict) -> str:
    c, q = r["contenders"], r["ratios"]
    ours = "jaxdl, launcher" if "jaxdl, launcher" in c else "jaxdl"

    def rate(k):
        return _fmt_rate(c[k]["samples_per_s"]) if k in c else "–"

    def ratio(k):
        return f"{q[k]:.2f}×" if k in q else "–"

    def both(peer):
        extra = f" ({ratio(f'{ours} / {peer}')} launcher)" if ours != "jaxdl" and f"{ours} / {peer}" in q else ""
        return ratio(f"jaxdl / {peer}") + extra
    return (f"| {TITLES[name]} | {r['batch']} | {r['params']:,} | {rate('jaxdl')} | {rate('jaxdl, launcher')} | "
            f"{rate('plain Flax')} | {rate('PyTorch')} | {rate('torch.compile')} | {rate('PyTorch, 1 thread')} | "
            f"{both('plain Flax')} | {both('PyTorch')} | {both('torch.compile')} | {both('PyTorch, 1 thread')} |")


def _cost_row(name: str, r: dict) -> str:
    c = r["contenders"]
    labels = ("jaxdl", "plain Flax", "PyTorch", "torch.compile")
    share = " / ".join(f"{c[k]['share_of_peak']:.0%}" if k in c and c[k]["share_of_peak"] else "–"
                       for k in labels)
    comp = " / ".join(f"{c[k]['compile_s']:.1f}" if k in c else "–" for k in ("jaxdl", "plain Flax", "torch.compile"))

    def mem(k):
        m = c.get(k, {}).get("memory")
        return f"{m['peak_rss_mb']:.0f} ({m['resting_rss_mb']:.0f})" if m else "–"

    def num(v):
        return f"{v:,.0f}" if v >= 10 else f"{v:.2g}"

    def faults(k):
        m = c.get(k, {}).get("memory") or {}
        if "page_faults_per_step" not in m:
            return "–"
        return (f"{num(m['page_faults_per_step'])} ({num(m['system_s_per_step'] * 1e3)} of "
                f"{num(m['user_s_per_step'] * 1e3)})")
    mm = r["matmul_flops"]
    return (f"| {TITLES[name]} | {r['model_flops_per_step'] / 1e9:.3g} | {r['peak_flops'] / 1e9:.0f} "
            f"({mm['matmul, JAX'] / 1e9:.0f} / {mm['matmul, PyTorch'] / 1e9:.0f}) | {share} | {comp} | "
            f"{' / '.join(mem(k) for k in labels)} | {' / '.join(faults(k) for k in labels)} |")


def _profile_table(title: str, text: str, models: dict, labels, categories) -> list[str]:
    rows = ["", f"## {title}", "", text, "",
            "| model | step | wall ms | " + " | ".join(categories) + " |",
            "|---|---|---|" + "---|" * len(categories)]
    for name, r in models.items():
        for label in labels:
            prof = r["contenders"].get(label, {}).get("profile")
            if prof:
                cells = " | ".join(f"{prof['ms_per_step'][k]:.1f}" if k in prof["ms_per_step"] else "–"
                                   for k in categories)
                rows.append(f"| {TITLES[name]} | {label} | {prof['wall_ms_per_step']:.1f} | {cells} |")
    return rows


def _tta_lines(tta: dict) -> list[str]:
    lines = [f"Measured {tta['measured']} (the whole command: start-up, compilation, training, "
             "evaluation; datasets already prepared).", "",
             "| command | wall time | result |", "|---|---|---|"]
    table = tta["mnist1d_table"]
    rows = table["results"].get("rows", table["results"])
    if isinstance(rows, dict):
        summary = "; ".join(f"{k}: {v['test_accuracy']:.1%}" if isinstance(v, dict) and "test_accuracy" in v
                            else f"{k}: {v}" for k, v in rows.items())
    else:
        summary = "; ".join(f"{row.get('model')}{' shuffled' if row.get('shuffled') else ''}: "
                            f"{row.get('test_accuracy_mean', float('nan')):.1%}" for row in rows)
    lines.append(f"| `{table['command']}` | {table['wall_s']:.0f} s | {summary} |")
    lenet = tta["lenet5_digits"]
    lines.append(f"| `{lenet['command']}` | {lenet['wall_s']:.0f} s | test accuracy "
                 f"{lenet['results']['test_accuracy']:.1%} |")
    return lines


def render(results: dict) -> str:
    models = results["models"]
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"`{COMMAND}` writes this file and `results.json` (without `--time_to_accuracy` it keeps the "
        "last time-to-accuracy table).",
        "",
        f"Measured on {m['cpu']}; {m['cores']} cores, {THREADS} threads for both frameworks; JAX "
        f"{m['jax']}, Flax {m['flax']}, PyTorch {m['torch']}. The machine is shared with other work: "
        "each model's contenders took turns, interleaved, in a new random order every round, each turn "
        f"timed after {WARMUP_S * 1e3:.0f} ms of untimed steps, and the numbers are medians over the turns "
        "(ratios: medians of the per-turn ratios). When each model was "
        "measured, with how many turns, and the 1-minute load average then (2 means both cores busy):",
        "",
        "| model | measured | turns | load average |",
        "|---|---|---|---|",
        *(f"| {TITLES[n]} | {r.get('measured', results['date'])} | {r.get('rounds', results['rounds'])} | "
          f"{r['load_average']:.1f} |" if "load_average" in r else f"| {TITLES[n]} | {results['date']} | – | – |"
          for n, r in models.items()),
        "",
        "## Training samples per second",
        "",
        "One step: forward, cross-entropy, backward, SGD with momentum. `jaxdl` is "
        "`jaxdl.train.compile_steps(jaxdl.train.train_step, ...)` on the `jaxdl.models` model, one step per call "
        "(`jax.jit` with jaxdl's compiler options, `jaxdl.compiler`; plain Flax and the matrix-product peak use "
        "`jax.jit`'s defaults); "
        "`jaxdl, launcher` is `jaxdl.train.train_steps` with the launcher config's steps per call, their "
        "batches gathered from the device-resident train set inside the call (ratios in brackets). "
        "`PyTorch, 1 thread` is for reference only (the targets use 2 threads).",
        "",
        "| model | batch | params | jaxdl | jaxdl, launcher | plain Flax | PyTorch | torch.compile "
        "| PyTorch, 1 thread | jaxdl / Flax | jaxdl / PyTorch | jaxdl / torch.compile | jaxdl / PyTorch, 1 thread |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_throughput_row(name, r) for name, r in models.items()),
        "",
        "## FLOPs, share of the machine's peak, compilation, memory",
        "",
        "Model FLOPs per step from XLA's cost analysis of the plain-Flax step "
        "(`jitted.lower(...).compile().cost_analysis()`); the peak is the better of a 2048² f32 "
        "matrix product in JAX and in PyTorch, timed in the same turns as the model. Compilation: "
        "`lower().compile()` for JAX, the first step for torch.compile (tracing and compiling forward "
        "and backward). Peak memory: the largest resident set of a process running only that "
        "contender's steps (in brackets its resident set after the first step). Page faults: per "
        f"step, over at least {PROBE_STEPS} steps and {PROBE_S:g} s of them in that process: once "
        "the steps run, mostly first touches of 4 KB pages the C library had just mapped (glibc "
        "maps a large block anew at each allocation, above a threshold that rises to at most "
        "32 MB, and unmaps it when it is freed); in brackets the step's system CPU milliseconds of its user CPU "
        "milliseconds (both threads).",
        "",
        "| model | GFLOP/step | peak GFLOP/s (JAX / PyTorch matmul) | share of peak: jaxdl / Flax / "
        "PyTorch / torch.compile | compile s: jaxdl / Flax / torch.compile | peak MB: jaxdl / Flax / "
        "PyTorch / torch.compile | page faults per step (system of user CPU ms): jaxdl / Flax / "
        "PyTorch / torch.compile |",
        "|---|---|---|---|---|---|---|",
        *(_cost_row(name, r) for name, r in models.items()),
    ]
    tiny = [n for n in models if SPECS[n][3]]
    if tiny:
        lines += [
            "",
            "## Tiny models: steps per compiled call",
            "",
            "`jaxdl.train.train_steps` runs several steps in one compiled call (a `lax.scan`, rolled "
            "or unrolled) over the device-resident train set, drawing the epoch permutations once per "
            "call; one step per call pays Python dispatch every step. Samples per second:",
            "",
            "| model | train_step, 1 per call | train_steps, 1 per call | "
            + " | ".join(f"{n} per call, {'unrolled' if u else 'rolled'}" for n, u in CHUNKS)
            + " | launcher: steps_per_call (unroll) |",
            "|---|---|---|" + "---|" * len(CHUNKS) + "---|",
        ]
        for name in tiny:
            c = models[name]["contenders"]
            num, unroll = SPECS[name][3]
            lines.append(f"| {TITLES[name]} | {_fmt_rate(c['jaxdl']['samples_per_s'])} | "
                         f"{_fmt_rate(c['jaxdl, train_steps ×1']['samples_per_s'])} | "
                         + "".join(f"{_fmt_rate(c[_chunk_label(n, u)]['samples_per_s'])} | " if _chunk_label(n, u) in c
                                   else "– | " for n, u in CHUNKS)
                         + f"{_fmt_rate(c['jaxdl, launcher']['samples_per_s'])} ({num}, unroll={unroll}) |")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for row in results["targets"]:
        lines.append(f"| {row['target']} | {row['value']} | {'yes' if row['met'] else '**no**'} |")
    lines += _profile_table(
        "Where the JAX steps spend their time",
        "From `jax.profiler` over at least 3 steps and a second of them: milliseconds per step in "
        "each kind of XLA operation, summed over threads (so the sum can exceed the wall time). "
        "A convolution runs in YNNPACK (a library fusion), in XLA:CPU's Eigen convolution (counted so when "
        "its dimensions are in the canonical order and its input undilated) or in loops XLA emits itself. An "
        "Eigen convolution or matrix product counts, per thread, from its start to that thread's end mark.",
        models, ("jaxdl", "plain Flax"), CATEGORIES)
    lines += _profile_table(
        "Where PyTorch's steps spend their time",
        "From `torch.profiler` over at least 3 steps and a second of them: milliseconds per step in each "
        "kind of operation, each operation's own time without the operations it calls. PyTorch runs its "
        "CPU operations one after another on the calling thread, each spread over both threads inside "
        "it, so these are wall times and add up to the step's with the time between operations (Python, "
        "dispatch and the profiler's own, whose wall the step's includes). Convolutions are oneDNN's, "
        "forward and backward (`aten::convolution_backward`: both gradients); under `torch.compile` the "
        "code it generates (fused elementwise work, the loss, the optimizer's update) counts as "
        "elementwise. Compare a category's share of the step with the JAX table's share, not its "
        "milliseconds: the JAX table sums over threads.",
        models, ("PyTorch", "torch.compile"), TORCH_CATEGORIES)
    lines += ["", "## The convolutions, layer by layer", "",
              "Each 3×3 convolution of ResNet-18 and VGG-11 at the table's batch, its three products "
              "(forward, input gradient, kernel gradient) compiled and timed alone, jaxdl's against PyTorch's, "
              "interleaved (`benchmarks/layers.py` says how).", ""]
    layers = os.path.join(os.path.dirname(os.path.abspath(__file__)), "layers.md")
    if os.path.exists(layers):
        with open(layers) as f:
            lines.append(f.read().strip())
    else:
        lines.append("Not measured yet: `python -m benchmarks.layers`.")
    lines += ["", "## Time to accuracy", ""]
    tta = results.get("time_to_accuracy")
    lines += _tta_lines(tta) if tta else ["Not measured yet: `python -m benchmarks.run --time_to_accuracy`."]
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += ["", f.read().strip()]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if FLAGS.probe:
        probe(FLAGS.probe)
        return
    if FLAGS.render_only:
        with open(os.path.join(FLAGS.out_dir, "results.json")) as f:
            results = json.load(f)
        with open(os.path.join(FLAGS.out_dir, "RESULTS.md"), "w") as f:
            f.write(render(results))
        return
    unknown = set(FLAGS.models) - set(SPECS)
    if unknown:
        sys.exit(f"unknown --models {sorted(unknown)}; valid: {', '.join(SPECS)}")
    import flax
    results = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"), "rounds": FLAGS.rounds,
        "machine": {"cpu": platform.processor() or _cpu_name(), "cores": os.cpu_count(), "threads": THREADS,
                    "jax": jax.__version__, "flax": flax.__version__, "torch": torch.__version__,
                    "load_start": os.getloadavg()[0]},
        "models": {},
    }
    for name in FLAGS.models:
        results["models"][name] = measure_model(name)
        print(json.dumps({k: v["samples_per_s"] for k, v in results["models"][name]["contenders"].items()}))
    results["machine"]["load_end"] = os.getloadavg()[0]
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    path_json = os.path.join(FLAGS.out_dir, "results.json")
    previous = {}
    if os.path.exists(path_json):
        with open(path_json) as f:
            previous = json.load(f)
    if FLAGS.time_to_accuracy:
        results["time_to_accuracy"] = time_to_accuracy()
    elif previous.get("time_to_accuracy"):
        results["time_to_accuracy"] = previous["time_to_accuracy"]  # kept, with its own date
    for name, previous_model in previous.get("models", {}).items():
        results["models"].setdefault(name, previous_model)  # kept, with its own date
    results["models"] = {name: results["models"][name] for name in SPECS if name in results["models"]}
    results["targets"] = targets(results)
    with open(path_json, "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(FLAGS.out_dir, "RESULTS.md"), "w") as f:
        f.write(render(results))
    print(f"wrote {path_json} and RESULTS.md")


def _cpu_name() -> str:
    """The CPU's model name, family, model and widest vector extension: hosts sold under
    one name differ, and the convolution libraries pick their kernels by the extension."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.machine()

    def field(key: str) -> str:
        match = re.search(rf"^{key}\s*:\s*(.*)$", info, re.M)
        return match.group(1).strip() if match else "?"

    name = field("model name")
    if name == "?":
        return platform.machine()
    flags = set(field("flags").split())
    vector = next((v.upper() for v in ("avx512f", "avx2", "avx") if v in flags), "no AVX")
    return f"{name}, family {field('cpu family')}, model {field('model')}, {vector}"


if __name__ == "__main__":
    app.run(main)
