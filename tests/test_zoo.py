"""The model zoo against the papers: parameter counts, layer shapes, LRN, a train step each."""
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl.models import count_params
from jaxdl.models.alexnet import AlexNet, _AlexNetTiny
from jaxdl.models.googlenet import GoogLeNet, _GoogLeNetTiny, aux_weighted_loss
from jaxdl.models.lenet import LeNet5
from jaxdl.models.resnet import ResNet18, ResNet34, ResNet50, ResNet101, ResNet152, _ResNetTiny
from jaxdl.models.vgg import VGG11, VGG13, VGG16, VGG19, _VGGTiny
from jaxdl.nn.norm import LocalResponseNorm, local_response_norm

KEY = jax.random.PRNGKey(0)


def _shapes(model, size, channels=3, batch=2, **call):
    """(variables, output) as shapes only: nothing of the model is allocated."""
    x = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
    variables = jax.eval_shape(model.init, KEY, x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, **call), variables, x)
    return variables, out


def _init(model, x, key):
    """Variables of the model's structure filled from one normal draw.

    `model.init` itself is traced by the shape tests; compiling its initialisers
    (one truncated normal per distinct shape) would cost most of this file's time.
    """
    shapes = jax.eval_shape(model.init, key, x)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    flat = jax.random.normal(key, (sum(int(np.prod(leaf.shape)) for _, leaf in leaves),))
    out, start = [], 0
    for path, leaf in leaves:
        size, name = int(np.prod(leaf.shape)), path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            out.append(flat[start:start + size].reshape(leaf.shape) / np.sqrt(fan_in))
        else:  # BN scale and running variance start at one, biases and means at zero
            out.append(jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype))
        start += size
    return jax.tree_util.tree_unflatten(treedef, out)


def _conv(k, cin, cout, bias=True):
    return (k * k * cin + bias) * cout


def _dense(cin, cout):
    return (cin + 1) * cout


# ---------------------------------------------------------------- parameter counts

# Published counts (papers; torchvision's model table for ResNet-101/152 and VGG-11/13/19).
PAPER = [
    ("LeNet5", LeNet5, {"num_classes": 10}, 32, 1, 61_706),
    ("LeNet5-relu", LeNet5, {"num_classes": 10, "classic": False}, 32, 1, 61_706),
    ("AlexNet", AlexNet, {}, 227, 3, 62_378_344),
    ("AlexNet-2towers", AlexNet, {"groups": 2}, 227, 3, 60_965_224),
    ("VGG11", VGG11, {}, 224, 3, 132_863_336),
    ("VGG13", VGG13, {}, 224, 3, 133_047_848),
    ("VGG16", VGG16, {}, 224, 3, 138_357_544),
    ("VGG19", VGG19, {}, 224, 3, 143_667_240),
    ("ResNet18", ResNet18, {}, 224, 3, 11_689_512),
    ("ResNet34", ResNet34, {}, 224, 3, 21_797_672),
    ("ResNet50", ResNet50, {}, 224, 3, 25_557_032),
    ("ResNet101", ResNet101, {}, 224, 3, 44_549_160),
    ("ResNet152", ResNet152, {}, 224, 3, 60_192_808),
]


@pytest.mark.parametrize("name,cls,kw,size,channels,expected", PAPER, ids=[p[0] for p in PAPER])
def test_paper_param_count_and_output_shape(name, cls, kw, size, channels, expected):
    model = cls(**kw)
    variables, logits = _shapes(model, size, channels)
    assert count_params(variables) == expected
    assert logits.shape == (2, kw.get("num_classes", 1000))
    assert logits.dtype == jnp.float32


# GoogLeNet's Table 1, written out again: #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj.
_TABLE1 = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), (192, 96, 208, 16, 48, 64),
           (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
           (256, 160, 320, 32, 128, 128), (256, 160, 320, 32, 128, 128),
           (384, 192, 384, 48, 128, 128)]


def _googlenet_params(k, aux):
    total = _conv(7, 3, 64) + _conv(1, 64, 64) + _conv(3, 64, 192)
    cin, outs = 192, []
    for c1, c3r, c3, c5r, c5, cp in _TABLE1:
        total += (_conv(1, cin, c1) + _conv(1, cin, c3r) + _conv(3, c3r, c3)
                  + _conv(1, cin, c5r) + _conv(5, c5r, c5) + _conv(1, cin, cp))
        cin = c1 + c3 + c5 + cp
        outs.append(cin)
    total += _dense(1024, k)
    if aux:  # on 4a (512) and 4d (528): 14×14 → 4×4 after the 5×5/3 pooling
        total += sum(_conv(1, c, 128) + _dense(4 * 4 * 128, 1024) + _dense(1024, k)
                     for c in (outs[2], outs[5]))
    return total, outs


@pytest.mark.parametrize("aux", [False, True])
def test_googlenet_param_count_and_module_channels(aux):
    expected, outs = _googlenet_params(1000, aux)
    assert outs == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    variables, (logits, feats) = _shapes(GoogLeNet(aux_logits=aux), 224, return_features=True)
    assert count_params(variables) == expected
    assert logits.shape == (2, 1000)
    names = [f"inception{n}" for n in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
    assert [feats[n].shape[-1] for n in names] == outs
    assert [feats[n].shape[1] for n in names] == [28] * 2 + [14] * 5 + [7] * 2
    assert feats["stem"].shape == (2, 28, 28, 192)


def test_resnet18_small_input_param_count():
    def block(cin, cout, stride):  # BN: scale and bias; convolutions without bias
        n = _conv(3, cin, cout, bias=False) + _conv(3, cout, cout, bias=False) + 4 * cout
        if stride != 1 or cin != cout:
            n += _conv(1, cin, cout, bias=False) + 2 * cout
        return n

    expected = _conv(3, 3, 64, bias=False) + 2 * 64 + _dense(512, 10)
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512)):
        expected += block(cin, cout, 1 if i == 0 else 2) + block(cout, cout, 1)
        cin = cout
    variables, logits = _shapes(ResNet18(num_classes=10, small_input=True), 32)
    assert count_params(variables) == expected
    assert logits.shape == (2, 10)


def test_vgg11_small_input_param_count():
    convs = [64, 128, 256, 256, 512, 512, 512, 512]  # configuration A
    expected = sum(_conv(3, cin, cout) for cin, cout in zip([3] + convs, convs))
    expected += _dense(512, 512) + _dense(512, 512) + _dense(512, 10)  # on the 1×1×512 map
    variables, logits = _shapes(VGG11(num_classes=10, small_input=True), 32)
    assert count_params(variables) == expected
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("make", [_ResNetTiny, _VGGTiny, _GoogLeNetTiny, _AlexNetTiny])
def test_half_precision_compute(make):
    variables, logits = _shapes(make(num_classes=10, dtype=jnp.bfloat16), 32)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
    assert logits.dtype == jnp.float32


def test_count_params_accepts_params_or_variables():
    variables, _ = _shapes(ResNet18(num_classes=10, small_input=True), 32)
    assert "batch_stats" in variables
    assert count_params(variables) == count_params(variables["params"])


# ---------------------------------------------------------------- layer shapes


@pytest.mark.parametrize("groups", [1, 2])
def test_alexnet_neurons_per_layer(groups):
    _, (logits, feats) = _shapes(AlexNet(groups=groups), 227, return_features=True)
    names = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    neurons = [int(np.prod(feats[n].shape[1:])) for n in names]
    assert neurons == [290_400, 186_624, 64_896, 64_896, 43_264, 4_096, 4_096, 1_000]
    assert feats["conv1"].shape[1:] == (55, 55, 96)
    assert feats["pool5"].shape[1:] == (6, 6, 256)


def test_lenet5_layers():
    variables, (_, feats) = _shapes(LeNet5(), 32, channels=1, return_features=True)
    p = variables["params"]
    assert p["C3"]["kernel"].shape == (5, 5, 6, 16)  # every C3 map sees all six S2 maps
    assert count_params(p["C3"]) == 2_416
    assert count_params(p["C5"]) == 48_120
    expected = {"C1": (28, 28, 6), "S2": (14, 14, 6), "C3": (10, 10, 16), "S4": (5, 5, 16),
                "C5": (1, 1, 120), "F6": (84,)}
    assert {n: f.shape[1:] for n, f in feats.items()} == expected


def test_vgg16_features_and_layers():
    variables, (_, feats) = _shapes(VGG16(), 224, return_features=True)
    p = variables["params"]
    assert sum(n.startswith("conv") for n in p) == 13
    assert sum(n.startswith("fc") for n in p) == 3
    assert feats["conv4_3"].shape[1:] == (28, 28, 512)
    assert feats["pool5"].shape[1:] == (7, 7, 512)
    assert feats["fc7"].shape[1:] == (4096,)


@pytest.mark.parametrize("small_input,strides", [(False, (4, 8, 16, 32)), (True, (1, 2, 4, 8))])
def test_resnet_feature_strides(small_input, strides):
    _, (_, feats) = _shapes(ResNet50(small_input=small_input), 64, return_features=True)
    for i, (s, c) in enumerate(zip(strides, (256, 512, 1024, 2048)), start=1):
        assert feats[f"stage{i}"].shape[1:] == (64 // s, 64 // s, c)


def test_fixed_classifier_follows_input_size():
    variables, logits = _shapes(AlexNet(num_classes=7), 259)  # pool5 7×7 instead of 6×6
    assert variables["params"]["fc6"]["kernel"].shape == (7 * 7 * 256, 4096)
    assert logits.shape == (2, 7)
    assert _shapes(LeNet5(small_input=True), 8, channels=1)[1].shape == (2, 10)


@pytest.mark.parametrize("make,size,channels,match", [
    (AlexNet, 8, 3, r"AlexNet.*67×67.*8×8"),
    (partial(AlexNet, small_input=True), 8, 3, r"AlexNet.*15×15"),
    (VGG11, 16, 3, r"VGG.*32×32.*16×16"),
    (LeNet5, 28, 1, r"LeNet5.*32×32.*28×28"),
    (partial(GoogLeNet, aux_logits=True), 64, 3, r"GoogLeNet.*65×65"),
])
def test_too_small_input_raises(make, size, channels, match):
    with pytest.raises(ValueError, match=match):
        _shapes(make(num_classes=10), size, channels)


def test_googlenet_aux_return_convention():
    model = GoogLeNet(num_classes=10, aux_logits=True, small_input=True, width=0.25)
    variables, logits = _shapes(model, 32)
    assert logits.shape == (2, 10)                      # evaluation: logits only
    _, (logits, aux) = _shapes(model, 32, train=True, rngs={"dropout": KEY})
    assert logits.shape == (2, 10) and [a.shape for a in aux] == [(2, 10), (2, 10)]
    _, (logits, feats) = _shapes(model, 32, train=True, rngs={"dropout": KEY},
                                 return_features=True)
    assert feats["aux1"].shape == feats["aux2"].shape == (2, 10)
    assert np.isclose(aux_weighted_loss(1.0, [2.0, 4.0]), 1.0 + 0.3 * 6.0)


# ---------------------------------------------------------------- real forward passes

SMALL = [("LeNet5", partial(LeNet5, small_input=True), 1),
         ("AlexNet", partial(AlexNet, groups=2), 3),
         ("VGG11", VGG11, 3), ("VGG13", VGG13, 3), ("VGG16", VGG16, 3),
         ("VGG19", partial(VGG19, batch_norm=True), 3),
         ("GoogLeNet", partial(GoogLeNet, aux_logits=True), 3),
         ("ResNet18", ResNet18, 3), ("ResNet34", ResNet34, 3), ("ResNet50", ResNet50, 3),
         ("ResNet101", ResNet101, 3), ("ResNet152", ResNet152, 3)]
SLOW_FORWARD = {"ResNet101", "ResNet152"}  # XLA:CPU compiles 100+ convolutions for each


@pytest.mark.parametrize("name,make,channels", [
    pytest.param(*s, id=s[0], marks=[pytest.mark.slow] if s[0] in SLOW_FORWARD else [])
    for s in SMALL])
def test_forward_small(name, make, channels, key):
    model = make(num_classes=10, width=0.125, small_input=True)
    x = jax.random.normal(key, (2, 32, 32, channels))
    logits = jax.jit(model.apply)(_init(model, x, key), x)
    assert logits.shape == (2, 10)
    assert bool(jnp.all(jnp.isfinite(logits)))


# ---------------------------------------------------------------- one train step

TINY = [("LeNet5", partial(LeNet5, small_input=True, width=0.5), 1),
        ("AlexNet", _AlexNetTiny, 3), ("VGG", _VGGTiny, 3),
        ("GoogLeNet", _GoogLeNetTiny, 3), ("ResNet", _ResNetTiny, 3)]


@pytest.mark.parametrize("name,make,channels", TINY, ids=[t[0] for t in TINY])
def test_train_step(name, make, channels, key):
    model = make(num_classes=10)
    x = jax.random.normal(key, (4, 32, 32, channels))
    y = jnp.arange(4) % 10
    variables = _init(model, x, key)
    tx = optax.sgd(0.05, momentum=0.9)
    opt_state = tx.init(variables["params"])

    def ce(logits):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(variables, opt_state, x, y, rng):
        rest = {k: v for k, v in variables.items() if k != "params"}

        def loss_fn(params):
            out, updates = model.apply({"params": params, **rest}, x, train=True,
                                       rngs={"dropout": rng}, mutable=list(rest))
            if isinstance(out, tuple):  # GoogLeNet's auxiliary classifiers
                logits, aux = out
                return aux_weighted_loss(ce(logits), [ce(a) for a in aux]), updates
            return ce(out), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        deltas, opt_state = tx.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], deltas)
        return {"params": params, **updates}, opt_state, loss

    new, opt_state, loss = step(variables, opt_state, x, y, jax.random.fold_in(key, 0))
    new, opt_state, loss2 = step(new, opt_state, x, y, jax.random.fold_in(key, 1))
    assert np.isfinite(loss) and np.isfinite(loss2)
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                     variables["params"], new["params"])
    assert any(jax.tree_util.tree_leaves(changed))
    if "batch_stats" in variables:
        assert not jnp.allclose(jax.tree_util.tree_leaves(variables["batch_stats"])[0],
                                jax.tree_util.tree_leaves(new["batch_stats"])[0])


# Every exported variant with its real layers, at 1/16 width on a 32×32 input (2×16×16
# for ResNet-101/152, whose compile time grows with depth and not with the input).
VARIANTS = [
    ("LeNet5", partial(LeNet5, small_input=True), 1, 32),
    ("AlexNet", partial(AlexNet, small_input=True), 3, 32),
    ("AlexNet-2towers", partial(AlexNet, small_input=True, groups=2), 3, 32),
    ("VGG11", partial(VGG11, small_input=True), 3, 32),
    ("VGG13", partial(VGG13, small_input=True), 3, 32),
    ("VGG16", partial(VGG16, small_input=True), 3, 32),
    ("VGG19", partial(VGG19, small_input=True), 3, 32),
    ("VGG16-bn", partial(VGG16, small_input=True, batch_norm=True), 3, 32),
    ("GoogLeNet-aux", partial(GoogLeNet, small_input=True, aux_logits=True), 3, 32),
    ("ResNet18", partial(ResNet18, small_input=True), 3, 32),
    ("ResNet34", partial(ResNet34, small_input=True), 3, 32),
    ("ResNet50", partial(ResNet50, small_input=True), 3, 32),
    ("ResNet101", partial(ResNet101, small_input=True), 3, 16),
    ("ResNet152", partial(ResNet152, small_input=True), 3, 16),
]
# XLA:CPU's compile time, not the step, is the cost here: level 0 (as test_conv.py etc.).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


@pytest.mark.parametrize("name,make,channels,size", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_framework_train_step_every_variant(name, make, channels, size, key):
    """jaxdl.train's create_state and train_step on every variant: one jitted SGD step
    changes the parameters (and BN statistics), a second step does not retrace."""
    from jaxdl import train

    model = make(num_classes=10, width=1 / 16)
    x = jax.random.normal(key, (2, size, size, channels))
    y = jnp.arange(2) % 10
    tx = optax.sgd(0.05, momentum=0.9)
    init = jax.jit(lambda k, x: train.create_state(k, model, tx, x), compiler_options=FAST_COMPILE)
    state = init(key, x[:1])
    # The real configuration: the same layers, parameter for parameter, as at full width.
    full = jax.eval_shape(make(num_classes=10).init, key, x[:1])
    assert jax.tree.structure(state.params) == jax.tree.structure(full["params"])
    assert ("batch_stats" in full) == bool(state.batch_stats)
    assert 0 < count_params(state.params) < count_params(full["params"])

    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(train.train_step, n=1), compiler_options=FAST_COMPILE)
    new, metrics = step(state, {"x": x, "y": y})
    newer, metrics2 = step(new, {"x": x, "y": y})  # a retrace would raise here
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics2["loss"])
    assert np.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
    assert int(newer.step) == 2

    def moved(a, b):
        return jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.any(u != v)), a, b))

    assert all(moved(state.params, new.params)[-2:])  # the classifier's kernel and bias
    assert any(moved(state.params, new.params)[:-2])  # and layers below it
    if name.startswith("GoogLeNet"):  # the auxiliary heads are trained too
        aux = [k for k in state.params if k.startswith("aux")]
        assert len(aux) == 2 and all(moved({k: state.params[k] for k in aux},
                                           {k: new.params[k] for k in aux}))
    if state.batch_stats:
        assert all(moved(state.batch_stats, new.batch_stats))


# ---------------------------------------------------------------- local response normalisation


def _lrn_oracle(a, k, n, alpha, beta):
    """The paper's formula, channel by channel."""
    a = np.asarray(a, np.float64)
    c = a.shape[-1]
    b = np.empty_like(a)
    for i in range(c):
        lo, hi = max(0, i - n // 2), min(c - 1, i + n // 2)
        b[..., i] = a[..., i] / (k + alpha * np.sum(a[..., lo:hi + 1] ** 2, axis=-1)) ** beta
    return b


@pytest.mark.parametrize("k,n,alpha,beta", [(2.0, 5, 1e-4, 0.75), (1.0, 3, 0.5, 0.5),
                                            (0.5, 7, 0.1, 1.0)])
def test_lrn_matches_paper_formula(k, n, alpha, beta, key):
    a = 3.0 * jax.random.normal(key, (2, 3, 4, 9))
    want = _lrn_oracle(a, k, n, alpha, beta)
    np.testing.assert_allclose(local_response_norm(a, k, n, alpha, beta), want, rtol=1e-5)
    module = LocalResponseNorm(k=k, n=n, alpha=alpha, beta=beta)
    np.testing.assert_allclose(module.apply({}, a), want, rtol=1e-5)


def test_lrn_other_axis_and_dtype(key):
    a = jax.random.normal(key, (2, 9, 3, 3))  # channels first
    want = np.moveaxis(_lrn_oracle(np.moveaxis(np.asarray(a), 1, -1), 1.0, 5, 0.5, 0.75), -1, 1)
    np.testing.assert_allclose(local_response_norm(a, 1.0, 5, 0.5, 0.75, axis=1), want, rtol=1e-5)
    assert local_response_norm(a.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_lrn_gradient(key):
    a = jax.random.normal(key, (1, 2, 2, 6))
    jax.test_util.check_grads(partial(local_response_norm, k=1.0, n=3, alpha=0.5), (a,),
                              order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_framework_train_step_weights_googlenets_aux_losses(key):
    """jaxdl.train.train_step's loss is main CE + 0.3 · (aux1 CE + aux2 CE), and the aux heads learn."""
    from jaxdl import train

    model = _GoogLeNetTiny(num_classes=10, aux_logits=True)
    x = jax.random.normal(key, (4, 32, 32, 3))
    y = jnp.arange(4) % 10
    state = train.create_state(key, model, optax.sgd(0.05), x[:1])
    rng = jax.random.fold_in(jax.random.fold_in(state.key, train._DROPOUT), state.step)
    variables = state.variables()
    mutable = ["batch_stats"] if state.batch_stats else False
    fast = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
    apply = jax.jit(lambda v, x, r: model.apply(v, x, train=True, rngs={"dropout": r}, mutable=mutable),
                    compiler_options=fast)
    out = apply(variables, x, rng)
    logits, aux = out[0] if mutable else out

    def ce(z):
        logp = np.asarray(jax.nn.log_softmax(z))
        return -logp[np.arange(4), np.asarray(y)].mean()

    new, metrics = jax.jit(train.train_step, compiler_options=fast)(state, {"x": x, "y": y})
    np.testing.assert_allclose(metrics["loss"], ce(logits) + 0.3 * (ce(aux[0]) + ce(aux[1])), rtol=1e-5)
    aux_params = {k: v for k, v in state.params.items() if k.startswith("aux")}
    assert aux_params, "the tiny GoogLeNet has auxiliary heads"
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                         aux_params, {k: new.params[k] for k in aux_params}))
    assert all(moved)
