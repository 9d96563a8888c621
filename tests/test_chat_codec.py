"""The chat/JSON codec: the recipe's fine-tuning format, reading it back, checking model answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tsynth import DataError, SeriesSet
from tsynth.codecs.chat import (DEFAULT_SYSTEM_PROMPT, AnswerError, ChatCodec, approx_tokens, chat_tokens,
                                truncate_tokens)


@pytest.fixture
def data() -> SeriesSet:
    rng = np.random.default_rng(0)
    return SeriesSet.from_arrays([rng.normal(size=6) for _ in range(3)], ["MT_001", "MT_002", "MT_003"], ["target"],
                                 attributes=pd.DataFrame({"region": ["north", "south", "north"], "size": [1, 2, 3]}))


def recipe_line(item_id: str, target) -> str:
    """The recipe's own ``format`` function, verbatim in behaviour."""
    return json.dumps({"messages": [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": json.dumps({"item_id": item_id})},
        {"role": "assistant", "content": json.dumps({"consumption": [round(1000 * x) / 1000 for x in target]})}]})


def test_examples_match_the_recipe_byte_for_byte(data):
    lines = [json.dumps(ex) for ex in ChatCodec().examples(data)]
    assert lines == [recipe_line(data.item_id[i], data.series(i)[:, 0].astype(float).tolist()) for i in range(3)]


def test_settings_user_fields_and_channels(data):
    codec = ChatCodec(system_prompt="Make a series.", user_fields=["item_id", "region", "size"], series_key="load",
                      decimals=1)
    msgs = codec.examples(data)[1]["messages"]
    assert msgs[0] == {"role": "system", "content": "Make a series."}
    assert json.loads(msgs[1]["content"]) == {"item_id": "MT_002", "region": "south", "size": 2}
    answer = json.loads(msgs[2]["content"])
    assert list(answer) == ["load"] and answer["load"] == [round(10 * x) / 10 for x in data.series(1)[:, 0].tolist()]
    with pytest.raises(DataError, match="not attributes"):
        ChatCodec(user_fields=["colour"]).fit(data)

    two = SeriesSet.from_arrays([np.arange(8.0).reshape(4, 2)] * 2, ["a", "b"], ["hv", "lv"])
    codec = ChatCodec().fit(two)
    text = codec.examples(two)[0]["messages"][2]["content"]
    assert json.loads(text) == {"hv": [0.0, 2.0, 4.0, 6.0], "lv": [1.0, 3.0, 5.0, 7.0]}
    assert codec.parse(text).tolist() == two.series(0).tolist()
    schema = codec.response_format()["json_schema"]["schema"]
    assert schema["required"] == ["hv", "lv"] and schema["properties"]["lv"]["maxItems"] == 4


def test_reading_examples_back(data):
    codec = ChatCodec(user_fields=["item_id", "region"])
    lines = [json.dumps(ex) for ex in codec.examples(data)]
    back, conds, series = ChatCodec.from_examples(["", *lines, "  "])
    assert conds == [{"item_id": f"MT_00{i}", "region": r} for i, r in zip((1, 2, 3), ["north", "south", "north"])]
    assert list(series.item_id) == ["MT_001", "MT_002", "MT_003"] and list(series.attributes["region"]) == ["north", "south", "north"]
    np.testing.assert_allclose(series.values, np.round(data.values, 3), atol=1e-6)
    assert (back.system_prompt, back.user_fields, back.keys, back.decimals, back.length) == (
        DEFAULT_SYSTEM_PROMPT, ["item_id", "region"], ["consumption"], 3, 6)
    assert ChatCodec.from_dict(json.loads(json.dumps(back.to_dict()))) == back


@pytest.mark.parametrize("mutate, message", [
    (lambda ex: "{not json", "line 2: not valid JSON"),
    (lambda ex: json.dumps([ex]), "line 2: expected a JSON object"),
    (lambda ex: json.dumps({"msgs": ex["messages"]}), "line 2: missing the 'messages' list"),
    (lambda ex: json.dumps({"messages": [{**m, "role": "bot"} if m["role"] == "system" else m for m in ex["messages"]]}),
     "line 2: message 0 has unrecognised role 'bot'"),
    (lambda ex: json.dumps({"messages": [{**m, "extra": 1} for m in ex["messages"]]}), "unrecognised key"),
    (lambda ex: json.dumps({"messages": ex["messages"][:2]}), "line 2: no assistant message"),
    (lambda ex: json.dumps({"messages": [ex["messages"][0], ex["messages"][2]]}), "line 2: no user message"),
    (lambda ex: json.dumps({"messages": [ex["messages"][0], {"role": "user", "content": "MT_002"}, ex["messages"][2]]}),
     "line 2: the user message must be a JSON object"),
    (lambda ex: json.dumps({"messages": ex["messages"][:2] + [{"role": "assistant", "content": '{"load": [1, 2]}'}]}),
     "line 2: the assistant message is not a series: no list under 'consumption'"),
    (lambda ex: json.dumps({"messages": ex["messages"][:2] + [{"role": "assistant", "content": '{"consumption": [1, NaN]}'}]}),
     "line 2: .*not finite"),
])
def test_malformed_files_name_the_line(data, mutate, message):
    lines = [json.dumps(ex) for ex in ChatCodec().examples(data)]
    lines[1] = mutate(json.loads(lines[1]))
    with pytest.raises(DataError, match=message):
        ChatCodec.from_examples(lines, source="train.jsonl")


@pytest.mark.parametrize("text, reason", [
    ("Here you go: [1, 2, 3]", "not_json"), ("", "not_json"), ("[1, 2, 3]", "wrong_key"),
    ('{"values": [1, 2, 3]}', "wrong_key"), ('{"consumption": "1, 2, 3"}', "wrong_key"),
    ('{"consumption": [1, 2]}', "wrong_length"), ('{"consumption": [1, 2, 3, 4]}', "wrong_length"),
    ('{"consumption": [1, "2", 3]}', "non_finite"), ('{"consumption": [1, Infinity, 3]}', "non_finite"),
    ('{"consumption": [1, true, 3]}', "non_finite"),
])
def test_parse_says_why_an_answer_is_unusable(text, reason):
    with pytest.raises(AnswerError) as e:
        ChatCodec().parse(text, 3)
    assert e.value.reason == reason and isinstance(e.value, DataError)


def test_parse_and_schema():
    codec = ChatCodec(length=3)
    assert codec.parse('{"consumption": [1, -2.5, 3e2], "note": "x"}').tolist() == [[1.0], [-2.5], [300.0]]
    fmt = codec.response_format()
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    prop = fmt["json_schema"]["schema"]["properties"]["consumption"]
    assert (prop["minItems"], prop["maxItems"], prop["items"]) == (3, 3, {"type": "number"})
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False


def test_token_estimates():
    assert approx_tokens('{"consumption": [-1.507, 12]}') == 16   # { " consumption(3) " : [ - 1 . 507 , 12 ] }
    assert approx_tokens("1234567") == 3 and approx_tokens("   ") == 0
    text = '{"consumption": [1.5, 2.5, 3.5]}'
    assert truncate_tokens(text, 100) == text
    cut = truncate_tokens(text, 9)
    assert text.startswith(cut) and approx_tokens(cut) <= 9 < approx_tokens(text[: len(cut) + 1])
    assert chat_tokens([{"role": "user", "content": "ab"}]) == 3 + 3 + 1
