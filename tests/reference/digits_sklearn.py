"""scikit-learn classifiers on the digits split in tests/data (reference numbers for the README).

First checks that tests/data/digits_{train,test}.csv is scikit-learn's load_digits split by
train_test_split(test_size=0.25, random_state=0, stratify=y), row for row.  Then, trained on
digits_train.csv and scored on digits_test.csv (test accuracy):

  * LogisticRegression(max_iter=10000), on raw pixels and on standardised pixels
    (StandardScaler; gpuq's logreg standardises too, folding the scaling into its weights);
  * MLPClassifier(hidden_layer_sizes=(64,), random_state=r) for r = 0..9, on standardised
    pixels (as gpuq's mlp: `input_mean`/`input_std`); everything else scikit-learn's default
    (relu, adam, lr 1e-3, batch 200, alpha 1e-4, max_iter 200).

Run:  python tests/reference/digits_sklearn.py   (writes tests/reference/digits_sklearn.json)
"""
import json
import os
import warnings

import numpy as np
import sklearn
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")


def load(split):
    t = np.loadtxt(os.path.join(DATA, f"digits_{split}.csv"), delimiter=",", skiprows=1)
    return t[:, :64], t[:, 64]


def main():
    X, y = load("train")
    Xt, yt = load("test")
    a, b, c, d = train_test_split(*load_digits(return_X_y=True), test_size=0.25, random_state=0,
                                  stratify=load_digits().target)
    split_ok = all(np.array_equal(p, q) for p, q in [(a, X), (b, Xt), (c, y), (d, yt)])
    print(f"tests/data is load_digits split 75/25, random_state 0, stratified: {split_ok}")
    assert split_ok

    out = {"versions": {"numpy": np.__version__, "scikit-learn": sklearn.__version__},
           "split_reproduced": split_ok, "n_train": len(y), "n_test": len(yt)}
    lr = LogisticRegression(max_iter=10000).fit(X, y).score(Xt, yt)
    lr_std = make_pipeline(StandardScaler(), LogisticRegression(max_iter=10000)).fit(X, y).score(Xt, yt)
    print(f"LogisticRegression: raw {lr:.4f}, standardised {lr_std:.4f}")
    out["logistic_regression"] = {"raw": lr, "standardised": lr_std}

    mlp = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for r in range(10):
            m = make_pipeline(StandardScaler(),
                              MLPClassifier(hidden_layer_sizes=(64,), random_state=r))
            mlp[str(r)] = m.fit(X, y).score(Xt, yt)
    v = list(mlp.values())
    print("MLPClassifier((64,)), standardised, random_state 0..9: "
          + " ".join(f"{a:.4f}" for a in v)
          + f"; min {min(v):.4f}, mean {np.mean(v):.4f}, max {max(v):.4f}")
    out["mlp_64_standardised"] = {"per_seed": mlp, "min": min(v), "mean": float(np.mean(v)),
                                  "max": max(v)}
    with open(os.path.join(HERE, "digits_sklearn.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
