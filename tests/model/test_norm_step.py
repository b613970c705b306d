"""TrainStep with normalization and gradient clipping against a float64 NumPy step written from
the equations, and its determinism across thread counts.

Tolerances: the step runs in float32; its loss agrees with the float64 one to 1e-5 relative,
every gradient to 2e-4 of that gradient's largest magnitude plus 1e-7 (normalization's backward subtracts
two row means from each element, which cancels a few bits more than a plain layer does), and the
parameters after one update to 1e-5 absolute (an update moves them by about lr = 1e-2).
"""
import numpy as np
import pytest

import fastmlp
from fastmlp import core

ACT = {"relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(float)),
       "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
       "identity": (lambda z: z, lambda z: np.ones_like(z))}


def reference_step(params, norms, acts, X, y, eps, clip, lr, alpha=0.0):
    """One SGD step of softmax cross-entropy in float64: (loss, grads, new params, batch
    statistics), params [W0, b0, ..., gamma, beta, ...] as TrainStep orders them."""
    P = [p.astype(np.float64) for p in params]
    L = len(acts) + 1
    M = X.shape[0]
    a, cache, j, stats = X.astype(np.float64), [], 2 * L, []
    slots = []
    for l in range(L):
        W, b = P[2 * l], P[2 * l + 1]
        h = a @ W + b
        if l == L - 1:
            cache.append((a, h, None))
            a = h
            break
        f, _ = ACT[acts[l]]
        if norms[l] is None:
            cache.append((a, h, None))
            a = f(h)
            slots.append(None)
            continue
        axis = 1 if norms[l] == "layer" else 0
        mu, var = h.mean(axis, keepdims=True), h.var(axis, keepdims=True)
        hn = (h - mu) / np.sqrt(var + eps)
        g, be = P[j], P[j + 1]
        z = g * hn + be
        cache.append((a, h, (hn, var, z, j, axis)))
        stats.append((mu.ravel(), var.ravel()))
        slots.append(j)
        j += 2
        a = f(z)
    logits = a
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(M), y]))
    sq = sum((P[2 * l] ** 2).sum() for l in range(L))
    loss += 0.5 * alpha / M * sq
    d = p.copy()
    d[np.arange(M), y] -= 1
    d /= M
    grads = [None] * len(P)
    for l in range(L - 1, -1, -1):
        a_prev, h, norm = cache[l]
        if l < L - 1:
            _, fprime = ACT[acts[l]]
            if norm is None:
                d = d * fprime(h)
            else:
                hn, var, z, jj, axis = norm
                gz = d * fprime(z)
                grads[jj], grads[jj + 1] = (gz * hn).sum(0), gz.sum(0)
                gh = gz * P[jj]
                d = (gh - gh.mean(axis, keepdims=True)
                     - hn * (gh * hn).mean(axis, keepdims=True)) / np.sqrt(var + eps)
        grads[2 * l] = a_prev.T @ d
        grads[2 * l + 1] = d.sum(0)
        d = d @ P[2 * l].T
    flat = np.concatenate([g.ravel() for g in grads])
    norm_ = np.linalg.norm(flat)
    scale = clip / (norm_ + 1e-6) if clip > 0 and norm_ > clip else 1.0
    new = []
    for i, (q, g) in enumerate(zip(P, grads)):
        g = g * scale
        if i < 2 * L and i % 2 == 0:
            g = g + alpha / M * q
        new.append(q - lr * g)
    return loss, grads, new, stats, norm_


def _net(norm, acts, seed=0, sizes=(13, 24, 17, 5)):
    model = fastmlp.MLP(list(sizes), activation=acts, normalization=norm, random_state=seed)
    rng = np.random.default_rng(seed + 1)
    # gamma and beta away from 1 and 0, so that their gradients and roles are exercised
    for p in model.params[2 * model.n_layers:]:
        p[...] = rng.uniform(0.5, 1.5, p.shape) if p is model.params[2 * model.n_layers] else \
            rng.uniform(-0.5, 0.5, p.shape)
    X = (rng.standard_normal((40, sizes[0])) * 2 + 0.5).astype(np.float32)
    y = rng.integers(0, sizes[-1], 40).astype(np.int32)
    return model, X, y


@pytest.mark.parametrize("norm", ["layer", "batch", ["batch", None], [None, "layer"]])
@pytest.mark.parametrize("acts", [["relu", "tanh"], ["tanh", "identity"]])
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_step_matches_float64_reference(isa, norm, acts, clip):
    model, X, y = _net(norm, acts)
    before = [p.copy() for p in model.params]
    step = model.train_step("softmax_cross_entropy", 40, optimizer="sgd", momentum=0.0,
                            clip_grad_norm=clip, alpha=1e-3)
    loss = step.forward(X, y)
    step.backward()
    grads = [g.copy() for g in step.grads]
    step.update(1e-2)
    ref_loss, ref_grads, ref_new, ref_stats, ref_norm = reference_step(
        before, step.normalization, acts, X, y, 1e-5, clip, 1e-2, alpha=1e-3)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        tol = 2e-4 * np.abs(r).max() + 1e-7   # a bias before BatchNorm: gradient 0
        err = np.abs(g - r).max()
        assert err <= tol, f"gradient {i}: max error {err:.3g} > {tol:.3g}"
    if clip > 0:
        assert step.grad_norm == pytest.approx(ref_norm, rel=1e-5)
        assert ref_norm > clip        # the clip is exercised
    for i, (p, r) in enumerate(zip(model.params, ref_new)):
        np.testing.assert_allclose(p, r, rtol=0, atol=1e-5, err_msg=f"parameter {i}")
    # BatchNorm's running statistics moved as PyTorch's (momentum 0.1, unbiased variance)
    k = 0
    for l, kind in enumerate(step.normalization):
        if kind is None:
            continue
        mu, var = ref_stats.pop(0)
        if kind == "batch":
            rm, rv = model.running_stats[2 * k], model.running_stats[2 * k + 1]
            np.testing.assert_allclose(rm, 0.1 * mu, atol=1e-5)
            np.testing.assert_allclose(rv, 0.9 + 0.1 * var * 40 / 39, rtol=1e-5)
            k += 1


def _fit_bits(norm, threads, optimizer="adam"):
    # wide enough that every kernel splits its work (32768 elements a thread, ops_impl.h)
    model, X, y = _net(norm, ["relu", "tanh"], sizes=(13, 384, 256, 5))
    X = np.repeat(X, 50, axis=0)
    y = np.repeat(y, 50)
    step = model.train_step("softmax_cross_entropy", 256, optimizer=optimizer, clip_grad_norm=1.0)
    rng = np.random.default_rng(3)
    with core.local_num_threads(threads):
        for _ in range(12):
            idx = rng.permutation(X.shape[0])[:256]
            step.run(X, y, lr=1e-2, index=idx)
    return (np.concatenate([p.ravel() for p in model.params]).view(np.uint32),
            np.concatenate([s.ravel() for s in model.running_stats] or [np.zeros(0, np.float32)])
            .view(np.uint32))


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_seeded_training_is_bitwise_identical_for_1_2_3_threads(isa, norm):
    runs = [_fit_bits(norm, t) for t in (1, 2, 3)]
    for params, stats in runs[1:]:
        np.testing.assert_array_equal(params, runs[0][0])
        np.testing.assert_array_equal(stats, runs[0][1])


def test_norm_parameters_skip_l2_and_weight_decay_unless_asked():
    model, X, y = _net("layer", ["relu", "tanh"])
    gamma0 = model.params[2 * model.n_layers].copy()
    step = model.train_step("softmax_cross_entropy", 40, optimizer="adam", weight_decay=0.5)
    # a zero gradient for gamma: only decay could move it
    step.forward(X, y)
    step.backward()
    step.grads[2 * model.n_layers][...] = 0
    step.update(0.1)
    np.testing.assert_array_equal(model.params[2 * model.n_layers], gamma0)
    model2, X, y = _net("layer", ["relu", "tanh"])
    step = model2.train_step("softmax_cross_entropy", 40, optimizer="adam", weight_decay=0.5,
                             norm_decay=True)
    step.forward(X, y)
    step.backward()
    step.grads[2 * model2.n_layers][...] = 0
    step.update(0.1)
    np.testing.assert_allclose(model2.params[2 * model2.n_layers], gamma0 * (1 - 0.1 * 0.5),
                               rtol=1e-6)


def test_inference_uses_running_statistics_and_layer_outputs():
    model, X, y = _net("batch", ["relu", "tanh"])
    step = model.train_step("softmax_cross_entropy", 40)
    for _ in range(3):
        step.run(X, y, lr=1e-3)
    outs = step.layer_outputs()
    assert [o.shape for o in outs] == [(40, 24), (40, 17)]
    # inference: running statistics, the same rows give the same output one at a time
    full = model.predict(X)
    rows = np.concatenate([model.predict(X[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(rows, full[:5], rtol=1e-5, atol=1e-6)


def test_batch_norm_refuses_full_batch_objective_and_bad_arguments():
    model, X, y = _net("batch", ["relu", "tanh"])
    with pytest.raises(ValueError, match="batch normalization"):
        model.loss_and_grad(X, y, "softmax_cross_entropy")
    with pytest.raises(ValueError, match="normalization"):
        fastmlp.MLP([4, 3, 2], normalization="group")
    with pytest.raises(ValueError, match="normalization"):
        fastmlp.MLP([4, 3, 3, 2], normalization=["layer"])
    with pytest.raises(ValueError, match="clip_grad_norm"):
        model.train_step("softmax_cross_entropy", 8, clip_grad_norm=-1.0)
    with pytest.raises(ValueError, match="params"):
        core.TrainStep(model.params[:6], ["relu", "tanh"], "softmax_cross_entropy", 8,
                       normalization="batch")


def test_layernorm_full_batch_gradient_matches_finite_differences():
    model, X, y = _net("layer", ["tanh", "tanh"], sizes=(6, 8, 7, 3))
    loss, grad = model.loss_and_grad(X, y, "softmax_cross_entropy")
    flat = core.flat_buffer(model.params)
    rng = np.random.default_rng(0)
    for i in rng.choice(flat.size, 25, replace=False):
        old = flat[i]
        h = 1e-2
        flat[i] = old + h
        up, _ = model.loss_and_grad(X, y, "softmax_cross_entropy")
        flat[i] = old - h
        down, _ = model.loss_and_grad(X, y, "softmax_cross_entropy")
        flat[i] = old
        # central difference in float32 evaluations: error ~ h^2 f''' + eps_32 |f| / h
        assert grad[i] == pytest.approx((up - down) / (2 * h), abs=2e-4, rel=1e-2), i
