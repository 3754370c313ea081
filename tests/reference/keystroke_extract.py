"""Build the keystroke-dynamics train/test files for the anomaly-detector tests.

Source data (real, not synthetic): the CMU "DSL-StrongPasswordData" benchmark
of Killourhy & Maxion, "Comparing Anomaly-Detection Algorithms for Keystroke
Dynamics", DSN 2009 (51 subjects x 8 sessions x 50 repetitions, 31 timing
features for the password ".tie5Roanl").  The rows used here were copied
verbatim (text, 4 decimals) from the copy of the file in the public GitHub
repository tfkls/mpum-project, path data/DSL-StrongPasswordData.csv, commit
ea3193e189d26d069a87128c08cd47f347e37495, and stored in
tests/data/keystroke/DSL-StrongPasswordData_extract.csv:

  * header line of the original file,
  * all 400 rows of subjects s002, s003 and s004,
  * the first 5 rows (session 1, reps 1-5) of each of the other 48 subjects.

Protocol (as in the paper) for each genuine subject g in GENUINE:
  train = first 200 repetitions (sessions 1-4), feature columns only;
  test  = remaining 200 repetitions (sessions 5-8, label 1 = genuine)
          + first 5 repetitions of each other subject (250 rows, label 0;
            for s003 this includes s002's first 5 reps, and so on).

Writes tests/data/keystroke/<g>_train.csv and <g>_test.csv.  Values are
copied as text, never re-formatted.

Run from the repository root:  python tests/reference/keystroke_extract.py
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "keystroke")
SRC = os.path.join(DATA, "DSL-StrongPasswordData_extract.csv")
GENUINE = ["s002", "s003", "s004"]
N_TRAIN = 200
N_IMPOSTOR_REPS = 5


def main():
    with open(SRC) as f:
        lines = [l.rstrip("\r\n") for l in f if l.strip()]
    header = lines[0].split(",")
    assert header[:3] == ["subject", "sessionIndex", "rep"] and len(header) == 34
    features = header[3:]
    rows = [l.split(",") for l in lines[1:]]
    # rows are in file order (subject, session, rep)
    by_subject = {}
    for r in rows:
        by_subject.setdefault(r[0], []).append(r)
    subjects = sorted(by_subject)
    assert len(subjects) == 51, len(subjects)

    for g in GENUINE:
        own = by_subject[g]
        assert len(own) == 400, (g, len(own))
        train, rest = own[:N_TRAIN], own[N_TRAIN:]
        with open(os.path.join(DATA, f"{g}_train.csv"), "w", newline="\n") as f:
            f.write(",".join(features) + "\n")
            for r in train:
                f.write(",".join(r[3:]) + "\n")
        with open(os.path.join(DATA, f"{g}_test.csv"), "w", newline="\n") as f:
            f.write(",".join(features + ["label"]) + "\n")
            for r in rest:
                f.write(",".join(r[3:] + ["1"]) + "\n")
            n_imp = 0
            for s in subjects:
                if s == g:
                    continue
                imp = by_subject[s][:N_IMPOSTOR_REPS]
                assert len(imp) == N_IMPOSTOR_REPS
                assert [(r[1], r[2]) for r in imp] == [("1", str(k)) for k in range(1, 6)]
                for r in imp:
                    f.write(",".join(r[3:] + ["0"]) + "\n")
                    n_imp += 1
        print(f"{g}: train {len(train)} rows, test {len(rest)} genuine + {n_imp} impostor")


if __name__ == "__main__":
    main()
