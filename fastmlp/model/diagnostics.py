"""Training diagnostics: is the network training, and if not, why.

The chain rule makes the gradient of layer l a product of the later layers' weights and
activation derivatives, dZ_l = (dZ_{l+1} W_{l+1}^T) * act'(Z_l): when those factors are small the
early layers' gradients vanish, when large they explode. What shows it, per layer, once per
epoch (on the epoch's last batch, from the training step's own buffers: no second forward pass):

    grad_norm      ||dW_l||, the weight gradient of the data loss (before any clipping)
    weight_norm    ||W_l||
    update_ratio   ||W_l after - W_l before|| / ||W_l before|| over that last update: about
                   1e-3 is healthy for Adam/SGD, 1e-6 means the layer does not move
    inactive       hidden layers: relu family, the fraction of units zero (<= 0) for every row
                   of the batch ("dead"); tanh / logistic, the fraction of outputs within 1% of
                   their bounds (saturated: act' ~ 0); identity: 0
    act_mean, act_std   the hidden layer's outputs (after the activation)

Recorded when asked (diagnostics=True on the estimators, TrainStep loops of the CLI) into a list
of per-epoch records; format_table prints one record, plot draws the loss curve and the
per-layer gradient norms (matplotlib, optional).
"""
import numpy as np

__all__ = ["Recorder", "format_table", "plot"]

RELU_FAMILY = ("relu", "leaky_relu", "gelu")


def _norm(x):
    return float(np.sqrt(np.dot(x.ravel().astype(np.float64), x.ravel().astype(np.float64))))


def _inactive(y, act):
    """The fraction of dead (relu family) or saturated (tanh, logistic) units of outputs y."""
    if y.shape[0] == 0:
        return float("nan")
    if act in RELU_FAMILY:
        return float(np.mean(np.all(y <= 0, axis=0)))
    if act == "tanh":
        return float(np.mean(np.abs(y) > 0.99))
    if act == "logistic":
        return float(np.mean((y < 0.01) | (y > 0.99)))
    return 0.0


class Recorder:
    """Diagnostics of a TrainStep, one record per epoch.

    Call before_update() before the epoch's last step runs and record(epoch, loss) after it.
    records: the list of records, each {"epoch", "loss", "grad_norm" (global, flat_grads),
    "layers": [{"grad_norm", "weight_norm", "update_ratio", "inactive", "act_mean",
    "act_std"}, ...]} (hidden layers carry the last three; the output layer has None).
    """

    def __init__(self, step):
        self.step = step
        self.records = []
        self._before = None

    def before_update(self):
        self._before = [w.copy() for w in self.step.params[0:2 * self._n_layers():2]]

    def _n_layers(self):
        return len(self.step.activations) + 1

    def record(self, epoch, loss):
        step, L = self.step, self._n_layers()
        # the gradients are the last batch's; with clipping on, update scaled them in place
        unclip = 1.0
        if step.clip > 0 and np.isfinite(step.grad_norm) and step.grad_norm > step.clip:
            unclip = (step.grad_norm + 1e-6) / step.clip
        outputs = step.layer_outputs()
        layers = []
        for l in range(L):
            W, dW = step.params[2 * l], step.grads[2 * l]
            wn = _norm(W)
            entry = {"grad_norm": _norm(dW) * unclip, "weight_norm": wn, "update_ratio": None,
                     "inactive": None, "act_mean": None, "act_std": None}
            if self._before is not None:
                before = self._before[l]
                bn = _norm(before)
                entry["update_ratio"] = _norm(W - before) / bn if bn > 0 else float("nan")
            if l < L - 1:
                y = outputs[l]
                entry["inactive"] = _inactive(y, step.activations[l])
                entry["act_mean"] = float(y.mean(dtype=np.float64)) if y.size else float("nan")
                entry["act_std"] = float(y.std(dtype=np.float64)) if y.size else float("nan")
            layers.append(entry)
        total = float(np.sqrt(sum(e["grad_norm"] ** 2 for e in layers)))
        rec = {"epoch": int(epoch), "loss": float(loss), "grad_norm": total, "layers": layers}
        self.records.append(rec)
        self._before = None
        return rec


def _fmt(v, spec):
    width = int(spec.split(".")[0])
    return "-".rjust(width) if v is None else format(v, spec)


def format_table(record, activations=None):
    """One record as a per-layer table (a string)."""
    lines = [f"epoch {record['epoch']}: loss {record['loss']:.5g}, gradient norm "
             f"{record['grad_norm']:.3g}",
             f"{'layer':>5} {'act':>10} {'grad_norm':>10} {'weight_norm':>11} "
             f"{'update/weight':>13} {'dead/sat':>8} {'act_mean':>9} {'act_std':>8}"]
    for l, e in enumerate(record["layers"]):
        act = "output" if l == len(record["layers"]) - 1 else (
            activations[l] if activations else "hidden")
        lines.append(f"{l:>5} {act:>10} {_fmt(e['grad_norm'], '10.3e')} "
                     f"{_fmt(e['weight_norm'], '11.3g')} {_fmt(e['update_ratio'], '13.2e')} "
                     f"{_fmt(e['inactive'], '8.1%')} {_fmt(e['act_mean'], '9.3g')} "
                     f"{_fmt(e['act_std'], '8.3g')}")
    return "\n".join(lines)


def plot(records, path, title=None, ax_pair=None):
    """Loss curve and per-layer gradient norms over epochs, to path (PNG), or onto ax_pair
    (two matplotlib axes). Needs matplotlib (an ImportError says so)."""
    try:
        import matplotlib   # optional dependency: imported lazily, on purpose
        if ax_pair is None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt   # optional dependency: imported lazily, on purpose
    except ImportError as e:
        raise ImportError("plotting diagnostics needs matplotlib: pip install matplotlib") from e
    fig = None
    if ax_pair is None:
        fig, ax_pair = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [r["epoch"] for r in records]
    ax_loss, ax_grad = ax_pair
    ax_loss.plot(epochs, [r["loss"] for r in records], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_yscale("log")
    n_layers = len(records[0]["layers"]) if records else 0
    cmap = plt.get_cmap("viridis")
    for l in range(n_layers):
        ax_grad.plot(epochs, [max(r["layers"][l]["grad_norm"], 1e-30) for r in records],
                     color=cmap(l / max(1, n_layers - 1)), label=f"layer {l}")
    ax_grad.set_yscale("log")
    ax_grad.set_xlabel("epoch")
    ax_grad.set_ylabel("||dW|| (last batch of the epoch)")
    ax_grad.legend(fontsize="x-small", ncol=2)
    if title:
        ax_loss.set_title(title)
        ax_grad.set_title(title)
    if fig is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
