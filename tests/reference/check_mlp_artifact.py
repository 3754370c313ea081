"""Loads a gpuq classifier artifact (logreg or mlp) with NumPy and the safetensors file alone,
recomputes the class probabilities of an input CSV and compares them with gpuq's predictions.

    pip install numpy safetensors
    python tests/reference/check_mlp_artifact.py model.safetensors input.csv predictions.csv

The same file loads into PyTorch with
    torch.nn.Sequential(Linear(f, h), ReLU(), Linear(h, k)).load_state_dict(load_file(path))
(feeding it (x - input_mean) / input_std); this script does the same arithmetic in NumPy.
"""

import json
import sys

import numpy as np
from safetensors import safe_open


def load(path):
    with safe_open(path, framework="numpy") as f:
        raw = f.metadata()
        # `format` and `gpuq_algorithm` are plain strings; every other value is JSON.
        meta = {k: v if k in ("format", "gpuq_algorithm") else json.loads(v) for k, v in raw.items()}
        layers = []
        while f"{2 * len(layers)}.weight" in f.keys():
            l = 2 * len(layers)
            layers.append((f.get_tensor(f"{l}.weight"), f.get_tensor(f"{l}.bias")))
    return meta, layers


def probabilities(meta, layers, x):
    if "input_mean" in meta:
        x = (x - np.asarray(meta["input_mean"])) / np.asarray(meta["input_std"])
    act = {"relu": lambda z: np.maximum(z, 0.0), "tanh": np.tanh}.get(meta.get("activation"), lambda z: z)
    a = x.astype(np.float64)
    for i, (w, b) in enumerate(layers):
        a = a @ w.T.astype(np.float64) + b
        if i + 1 < len(layers):
            a = act(a)
    a -= a.max(axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


def main(model_path, input_csv, predictions_csv):
    meta, layers = load(model_path)
    with open(input_csv) as f:
        header = f.readline().strip().split(",")
    data = np.loadtxt(input_csv, delimiter=",", skiprows=1)
    cols = [header.index(c) for c in meta["feature_columns"]]
    probs = probabilities(meta, layers, data[:, cols])
    theirs = np.loadtxt(predictions_csv, delimiter=",", skiprows=1)
    labels = np.asarray(meta["classes"])[probs.argmax(axis=1)]
    diff = np.abs(probs - theirs[:, 1:]).max()
    same = (labels == theirs[:, 0]).mean()
    print(f"{len(layers)} layers, activation {meta.get('activation')}: "
          f"largest probability difference {diff:.2e}, labels agree on {same:.4f} of rows")
    if "label" in header:
        print(f"accuracy from the file alone: {(labels == data[:, header.index('label')]).mean():.4f}")
    return 0 if diff < 1e-4 and same == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
