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
    with pytest.raises(ConfigError, match="no such file or folder"):
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


# ---------------------------------------------------------------------- bounded memory
def test_micro_batches_accumulate_the_full_batch_gradient(base):
    """Gradients summed over token-bounded micro-batches (share x part loss) equal the whole batch's, and the
    chunked answer loss equals cross-entropy over full logits."""
    import torch
    import torch.nn.functional as F

    from tsynth.backends.pretrained import (PretrainedOptions, add_lora, answer_nll, chat_loss, load_model,
                                            load_tokenizer, micro_batches)

    tok = load_tokenizer(base)
    data = series(5, length=7)
    codec = ChatCodec(system_prompt="S.", decimals=2, style="integer").fit(data)
    rows = torch.as_tensor(encode_chats(tok, codec, data, tok.eos_token_id))
    torch.manual_seed(0)
    model = add_lora(load_model(base, "float32"), PretrainedOptions(base_model=base, lora_dropout=0.0)).eval()
    ids = (rows.abs() - 1).clamp(min=0)
    logits = model(input_ids=ids[:, :-1], attention_mask=(rows[:, :-1] != 0).long()).logits
    targets = torch.where(rows[:, 1:] > 0, ids[:, 1:], -100)
    reference = F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum")
    nll, count = answer_nll(model, rows)
    assert torch.allclose(nll.sum(), reference, rtol=1e-5) and int(count.sum()) == int((rows > 0).sum())

    parts = micro_batches(2 * rows.shape[1])(rows)
    assert [len(p) for p, _ in parts] == [2, 2, 1] and abs(sum(s for _, s in parts) - 1) < 1e-9
    loss = chat_loss(10_000)
    trained = [p for p in model.parameters() if p.requires_grad]
    whole = torch.autograd.grad(loss(model, rows), trained)
    summed = [torch.zeros_like(p) for p in trained]
    for part, share in parts:
        for acc, g in zip(summed, torch.autograd.grad(loss(model, part) * share, trained)):
            acc += g
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, summed))


def test_memory_plan_checkpoints_only_when_activations_do_not_fit():
    import torch
    from transformers import LlamaConfig

    from tsynth.backends.pretrained import GiB, plan_memory

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    roomy = plan_memory(cfg, 135_000_000, torch.float32, 8, 400, "12G")
    assert roomy.checkpoint_every == 0 and roomy.micro_batch_rows == 8 and roomy.estimate <= 12 * GiB
    tight = plan_memory(cfg, 135_000_000, torch.float32, 8, 400, "2G")
    assert tight.checkpoint_every > 0 and 1 <= tight.micro_batch_rows and tight.estimate <= 2 * GiB
    assert "checkpointing on" in tight.describe() and tight.to_dict()["micro_batch_tokens"] == 400 * tight.micro_batch_rows
    with pytest.raises(ConfigError, match="even one row at a time.*raise --max-memory"):
        plan_memory(cfg, 135_000_000, torch.float32, 8, 400, "1G")
    with pytest.raises(ConfigError, match="max_memory must be a size"):
        PretrainedLoRABackend(base_model="x", max_memory="lots")


def test_fit_records_its_memory_plan_and_tokens_per_value(base):
    backend = PretrainedLoRABackend(base_model=base, max_memory="3G", **{**FAST, "epochs": 1})
    backend.fit(series(8, length=6), progress=False)
    tr = backend.training
    assert tr["memory"]["budget"] == 3 * 2**30 and tr["memory"]["source"] == "max_memory"
    assert "micro-batches of up to" in tr["memory"]["summary"]
    rendered = backend.codec.render(series(8, length=6).series(0))
    assert tr["tokens_per_value"] > 1 and rendered.startswith('{"consumption":[') and "." not in rendered


def test_a_fit_that_runs_out_of_memory_names_the_batch_size_and_the_budget(base, monkeypatch):
    """Its memory plan sizes the micro-batches, so the error names --max-memory beside --batch-size. No test machine
    has a GPU to fill: torch's out-of-memory error is raised in steps of more than 2 rows, where a GPU would raise it."""
    import torch

    import tsynth.train
    from tsynth.errors import DeviceMemoryError

    real = tsynth.train.drop_conditions

    def out_of_memory_past_2(tokens, *args):
        if len(tokens) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(tokens, *args)

    monkeypatch.setattr(tsynth.train, "drop_conditions", out_of_memory_past_2)
    backend = PretrainedLoRABackend(base_model=base, max_memory="3G", **{**FAST, "epochs": 1})
    with pytest.raises(DeviceMemoryError, match=r"ran out of memory training at batch size 4( \(.+\))?: lower the "
                                                r"batch size \(--batch-size 2, or batch_size=2\); or a lower "
                                                r"--max-memory than the 3.00 GiB this fit planned for \(micro-batches "
                                                r"of up to \d+ rows\)"):
        backend.fit(series(8, length=6), progress=False)


# ---------------------------------------------------------------------- bad input: one line, exit 2, nothing written
def _gguf(path, arch):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _huge_llama(path):
    """A chat tokenizer and the configuration (no weights) of a 400-billion-parameter Llama."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=128256, hidden_size=16384, intermediate_size=53248, num_hidden_layers=126,
                num_attention_heads=128, num_key_value_heads=8).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return str(path)


def test_bad_base_models_fail_before_any_work(base, tmp_path, capsys):
    from transformers import T5Config

    from tsynth.cli import main

    pytest.importorskip("gguf")
    series(8).write(tmp_path / "data.csv")
    T5Config(d_model=8, d_ff=16, num_layers=1, num_heads=2, d_kv=4, vocab_size=20).save_pretrained(tmp_path / "t5")
    cases = {
        str(tmp_path / "missing"): "no such file or folder",
        str(tmp_path / "t5"): "is a T5 model, not a causal language model",
        _gguf(tmp_path / "rwkv.gguf", "rwkv6"): "architecture rwkv6 is not supported",
        _huge_llama(tmp_path / "huge"): r"parameters take .* but only .* free",
        save_base(tmp_path / "plain", chat_template=None): "no chat template",
    }
    for k, (model, message) in enumerate(cases.items()):
        out = tmp_path / f"m{k}"
        capsys.readouterr()
        assert main(["fit", str(tmp_path / "data.csv"), "-o", str(out), "--base-model", model]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tsynth")]
        assert len(err) == 1 and __import__("re").search(message, err[0]), err
        assert not out.exists() and not (tmp_path / f"m{k}.checkpoints").exists()
    assert main(["fit", str(tmp_path / "data.csv"), "-o", str(tmp_path / "small"), "--base-model", base,
                 "--max-memory", "1M"]) == 2
    assert "even one row at a time" in capsys.readouterr().err and not (tmp_path / "small").exists()


# ---------------------------------------------------------------------- compact text
def test_text_styles_round_trip_at_the_datas_resolution():
    from tsynth.codecs.chat import resolution_decimals, tokens_per_value

    quarters = SeriesSet.from_arrays([np.array([0.25, -1.5, 12.0, 0.0, -0.75])], ["a"], ["consumption"])
    recipe = ChatCodec(style="recipe").fit(quarters)
    compact = ChatCodec(style="compact").fit(quarters)
    integer = ChatCodec(style="integer").fit(quarters)
    assert recipe.render(quarters.series(0)) == '{"consumption": [0.25, -1.5, 12.0, 0.0, -0.75]}'
    assert compact.decimals == integer.decimals == 2 and recipe.decimals == 3
    assert compact.render(quarters.series(0)) == '{"consumption":[0.25,-1.5,12,0,-0.75]}'
    assert integer.render(quarters.series(0)) == '{"consumption":[25,-150,1200,0,-75]}'
    for codec in (recipe, compact, integer):
        back = ChatCodec.from_dict(codec.to_dict())
        assert np.array_equal(back.parse(codec.render(quarters.series(0))), quarters.series(0))
    assert tokens_per_value(integer, quarters) < tokens_per_value(recipe, quarters)

    z = series(4, length=20, channels=("a", "b"))  # full float resolution: the requested 3 decimals stay
    dense = ChatCodec(style="integer").fit(z)
    assert dense.decimals == 3 and dense.render(z.series(0)).startswith('{"a":[')
    recipe = ChatCodec().fit(z)  # decodes to what the recipe's own text decodes to
    assert np.array_equal(dense.parse(dense.render(z.series(0))), recipe.parse(recipe.render(z.series(0))))
    assert resolution_decimals(np.array([1.0, 20.0, np.nan]), 3) == 0
    assert resolution_decimals(np.array([1.5, 2.25]), 1) == 1
    with pytest.raises(DataError, match="text style"):
        ChatCodec(style="yaml")


def test_compact_grammar_accepts_rendered_answers_only():
    codec = ChatCodec(style="integer").fit(series(1, channels=("a", "b")))
    g = AnswerGrammar(codec.keys, 3, 0, int_digits=5, compact=True)
    good = codec.render(np.array([[0.0, -1.5], [12.25, 3.0], [-0.001, 7.0]]))
    assert good == '{"a":[0,12250,-1],"b":[-1500,3000,7000]}' and g.done(g.walk(g.start, good))
    for bad in [good.replace(",", ", ", 1), good.replace("12250", "12250.5"), good.replace("12250", "0125"),
                good.replace("3000", "300000"), good.replace('"b"', '"c"'), good.replace(":[", ": [", 1)]:
        s = g.walk(g.start, bad)
        assert s is None or not g.done(s), bad
    g2 = AnswerGrammar(["x"], 2, 2, int_digits=3, compact=True)
    assert g2.done(g2.walk(g2.start, '{"x":[1.25,-3]}')) and g2.walk(g2.start, '{"x":[1.255') is None


def test_prepare_reports_tokens_per_value(tmp_path, capsys):
    from tsynth.cli import main

    series(12, length=24).write(tmp_path / "data.csv")
    assert main(["prepare", str(tmp_path / "data.csv"), "-o", str(tmp_path / "files")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("tokens per value"))
    recipe, dense = (float(x) for x in __import__("re").findall(r"(\d+\.\d) (?:in these|as integers)", line))
    assert dense < recipe
