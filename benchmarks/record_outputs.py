"""Record the bits fastmlp produces, to compare before and after a behaviour-preserving change.

    python benchmarks/record_outputs.py before.npz     # on the code before the change
    python benchmarks/record_outputs.py after.npz      # after it
    python benchmarks/record_outputs.py --compare before.npz after.npz

Not a benchmark: a bitwise record (about 600 MB) of every ISA path this CPU supports. The
restructuring of 655f369 was checked with it: 4,494 arrays, 0 different (generic and AVX2).

Covers: matmul on every supported ISA with every epilogue and transpose over shapes that take
every GEMM path (dot path, C^T route, packed / in-place B, K blocks, M / N splits, 1 and 2
threads); every activation kernel, loss and optimizer; the dropout mask; a TrainStep per
loss x optimizer (with gelu, dropout, sample weights, gather); MLP forward / backward; seeded
MLPClassifier / MLPRegressor fits on 1 and 2 threads.
"""
import sys
import warnings

import numpy as np


def record():
    import fastmlp
    k = fastmlp.core
    out = {}
    rng = np.random.default_rng(42)
    acts = ["identity", "relu", "leaky_relu", "tanh", "logistic", "gelu"]
    shapes = [(1, 1, 1), (7, 10, 256), (128, 10, 256), (256, 10, 128), (128, 512, 784),
              (128, 256, 512), (33, 45, 800), (512, 512, 32), (300, 300, 300), (13, 3, 5),
              (1000, 100, 100), (0, 5, 3), (4, 0, 3), (5, 4, 0)]
    for isa in k.supported_isas():
        k.set_isa(isa)
        for nt in (1, 2):
            fastmlp.set_num_threads(nt)
            for (M, N, K) in shapes:
                for ta in (False, True):
                    for tb in (False, True):
                        a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
                        b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
                        bias = rng.standard_normal(N).astype(np.float32)
                        key = f"mm/{isa}/{nt}/{M}x{N}x{K}/{int(ta)}{int(tb)}"
                        out[key] = fastmlp.matmul(a, b, trans_a=ta, trans_b=tb)
                        c0 = rng.standard_normal((M, N)).astype(np.float32)
                        c = c0.copy()
                        fastmlp.matmul(a, b, trans_a=ta, trans_b=tb, alpha=0.5, beta=-1.5, out=c)
                        out[key + "/ab"] = c
                        for act in acts:
                            out[key + f"/fwd/{act}"] = fastmlp.matmul(
                                a, b, trans_a=ta, trans_b=tb, bias=bias, activation=act,
                                negative_slope=0.05)
                            y = rng.standard_normal((M, N)).astype(np.float32)
                            out[key + f"/bwd/{act}"] = fastmlp.matmul(
                                a, b, trans_a=ta, trans_b=tb, grad_activation=act, y=y, z=y,
                                negative_slope=0.05)
            # elementwise, losses, optimizers
            for (M, N) in [(1, 1), (7, 13), (128, 512), (300, 1000)]:
                z = (3 * rng.standard_normal((M, N))).astype(np.float32)
                bias = rng.standard_normal(N).astype(np.float32)
                dy = rng.standard_normal((M, N)).astype(np.float32)
                for act in acts:
                    y = fastmlp.bias_activation(z, bias, act, negative_slope=0.05)
                    out[f"ba/{isa}/{nt}/{M}x{N}/{act}"] = y
                    out[f"ab/{isa}/{nt}/{M}x{N}/{act}"] = fastmlp.activation_backward(
                        dy, act, y=y, z=z, negative_slope=0.05)
                out[f"bg/{isa}/{nt}/{M}x{N}"] = fastmlp.bias_grad(z)
                labels = rng.integers(0, N, M)
                w = rng.random(M).astype(np.float32)
                t = (rng.random((M, N)) < 0.5).astype(np.float32)
                for sw in (None, w):
                    tag = "w" if sw is not None else "-"
                    l, g = fastmlp.softmax_cross_entropy(z, labels, sw)
                    out[f"sx/{isa}/{nt}/{M}x{N}/{tag}"] = g
                    out[f"sx/{isa}/{nt}/{M}x{N}/{tag}/loss"] = np.float64(l)
                    l, g = fastmlp.sigmoid_cross_entropy(z, t, sw)
                    out[f"sg/{isa}/{nt}/{M}x{N}/{tag}"] = g
                    out[f"sg/{isa}/{nt}/{M}x{N}/{tag}/loss"] = np.float64(l)
                    l, g = fastmlp.mse_loss(z, t, sw)
                    out[f"ms/{isa}/{nt}/{M}x{N}/{tag}"] = g
                    out[f"ms/{isa}/{nt}/{M}x{N}/{tag}/loss"] = np.float64(l)
            for n in (1, 17, 100000):
                p0 = rng.standard_normal(n).astype(np.float32)
                g = rng.standard_normal(n).astype(np.float32)
                for mom, nest in [(0.0, False), (0.9, False), (0.9, True)]:
                    p, v = p0.copy(), np.full(n, 0.1, np.float32)
                    for _ in range(3):
                        fastmlp.sgd_update(p, g, lr=0.1, l2=1e-3, momentum=mom, nesterov=nest,
                                           velocity=v)
                    out[f"sgd/{isa}/{nt}/{n}/{mom}/{nest}"] = np.concatenate([p, v])
                p, s = p0.copy(), np.full(n, 0.1, np.float32)
                for _ in range(3):
                    fastmlp.rmsprop_update(p, g, s, lr=0.01, rho=0.95, eps=1e-7, l2=1e-3)
                out[f"rms/{isa}/{nt}/{n}"] = np.concatenate([p, s])
                for wd in (0.0, 0.01):
                    p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
                    for t_ in range(1, 4):
                        fastmlp.adam_update(p, g, m, v, step=t_, lr=1e-3, l2=1e-4,
                                            weight_decay=wd)
                    out[f"adam/{isa}/{nt}/{n}/{wd}"] = np.concatenate([p, m, v])
            # training steps
            for loss in ("softmax", "sigmoid", "mse"):
                for opt in ("sgd", "rmsprop", "adam"):
                    r = np.random.default_rng(7)
                    sizes = [20, 16, 12, 5]
                    params = []
                    for a_, b_ in zip(sizes[:-1], sizes[1:]):
                        params += [(r.standard_normal((a_, b_)) * 0.3).astype(np.float32),
                                   (r.standard_normal(b_) * 0.1).astype(np.float32)]
                    params = fastmlp.core.flat_params(params)
                    lname = {"softmax": "softmax_cross_entropy", "sigmoid": "sigmoid_cross_entropy",
                             "mse": "mse_loss"}[loss]
                    step = fastmlp.TrainStep(params, ["gelu", "tanh"], lname, 32, optimizer=opt,
                                             alpha=1e-3, dropout=[0.2, 0.0], seed=5,
                                             weight_decay=0.01 if opt == "adam" else 0.0)
                    X = r.standard_normal((50, 20)).astype(np.float32)
                    y = (r.integers(0, 5, 50).astype(np.int32) if loss == "softmax"
                         else (r.random((50, 5)) < 0.5).astype(np.float32))
                    sw = r.random(50).astype(np.float32)
                    losses = []
                    for it in range(4):
                        idx = r.permutation(50)[:32]
                        losses.append(step.run(X, y, sw if it % 2 else None, lr=0.01, index=idx))
                    losses.append(step.run(X[:20], y[:20], lr=0.01))
                    key = f"ts/{isa}/{nt}/{loss}/{opt}"
                    out[key + "/loss"] = np.array(losses)
                    for i, p in enumerate(step.params):
                        out[key + f"/p{i}"] = p
                    for i, p in enumerate(step.grads):
                        out[key + f"/g{i}"] = p
                    for i, p in enumerate(_per_layer_state(step)):
                        out[key + f"/s{i}"] = p
            # model API
            model = fastmlp.MLP([20, 16, 12, 5], activation=["gelu", "relu"], dropout=0.1,
                                random_state=3)
            X = rng.standard_normal((40, 20)).astype(np.float32)
            o = model.forward(X, training=True)
            dx = model.backward(np.ones_like(o))
            out[f"mlp/{isa}/{nt}/out"] = o
            out[f"mlp/{isa}/{nt}/dx"] = dx
            for i, g in enumerate(model.grads):
                out[f"mlp/{isa}/{nt}/g{i}"] = g
            opt = fastmlp.optim.Adam(model, lr=1e-2)
            opt.step()
            for i, p in enumerate(model.params):
                out[f"mlp/{isa}/{nt}/p{i}"] = p
            out[f"mask/{isa}/{nt}"] = fastmlp.core.dropout_mask(7, 33, 0.3, 123, 4, 1)
        fastmlp.set_num_threads(None)
    # estimators
    from sklearn.datasets import make_classification, make_regression
    X, y = make_classification(600, 30, n_informative=10, n_classes=4, random_state=0)
    Xb, yb = make_classification(300, 10, random_state=1)
    Xr, yr = make_regression(400, 12, n_targets=2, random_state=0)
    k.set_isa(k.supported_isas()[-1])
    for nt in (1, 2):
        for solver in ("sgd", "adam", "adamw", "rmsprop"):
            clf = fastmlp.MLPClassifier((32, 16), solver=solver, max_iter=5, random_state=0,
                                        n_threads=nt, batch_size=64, early_stopping=solver == "adam")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(X, y)
            for i, c in enumerate(clf.coefs_ + clf.intercepts_):
                out[f"clf/{nt}/{solver}/{i}"] = c
            out[f"clf/{nt}/{solver}/curve"] = np.array(clf.loss_curve_)
            out[f"clf/{nt}/{solver}/proba"] = clf.predict_proba(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b = fastmlp.MLPClassifier((8,), max_iter=5, random_state=0, n_threads=nt,
                                      activation="tanh").fit(Xb, yb)
            r = fastmlp.MLPRegressor((16,), max_iter=5, random_state=0, n_threads=nt,
                                     learning_rate_init=0.01).fit(Xr / 100, yr / 100)
        out[f"bin/{nt}"] = b.predict_proba(Xb)
        out[f"reg/{nt}"] = r.predict(Xr / 100)
        out[f"reg/{nt}/curve"] = np.array(r.loss_curve_)
    return out


def _per_layer_state(step):
    """The optimizer state per parameter, [W s1, W s2, b s1, b s2] per layer, from the flat
    buffers (the order the record has always had)."""
    base = step.flat_params.__array_interface__["data"][0]
    out = []
    for l in range(len(step.params) // 2):
        for p in (step.params[2 * l], step.params[2 * l + 1]):
            off = (p.__array_interface__["data"][0] - base) // 4
            for st in step.state:
                out.append(st[off:off + p.size].reshape(p.shape))
    return out


def compare(a, b):
    A, B = np.load(a), np.load(b)
    ka, kb = set(A.files), set(B.files)
    if ka != kb:
        print("keys differ:", sorted(ka ^ kb)[:20])
    bad = 0
    for key in sorted(ka & kb):
        x, y = A[key], B[key]
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            bad += 1
            if bad <= 20:
                print("DIFFERS", key)
    print(f"{len(ka & kb)} arrays compared, {bad} differ")
    return bad == 0 and ka == kb


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        sys.exit(0 if compare(sys.argv[2], sys.argv[3]) else 1)
    np.savez(sys.argv[1], **record())
