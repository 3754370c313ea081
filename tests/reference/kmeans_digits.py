"""scikit-learn k-means inertia on tests/data/digits_train.csv (reference numbers).

Data: tests/data/digits_train.csv, header px0..px63,label; only the 64 pixel
columns are used (label dropped), as float64.

Computes KMeans(n_clusters=10, n_init=10, random_state=r).inertia_ for r = 0..4
(best / worst / each), and KMeans(n_clusters=10, n_init=1, random_state=r) for
r = 0..9.  Everything else is scikit-learn's default (init="k-means++",
algorithm="lloyd", max_iter=300, tol=1e-4).  Inertia = sum of squared distances
of each sample to its assigned centre.  Versions are recorded in the JSON since
the k-means++ seeding stream depends on them.

Run:  python tests/reference/kmeans_digits.py   (writes tests/reference/kmeans.json)
"""
import json
import os

import numpy as np
import sklearn
from sklearn.cluster import KMeans

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "digits_train.csv")


def load():
    with open(DATA) as f:
        header = f.readline().strip().split(",")
    assert header[:64] == [f"px{i}" for i in range(64)] and header[64] == "label"
    X = np.loadtxt(DATA, delimiter=",", skiprows=1, dtype=np.float64)
    return X[:, :64]


def run(X, n_init, seeds):
    res = {}
    for r in seeds:
        km = KMeans(n_clusters=10, n_init=n_init, random_state=r).fit(X)
        # recompute inertia independently from labels and centres as a check
        d = ((X - km.cluster_centers_[km.labels_]) ** 2).sum()
        res[str(r)] = {"inertia": float(km.inertia_), "inertia_recomputed": float(d),
                       "n_iter": int(km.n_iter_)}
        print(f"n_init={n_init} random_state={r}: inertia={km.inertia_!r} n_iter={km.n_iter_}")
    vals = [v["inertia"] for v in res.values()]
    return {"per_seed": res, "best": min(vals), "worst": max(vals),
            "mean": float(np.mean(vals))}


def main():
    X = load()
    out = {
        "data": "tests/data/digits_train.csv (64 pixel columns, label dropped)",
        "n_samples": int(X.shape[0]), "n_features": int(X.shape[1]),
        "n_clusters": 10,
        "versions": {"numpy": np.__version__, "scikit-learn": sklearn.__version__},
        "n_init_10_seeds_0_4": run(X, 10, range(5)),
        "n_init_1_seeds_0_9": run(X, 1, range(10)),
    }
    with open(os.path.join(HERE, "kmeans.json"), "w") as f:
        json.dump(out, f, indent=1)
    for k in ("n_init_10_seeds_0_4", "n_init_1_seeds_0_9"):
        print(k, "best", out[k]["best"], "worst", out[k]["worst"])


if __name__ == "__main__":
    main()
