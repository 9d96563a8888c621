"""The value codec's saved form does not change: codecs saved before it was split into scaler, bins and condition
vocabulary (``tests/fixtures/value_codec_v1*``, see ``tests/codec_cases.py``) load, save byte for byte, and encode
and decode to the same numbers; fitting the same data gives the same codec."""

import json

import numpy as np
import pytest
from codec_cases import CASES, JSON, data_set, fit, npz_path, record

from tsynth.codecs.values import ValueCodec

SAVED = json.loads(JSON.read_text())


def load(kind: str) -> ValueCodec:
    codec = ValueCodec.from_dict(SAVED[kind]["codec"])
    if SAVED[kind]["codec"]["point_masses_per_channel"]:
        codec.load_point_masses(npz_path(kind))
    return codec


def assert_close(got, want, where="") -> None:
    """Equal structure, strings and integers; floats to 1e-9 (relative), 1e-12 (absolute)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want and type(got) is type(want), where


@pytest.mark.parametrize("kind", CASES)
def test_saved_codec_round_trips_byte_for_byte(kind):
    assert json.dumps(load(kind).to_dict()) == json.dumps(SAVED[kind]["codec"])


@pytest.mark.parametrize("kind", CASES)
def test_saved_codec_encodes_and_decodes_as_before(kind):
    got, want = record(kind, load(kind)), SAVED[kind]["record"]
    assert got["tokens"] == want["tokens"] and got["vocab"] == want["vocab"]
    np.testing.assert_allclose(got["units"], want["units"], rtol=1e-12)
    np.testing.assert_allclose(got["decoded"], want["decoded"], rtol=1e-6)
    assert (got["decoded_item_id"], got["decoded_attributes"]) == (want["decoded_item_id"], want["decoded_attributes"])
    assert got["outside_share"] == pytest.approx(want["outside_share"])


@pytest.mark.parametrize("kind", CASES)
def test_fitting_gives_the_saved_codec(kind):
    """The v1 codecs predate exact repeats (``repeats``, saved only where a channel has them): the rest is as saved,
    and the count channel of the 'global' case holds its value at the share the data does."""
    codec = fit(kind)
    got = codec.to_dict()
    repeats = got.pop("repeats", [])
    assert_close(got, SAVED[kind]["codec"], kind)
    if kind == "global":
        bins = codec.value_bins(data_set(kind))[0]
        vals = data_set(kind).values
        same_bin = (bins[:, 1:] == bins[:, :-1]) & ~np.isnan(vals[:, 1:]) & ~np.isnan(vals[:, :-1])
        want = ((vals[:, 1:] == vals[:, :-1]) & same_bin).sum(axis=(0, 1)) / same_bin.sum(axis=(0, 1))
        assert repeats == pytest.approx(want.tolist()) and repeats[0] > 0.9 and repeats[1] == 0.0, repeats
    saved = load(kind)
    assert_close(codec.point_masses, saved.point_masses, kind)


def test_a_loaded_codec_builds_its_tokenizer_and_lengths():
    codec = load("global")
    assert codec.n_channels == 2 and codec.prefix_length == 1 + len(codec.fields)
    assert codec.sequence_length(12) == codec.prefix_length + 24 + 1
    assert codec.hf_tokenizer().convert_tokens_to_ids("<v_0>") == codec.value_offset
    data = data_set("global")
    bins, levels = codec.value_bins(data)
    assert levels is None and bins.shape == (10, 12, 2)
