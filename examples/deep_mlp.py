"""Why deep MLPs train: a 10-hidden-layer ReLU network on the bundled MNIST sample, three ways.

    bad init      weights N(0, 0.01^2): each layer multiplies the signal's scale by about
                  0.01 sqrt(n_in / 2), so forward activations and backward gradients shrink
                  geometrically with depth (vanishing gradients)
    he            He initialization, std sqrt(2 / n_in): the scale is kept layer to layer
    he+layernorm  He, and LayerNorm before every ReLU: each layer's input is re-centred and
                  re-scaled whatever the weights do

Each trains with plain SGD with momentum (whose step is proportional to the gradient, so a
vanishing gradient shows), the same seed and batches; fastmlp's diagnostics record per-layer
gradient norms from the training step's own buffers. Prints the final loss and test accuracy of
each variant and the diagnostics table of the first epoch, and writes the picture.

    python examples/deep_mlp.py [--epochs 8] [--plot examples/deep_mlp.png]
"""
import argparse

import numpy as np

import fastmlp
from fastmlp import datasets
from fastmlp.model import diagnostics

DEPTH, WIDTH = 10, 128


def train(variant, X, y, Xt, yt, args):
    norm = "layer" if variant == "he+layernorm" else None
    model = fastmlp.MLP([X.shape[1]] + [WIDTH] * DEPTH + [10], activation="relu", init="he",
                        normalization=norm, random_state=args.seed)
    if variant == "bad init":
        rng = np.random.default_rng(args.seed)
        for W in model.params[0:2 * model.n_layers:2]:
            W[...] = rng.normal(0.0, 0.01, W.shape)
    step = model.train_step("softmax_cross_entropy", args.batch_size, optimizer="sgd",
                            momentum=0.9)
    recorder = diagnostics.Recorder(step)
    rng = np.random.default_rng(args.seed)
    n = X.shape[0]
    last = (n - 1) // args.batch_size * args.batch_size
    for epoch in range(1, args.epochs + 1):
        order, total = rng.permutation(n), 0.0
        for start in range(0, n, args.batch_size):
            idx = order[start:start + args.batch_size]
            if start == last:
                recorder.before_update()
            total += step.run(X, y, lr=args.lr, index=idx) * len(idx)
        recorder.record(epoch, total / n)
    acc = float(np.mean(model.predict(Xt).argmax(axis=1) == yt))
    return recorder.records, acc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="deep_mlp.png", help="the picture (needs matplotlib)")
    args = parser.parse_args()

    images, labels = datasets.load_sample()
    X, y = datasets.prepare_images(images), labels.astype(np.int32)
    X, Xt, y, yt = X[:8000], X[8000:], y[:8000], y[8000:]
    runs = {}
    acts = ["relu"] * DEPTH
    for variant in ("bad init", "he", "he+layernorm"):
        records, acc = train(variant, X, y, Xt, yt, args)
        runs[variant] = records
        first, final = records[0], records[-1]
        print(f"{variant:>12}: final loss {final['loss']:.4f}, test accuracy {100 * acc:.2f}%; "
              f"epoch 1 gradient norm, first layer / last hidden: "
              f"{first['layers'][0]['grad_norm']:.2e} / "
              f"{first['layers'][DEPTH - 1]['grad_norm']:.2e}")
        print(diagnostics.format_table(first, acts))
    if args.plot:
        import matplotlib   # optional: only the picture needs it
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.3 * len(runs)), squeeze=False)
        for row, (variant, records) in zip(axes, runs.items()):
            diagnostics.plot(records, None, title=variant, ax_pair=row)
        lo = min(ax.get_ylim()[0] for ax in axes[:, 1])
        hi = max(ax.get_ylim()[1] for ax in axes[:, 1])
        for ax in axes[:, 1]:
            ax.set_ylim(lo, hi)         # one scale: the gradient norms compare across rows
        lo = min(ax.get_ylim()[0] for ax in axes[:, 0])
        hi = max(ax.get_ylim()[1] for ax in axes[:, 0])
        for ax in axes[:, 0]:
            ax.set_ylim(lo, hi)
        fig.suptitle(f"{DEPTH} hidden ReLU layers of {WIDTH}, SGD momentum 0.9, lr {args.lr}, "
                     f"MNIST sample ({fastmlp.__version__})")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
