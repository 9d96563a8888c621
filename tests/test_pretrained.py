"""The pretrained-LM backend: chat rows and loss mask, LoRA fit, constrained sampling, save/load, resume.

The base model is the tiny random Llama of ``llm_helpers`` (no download).
"""

import json

import numpy as np
import pytest
from llm_helpers import char_tokenizer, save_base

from tsynth import SeriesSet
from tsynth.backends.pretrained import PretrainedLoRABackend, encode_chats, token_texts
from tsynth.codecs.chat import ChatCodec
from tsynth.codecs.grammar import AnswerGrammar, TokenConstraint
from tsynth.errors import ConfigError, DataError
from tsynth.synthesizer import Synthesizer

pytestmark = pytest.mark.slow   # LoRA fine-tuning of a small causal LM
FAST = dict(epochs=2, batch_size=4, learning_rate=1e-2, system_prompt="Series.", decimals=2, target_modules="q_proj,v_proj")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_base(tmp_path_factory.mktemp("tiny-llama"))


def series(n=8, length=6, channels=("consumption",), seed=0):
    rng = np.random.default_rng(seed)
    return SeriesSet.from_arrays([rng.normal(0, 3, size=(length, len(channels))) for _ in range(n)],
                                 [f"MT_{i:03d}" for i in range(n)], list(channels))


def test_rows_train_on_the_answer_and_end_token_only():
    tok = char_tokenizer()
    data = series(2)
    codec = ChatCodec(system_prompt="Series.", decimals=2).fit(data)
    rows = encode_chats(tok, codec, data, tok.eos_token_id)
    for k in range(2):
        row = rows[k][rows[k] != 0]
        prompt = tok.decode([-t - 1 for t in row[row < 0]])
        answer = tok.decode([t - 1 for t in row[row > 0]])
        n_prompt = int((row < 0).sum())
        assert (row[:n_prompt] < 0).all() and (row[n_prompt:] > 0).all()
        assert prompt == ("<|im_start|>system\nSeries.<|im_end|>\n<|im_start|>user\n"
                          f'{{"item_id": "MT_00{k}"}}<|im_end|>\n<|im_start|>assistant\n')
        assert answer == codec.render(data.series(k)) + "<|im_end|>"


def test_grammar_accepts_rendered_answers_and_rejects_broken_ones():
    codec = ChatCodec(decimals=3).fit(series(1, channels=("a", "b")))
    g = AnswerGrammar(codec.keys, 6, 3, int_digits=3)
    good = codec.render(np.array([[0.0, -1.5], [12.25, 3.0], [-0.001, 7.0], [1, 2], [3, 4], [5, 6]]))
    assert g.done(g.walk(g.start, good))
    for bad in [good.replace("12.25", "012.25"), good.replace("12.25", "12.2555"), good.replace("12.25", "1225.0"),
                good.replace("-1.5", "--1.5"), good.replace("3.0, ", "3.0,, "), good.replace(", 6.0]", "]"),
                good.replace("7.0", "7."), good.replace('"b"', '"c"'), good[:-1] + ", 1.0]}"]:
        s = g.walk(g.start, bad)
        assert s is None or not g.done(s), bad


def test_constraint_offers_exactly_the_tokens_that_fit():
    tok = char_tokenizer()
    texts = token_texts(tok, len(tok) + 3)
    assert texts[-3:] == ["", "", ""] and texts[tok.eos_token_id] == ""
    c = TokenConstraint(AnswerGrammar(["x"], 2, 1, int_digits=2), texts, tok.eos_token_id)
    s = c.grammar.walk(c.grammar.start, '{"x": [1')
    allowed = {texts[i] for i in c.allowed(s).tolist()}
    # not "1]", "]" (a second number is due) nor "00" (3 integer digits)
    assert allowed == set("0123456789.,") | {", ", ", -", "1."}
    s = c.grammar.walk(s, ", 2")
    assert {texts[i] for i in c.allowed(s).tolist()} == set("0123456789.]") | {"]}", "1.", "1]"}
    assert c.allowed(c.grammar.walk(s, "]}")).tolist() == [tok.eos_token_id]


def test_fit_sample_save_load_round_trip(base, tmp_path):
    data = series(8)
    syn = Synthesizer("pretrained", base_model=base, **FAST).fit(data, progress=False)
    tr = syn.info["training"]
    assert tr["members"][0]["steps"] == 4 and 0 < tr["trainable_parameters"] < tr["parameters"]
    assert np.isfinite(tr["members"][0]["train_loss"]).all()
    out = syn.sample(12, seed=3)
    codec = syn.backend.codec
    assert out.values.shape == (12, 6, 1) and np.isfinite(out.values).all()
    assert np.allclose(out.values, np.round(out.values, 2))
    assert set(out.item_id) <= set(data.item_id)
    assert syn.backend.last_sample_stats["right_length"] == 12
    again = syn.sample(12, seed=3)
    assert np.array_equal(out.values, again.values)
    assert not np.array_equal(out.values, syn.sample(12, seed=4).values)

    path = syn.save(tmp_path / "model")
    doc = json.loads((path / "tsynth.json").read_text())
    assert doc["backend"] == "pretrained" and doc["options"]["base_model"] == base
    assert (path / "model" / "adapter_config.json").exists() and not (path / "model" / "model.safetensors").exists()
    loaded = Synthesizer.load(path)
    assert np.array_equal(loaded.sample(12, seed=3).values, out.values)
    one = loaded.sample(3, conditions={"item_id": "MT_999"}, seed=0, length=9)
    assert list(one.item_id) == ["MT_999"] * 3 and one.values.shape == (3, 9, 1)
    assert codec.parse(codec.render(one.series(0)), 9).shape == (9, 1)


def test_merged_multichannel_model_loads_without_peft_or_base(base, tmp_path):
    from transformers import AutoModelForCausalLM

    data = series(8, length=4, channels=("load", "price"))
    syn = Synthesizer("pretrained", base_model=base, merge=True, **{**FAST, "epochs": 1}).fit(data, progress=False)
    path = syn.save(tmp_path / "merged")
    assert (path / "model" / "model.safetensors").exists() and not (path / "model" / "adapter_config.json").exists()
    assert type(AutoModelForCausalLM.from_pretrained(path / "model")).__name__ == "LlamaForCausalLM"
    out = Synthesizer.load(path).sample(5, seed=0, temperature=2.0, top_p=0.9)
    assert out.channels == ["load", "price"] and out.values.shape == (5, 4, 2) and np.isfinite(out.values).all()


def test_untrained_model_always_yields_valid_answers(base):
    """A random model puts its mass anywhere: the constraint alone makes every answer valid."""
    backend = PretrainedLoRABackend(base_model=base, **{**FAST, "epochs": 1, "learning_rate": 1e-9})
    backend.fit(series(8, length=5), progress=False)
    out = backend.sample(40, seed=1, temperature=3.0)
    assert out.values.shape == (40, 5, 1) and np.isfinite(out.values).all()
    assert np.abs(out.values).max() < 10 ** backend.int_digits


def test_resume_continues_from_the_last_checkpoint(base, tmp_path):
    data = series(8)
    full = PretrainedLoRABackend(base_model=base, **FAST)
    full.fit(data, progress=False)

    class Stop(Exception):
        pass

    def stop_after_first(ev):
        if ev["epoch"] == 1:
            raise Stop

    part = PretrainedLoRABackend(base_model=base, **FAST)
    with pytest.raises(Stop):
        part.fit(data, callback=stop_after_first, checkpoint_dir=tmp_path / "ckpt", progress=False)
    resumed = PretrainedLoRABackend(base_model=base, **FAST)
    resumed.fit(data, checkpoint_dir=tmp_path / "ckpt", resume=True, progress=False)
    a, b = full.training["members"][0], resumed.training["members"][0]
    assert b["epochs_run"] == 2 and b["steps"] == 4
    assert np.allclose(a["train_loss"], b["train_loss"], rtol=1e-4)


def test_clear_errors(base, tmp_path):
    with pytest.raises(ConfigError, match="needs base_model"):
        PretrainedLoRABackend()
    with pytest.raises(ConfigError, match="unknown option.*preset"):
        PretrainedLoRABackend(base_model=base, preset="tiny")
    with pytest.raises(ConfigError, match=r"not linear layers .*q_proj"):
        PretrainedLoRABackend(base_model=base, target_modules="query_key").fit(series(8), progress=False)
    plain = save_base(tmp_path / "no-template", chat_template=None)
    with pytest.raises(ConfigError, match="no chat template"):
        PretrainedLoRABackend(base_model=plain).fit(series(8), progress=False)
    with pytest.raises(DataError, match="reads at most 256"):
        PretrainedLoRABackend(base_model=base, **FAST).fit(series(8, length=60), progress=False)
    with pytest.raises(ConfigError, match="cannot load"):
        PretrainedLoRABackend(base_model=str(tmp_path / "missing")).fit(series(8), progress=False)


def test_cli_fit_with_base_model(base, tmp_path):
    from tsynth.cli import main

    series(8).write(tmp_path / "data.csv")
    model = tmp_path / "m"
    assert main(["fit", str(tmp_path / "data.csv"), "-o", str(model), "--base-model", base, "--epochs", "1",
                 "--lora-rank", "4", "--lora-alpha", "8", "--target-modules", "q_proj,v_proj"]) == 0
    doc = json.loads((model / "tsynth.json").read_text())
    assert doc["backend"] == "pretrained" and doc["options"]["lora_rank"] == 4
    assert main(["sample", str(model), "-n", "3", "-o", str(tmp_path / "syn.csv")]) == 0
