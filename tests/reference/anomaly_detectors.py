"""Reference scores and metrics for the one-class keystroke anomaly detectors.

Implements, in NumPy float64, four detectors from Killourhy & Maxion (DSN 2009),
trains each on tests/data/keystroke/<subject>_train.csv (31 feature columns)
and scores tests/data/keystroke/<subject>_test.csv (31 features + label,
1 = genuine, 0 = impostor).  Higher score = more anomalous.

Detectors
  scaled_manhattan  mu = column means; a_j = mean_i |x_ij - mu_j| (a_j == 0 -> 1);
                    score = sum_j |x_j - mu_j| / a_j
  mahalanobis       S = sample covariance (n-1); P = np.linalg.pinv(S, hermitian=True);
                    score = sqrt((x-mu)^T P (x-mu))
  zscore            sigma_j = sample std (n-1) (0 -> 1);
                    score = #{j : |x_j - mu_j| / sigma_j > 1.96}
  nearest_neighbor_mahalanobis
                    same P; score = min over training rows t of sqrt((x-t)^T P (x-t))

Metrics (alarm when score > threshold)
  EER: candidate thresholds {-inf} U {distinct scores};
       FA(t) = #genuine with score > t / #genuine,
       MR(t) = #impostor with score <= t / #impostor;
       pick t minimising |FA-MR|, ties -> smallest (FA+MR)/2; EER = (FA+MR)/2.
  zero_miss_far = #genuine with score >= min impostor score / #genuine.

Writes tests/reference/anomaly.json; prints the first 5 test scores per
detector for the first subject (also stored as "first_scores").

Run from the repository root (after keystroke_extract.py):
    python tests/reference/anomaly_detectors.py
"""
import csv
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "keystroke")
SUBJECTS = ["s002", "s003", "s004"]


def load(path, with_label):
    with open(path) as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    a = np.array([[float(v) for v in r] for r in body], dtype=np.float64)
    if with_label:
        assert header[-1] == "label"
        return a[:, :-1], a[:, -1].astype(int)
    return a


def scaled_manhattan(train, test):
    mu = train.mean(axis=0)
    a = np.abs(train - mu).mean(axis=0)
    a[a == 0] = 1.0
    return (np.abs(test - mu) / a).sum(axis=1)


def _pinv_cov(train):
    s = np.cov(train, rowvar=False, ddof=1)
    return np.linalg.pinv(s, hermitian=True)


def _quad(d, p):
    q = np.einsum("ij,jk,ik->i", d, p, d)
    return np.sqrt(np.maximum(q, 0.0))


def mahalanobis(train, test):
    mu = train.mean(axis=0)
    return _quad(test - mu, _pinv_cov(train))


def zscore(train, test):
    mu = train.mean(axis=0)
    sd = train.std(axis=0, ddof=1)
    sd[sd == 0] = 1.0
    return (np.abs(test - mu) / sd > 1.96).sum(axis=1).astype(np.float64)


def nearest_neighbor_mahalanobis(train, test):
    p = _pinv_cov(train)
    out = np.empty(len(test))
    for i, x in enumerate(test):
        out[i] = _quad(x - train, p).min()
    return out


DETECTORS = {
    "scaled_manhattan": scaled_manhattan,
    "mahalanobis": mahalanobis,
    "zscore": zscore,
    "nearest_neighbor_mahalanobis": nearest_neighbor_mahalanobis,
}


def eer(scores, labels):
    gen, imp = scores[labels == 1], scores[labels == 0]
    best = None
    for t in [-np.inf] + sorted(set(scores.tolist())):
        fa = np.count_nonzero(gen > t) / len(gen)
        mr = np.count_nonzero(imp <= t) / len(imp)
        key = (abs(fa - mr), (fa + mr) / 2)
        if best is None or key < best[0]:
            best = (key, t, fa, mr)
    (_, e), t, fa, mr = best
    return e, t, fa, mr


def zero_miss_far(scores, labels):
    gen, imp = scores[labels == 1], scores[labels == 0]
    return np.count_nonzero(gen >= imp.min()) / len(gen)


def main():
    out = {
        "data_source": {
            "kind": "real",
            "dataset": "CMU DSL-StrongPasswordData (Killourhy & Maxion, DSN 2009)",
            "provenance": "rows copied verbatim from GitHub tfkls/mpum-project "
                          "data/DSL-StrongPasswordData.csv @ "
                          "ea3193e189d26d069a87128c08cd47f347e37495; see "
                          "tests/reference/keystroke_extract.py",
            "genuine_subjects": SUBJECTS,
            "protocol": "train = first 200 reps of subject; test = remaining 200 reps "
                        "(label 1) + first 5 reps (session 1) of each of the other "
                        "50 subjects (label 0)",
        }
    }
    for si, subj in enumerate(SUBJECTS):
        train = load(os.path.join(DATA, f"{subj}_train.csv"), False)
        test, labels = load(os.path.join(DATA, f"{subj}_test.csv"), True)
        assert train.shape == (200, 31) and test.shape == (450, 31)
        res = {}
        first = {}
        ev = np.linalg.eigvalsh(np.cov(train, rowvar=False, ddof=1))
        cutoff = ev[-1] * train.shape[1] * np.finfo(np.float64).eps
        # The note below claims 10 exact dependencies and a spectral gap that
        # brackets every relative cutoff in [1e-14, 1e-4]; check it per subject.
        assert np.count_nonzero(ev > cutoff) == 21, (subj, ev)
        assert ev[ev <= cutoff].max() < 1e-14 * ev[-1], subj
        assert ev[ev > cutoff].min() > 1e-4 * ev[-1], subj
        out.setdefault("covariance_spectrum", {})[subj] = {
            "rank_after_pinv_cutoff": int(np.count_nonzero(ev > cutoff)),
            "largest_eigenvalue": float(ev[-1]),
            "smallest_kept_eigenvalue": float(ev[ev > cutoff].min()),
            "largest_dropped_eigenvalue": float(ev[ev <= cutoff].max()),
            "default_pinv_cutoff": float(cutoff),
            "note": "10 exact linear dependencies (DD = H + UD for 10 key pairs); "
                    "any relative cutoff between ~1e-14 and ~1e-4 gives the same P",
        }
        for name, fn in DETECTORS.items():
            s = fn(train, test)
            e, t, fa, mr = eer(s, labels)
            res[name] = {
                "eer": float(e),
                "zero_miss_far": float(zero_miss_far(s, labels)),
                "eer_threshold": float(t),
                "eer_fa": float(fa),
                "eer_mr": float(mr),
            }
            first[name] = [float(v) for v in s[:5]]
            print(f"{subj} {name:30s} eer={e:.6f} zero_miss_far={res[name]['zero_miss_far']:.6f}")
            if si == 0:
                print("   first 5 scores:", [repr(float(v)) for v in s[:5]])
        out[subj] = res
        if si == 0:
            out["first_scores"] = {"subject": subj, **first}
    with open(os.path.join(HERE, "anomaly.json"), "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
