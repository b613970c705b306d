"""A dense MLP for custom training loops, thin over the fastmlp kernels.

    model = fastmlp.MLP([784, 256, 10], activation="relu")
    opt = fastmlp.optim.Adam(model, lr=1e-3)
    out = model.forward(x, training=True)          # (M, 10) logits
    loss, dout = fastmlp.softmax_cross_entropy(out, labels)
    model.backward(dout)                           # fills model.grads
    opt.step()

The same step as one native call (GIL released, no allocation): ``model.train_step(...)``
returns a fastmlp TrainStep bound to the model's parameters.

The parameters are views of one flat float32 buffer (``fastmlp.core.flat_params``), and so are
the gradients: a custom loop can reduce or step all of them at once.
"""
import numpy as np

from .. import io
from ..core import (ACTIVATIONS, TrainStep, activation_backward, batchnorm_backward,
                    batchnorm_forward, bias_activation, bias_grad, dropout_mask, flat_buffer,
                    flat_params, is_sparse, layernorm_backward, layernorm_forward, matmul,
                    sparse_matmul, sparse_matmul_tn)

__all__ = ["MLP", "init_params"]

RELU_FAMILY = ("relu", "leaky_relu", "gelu")
INITS = ("auto", "he", "glorot", "sklearn")
NORMALIZATIONS = (None, "layer", "batch")


def normalization_list(normalization, n_hidden, what="normalization"):
    """normalization (None, "layer", "batch", or one of them per hidden layer) as a list."""
    norms = [normalization] * n_hidden if normalization is None or isinstance(normalization, str) \
        else _sequence(normalization, what)
    if len(norms) != n_hidden:
        raise ValueError(f"{what}: need one entry per hidden layer ({n_hidden}), got "
                         f"{len(norms)}")
    for k in norms:
        if k not in NORMALIZATIONS:
            raise ValueError(f"{what} entries must be None, 'layer' or 'batch', got {k!r}")
    return norms


def norm_params(layer_sizes, normalization):
    """[gamma, beta, ...] float32 (ones, zeros) of each normalized hidden layer, in order."""
    out = []
    for l, k in enumerate(normalization):
        if k is not None:
            out += [np.ones(layer_sizes[l + 1], np.float32),
                    np.zeros(layer_sizes[l + 1], np.float32)]
    return out


def running_stats(layer_sizes, normalization):
    """[mean, var, ...] float32 (zeros, ones) of each batch-normalized hidden layer."""
    out = []
    for l, k in enumerate(normalization):
        if k == "batch":
            out += [np.zeros(layer_sizes[l + 1], np.float32),
                    np.ones(layer_sizes[l + 1], np.float32)]
    return out


def init_params(layer_sizes, activations, init, rng):
    """[W0, b0, W1, b1, ...] float32 for layer_sizes (n_0, ..., n_L).

    activations: the activation after each layer (L names; the output layer's included).
    init: "he" (normal, std sqrt(2 / fan_in), zero bias), "glorot" (uniform, bound
    sqrt(6 / (fan_in + fan_out)), zero bias), "sklearn" (scikit-learn's: uniform bound
    sqrt(f / (fan_in + fan_out)), f = 2 for logistic else 6, for weights and biases), or "auto":
    He before the ReLU family, Glorot otherwise (so Glorot for an identity output layer: He's
    larger logits slow the start of training).
    rng: numpy Generator.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    params = []
    for i, (fan_in, fan_out) in enumerate(zip(layer_sizes[:-1], layer_sizes[1:])):
        act = activations[i]
        kind = init if init != "auto" else ("he" if act in RELU_FAMILY else "glorot")
        if kind == "he":
            W = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
            b = np.zeros(fan_out)
        elif kind == "glorot":
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            W = rng.uniform(-bound, bound, (fan_in, fan_out))
            b = np.zeros(fan_out)
        else:
            # scikit-learn picks the factor from its one hidden activation, output layer included
            hidden = activations[-2] if len(activations) > 1 else act
            bound = np.sqrt((2.0 if hidden == "logistic" else 6.0) / (fan_in + fan_out))
            W = rng.uniform(-bound, bound, (fan_in, fan_out))
            b = rng.uniform(-bound, bound, fan_out)
        params += [W.astype(np.float32), b.astype(np.float32)]
    return params


def _check_activation(name, what):
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"{what} must be one of {', '.join(ACTIVATIONS)}, got {name!r}")


def _is_int(n):
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool)


def _sequence(x, what):
    """x as a list, for a list-like argument (not a string, not a scalar), or a TypeError."""
    if isinstance(x, (str, bytes)) or not hasattr(x, "__iter__"):
        raise TypeError(f"{what} must be a list, got {type(x).__name__} {x!r}")
    return list(x)


def _rate(p, what):
    if not (isinstance(p, (int, float, np.integer, np.floating)) and not isinstance(p, bool)
            and 0 <= p < 1):
        raise ValueError(f"{what}: need rates in [0, 1), one per hidden layer, got {p!r}")
    return float(p)


def _check_rows(x, name, width, what):
    """x must be a 2-D array of width columns (the network's inputs or outputs)."""
    if is_sparse(x) and len(x.shape) == 2 and x.shape[1] == width:
        return
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != width:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"{name} must be a 2-D float32 array of {width} columns (the network's "
                         f"{what}), got {shape}")


class MLP:
    """Dense layers n_0 -> n_1 -> ... -> n_L.

    layer_sizes: [n_0, ..., n_L] (inputs, hidden sizes, outputs), at least two.
    activation: one name (every hidden layer) or a list, one per hidden layer (ACTIVATIONS).
    output_activation: applied to the last layer (default identity: logits for the losses).
    init: "auto" (He for layers followed by relu/leaky_relu/gelu, else Glorot), "he",
        "glorot" or "sklearn" (see init_params).
    dropout: rate (every hidden layer) or one per hidden layer, in [0, 1); applied to hidden
        outputs in forward(training=True), inverted (kept units scaled by 1 / (1 - p)).
    normalization: None, "layer" (LayerNorm over each row's features) or "batch" (BatchNorm
        over the batch), for every hidden layer or one per hidden layer: Linear -> norm ->
        activation -> dropout. norm_eps: their eps; norm_momentum: BatchNorm's running
        statistics, PyTorch's convention (running = (1 - m) running + m batch, unbiased var).
        forward(training=True) normalizes a BatchNorm layer with the batch's statistics and
        moves the running ones; training=False uses the running ones.
    random_state: int seed or None; seeds the initial weights and the dropout masks.

    Attributes: params [W0, b0, ..., W_{L-1}, b_{L-1}, gamma, beta, ...] float32 with
    W_l (n_l, n_{l+1}) and gamma / beta (n_{l+1},) of each normalized layer (ones and zeros at
    first), views of one flat buffer (fastmlp.core.flat_params); grads, the same in a buffer of
    their own, written by backward; running_stats [mean, var, ...] of each BatchNorm layer;
    activations (per hidden layer); t (training forwards done: dropout's step counter).
    """

    def __init__(self, layer_sizes, activation="relu", output_activation="identity", *,
                 init="auto", dropout=0.0, normalization=None, norm_eps=1e-5,
                 norm_momentum=0.1, random_state=None):
        sizes = _sequence(layer_sizes, "layer_sizes")
        if len(sizes) < 2 or not all(_is_int(n) and 1 <= n <= 1 << 31 for n in sizes):
            raise ValueError(f"layer_sizes needs at least two sizes, integers in [1, 2**31], "
                             f"got {layer_sizes!r}")
        sizes = [int(n) for n in sizes]
        n_hidden = len(sizes) - 2
        acts = [activation] * n_hidden if isinstance(activation, str) \
            else _sequence(activation, "activation")
        if len(acts) != n_hidden:
            raise ValueError(f"activation: need one per hidden layer ({n_hidden}), got {len(acts)}")
        for a in acts:
            _check_activation(a, "activation")
        _check_activation(output_activation, "output_activation")
        drop = [_rate(dropout, "dropout")] * n_hidden if np.isscalar(dropout) \
            else [_rate(p, "dropout") for p in _sequence(dropout, "dropout")]
        if len(drop) != n_hidden:
            raise ValueError(f"dropout: need rates in [0, 1), one per hidden layer, got {dropout}")
        norms = normalization_list(normalization, n_hidden)
        if not (isinstance(norm_eps, (int, float)) and 0 < norm_eps < np.inf):
            raise ValueError(f"norm_eps must be a finite number > 0, got {norm_eps!r}")
        if not (isinstance(norm_momentum, (int, float)) and 0 <= norm_momentum <= 1):
            raise ValueError(f"norm_momentum must be in [0, 1], got {norm_momentum!r}")
        if not (random_state is None or (_is_int(random_state) and random_state >= 0)):
            raise ValueError(f"random_state must be None or an integer >= 0, got {random_state!r}")
        seed = np.random.SeedSequence(random_state).generate_state(2, np.uint64)
        n_params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
        if n_params > 1 << 34:     # 64 GiB of float32 parameters, then as much for gradients
            raise MemoryError(f"layer_sizes {sizes}: {n_params:,} parameters do not fit in "
                              "memory")
        self.layer_sizes, self.activations = sizes, acts
        self.output_activation, self.init, self.dropout = output_activation, init, drop
        self.normalization, self.norm_eps = norms, float(norm_eps)
        self.norm_momentum = float(norm_momentum)
        self.seed = int(seed[1])     # dropout's key
        self.params = flat_params(init_params(sizes, acts + [output_activation], init,
                                              np.random.default_rng(int(seed[0])))
                                  + norm_params(sizes, norms))
        self.running_stats = running_stats(sizes, norms)
        self.grads = flat_params([np.zeros_like(p) for p in self.params])
        self.t = 0
        self._cache = None

    @property
    def n_layers(self):
        return len(self.layer_sizes) - 1

    def _act(self, l):
        return self.activations[l] if l < self.n_layers - 1 else self.output_activation

    def _norm_slots(self, l):
        """(index of hidden layer l's gamma in params, index of its running mean in
        running_stats or None), or None when layer l is not normalized."""
        if l >= self.n_layers - 1 or self.normalization[l] is None:
            return None
        j = 2 * self.n_layers + 2 * sum(k is not None for k in self.normalization[:l])
        r = 2 * sum(k == "batch" for k in self.normalization[:l])
        return j, (r if self.normalization[l] == "batch" else None)

    def _norm_forward(self, l, h, training):
        """Hidden layer l's norm and activation of its linear output h -> (y, mean, rstd)."""
        j, r = self._norm_slots(l)
        gamma, beta, act = self.params[j], self.params[j + 1], self.activations[l]
        if self.normalization[l] == "layer":
            return layernorm_forward(h, gamma, beta, eps=self.norm_eps, activation=act)
        return batchnorm_forward(h, gamma, beta, eps=self.norm_eps, training=training,
                                 momentum=self.norm_momentum,
                                 running_mean=self.running_stats[r],
                                 running_var=self.running_stats[r + 1], activation=act)

    def forward(self, X, training=False):
        """X float32 (M, n_0), or a SciPy sparse matrix (CSR / CSC: the first layer runs
        fastmlp.core.sparse_matmul on it) -> output (M, n_L). training=True applies dropout and
        keeps what backward needs (the inputs, pre-activations for gelu, outputs and masks)."""
        _check_rows(X, "X", self.layer_sizes[0], "inputs")
        a = X
        cache = [(X, None, None, None)]
        for l in range(self.n_layers):
            W, b, act = self.params[2 * l], self.params[2 * l + 1], self._act(l)
            product = sparse_matmul if l == 0 and is_sparse(a) else matmul
            if self._norm_slots(l) is not None:
                h = product(a, W, bias=b)
                y, mean, rstd = self._norm_forward(l, h, training)
                z = (h, mean, rstd)          # what the norm's backward needs
            elif act == "gelu" and training:
                z = product(a, W, bias=b)
                y = bias_activation(z, None, "gelu")
            else:
                z, y = None, product(a, W, bias=b, activation=act)
            mask = None
            if training and l < self.n_layers - 1 and self.dropout[l] > 0:
                mask = dropout_mask(y.shape[0], y.shape[1], self.dropout[l], self.seed, self.t, l)
                a = y * mask
            else:
                a = y
            cache.append((a, z, y, mask))
        if training:
            self._cache = cache
            self.t += 1
        return a

    def backward(self, dout):
        """dout float32 (M, n_L), the loss gradient w.r.t. forward's output -> dX (M, n_0), or
        None after a sparse X (its dense gradient would be as wide as X; nothing needs it).
        Fills self.grads. Needs a forward(training=True) first."""
        if self._cache is None:
            raise RuntimeError("backward needs a forward(X, training=True) first")
        cache = self._cache
        _check_rows(dout, "dout", self.layer_sizes[-1], "outputs")
        if dout.shape[0] != cache[0][0].shape[0]:
            raise ValueError(f"dout must have the {cache[0][0].shape[0]} rows of the last "
                             f"forward's X, got {dout.shape[0]}")
        _, z, y, _ = cache[-1]
        out_act = self.output_activation
        d = dout if out_act == "identity" else activation_backward(dout, out_act, y=y, z=z)
        for l in range(self.n_layers - 1, -1, -1):
            a_prev, z_prev, y_prev, mask_prev = cache[l]
            if l == 0 and is_sparse(a_prev):
                sparse_matmul_tn(a_prev, d, out=self.grads[0])
            else:
                matmul(a_prev, d, trans_a=True, out=self.grads[2 * l])
            bias_grad(d, out=self.grads[2 * l + 1])
            W = self.params[2 * l]
            if l == 0:
                return None if is_sparse(a_prev) else matmul(d, W, trans_b=True)
            act = self.activations[l - 1]
            slots = self._norm_slots(l - 1)
            grad_act = None if act == "identity" or slots is not None else act
            d = matmul(d, W, trans_b=True, grad_activation=grad_act,
                       y=y_prev if grad_act else None, z=z_prev if grad_act else None)
            if mask_prev is not None:
                d *= mask_prev
            if slots is not None:
                j, _ = slots
                h, mean, rstd = z_prev
                back = layernorm_backward if self.normalization[l - 1] == "layer" \
                    else batchnorm_backward
                d, dgamma, dbeta = back(d, h, self.params[j], self.params[j + 1], mean, rstd,
                                        activation=act, y=y_prev)
                self.grads[j][...] = dgamma
                self.grads[j + 1][...] = dbeta

    def predict(self, X):
        """forward(X) in inference mode (no dropout); a dense X is converted to float32."""
        return self.forward(X if is_sparse(X) else np.asarray(X, dtype=np.float32))

    def train_step(self, loss, max_batch, *, optimizer="adam", **hyper):
        """A TrainStep over this model's parameters (updated in place): one native call per
        minibatch, or its phases. loss: "softmax_cross_entropy", "sigmoid_cross_entropy" or
        "mse_loss" (the output layer must be identity: the loss applies softmax / sigmoid).
        hyper: TrainStep's keywords (lr goes to run() or update()). "poisson_loss" too (the
        output layer then holds the log of the predicted mean)."""
        if self.output_activation != "identity":
            raise ValueError("train_step needs output_activation='identity' (the loss applies "
                             "softmax or sigmoid itself)")
        if flat_buffer(self.params) is None:
            # entries of params were replaced: gather them into one buffer again (same values)
            self.params = flat_params(self.params)
        return TrainStep(self.params, self.activations, loss, max_batch, optimizer=optimizer,
                         dropout=self.dropout, seed=self.seed, normalization=self.normalization,
                         norm_eps=self.norm_eps, norm_momentum=self.norm_momentum,
                         running_stats=self.running_stats, **hyper)

    def loss_and_grad(self, X, y, loss, *, sample_weight=None, alpha=0.0, chunk=4096):
        """The full-batch loss over all of X and its gradient, for full-batch solvers.

        loss: as train_step's (the output layer must be identity); alpha: the L2 penalty, with
        scikit-learn's scale (alpha / (2 sum w) sum ||W||^2). Runs natively, chunk rows at a
        time, without dropout (a full-batch objective is deterministic). Returns (loss, grad),
        grad float64 in the flat layout of the parameter buffer (weights, then biases: the
        layout of fastmlp.core.flat_params). The parameters are not changed: to evaluate
        another point, write it into the flat buffer (``flat_buffer(model.params)[...] = x``).
        """
        if self.output_activation != "identity":
            raise ValueError("loss_and_grad needs output_activation='identity' (the loss applies "
                             "softmax, sigmoid or exp itself)")
        if flat_buffer(self.params) is None:
            self.params = flat_params(self.params)
        _check_rows(X, "X", self.layer_sizes[0], "inputs")
        rows = max(1, min(int(chunk), X.shape[0]))
        key = (loss, float(alpha), rows, id(self.params[0]))
        cached = getattr(self, "_full_batch", None)
        if cached is None or cached[0] != key:
            step = TrainStep(self.params, self.activations, loss, rows, optimizer="sgd",
                             momentum=0.0, alpha=alpha, normalization=self.normalization,
                             norm_eps=self.norm_eps, running_stats=self.running_stats)
            self._full_batch = cached = (key, step)
        return cached[1].loss_and_grad(X, y, sample_weight)

    def norm_tensors(self):
        """The normalization state as model-file tensors: norm.{l}.gamma / beta of each
        normalized hidden layer l, and norm.{l}.running_mean / running_var of a BatchNorm."""
        out = {}
        for l in range(self.n_layers - 1):
            slots = self._norm_slots(l)
            if slots is None:
                continue
            j, r = slots
            out[f"norm.{l}.gamma"], out[f"norm.{l}.beta"] = self.params[j], self.params[j + 1]
            if r is not None:
                out[f"norm.{l}.running_mean"] = self.running_stats[r]
                out[f"norm.{l}.running_var"] = self.running_stats[r + 1]
        return out

    def load_norm_tensors(self, tensors):
        """Set the normalization state from norm_tensors()'s dict (shapes already checked)."""
        for name, value in tensors.items():
            _, l, what = name.split(".")
            j, r = self._norm_slots(int(l))
            if what in ("gamma", "beta"):
                self.params[j + (what == "beta")][...] = value
            else:
                self.running_stats[r + (what == "running_var")][...] = value

    def save(self, path):
        """Write the model to a .safetensors file (fastmlp.load reads it back)."""
        io.write_model(path, "MLP", self.params[0:2 * self.n_layers:2],
                       self.params[1:2 * self.n_layers:2], self.activations,
                       self.output_activation,
                       dict(init=self.init, dropout=self.dropout, seed=str(self.seed),
                            normalization=self.normalization, norm_eps=self.norm_eps,
                            norm_momentum=self.norm_momentum),
                       norm_tensors=self.norm_tensors())

    @classmethod
    def _from_file(cls, f):
        """The MLP a checked io.ModelFile holds."""
        drop, seed, init = f.doc.get("dropout"), f.doc.get("seed"), f.doc.get("init")
        f.expect(isinstance(drop, list) and len(drop) == len(f.activations)
                 and all(isinstance(p, (int, float)) and 0 <= p < 1 for p in drop),
                 f"bad dropout {drop!r}")
        f.expect(isinstance(seed, str) and seed.isdigit(), f"bad seed {seed!r}")
        f.expect(init in INITS, f"bad init {init!r}")
        norms, eps, mom = io.normalization_fields(f)
        model = cls(f.layer_sizes, f.activations, f.out_activation, init=init, dropout=drop,
                    normalization=norms, norm_eps=eps, norm_momentum=mom)
        model.seed = int(seed)
        model.params = flat_params([p for pair in zip(f.coefs, f.intercepts) for p in pair]
                                   + model.params[2 * model.n_layers:])
        model.load_norm_tensors(f.norms)
        return model
