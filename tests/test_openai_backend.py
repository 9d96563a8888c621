"""Backends "openai" and "fewshot".

The end-to-end tests run the recipe's SDK calls (files.create, fine_tuning.jobs.create,
chat.completions.create) through the openai backend against a real ``tsynth serve`` on loopback.
The error-path tests below the marked line use RECORDED RESPONSES: an ``httpx2.MockTransport`` that
answers with OpenAI-shaped bodies, not a live server.
"""

from __future__ import annotations

import json

import httpx2
import pytest
from server_helpers import LENGTH, meters

from tsynth.backends.fewshot import FewShotBackend
from tsynth.backends.openai import JobError, OpenAIBackend, SampleError, prepare_files
from tsynth.cli import main
from tsynth.codecs.chat import ChatCodec
from tsynth.synthesizer import Synthesizer

OPTIONS = dict(model="gpt-4o-mini-2024-07-18", n_epochs=2, batch_size=2, learning_rate_multiplier=2, suffix="tsynth",
               seed=0, poll_interval=0.2)


@pytest.fixture(scope="module")
def fitted(tsynth_server, tmp_path_factory):
    work = tmp_path_factory.mktemp("openai-work")
    syn = Synthesizer("openai", api_key="test-key", base_url=tsynth_server.url, **OPTIONS)
    syn.fit(meters(), work_dir=work, progress=False)
    return syn, work


def test_fit_and_sample_through_tsynth_serve(fitted, tmp_path):
    syn, work = fitted
    backend = syn.backend
    assert backend.model_id.startswith("ft:gpt-4o-mini-2024-07-18:tsynth:tsynth:")
    assert backend.training["steps"] and len(backend.training["train_loss"]) == 2
    state = json.loads((work / "openai_state.json").read_text())
    assert state["job_id"] == backend.job_id and set(state["files"]) == {"train.jsonl", "validation.jsonl"}

    out = syn.sample(12, seed=0)
    assert out.values.shape == (12, LENGTH, 1) and not (out.values != out.values).any()
    assert backend.last_sample_stats == {"requested": 12, "parsed": 12, "right_length": 12, "retried": 0, "dropped": 0}
    assert set(out.item_id) <= {f"MT_{i:03d}" for i in range(1, 21)}
    mt3 = syn.sample(3, conditions={"item_id": "MT_003"}, temperature=0.5, seed=1)
    assert list(mt3.item_id) == ["MT_003"] * 3

    syn.save(tmp_path / "model")
    manifest = (tmp_path / "model" / "tsynth.json").read_text()
    assert "test-key" not in manifest and backend.model_id in manifest
    again = Synthesizer.load(tmp_path / "model")
    again.backend.api_key = "test-key"
    assert again.sample(2, seed=3).values.shape == (2, LENGTH, 1)


def test_rerun_reattaches_without_uploading(fitted, tsynth_server):
    syn, work = fitted
    client = tsynth_server.client()
    n_files = len(list(client.files.list()))
    rerun = Synthesizer("openai", api_key="test-key", base_url=tsynth_server.url, **OPTIONS)
    rerun.fit(meters(), work_dir=work, progress=False)
    assert rerun.backend.job_id == syn.backend.job_id and rerun.backend.model_id == syn.backend.model_id
    assert len(list(client.files.list())) == n_files


def test_failed_job_raises_with_the_servers_reason(tsynth_server, tmp_path):
    client = tsynth_server.client()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(ex) for ex in ChatCodec().examples(meters(12))) + "\n{oops\n")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18",
                                         training_file=client.files.create(file=bad, purpose="fine-tune").id)
    backend = OpenAIBackend(api_key="test-key", base_url=tsynth_server.url, poll_interval=0.2)
    with pytest.raises(JobError, match="failed: .*line 13.*not valid JSON"):
        backend.fit(meters(), job_id=job.id, progress=False)


def test_cli_prepare_fit_sample(fitted, tsynth_server, tmp_path, monkeypatch, capsys):
    data = tmp_path / "meters.jsonl"
    meters().write(data)
    assert main(["prepare", str(data), "-o", str(tmp_path / "files"), "--decimals", "2"]) == 0
    printed = capsys.readouterr().out
    assert "estimated training cost at 5 epochs" in printed and "$" in printed
    items = {name: {json.loads(json.loads(line)["messages"][1]["content"])["item_id"]
                    for line in (tmp_path / "files" / name).read_text().splitlines()}
             for name in ("train.jsonl", "validation.jsonl")}
    assert len(items["train.jsonl"]) == 18 and len(items["validation.jsonl"]) == 2
    assert not items["train.jsonl"] & items["validation.jsonl"]

    monkeypatch.setenv("OPENAI_BASE_URL", tsynth_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    model_dir = tmp_path / "model"
    job_id = fitted[0].backend.job_id
    assert main(["fit", str(data), "-o", str(model_dir), "--backend", "openai", "--job-id", job_id]) == 0
    assert json.loads((model_dir / "tsynth.json").read_text())["job_id"] == job_id
    out = tmp_path / "synthetic.csv"
    assert main(["sample", str(model_dir), "-n", "4", "-o", str(out), "--condition", "item_id=MT_002"]) == 0
    assert json.loads((tmp_path / "synthetic.csv.validity.json").read_text())["right_length"] == 4


def test_prepare_checks_openai_rules(tmp_path):
    with pytest.raises(Exception, match="at least 10"):
        prepare_files(meters(8), tmp_path)
    with pytest.raises(Exception, match="exceed the 4,096-token limit"):
        prepare_files(meters(12, length=2000), tmp_path, model="gpt-3.5-turbo-0613")
    report = prepare_files(meters(), tmp_path, model="gpt-4o-mini-2024-07-18")
    assert (report.n_train, report.n_validation, report.epochs) == (18, 2, 5)
    assert report.cost_usd == pytest.approx(report.tokens * 5 * 3.0 / 1e6)


# ------------------------------------------------------------------------------------------------
# RECORDED RESPONSES below: OpenAI-shaped answers replayed by an httpx2 transport, not a live server.
# ------------------------------------------------------------------------------------------------
CODEC = ChatCodec(channels=["consumption"], length=4)
GOOD = '{"consumption": [0.1, 0.2, 0.3, 0.4]}'


def completion(texts: list[str]) -> dict:
    return {"id": "chatcmpl-rec", "object": "chat.completion", "created": 1732400000, "model": "ft:gpt-4o-mini:org::rec",
            "choices": [{"index": i, "message": {"role": "assistant", "content": t, "refusal": None},
                         "finish_reason": "stop", "logprobs": None} for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60}}


def error(status: int, message: str, param=None, code=None, headers=None) -> httpx2.Response:
    kind = "server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error"
    return httpx2.Response(status, json={"error": {"message": message, "type": kind, "param": param, "code": code}},
                           headers=headers or {})


def replay(backend_cls, answer, **options):
    """A backend whose HTTP goes to ``answer(request_body) -> httpx2.Response``; returns it and the bodies seen."""
    seen = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        seen.append(body)
        return answer(body)

    client = httpx2.Client(transport=httpx2.MockTransport(handler))
    return backend_cls(api_key="rec", base_url="http://recorded.test/v1", http_client=client, **options), seen


def openai_backend(answer, **options):
    backend, seen = replay(OpenAIBackend, answer, **{"concurrency": 1, "max_retries": 2, **options})
    backend.codec, backend.model_id, backend.conditions = CODEC, "ft:gpt-4o-mini:org::rec", [{"item_id": "MT_001"}]
    return backend, seen


def test_rate_limit_is_retried_after_retry_after():
    answers = iter([error(429, "Rate limit reached", code="rate_limit_exceeded", headers={"retry-after": "0.05"})])
    backend, seen = openai_backend(lambda body: next(answers, None) or httpx2.Response(200, json=completion([GOOD] * body["n"])))
    out = backend.sample(3, seed=0)
    assert len(out) == 3 and len(seen) == 2 and seen[0] == seen[1]
    assert backend.last_sample_stats == {"requested": 3, "parsed": 3, "right_length": 3, "retried": 0, "dropped": 0}
    assert seen[0]["response_format"]["json_schema"]["schema"]["properties"]["consumption"]["minItems"] == 4
    assert seen[0]["temperature"] == 1.1 and seen[0]["n"] == 3


def test_server_errors_keep_what_was_produced():
    def answer(body):
        if "MT_002" in body["messages"][1]["content"]:
            return error(500, "The server had an error", headers={"retry-after-ms": "1"})
        return httpx2.Response(200, json=completion([GOOD] * body["n"]))

    backend, seen = openai_backend(answer, max_retries=1)
    with pytest.raises(SampleError, match="2 of 4 series were produced") as e:
        backend.sample(4, conditions=[{"item_id": "MT_001"}] * 2 + [{"item_id": "MT_002"}] * 2)
    assert len(e.value.partial) == 2 and list(e.value.partial.item_id) == ["MT_001", "MT_001"]
    assert e.value.stats["dropped"] == 2 and len(seen) == 1 + 2   # one success, a 500 and its retry


def test_malformed_and_short_answers_are_retried_and_counted():
    answers = iter([completion([GOOD, "Sure! Here it is", '{"consumption": [1, 2]}', '{"load": [1, 2, 3, 4]}']),
                    completion(['{"consumption": [1, 2, 3, 4, 5]}', GOOD, GOOD]),
                    completion([GOOD])])
    backend, seen = openai_backend(lambda body: httpx2.Response(200, json=next(answers)), choices_per_request=4)
    out = backend.sample(4, seed=0)
    assert len(out) == 4 and [b["n"] for b in seen] == [4, 3, 1]
    assert backend.last_sample_stats == {"requested": 8, "parsed": 6, "right_length": 4, "retried": 4, "dropped": 0}


def test_retries_are_capped_and_drops_counted():
    backend, seen = openai_backend(lambda body: httpx2.Response(200, json=completion(["{}"] * body["n"])),
                                   max_answer_retries=1)
    with pytest.raises(SampleError, match="no usable answer"):
        backend.sample(2)
    assert len(seen) == 2
    assert backend.last_sample_stats == {"requested": 4, "parsed": 0, "right_length": 0, "retried": 2, "dropped": 2}


def test_json_schema_falls_back_when_the_server_rejects_it():
    def answer(body):
        if body.get("response_format", {}).get("type") == "json_schema":
            return error(400, "Invalid schema for response_format 'series'", param="response_format")
        return httpx2.Response(200, json=completion([GOOD] * body["n"]))

    backend, seen = openai_backend(answer)
    assert len(backend.sample(2)) == 2 and len(backend.sample(1)) == 1
    assert [b["response_format"]["type"] for b in seen] == ["json_schema", "json_object", "json_object"]


def test_other_bad_requests_are_not_swallowed():
    backend, seen = openai_backend(lambda body: error(400, "model not found", param="model"))
    with pytest.raises(SampleError, match="model not found.*0 of 1 series") as e:
        backend.sample(1)
    assert e.value.partial is None and len(seen) == 1


def test_fewshot_prompt_parsing_and_counts():
    data = meters(5, length=4)
    rows = [json.dumps([round(1000 * x) / 1000 for x in data.series(i)[:, 0]]) for i in range(5)]
    reply = "\n".join([rows[0], "[0.1, 0.2, 0.3, 0.4]", "```json", "[0.1, 0.2]", "[1, 2, 3, 4, 5]", "[5, 6, 7, 8]"])
    backend, seen = replay(FewShotBackend, lambda body: httpx2.Response(200, json=completion([reply])),
                           shots=3, rows_per_request=6, max_answer_retries=0)
    backend.fit(data)
    out = backend.sample(3, seed=0)
    assert out.values.shape == (3, 4, 1)
    assert backend.last_row_counts == {"copies": 1, "malformed": 1, "short": 1, "long": 1}
    assert backend.last_sample_stats == {"requested": 6, "parsed": 5, "right_length": 3, "retried": 0, "dropped": 0}
    system, user = seen[0]["messages"]
    assert system["content"].startswith("You are a synthetic data generator,\nyou generate 6 rows similar")
    assert len(user["content"].splitlines()) == 3 and all(line in rows for line in user["content"].splitlines())
    assert seen[0]["temperature"] == 0.8 and seen[0]["max_tokens"] == 4096 and seen[0]["model"] == "gpt-4-turbo"


def test_fewshot_model_directory_round_trip(tmp_path):
    syn = Synthesizer("fewshot", shots=2).fit(meters(4, length=4))
    syn.save(tmp_path / "fewshot")
    loaded = Synthesizer.load(tmp_path / "fewshot").backend
    assert loaded.examples == syn.backend.examples and (loaded.length, loaded.options.shots) == (4, 2)
