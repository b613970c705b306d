"""Train a 784-256-10 ReLU MLP on the bundled MNIST sample with fastmlp's kernels, by hand.

Every step of training is one kernel call: the forward layer is a GEMM with bias and ReLU fused
in its epilogue, the loss writes its gradient in the same pass, the backward GEMM applies the
ReLU mask in its epilogue, and Adam updates each parameter in one pass.

    python examples/train_mnist.py [--epochs 5] [--batch-size 128]
"""
import argparse
import time

import numpy as np

import fastmlp
from fastmlp import datasets
from fastmlp.model import init_params


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    images, labels = datasets.load_sample()
    X = datasets.prepare_images(images)
    y = labels.astype(np.int32)
    X_train, y_train, X_test, y_test = X[:8000], y[:8000], X[8000:], y[8000:]

    rng = np.random.default_rng(args.seed)
    sizes = [784, args.hidden, 10]
    # He initialisation (normal, std sqrt(2 / fan_in), zero biases) for both layers
    params = init_params(sizes, ["relu", "identity"], "he", rng)
    W, b = params[0::2], params[1::2]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]

    print(f"fastmlp {fastmlp.__version__}: isa={fastmlp.info()['isa']}, "
          f"threads={fastmlp.get_num_threads()}")
    step = 0
    for epoch in range(args.epochs):
        order = rng.permutation(len(X_train))
        t0, losses = time.perf_counter(), []
        for start in range(0, len(order), args.batch_size):
            idx = order[start:start + args.batch_size]
            x, t = X_train[idx], y_train[idx]
            h = fastmlp.matmul(x, W[0], bias=b[0], activation="relu")       # forward
            logits = fastmlp.matmul(h, W[1], bias=b[1])
            loss, dlogits = fastmlp.softmax_cross_entropy(logits, t)        # loss + gradient
            dW1 = fastmlp.matmul(h, dlogits, trans_a=True)                  # backward
            db1 = fastmlp.bias_grad(dlogits)
            dh = fastmlp.matmul(dlogits, W[1], trans_b=True, grad_activation="relu", y=h)
            dW0 = fastmlp.matmul(x, dh, trans_a=True)
            db0 = fastmlp.bias_grad(dh)
            step += 1
            for p, g, mi, vi in zip(params, [dW0, db0, dW1, db1], m, v):    # update
                fastmlp.adam_update(p, g, mi, vi, step=step, lr=args.lr)
            losses.append(loss)
        seconds = time.perf_counter() - t0
        h = fastmlp.matmul(X_test, W[0], bias=b[0], activation="relu")
        accuracy = np.mean(np.argmax(fastmlp.matmul(h, W[1], bias=b[1]), axis=1) == y_test)
        print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, test accuracy {accuracy:.4f}, "
              f"{len(X_train) / seconds:,.0f} samples/s")


if __name__ == "__main__":
    main()
