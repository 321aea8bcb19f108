"""Rosenblatt's perceptron: learns AND and OR, cannot learn XOR."""
import jax
import numpy as np
import pytest

from jaxdl.models import perceptron

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
TARGETS = {
    "and": np.array([0, 0, 0, 1]),
    "or": np.array([0, 1, 1, 1]),
    "xor": np.array([0, 1, 1, 0]),
}
EPOCHS = 100


@pytest.mark.parametrize("gate", ["and", "or"])
def test_learns_linearly_separable_gates(gate, key):
    w = perceptron.fit(X, TARGETS[gate], epochs=EPOCHS, lr=0.1, key=key)
    assert w.shape == (3,)
    np.testing.assert_array_equal(perceptron.predict(w, X), TARGETS[gate])
    # ŷ = step(w_0 + w_1 x_1 + w_2 x_2): the bias is the weight of x_0 = 1.
    w = np.asarray(w)
    np.testing.assert_array_equal(perceptron.predict(w, X), (w[0] + X @ w[1:] >= 0))


def test_cannot_learn_xor(key):
    # No line separates XOR, so some sample stays misclassified however long it trains.
    for seed in range(3):
        w = perceptron.fit(X, TARGETS["xor"], epochs=EPOCHS, lr=0.1,
                           key=jax.random.fold_in(key, seed))
        accuracy = np.mean(np.asarray(perceptron.predict(w, X)) == TARGETS["xor"])
        assert accuracy < 1.0
