"""Fuzz the data readers through the command line: malformed CSV, Parquet and JSON lines files, seeded.

Each case writes one file (a plausible data set in one of the layouts tsynth reads, then damaged: nasty
cells, shuffled or duplicated time stamps, ragged or nested arrays, huge numbers, truncated or flipped
bytes, broken metadata...) and runs ``tsynth prepare FILE -o OUT [read flags]`` in this process
(``tsynth.cli.main``). A case passes when the command either succeeds (exit status 0) or refuses with exit
status 2, its last stderr line ``tsynth: error: ...`` (one line, no traceback) and nothing written to OUT;
anything else (an exception, another status, a message over several lines, a half-written output) is a
failure, listed with its file kept for replay.

    python -m benchmarks.fuzz_readers [--cases 3000] [--seed 0]

Writes the counts to ``benchmarks/results/fuzz_readers.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import shutil
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).parent / "results" / "fuzz_readers.json"

NASTY_CELLS = ["", "nan", "NaN", "inf", "-inf", "1e308", "3.4e38", "-1e400", "1e16", "abc", "1,5", '"', "0x1F",
               "  ", "NULL", "None", "true", "2024-13-45", "2024-01-01T00:00:00+05:00", "9999-12-31", "1677-01-01",
               "12:00", "\uff11\uff12", "\u2028", "x" * 5000, "-0", "1_000", "\x00", "1e-320", "[1, 2]"]
NASTY_JSON = ["null", '"x"', "true", "[]", "[1, [2]]", "1e400", "1" + "0" * 400, "NaN", "Infinity", "-Infinity",
              "{}", "[" * 3000 + "]" * 3000, "1e308", "3.4e38", '"2024-01-01"', "1e16", "-0.0", "[[1, 2], [3]]"]
FLAG_SETS = [[], [], [], [], ["--layout", "wide"], ["--layout", "long"], ["--layout", "records"], ["--layout", "arrays"],
             ["--id-col", "item_id", "--time-col", "timestamp"], ["--id-col", "id"], ["--time-col", "ts"],
             ["--length", "5"], ["--length", "3", "--stride", "1"], ["--offset", "2", "--length", "4"],
             ["--sort"], ["--fill", "ffill"], ["--fill", "interpolate", "--freq", "h"], ["--orient", "rows"],
             ["--zscore"], ["--freq", "h"], ["--freq", "xyz"], ["--value-cols", "value,v2"],
             ["--attribute-cols", "region"], ["--drop-short", "--length", "10"], ["--validation-fraction", "0"]]


# ---------------------------------------------------------------------- generators
def _times(rng: np.random.Generator, n: int) -> list[str]:
    """Hourly time stamps, sometimes damaged: shuffled, duplicated, a gap, mixed formats or zones."""
    t = list(pd.date_range("2024-01-01", periods=max(n, 1), freq=rng.choice(["h", "D", "15min", "MS"])).astype(str))[:n]
    kind = rng.integers(8)
    if kind == 0 and n > 2:
        rng.shuffle(t)
    elif kind == 1 and n > 2:
        t[rng.integers(1, n)] = t[0]
    elif kind == 2 and n > 3:
        del t[rng.integers(1, n - 1)]
        t.append(str(pd.Timestamp(t[-1]) + pd.Timedelta(hours=1)))
    elif kind == 3 and n > 1:
        t[rng.integers(n)] = "2024-01-01T03:00:00+05:00"
    elif kind == 4:
        t = [str(k) for k in range(n)]  # step numbers
    return t


def _frame(rng: np.random.Generator) -> pd.DataFrame:
    """A small data set in a random layout (long, wide, wide rows) with random extra columns."""
    n_items = int(rng.integers(10, 20)) if rng.random() < 0.7 else int(rng.integers(1, 10))
    length = int(rng.integers(0, 30))
    layout = rng.integers(3)
    if layout == 0:  # long
        rows = []
        for i in range(n_items):
            n = max(0, length + int(rng.integers(-3, 3)))
            rows.append(pd.DataFrame({"item_id": [f"M{i}"] * n, "timestamp": _times(rng, n),
                                      "value": rng.normal(size=n) * 10.0 ** rng.integers(-3, 6)}))
        df = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
        if rng.random() < 0.3:
            df["region"] = rng.choice(["north", "south"], size=len(df))
        if rng.random() < 0.3:
            df["v2"] = rng.integers(-5, 5, size=len(df))
    elif layout == 1:  # wide columns
        df = pd.DataFrame(rng.normal(size=(length, n_items)), columns=[f"s{i}" for i in range(n_items)])
        if rng.random() < 0.5:
            df.insert(0, "timestamp", _times(rng, length))
    else:  # wide rows
        df = pd.DataFrame(rng.normal(size=(n_items, length)), columns=[str(c) for c in range(length)])
        if rng.random() < 0.5:
            df.insert(0, "item_id", [f"M{i}" for i in range(n_items)])
    if rng.random() < 0.2 and len(df.columns):  # rename a column to something unexpected
        cols = list(df.columns)
        cols[rng.integers(len(cols))] = rng.choice(["id", "ts", "", "item_id", "timestamp", "target", "value"])
        df.columns = cols
    df = df.astype(object)
    for _ in range(int(rng.poisson(0.8))):
        if df.size:
            df.iat[rng.integers(len(df)), rng.integers(len(df.columns))] = rng.choice(NASTY_CELLS)
    return df


def _mutate_bytes(rng: np.random.Generator, data: bytes, rate: float) -> bytes:
    """Truncate, flip, insert or delete bytes with probability ``rate`` each."""
    b = bytearray(data)
    if rng.random() < rate and len(b) > 1:
        del b[rng.integers(1, len(b)):]
    if rng.random() < rate and b:
        for _ in range(int(rng.integers(1, 6))):
            b[rng.integers(len(b))] = int(rng.integers(256))
    if rng.random() < rate:
        pos = int(rng.integers(len(b) + 1))
        b[pos:pos] = rng.choice([b"\xff\xfe", b"\xef\xbb\xbf", b",,,", b"\n\n", b'"', b"\r", b";", b"\t"])
    if rng.random() < rate and len(b) > 4:
        i = int(rng.integers(len(b) - 2))
        del b[i: i + int(rng.integers(1, 4))]
    return bytes(b)


def csv_case(rng: np.random.Generator) -> bytes:
    text = _frame(rng).to_csv(index=False)
    if rng.random() < 0.1:
        text = text.replace(",", ";")
    return _mutate_bytes(rng, text.encode("utf-8", "surrogatepass"), 0.1)


def _json_value(rng: np.random.Generator, n: int) -> str:
    """A JSON list of ``n`` numbers, some replaced by nasty JSON."""
    vals = [repr(float(x)) for x in rng.normal(size=n)]
    for _ in range(int(rng.poisson(0.15))):
        if vals:
            vals[rng.integers(len(vals))] = str(rng.choice(NASTY_JSON))
    return "[" + ", ".join(vals) + "]"


def jsonl_case(rng: np.random.Generator) -> bytes:
    kind, n_rows = rng.integers(4), int(rng.integers(8, 20)) if rng.random() < 0.7 else int(rng.integers(0, 8))
    lines = []
    for i in range(n_rows):
        n = int(rng.integers(0, 30))
        if kind == 0:  # arrays
            lines.append(_json_value(rng, n))
        elif kind == 1:  # a list per channel
            keys = ["consumption"] + (["temp"] if rng.random() < 0.4 else [])
            lines.append("{" + ", ".join(f'"{k}": {_json_value(rng, n + int(rng.integers(0, 2)) * (k == "temp"))}'
                                         for k in keys) + (f', "item_id": "M{i}"' if rng.random() < 0.5 else "") + "}")
        else:  # records
            start = rng.choice(['"2024-01-01 00:00"', '"not a date"', "null", "17", '"2024-01-01T00:00:00Z"'],
                               p=[0.7, 0.1, 0.05, 0.05, 0.1])
            target = _json_value(rng, n) if rng.random() < 0.8 else "[" + ", ".join(
                _json_value(rng, n) for _ in range(int(rng.integers(1, 3)))) + "]"
            extra = rng.choice(["", ', "freq": "h"', ', "freq": "xyz"', ', "region": "north"', ', "region": [1]',
                                ', "item_id": null', ', "feat_static_cat": [1]'])
            lines.append(f'{{"item_id": "M{i}", "start": {start}, "target": {target}{extra}}}')
    if rng.random() < 0.1 and lines:
        lines[rng.integers(len(lines))] = str(rng.choice(NASTY_JSON))
    text = "\n".join(lines) + ("\n" if rng.random() < 0.8 else "")
    return _mutate_bytes(rng, text.encode(), 0.15)


def parquet_case(rng: np.random.Generator) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = rng.integers(3)
    if kind == 0:  # records with list targets
        n = int(rng.integers(8, 20)) if rng.random() < 0.7 else int(rng.integers(0, 8))
        targets = []
        for _ in range(n):
            m = int(rng.integers(0, 30))
            t = rng.normal(size=m).tolist()
            if rng.random() < 0.05 and t:
                t[rng.integers(len(t))] = float(rng.choice([np.inf, np.nan, 1e308, 3.4e38, -1e30]))
            targets.append(t if rng.random() < 0.97 else [t, t[:-1]] if t else None)
        data = {"item_id": [f"M{i}" for i in range(n)], "target": targets}
        if rng.random() < 0.7:
            data["start"] = [rng.choice(["2024-01-01", "2024-01-01T05:00:00+02:00", "bad"], p=[0.9, 0.07, 0.03])
                             for _ in range(n)]
        try:
            table = pa.table(data)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            table = pa.table({k: [json.dumps(v) for v in vs] for k, vs in data.items()})
    else:
        df = _frame(rng)
        df.columns = [c if list(df.columns[:k]).count(c) == 0 else f"{c}.{k}" for k, c in enumerate(df.columns)]
        try:
            table = pa.Table.from_pandas(df.infer_objects(), preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            table = pa.Table.from_pandas(df.astype(str), preserve_index=False)
    if rng.random() < 0.15:
        meta = rng.choice([b'{"freq": "h", "channels": ["value"]}', b"not json", b"[1, 2]",
                           b'{"channels": ["a", "b", "c"]}', b'{"freq": 5}', b'{"channels": "value"}'])
        table = table.replace_schema_metadata({b"tsynth": meta})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return _mutate_bytes(rng, buf.getvalue(), 0.05)


GENERATORS = {".csv": csv_case, ".jsonl": jsonl_case, ".parquet": parquet_case, ".json": jsonl_case}


def make_case(seed: int, k: int) -> tuple[str, bytes, list[str]]:
    """Case ``k`` of the run seeded ``seed``: (extension, file content, read flags)."""
    rng = np.random.default_rng([seed, k])
    ext = str(rng.choice([".csv", ".jsonl", ".parquet", ".json"], p=[0.4, 0.3, 0.25, 0.05]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = GENERATORS[ext](rng)
    return ext, data, [] if rng.random() < 0.4 else list(FLAG_SETS[rng.integers(len(FLAG_SETS))])


# ---------------------------------------------------------------------- running
def run_case(ext: str, data: bytes, flags: list[str], work: Path) -> tuple[str, str]:
    """Run one case: ("accepted" | "refused" | a failure kind, detail)."""
    from tsynth.cli import main

    work.mkdir(parents=True, exist_ok=True)
    path, out = work / f"data{ext}", work / "out"
    path.write_bytes(data)
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' dtype warnings are not the command's message
            rc = main(["prepare", str(path), "-o", str(out), *flags])
    except SystemExit as e:  # argparse
        rc = e.code
    except BaseException:  # noqa: BLE001 -- the failure this fuzzer looks for
        return "exception", traceback.format_exc(limit=-3)
    text = err.getvalue()
    if rc == 0:
        return "accepted", ""
    if rc != 2:
        return "bad_status", f"exit status {rc}: {text[-500:]}"
    lines = text.rstrip("\n").split("\n")
    if "Traceback" in text or not lines[-1].startswith("tsynth: error: ") or \
            sum(line.startswith("tsynth: error:") for line in lines) != 1:
        return "bad_message", text[-800:]
    if out.exists() and any(out.iterdir()):
        return "wrote_output", f"{sorted(p.name for p in out.iterdir())} after: {lines[-1]}"
    return "refused", lines[-1]


def fuzz(cases: int, seed: int = 0, keep: Path | None = None) -> dict:
    """Run ``cases`` cases; the counts, the first failures and (with ``keep``) their files."""
    counts: dict[str, int] = {}
    failures, messages = [], {}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="tsynth-fuzz-") as tmp:
        for k in range(cases):
            ext, data, flags = make_case(seed, k)
            work = Path(tmp) / f"case{k}"
            kind, detail = run_case(ext, data, flags, work)
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "refused":
                key = detail.split(f"data{ext}: ", 1)[-1][:70]  # the message without the case's path
                messages[key] = messages.get(key, 0) + 1
            elif kind != "accepted":
                failures.append({"case": k, "ext": ext, "flags": flags, "kind": kind, "detail": detail})
                if keep is not None:
                    keep.mkdir(parents=True, exist_ok=True)
                    (keep / f"case{k}{ext}").write_bytes(data)
            shutil.rmtree(work, ignore_errors=True)
    return {"cases": cases, "seed": seed, "seconds": round(time.time() - t0, 1), "counts": counts,
            "failures": len(failures), "first_failures": failures[:20],
            "commonest_refusals": dict(sorted(messages.items(), key=lambda kv: -kv[1])[:15])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="copy the files of failing cases here")
    args = ap.parse_args()
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"),
              "command": f"python -m benchmarks.fuzz_readers --cases {args.cases} --seed {args.seed}",
              **fuzz(args.cases, args.seed, args.keep)}
    from tsynth.data import atomic_write

    atomic_write(OUT, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    print(json.dumps({k: v for k, v in result.items() if k != "first_failures"}, indent=2))
    for f in result["first_failures"]:
        print(f"--- case {f['case']} ({f['ext']}, {f['flags']}): {f['kind']}\n{f['detail']}")
    if result["failures"]:
        raise SystemExit(f"{result['failures']} of {args.cases} cases failed")


if __name__ == "__main__":
    main()
