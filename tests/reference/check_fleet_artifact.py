"""Loads a gpuq fleet artifact with NumPy and the safetensors file alone, recomputes the scores
(anomaly) or class probabilities (logreg, mlp) of an input CSV whose rows name their group, and
compares them with gpuq's output.

    pip install numpy safetensors
    python tests/reference/check_fleet_artifact.py fleet.safetensors input.csv output.csv

`input.csv` has the fleet's group column and its feature columns (a `label` column is ignored);
`output.csv` is the output of an infer job that named the fleet with that input (one `score` per
row, or `label,p0,p1,…` with blank cells past a group's classes). Layout (README, "Fleets"): tensors stacked on a leading group axis, `groups` in the metadata
giving each slot's group value.
"""

import csv
import json
import sys

import numpy as np
from safetensors import safe_open


def load(path):
    with safe_open(path, framework="numpy") as f:
        raw = f.metadata()
        meta = {k: v if k in ("format", "gpuq_algorithm") else json.loads(v) for k, v in raw.items()}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def score(meta, t, slot, x):
    """The anomaly score of the rows `x` (float64) by the detector at `slot`."""
    mean = t["mean"][slot].astype(np.float64)
    method = meta["method"]
    if method == "scaled_manhattan":
        return (np.abs(x - mean) / t["scale"][slot]).sum(axis=1)
    if method == "zscore":
        return (np.abs(x - mean) / t["scale"][slot] > meta["z_threshold"]).sum(axis=1).astype(np.float64)
    w = t["whitening"][slot].astype(np.float64)  # F x F, columns past the group's rank are zero
    z = (x - mean) @ w
    if method == "mahalanobis":
        return np.sqrt((z * z).sum(axis=1))
    off = t["reference_offsets"]
    refs = t["references"][off[slot]:off[slot + 1]].astype(np.float64)
    d2 = ((z[:, None, :] - refs[None, :, :]) ** 2).sum(axis=2)
    return np.sqrt(d2.min(axis=1))


def probabilities(meta, t, slot, x):
    """Class probabilities of the rows `x` (float64) by the classifier at `slot`: its layers as
    torch.nn.Linear keeps them, the last one cut to the group's classes."""
    k = int(t["class_counts"][slot])
    a = x
    if meta["gpuq_algorithm"] == "mlp":
        a = (a - t["input_mean"][slot]) / t["input_std"][slot]
    layers = sorted(int(n.split(".")[0]) for n in t if n.endswith(".weight"))
    for i, l in enumerate(layers):
        w = t[f"{l}.weight"][slot].astype(np.float64)
        b = t[f"{l}.bias"][slot].astype(np.float64)
        if i == len(layers) - 1:
            w, b = w[:k], b[:k]
        a = a @ w.T + b
        if i < len(layers) - 1:
            a = np.maximum(a, 0) if meta["activation"] == "relu" else np.tanh(a)
    a = np.exp(a - a.max(axis=1, keepdims=True))
    return a / a.sum(axis=1, keepdims=True)


def check_classifiers(meta, t, x, groups, slots, output_csv):
    with open(output_csv) as f:
        out = list(csv.reader(f))[1:]
    worst = 0.0
    for i, g in enumerate(groups):
        p = probabilities(meta, t, slots[g], x[i:i + 1])[0]
        theirs = np.array([float(c) for c in out[i][1:] if c != ""])
        worst = max(worst, float(np.abs(p - theirs).max()))
    print(f"{meta['gpuq_algorithm']}: {len(groups)} rows of {len(set(groups))} groups, "
          f"largest probability difference {worst:.2e}")
    return 0 if worst <= 1e-5 else 1


def main(model_path, input_csv, scores_csv):
    meta, t = load(model_path)
    slots = {g: i for i, g in enumerate(meta["groups"])}
    with open(input_csv) as f:
        rows = list(csv.DictReader(f))
    x = np.array([[float(r[c]) for c in meta["feature_columns"]] for r in rows])
    groups = [r[meta["group_column"]] for r in rows]
    if meta["gpuq_algorithm"] in ("logreg", "mlp"):
        return check_classifiers(meta, t, x, groups, slots, scores_csv)
    ours = np.empty(len(rows))
    for g in sorted(set(groups)):
        idx = [i for i, h in enumerate(groups) if h == g]
        ours[idx] = score(meta, t, slots[g], x[idx])
    theirs = np.loadtxt(scores_csv, delimiter=",", skiprows=1, usecols=0, ndmin=1)
    rel = np.abs(ours - theirs) / np.maximum(np.abs(ours), 1e-12)
    print(f"{meta['method']}: {len(rows)} rows of {len(set(groups))} groups, "
          f"largest relative difference {rel.max():.2e}")
    return 0 if rel.max() <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
