"""SeriesSet readers/writers, preparation (windows, z-score, split) and every bad input of the issue."""

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest

from tsynth import SeriesSet
from tsynth.data import atomic_write, load_demo, load_hf_dataset, read_series, write_series
from tsynth.errors import DataError, TsynthError


def assert_same(a: SeriesSet, b: SeriesSet, channels: bool = True, attributes: bool = True) -> None:
    """Same values, lengths, ids, start times, frequency (and channel names, attributes)."""
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6, equal_nan=True)
    assert list(a.item_id) == list(b.item_id)
    assert (a.start is None) == (b.start is None)
    if a.start is not None:
        np.testing.assert_array_equal(a.start, b.start)
    assert a.freq == b.freq
    if channels:
        assert a.channels == b.channels
    if attributes:
        assert a.attributes.astype(object).to_dict("list") == b.attributes.astype(object).to_dict("list")


def two_channel() -> SeriesSet:
    rng = np.random.default_rng(2)
    return SeriesSet.from_arrays([rng.normal(size=(6, 2)), rng.normal(size=(4, 2))], ["a", "b"], ["load", "temp"],
                                 start=["2020-01-01", "2020-02-01"], freq="D",
                                 attributes=pd.DataFrame({"site": ["x", "y"]}))


def write_csv(path, text: str):
    path.write_text(text)
    return path


# ---------------------------------------------------------------------- round trips through files
@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
def test_file_round_trip_keeps_everything(hourly, tmp_path, ext):
    path = write_series(hourly, tmp_path / f"out.{ext}")
    back = read_series(path, attribute_cols=["region", "capacity"] if ext == "csv" else None)
    # JSON lines records carry no channel names (univariate targets read back as "value")
    assert_same(hourly, back, channels=ext != "jsonl")
    assert [p.name for p in tmp_path.iterdir()] == [f"out.{ext}"]


@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
def test_file_round_trip_multivariate(tmp_path, ext):
    data = two_channel()
    path = data.write(tmp_path / f"mv.{ext}")
    back = SeriesSet.read(path, attribute_cols=["site"] if ext == "csv" else None)
    assert_same(data, back, channels=ext != "jsonl")
    assert back.channels == (["value_0", "value_1"] if ext == "jsonl" else ["load", "temp"])


def test_long_round_trip(hourly):
    long = hourly.to_long()
    assert list(long.columns) == ["item_id", "timestamp", "consumption", "region", "capacity"]
    assert len(long) == 48 + 48 + 30
    assert long["timestamp"].iloc[48 + 48] == pd.Timestamp("2014-03-01 12:00")
    assert_same(hourly, SeriesSet.from_long(long, attribute_cols=["region", "capacity"]))


def test_long_parquet_file(hourly, tmp_path):
    hourly.to_long().to_parquet(tmp_path / "long.parquet")
    back = read_series(tmp_path / "long.parquet", layout="long", attribute_cols=["region", "capacity"])
    assert_same(hourly, back)


def test_long_unsorted_rows_with_sort(hourly):
    shuffled = hourly.to_long().sample(frac=1.0, random_state=0)
    with pytest.raises(DataError, match="timestamps are not sorted"):
        SeriesSet.from_long(shuffled, attribute_cols=["region", "capacity"])
    back = SeriesSet.from_long(shuffled, attribute_cols=["region", "capacity"], sort=True)
    order = np.argsort(back.item_id)
    assert_same(hourly, back.subset(order))


def test_long_without_time_axis_round_trips_step_numbers():
    data = SeriesSet.from_arrays([np.arange(4.0), np.arange(3.0)])
    long = data.to_long()
    assert long["timestamp"].tolist() == [0, 1, 2, 3, 0, 1, 2]
    back = SeriesSet.from_long(long)
    assert back.start is None and back.freq is None
    assert_same(data, back)


def test_long_time_zones_are_converted_to_utc():
    df = pd.DataFrame({"item_id": "a", "timestamp": ["2020-03-29T00:00:00+01:00", "2020-03-29T01:00:00+01:00",
                                                      "2020-03-29T03:00:00+02:00"], "v": [1.0, 2.0, 3.0]})
    data = SeriesSet.from_long(df)
    assert data.freq == "h" and data.start[0] == np.datetime64("2020-03-28T23:00")


def test_wide_columns_round_trip(hourly, tmp_path):
    same_start = hourly.subset([0, 1])
    wide = same_start.to_wide()
    assert list(wide.columns) == ["timestamp", "MT_001", "MT_002"]
    assert_same(same_start, SeriesSet.from_wide(wide, time_col="timestamp"), channels=False, attributes=False)
    wide.to_csv(tmp_path / "wide.csv", index=False)
    assert_same(same_start, read_series(tmp_path / "wide.csv"), channels=False, attributes=False)


def test_wide_rows_round_trip_keeps_timestamps_from_headers(hourly, tmp_path):
    same_start = hourly.subset([0, 1])
    wide = same_start.to_wide(orient="rows")
    assert wide.shape == (2, 49) and wide.columns[0] == "item_id"
    wide.to_csv(tmp_path / "rows.csv", index=False)
    back = read_series(tmp_path / "rows.csv", orient="rows")
    assert_same(same_start, back, channels=False, attributes=False)


def test_wide_ragged_without_time_axis():
    data = SeriesSet.from_arrays([np.arange(5.0), np.arange(3.0) + 10], ["a", "b"])
    wide = data.to_wide()
    assert wide["b"].isna().sum() == 2  # trailing empty cells make b shorter
    assert_same(data, SeriesSet.from_wide(wide))
    rows = data.to_wide(orient="rows")
    assert_same(data, SeriesSet.from_wide(rows, orient="rows", id_col="item_id"))


def test_records_round_trip_with_attributes(hourly):
    records = hourly.to_records()
    assert set(records[0]) == {"item_id", "start", "target", "region", "capacity"}
    assert records[2]["start"] == pd.Timestamp("2014-03-01 12:00") and len(records[2]["target"]) == 30
    assert_same(hourly, SeriesSet.from_records(records, freq="h", channels=["consumption"]))


def test_records_multivariate_channels_by_time():
    data = two_channel()
    records = data.to_records()
    assert np.asarray(records[0]["target"]).shape == (2, 6)  # channels x time, as GluonTS
    assert_same(data, SeriesSet.from_records(records, freq="D", channels=["load", "temp"]))


def test_jsonl_arrays_like_few_shots(tmp_path):
    path = tmp_path / "few_shots.jsonl"
    path.write_text("[1.5, 2.0, 3.25]\n\n[4, 5, 6, 7]\n")
    data = read_series(path)
    assert list(data.item_id) == ["series_0", "series_1"] and data.lengths.tolist() == [3, 4]
    np.testing.assert_array_equal(data.series(1)[:, 0], [4, 5, 6, 7])
    assert data.start is None


def test_jsonl_channel_objects(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"consumption": [1, 2, 3]}\n{"consumption": [4, 5]}\n')
    data = read_series(path)
    assert data.channels == ["consumption"] and data.lengths.tolist() == [3, 2]
    path.write_text('{"item_id": "x", "load": [1, 2], "temp": [3, 4]}\n')
    two = read_series(path)
    assert two.channels == ["load", "temp"] and list(two.item_id) == ["x"]
    np.testing.assert_array_equal(two.series(0), [[1, 3], [2, 4]])


def test_jsonl_writer_adds_frequency(hourly, tmp_path):
    path = write_series(hourly, tmp_path / "r.jsonl")
    first = json.loads(path.read_text().splitlines()[0])
    assert first["freq"] == "h" and first["start"] == "2014-01-01T00:00:00"


# ---------------------------------------------------------------------- Hugging Face datasets (local files)
@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_load_hf_dataset_local_file(electricity_records, tmp_path, ext):
    records = electricity_records(n_items=4, length=24)
    path = tmp_path / f"electricity.{ext}"
    if ext == "parquet":
        pd.DataFrame(records).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = load_hf_dataset(str(path), freq="h", cache_dir=str(tmp_path / "cache"))
    assert list(data.item_id) == ["MT_001", "MT_002", "MT_003", "MT_004"]
    assert data.values.shape == (4, 24, 1) and data.freq == "h"
    assert (data.start == np.datetime64("2012-01-01T00:00")).all()
    np.testing.assert_allclose(data.series(3)[:, 0], records[3]["target"], rtol=1e-6)
    assert list(data.attributes.columns) == []  # feat_static_cat is GluonTS bookkeeping, not an attribute
    assert data.timestamps(0)[-1] == pd.Timestamp("2012-01-01 23:00")


def test_load_hf_dataset_folder_needs_data_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=re.escape(str(tmp_path)) + ".*found none"):
        load_hf_dataset(str(tmp_path))


# ---------------------------------------------------------------------- windows, z-score, split
def test_window_first_values_and_offset(hourly):
    first = hourly.window(length=24)
    assert first.values.shape == (3, 24, 1) and list(first.item_id) == list(hourly.item_id)
    np.testing.assert_array_equal(first.start, hourly.start)
    cut = hourly.window(offset=5, length=10)
    np.testing.assert_array_equal(cut.values[:, :, 0], hourly.values[:, 5:15, 0])
    assert cut.start[2] == np.datetime64("2014-03-01T17:00")
    assert cut.timestamps(0)[0] == pd.Timestamp("2014-01-01 05:00")
    assert cut.attributes["region"].tolist() == ["north", "south", "north"]


def test_window_longer_than_a_ragged_series(hourly, caplog):
    with pytest.raises(DataError, match=r"series 'MT_003' has 30 steps, shorter than the window .*1 series are too short"):
        hourly.window(length=40)
    with caplog.at_level(logging.WARNING, logger="tsynth"):
        kept = hourly.window(length=40, drop_short=True)
    assert list(kept.item_id) == ["MT_001", "MT_002"]
    assert "dropped 1 of 3 series" in caplog.text
    with pytest.raises(DataError, match="every series is shorter"):
        hourly.window(length=100, drop_short=True)


def test_sliding_windows_remember_item_and_start(hourly):
    wins = hourly.sliding_windows(length=24, stride=12)
    # 48 steps -> offsets 0, 12, 24; 30 steps -> offset 0
    assert list(wins.item_id) == ["MT_001"] * 3 + ["MT_002"] * 3 + ["MT_003"]
    assert wins.attributes["window_offset"].tolist() == [0, 12, 24, 0, 12, 24, 0]
    assert wins.start[1] == np.datetime64("2014-01-01T12:00") and wins.start[5] == np.datetime64("2014-01-02T00:00")
    np.testing.assert_array_equal(wins.values[4, :, 0], hourly.values[1, 12:36, 0])
    assert wins.attributes["region"].tolist()[:4] == ["north"] * 3 + ["south"]


def test_sliding_windows_calendar_frequency():
    monthly = SeriesSet.from_arrays([np.arange(6.0)], ["x"], start=["2020-01-31"], freq="ME")
    wins = monthly.sliding_windows(length=3, stride=2)
    assert list(wins.start) == [np.datetime64("2020-01-31"), np.datetime64("2020-03-31")]
    assert wins.timestamps(1)[-1] == pd.Timestamp("2020-05-31")


def test_sliding_windows_too_long(hourly, caplog):
    with pytest.raises(DataError, match=r"series 'MT_003' has 30 steps, shorter than the window length 40"):
        hourly.sliding_windows(length=40)
    with caplog.at_level(logging.WARNING, logger="tsynth"):
        wins = hourly.sliding_windows(length=40, stride=8, drop_short=True)
    assert list(wins.item_id) == ["MT_001", "MT_001", "MT_002", "MT_002"]
    assert "dropped 1 of 3 series" in caplog.text


def test_windows_without_frequency_drop_start(caplog):
    data = SeriesSet.from_records([{"item_id": "a", "start": "2020-01-01", "target": list(range(10))}])
    with caplog.at_level(logging.WARNING, logger="tsynth"):
        assert data.window(offset=0, length=5).start is not None
        assert data.sliding_windows(length=5, stride=5).start is None
    assert "no frequency" in caplog.text


def test_zscore_per_series_and_constant(caplog):
    data = SeriesSet.from_arrays([np.array([1.0, 2.0, 3.0, 4.0]), np.full(24, 0.1), np.array([5.0, 7.0])])
    with caplog.at_level(logging.WARNING, logger="tsynth"):
        z = data.zscore()
    s0 = z.series(0)[:, 0]
    assert abs(s0.mean()) < 1e-6 and abs(s0.std() - 1) < 1e-6
    np.testing.assert_array_equal(z.series(1), 0.0)
    np.testing.assert_allclose(z.series(2)[:, 0], [-1, 1])
    assert np.isnan(z.values[2, 2:]).all()  # padding stays NaN
    assert "1 constant series" in caplog.text


def test_split_370_items_like_the_recipe():
    data = SeriesSet.from_arrays([np.full(3, float(i)) for i in range(370)], [f"MT_{i + 1:03d}" for i in range(370)])
    train, hold = data.split(holdout=0.2, seed=0)
    assert (len(train), len(hold)) == (296, 74)
    perm = np.random.RandomState(0).permutation(370)
    assert list(train.item_id) == [f"MT_{i + 1:03d}" for i in perm[:296]]
    assert list(hold.item_id) == [f"MT_{i + 1:03d}" for i in perm[296:]]
    again = data.split(holdout=0.2, seed=0)
    assert list(again[0].item_id) == list(train.item_id)
    assert list(data.split(holdout=0.2, seed=1)[1].item_id) != list(hold.item_id)


def test_split_keeps_each_items_windows_on_one_side(hourly):
    wins = hourly.sliding_windows(length=6, stride=6)
    train, hold = wins.split(holdout=0.34, seed=3)
    assert set(train.item_id).isdisjoint(hold.item_id)
    assert len(train) + len(hold) == len(wins)
    assert set(train.item_id) | set(hold.item_id) == set(hourly.item_id)
    with pytest.raises(DataError, match="leaves no item"):
        wins.split(holdout=0.0)


def test_concat_needs_same_frequency(hourly):
    both = SeriesSet.concat([hourly, hourly.subset([0])])
    assert len(both) == 4 and both.attributes["region"].tolist()[-1] == "north"
    daily = SeriesSet(hourly.values, hourly.lengths, hourly.item_id, hourly.channels, hourly.start, "D")
    with pytest.raises(DataError, match="different frequencies"):
        SeriesSet.concat([hourly, daily])


# ---------------------------------------------------------------------- gaps: explicit fill policies
GAPPY = "item_id,timestamp,v\na,2020-01-01 00:00,1\na,2020-01-01 01:00,2\na,2020-01-01 03:00,4\n" \
        "b,2020-01-01 00:00,5\nb,2020-01-01 01:00,\nb,2020-01-01 02:00,7\nb,2020-01-01 03:00,8\n"


def test_fill_missing_steps_and_cells(tmp_path, caplog):
    path = write_csv(tmp_path / "gappy.csv", GAPPY)
    with pytest.raises(DataError, match=re.escape(str(path)) + r": series 'a': 1 missing time steps .*--fill"):
        read_series(path, freq="h")
    with caplog.at_level(logging.WARNING, logger="tsynth"):
        data = read_series(path, freq="h", fill="interpolate")
    assert "filled 2 missing values in 2 series with 'interpolate'" in caplog.text
    np.testing.assert_array_equal(data.values[:, :, 0], [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert data.freq == "h"
    zero = read_series(path, fill="zero")  # frequency from the usual step
    assert zero.freq == "h" and zero.values[:, :, 0].tolist() == [[1, 2, 0, 4], [5, 0, 7, 8]]
    with pytest.raises(DataError, match="unknown fill policy 'mean'"):
        read_series(path, fill="mean")


# ---------------------------------------------------------------------- bad input: one clear DataError each
LONG_OK = "item_id,timestamp,value\na,2020-01-01 00:00,1\na,2020-01-01 01:00,2\na,2020-01-01 02:00,3\n" \
          "b,2020-01-01 00:00,4\nb,2020-01-01 01:00,5\nb,2020-01-01 02:00,6\n"

BAD_CSV = {
    # name: (file text, read options, message after "<path>: ")
    "misspelled id column": (LONG_OK, {"id_col": "item"}, r"missing column 'item' \(did you mean 'item_id'\?\)"),
    "misspelled value column": (LONG_OK, {"value_cols": ["valeu"]}, r"missing column 'valeu' \(did you mean 'value'\?\)"),
    "missing attribute column": (LONG_OK, {"attribute_cols": ["region"]}, r"missing column 'region' \(columns: "),
    "non-numeric cell": (LONG_OK.replace(",5\n", ",5kW\n"), {}, r"row 6: column 'value' holds a non-numeric value '5kW'"),
    "unnamed text column": ("item_id,timestamp,value,region\na,2020-01-01 00:00,1,north\n", {},
                            r"row 2: column 'region' holds a non-numeric value 'north'; name .*--attribute-cols"),
    "inf cell": (LONG_OK.replace(",2\n", ",inf\n"), {}, r"series 'a', row 3, channel 'value': value inf is not finite"),
    "duplicate timestamp": (LONG_OK.replace("a,2020-01-01 02:00", "a,2020-01-01 01:00"), {},
                            r"series 'a': duplicate timestamp 2020-01-01 01:00:00 \(row 4\)"),
    "unsorted timestamps": (LONG_OK.replace("a,2020-01-01 01:00", "a,2020-01-01 05:00"), {},
                            r"series 'a': timestamps are not sorted \(row 4: 2020-01-01 02:00:00 after 2020-01-01 05:00:00\).*--sort"),
    "bad timestamp": (LONG_OK.replace("b,2020-01-01 01:00", "b,yesterday"), {},
                      r"row 6: column 'timestamp' is not a timestamp: 'yesterday'"),
    "irregular frequency": (LONG_OK.replace("b,2020-01-01 02:00", "b,2020-01-01 02:30"), {},
                            r"series 'b': irregular time steps .*2020-01-01 02:30:00.*usual step is 0 days 01:00:00"),
    "different frequencies": (LONG_OK.replace("b,2020-01-01 01:00", "b,2020-01-02 00:00")
                              .replace("b,2020-01-01 02:00", "b,2020-01-03 00:00"), {}, r"series have different frequencies \['D', 'h'\]"),
    "off-grid timestamps": (LONG_OK.replace("b,2020-01-01 02:00", "b,2020-01-01 02:30"), {"freq": "h"},
                            r"series 'b': timestamps do not fall on the h grid"),
    "attribute not constant": (LONG_OK.replace("value\n", "value,region\n").replace(",1\n", ",1,n\n")
                               .replace(",2\n", ",2,s\n"), {"attribute_cols": ["region"]},
                               r"series 'a': attribute 'region' is not constant"),
    "header only": ("item_id,timestamp,value\n", {}, r"the file holds no rows"),
    "blank csv": ("\n\n", {}, r"the file is empty"),
    "wide gap inside a series": ("a,b\n1,4\n2,\n3,6\n", {}, r"series 'b': missing value at step 1"),
    "wide non-numeric": ("a,b\n1,4\n2,x\n", {}, r"row 3: column 'b' holds a non-numeric value 'x'"),
    "wide empty series": ("a,b\n1,\n2,\n", {}, r"series 'b' is empty"),
    "wide unsorted time column": ("timestamp,a\n2020-01-02,1\n2020-01-01,2\n", {"layout": "wide"},
                                  r"time column 'timestamp': timestamps are not sorted \(row 3"),
    "step numbers with a gap": ("item_id,timestamp,value\na,0,1\na,1,2\na,3,3\n", {},
                                r"series 'a': step numbers jump from 1 to 3 \(row 4\)"),
}


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_bad_csv(tmp_path, case):
    text, options, message = BAD_CSV[case]
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=re.escape(str(path)) + ": " + message):
        read_series(path, **options)
    assert [p.name for p in tmp_path.iterdir()] == ["bad.csv"]  # nothing written


BAD_JSONL = {
    "non-numeric array": ("[1, 2]\n[3, \"x\"]\n", r"line 2: the array holds non-numeric values"),
    "empty array": ("[1, 2]\n[]\n", r"line 2: expected a non-empty list"),
    "invalid JSON": ("[1, 2]\n[3, 4\n", r"line 2: not valid JSON"),
    "blank lines only": ("\n  \n", r"the file holds no series"),
    "mixed lines": ("[1, 2]\n{\"consumption\": [1]}\n", r"lines must all be JSON arrays or all objects"),
    "missing channel": ('{"load": [1], "temp": [2]}\n{"load": [3]}\n', r"line 2: missing channel 'temp'"),
    "ragged channels": ('{"load": [1, 2], "temp": [2]}\n', r"line 1: channels have different lengths \[1, 2\]"),
    "inf in channel": ('{"consumption": [1, 2]}\n{"consumption": [1e999]}\n',
                       r"line 2, step 0, channel 'consumption': value inf is not finite"),
    "record non-numeric target": ('{"item_id": "MT_001", "target": [1]}\n{"item_id": "MT_002", "target": ["a"]}\n',
                                  r"record 1 \(item 'MT_002'\): 'target' is not a list of numbers"),
    "record ragged channels": ('{"item_id": "MT_001", "target": [[1, 2], [3]]}\n',
                               r"record 0 \(item 'MT_001'\): 'target' is not a list of numbers"),
    "record bad start": ('{"item_id": "MT_001", "start": "soon", "target": [1]}\n',
                         r"record 0 \(item 'MT_001'\): 'start' is not a time stamp: 'soon'"),
    "record empty target": ('{"item_id": "MT_001", "target": []}\n', r"series 'MT_001' is empty"),
    "records with two frequencies": ('{"target": [1], "freq": "h"}\n{"target": [1], "freq": "D"}\n',
                                     r"records have different frequencies"),
}


@pytest.mark.parametrize("case", list(BAD_JSONL))
def test_bad_jsonl(tmp_path, case):
    text, message = BAD_JSONL[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=re.escape(str(path)) + ": " + message):
        read_series(path)


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "the file is empty"),
    ("empty.parquet", b"", "the file is empty"),
    ("empty.jsonl", b"", "the file is empty"),
    ("broken.parquet", b"not parquet at all", "not a readable Parquet file"),
    ("data.txt", b"1,2,3", r"unknown extension '.txt' \(supported: .parquet, .csv, .jsonl, .json\)"),
    ("latin1.csv", "a,b\n1,é\n".encode("latin-1"), "not a readable CSV file"),
])
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(str(path)) + ": " + message):
        read_series(path)


def test_missing_file_and_bad_layout(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope.csv")) + ": no such file"):
        read_series(tmp_path / "nope.csv")
    path = write_csv(tmp_path / "ok.csv", LONG_OK)
    with pytest.raises(DataError, match=re.escape(str(path)) + ": unknown layout 'tall'"):
        read_series(path, layout="tall")
    with pytest.raises(DataError, match=re.escape(str(path)) + ": layout 'arrays' needs a .jsonl file"):
        read_series(path, layout="arrays")


def test_long_csv_keeps_text_ids(tmp_path):
    path = write_csv(tmp_path / "ids.csv", LONG_OK.replace("a,", "007,").replace("b,", "010,"))
    assert list(read_series(path).item_id) == ["007", "010"]


def test_bad_errors_are_tsynth_errors():
    assert issubclass(DataError, TsynthError) and issubclass(DataError, ValueError)


# ---------------------------------------------------------------------- writing: atomic, by extension
def test_unknown_output_extension_writes_nothing(hourly, tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "out.xlsx")) + ": unknown output extension '.xlsx'"):
        write_series(hourly, tmp_path / "out.xlsx")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    def half_then_fail(tmp):
        tmp.write_text("half a file")
        raise RuntimeError("disk full")

    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert list(tmp_path.iterdir()) == []
    target.write_text("old")
    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


# ---------------------------------------------------------------------- demo data
def test_load_demo_italy_power_demand():
    demo = load_demo()
    assert demo.values.shape == (1096, 24, 1) and demo.is_regular
    assert demo.channels == ["demand"] and len(set(demo.item_id)) == 1096
    assert set(demo.attributes["season"]) == {"winter", "summer"}
    assert np.isfinite(demo.values).all()
