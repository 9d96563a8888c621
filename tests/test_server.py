"""``tsynth serve`` against the official ``openai`` SDK over real HTTP on loopback (uvicorn, SQLite,
worker process): the recipe's fine-tuning flow, chat completions, files, jobs, errors, auth, restart."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import sys
import time

import httpx2
import openai
import pytest
from server_helpers import LENGTH, ThreadServer, free_port, meters, wait_for_job, write_chat_files

from tsynth.codecs.chat import DEFAULT_SYSTEM_PROMPT, ChatCodec

pytestmark = pytest.mark.slow   # a server and its worker process
CODEC = ChatCodec(channels=["consumption"], length=LENGTH)


def ask(client, model, item="MT_010", **kw):
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                {"role": "user", "content": json.dumps({"item_id": item})}]
    return client.chat.completions.create(model=model, messages=messages, **kw)


@pytest.fixture(scope="module")
def recipe(tsynth_server, tmp_path_factory):
    """The recipe's own SDK calls: upload train and validation files, create the job, wait for it."""
    train_path, test_path = write_chat_files(tmp_path_factory.mktemp("recipe"), meters())
    client = tsynth_server.client()
    with open(train_path, "rb") as f:
        train_file = client.files.create(file=f, purpose="fine-tune")
    with open(test_path, "rb") as f:
        test_file = client.files.create(file=f, purpose="fine-tune")
    fine_tuning_job = client.fine_tuning.jobs.create(
        training_file=train_file.id,
        hyperparameters={"batch_size": 2, "learning_rate_multiplier": 2, "n_epochs": 3},  # the recipe ran 10
        validation_file=test_file.id,
        suffix="arena",
        model="gpt-3.5-turbo",
    )
    assert fine_tuning_job.status == "validating_files"
    assert fine_tuning_job.hyperparameters.n_epochs == 3
    return client, wait_for_job(client, fine_tuning_job.id), (train_file, test_file)


def test_recipe_flow_trains_and_samples(recipe):
    client, job, (train_file, test_file) = recipe
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:gpt-3.5-turbo:tsynth:arena:")
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert job.error.code is None and job.training_file == train_file.id and job.validation_file == test_file.id
    assert job.method.supervised.hyperparameters.batch_size == 2

    completion = ask(client, job.fine_tuned_model, temperature=1.1)   # the recipe's sampling call
    text = completion.choices[0].message.content
    assert CODEC.parse(text, LENGTH).shape == (LENGTH, 1)
    assert text.startswith('{"consumption": [')
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens > 0 and completion.usage.total_tokens > completion.usage.prompt_tokens

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=3))   # auto-paginates via `after`
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed"
    assert messages[-1] == f"Created fine-tuning job: {job.id}"
    assert len({e.id for e in events}) == len(events)
    metrics = [e.data for e in events if e.type == "metrics"]
    assert [m["step"] for m in metrics] == sorted((m["step"] for m in metrics), reverse=True)
    assert all(m["total_steps"] == metrics[0]["step"] for m in metrics)

    csv = base64.b64decode(client.files.content(job.result_files[0]).read()).decode()   # base64, as OpenAI
    assert csv.splitlines()[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(csv.splitlines()) == 1 + 3
    result = client.files.retrieve(job.result_files[0])
    assert (result.purpose, result.filename) == ("fine-tune-results", "step_metrics.csv")

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(checkpoints) == 3 and checkpoints[0].step_number > checkpoints[-1].step_number
    assert all(c.fine_tuned_model_checkpoint.endswith(f":ckpt-step-{c.step_number}") for c in checkpoints)
    models = {m.id for m in client.models.list()}
    assert {"tsynth-tiny", job.fine_tuned_model, checkpoints[-1].fine_tuned_model_checkpoint} <= models
    assert client.models.retrieve(job.fine_tuned_model).owned_by == "org-tsynth"
    early = ask(client, checkpoints[-1].fine_tuned_model_checkpoint, seed=1)   # checkpoints are models too
    assert CODEC.parse(early.choices[0].message.content, LENGTH).shape == (LENGTH, 1)


def test_chat_options(recipe):
    client, job, _ = recipe
    model = job.fine_tuned_model
    three = ask(client, model, n=3, seed=7, temperature=1.0)
    texts = [c.message.content for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2] and len(set(texts)) == 3
    assert [c.message.content for c in ask(client, model, n=3, seed=7, temperature=1.0).choices] == texts
    assert ask(client, model, seed=8).choices[0].message.content != texts[0]

    short = ask(client, model, max_tokens=10, seed=1).choices[0]
    assert short.finish_reason == "length" and len(short.message.content) < len(texts[0])
    assert ask(client, model, max_completion_tokens=10, seed=1).choices[0].message.content == short.message.content
    stopped = ask(client, model, stop=[","], seed=1).choices[0].message.content
    assert "," not in stopped and stopped.startswith('{"consumption": [')

    pinned = ask(client, model, response_format=CODEC.response_format(LENGTH), seed=2)
    assert CODEC.parse(pinned.choices[0].message.content, LENGTH).shape == (LENGTH, 1)
    assert json.loads(ask(client, model, response_format={"type": "json_object"}).choices[0].message.content)
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, model, response_format=CODEC.response_format(LENGTH // 2))
    assert e.value.param == "response_format" and f"{LENGTH} values" in e.value.message

    unconditional = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "{}"}], top_p=0.5)
    assert CODEC.parse(unconditional.choices[0].message.content, LENGTH).shape == (LENGTH, 1)


def test_chat_streaming(recipe):
    client, job, _ = recipe
    stream = ask(client, job.fine_tuned_model, n=2, seed=3, stream=True, stream_options={"include_usage": True})
    parts, finish, usage = {}, {}, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for c in chunk.choices:
            parts[c.index] = parts.get(c.index, "") + (c.delta.content or "")
            finish[c.index] = c.finish_reason or finish.get(c.index)
        usage = chunk.usage or usage
    assert finish == {0: "stop", 1: "stop"} and usage.completion_tokens > 0
    whole = ask(client, job.fine_tuned_model, n=2, seed=3)
    assert [parts[0], parts[1]] == [c.message.content for c in whole.choices]


def test_chat_errors(recipe):
    client, job, _ = recipe
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "tsynth-tiny")
    assert e.value.code == "model_not_available" and "cannot generate" in e.value.message
    with pytest.raises(openai.BadRequestError):
        ask(client, "gpt-4o-mini-2024-07-18")
    with pytest.raises(openai.NotFoundError) as e:
        ask(client, "ft:nope:tsynth::abcdefgh")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "MT_001"}])
    assert e.value.param == "messages" and "JSON object" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:   # FastAPI's 422 arrives as OpenAI's 400 envelope
        client.chat.completions.create(model=job.fine_tuned_model, messages=[])
    assert e.value.param == "messages" and e.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, job.fine_tuned_model, temperature=3)
    assert e.value.param == "temperature"


def test_delete_models(recipe):
    client, job, _ = recipe
    earliest = client.fine_tuning.jobs.checkpoints.list(job.id).data[-1].fine_tuned_model_checkpoint
    assert client.models.delete(earliest).deleted
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(earliest)
    with pytest.raises(openai.NotFoundError):
        ask(client, earliest)
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("tsynth-tiny")


def test_files_lifecycle_and_pagination(tsynth_server, tmp_path):
    client = tsynth_server.client()
    ids = []
    for k in range(3):
        p = tmp_path / f"f{k}.jsonl"
        p.write_text(f'{{"k": {k}}}\n')
        ids.append(client.files.create(file=p, purpose="fine-tune").id)
    listed = [f.id for f in client.files.list(limit=2, purpose="fine-tune")]   # pages of 2, newest first
    assert listed[:3] == ids[::-1] and len(listed) == len(set(listed))
    assert [f.id for f in client.files.list(order="asc", purpose="fine-tune")][-3:] == ids
    assert client.files.retrieve(ids[0]).status == "processed"
    assert client.files.content(ids[1]).read() == b'{"k": 1}\n'
    assert client.files.delete(ids[2]).deleted
    with pytest.raises(openai.NotFoundError) as e:
        client.files.retrieve(ids[2])
    assert e.value.param == "id" and ids[2] in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=tmp_path / "f0.jsonl", purpose="assistants")
    assert e.value.param == "purpose"
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=tmp_path / "data.csv", purpose="fine-tune")
    assert ".jsonl" in e.value.message


def test_ids_cannot_escape_the_data_directory(tsynth_server):
    for path in ["/files/..%2F..%2Ftsynth.db/content", "/files/..%2Ftsynth.db", "/files/%2E%2E/content",
                 "/files/file-..%2F..%2F..%2Fetc%2Fpasswd/content", "/models/..%2F..%2Fetc%2Fpasswd",
                 "/fine_tuning/jobs/..%2F..%2Ftsynth.db/events"]:
        r = httpx2.get(tsynth_server.url + path)
        assert r.status_code == 404, path
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert b"SQLite" not in r.content


def test_upload_limit_and_auth(tmp_path):
    server = ThreadServer(tmp_path / "data", api_key="s3cret", workers=0, max_upload_bytes=100)
    try:
        with pytest.raises(openai.AuthenticationError) as e:
            server.client(api_key="wrong").models.list()
        assert e.value.code == "invalid_api_key"
        r = httpx2.get(server.url + "/models")   # no key at all
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        client = server.client(api_key="s3cret")
        assert "tsynth-small" in {m.id for m in client.models.list()}
        big = tmp_path / "big.jsonl"
        big.write_text("x" * 200)
        with pytest.raises(openai.APIStatusError) as e:
            client.files.create(file=big, purpose="fine-tune")
        assert e.value.status_code == 413 and e.value.code == "file_too_large"
        assert list(client.files.list()) == []
    finally:
        server.stop()


def test_job_creation_errors(tsynth_server, recipe, tmp_path):
    client, job, (train_file, _) = recipe
    create = client.fine_tuning.jobs.create
    cases = [
        (dict(model="tsynth-tiny", training_file="file-" + "x" * 24), "training_file"),
        (dict(model="tsynth-tiny", training_file=job.result_files[0]), "training_file"),   # purpose fine-tune-results
        (dict(model=job.fine_tuned_model, training_file=train_file.id), "model"),
        (dict(model="tsynth-tiny", training_file=train_file.id, hyperparameters={"n_epochs": 0}), "hyperparameters"),
        (dict(model="tsynth-tiny", training_file=train_file.id, method={"type": "dpo"}), "method.type"),
        (dict(model="tsynth-tiny", training_file=train_file.id, suffix="a:b"), "suffix"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            create(**kwargs)
        assert e.value.param.startswith(param), (kwargs, e.value.param)
    with pytest.raises(openai.NotFoundError) as e:   # not a preset and not on the operator's allow-list
        create(model="llama-7b", training_file=train_file.id)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-" + "x" * 24)
    with pytest.raises(openai.ConflictError):   # x-should-retry: false, so the SDK does not retry it
        client.fine_tuning.jobs.cancel(job.id)


def test_malformed_file_fails_validation_with_line_number(tsynth_server, tmp_path):
    client = tsynth_server.client()
    lines = [json.dumps(ex) for ex in ChatCodec().examples(meters(12))]
    lines[2] = lines[2].replace("consumption", "load")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    job = client.fine_tuning.jobs.create(model="tsynth-tiny", training_file=client.files.create(file=bad, purpose="fine-tune").id)
    job = wait_for_job(client, job.id)
    assert job.status == "failed" and job.fine_tuned_model is None
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 3" in job.error.message and "'consumption'" in job.error.message
    assert client.fine_tuning.jobs.list_events(job.id).data[0].level == "error"

    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(lines[:2]) + "\n")
    job = client.fine_tuning.jobs.create(model="tsynth-tiny", training_file=client.files.create(file=few, purpose="fine-tune").id)
    job = wait_for_job(client, job.id)
    assert job.status == "failed" and "at least 10 examples" in job.error.message


def test_sdk_retries_do_not_duplicate_jobs_and_list_filters(tsynth_server, tmp_path):
    client = tsynth_server.client()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    file_id = client.files.create(file=bad, purpose="fine-tune").id
    body = {"model": "tsynth-tiny", "training_file": file_id, "metadata": {"run": "dedupe"}}
    url = tsynth_server.url + "/fine_tuning/jobs"
    first = httpx2.post(url, json=body, headers={"x-stainless-retry-count": "0"}).json()
    retried = httpx2.post(url, json=body, headers={"x-stainless-retry-count": "1"}).json()
    fresh = httpx2.post(url, json=body).json()
    assert retried["id"] == first["id"] and fresh["id"] != first["id"]
    listed = client.fine_tuning.jobs.list(metadata={"run": "dedupe"})
    assert {j.id for j in listed} == {first["id"], fresh["id"]}
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1, metadata={"run": "dedupe"})] == [fresh["id"], first["id"]]


def test_cancel_stops_a_running_job(tsynth_server, recipe):
    client, _, (train_file, _) = recipe
    job = client.fine_tuning.jobs.create(model="tsynth-tiny", training_file=train_file.id,
                                         hyperparameters={"n_epochs": 50, "batch_size": 4})
    deadline = time.time() + 60
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id).data):
        assert time.time() < deadline
        time.sleep(0.1)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    time.sleep(1.0)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert max(steps) < 50 * 4


def _start_cli_server(port: int, data_dir, log_file, key: str) -> subprocess.Popen:
    env = {**os.environ, "TSYNTH_API_KEY": key}
    return subprocess.Popen([sys.executable, "-m", "tsynth.cli", "serve", "--port", str(port), "--data-dir",
                             str(data_dir)], env=env, stdout=log_file, stderr=subprocess.STDOUT)


def _wait_ready(client, proc: subprocess.Popen) -> None:
    deadline = time.time() + 60
    while True:
        assert proc.poll() is None, "the server exited"
        try:
            client.models.list()
            return
        except openai.APIConnectionError:
            assert time.time() < deadline
            time.sleep(0.2)


def test_restart_resumes_the_running_job_and_keeps_everything(tmp_path):
    """Kill -9 the server mid-job, start it again: the job resumes from its last checkpoint; files, the
    finished model and the job history are all still there."""
    data_dir, port = tmp_path / "data", free_port()
    train_path, _ = write_chat_files(tmp_path, meters())
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k3y", max_retries=0)
    with open(tmp_path / "server.log", "w") as log_file:
        proc = _start_cli_server(port, data_dir, log_file, "k3y")
        try:
            _wait_ready(client, proc)
            train_file = client.files.create(file=train_path, purpose="fine-tune")
            done = wait_for_job(client, client.fine_tuning.jobs.create(
                model="tsynth-tiny", training_file=train_file.id, hyperparameters={"n_epochs": 1}).id)
            long = client.fine_tuning.jobs.create(model="tsynth-tiny", training_file=train_file.id,
                                                  hyperparameters={"n_epochs": 20, "batch_size": 4})
            deadline = time.time() + 60
            while not [e for e in client.fine_tuning.jobs.list_events(long.id).data if e.type == "metrics"]:
                assert time.time() < deadline
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
        with open(data_dir / "worker-0.lock", "w") as lock:   # the orphaned worker exits with its server
            deadline = time.time() + 10
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    assert time.time() < deadline, "the worker outlived its server"
                    time.sleep(0.1)
        proc = _start_cli_server(port, data_dir, log_file, "k3y")
        try:
            _wait_ready(client, proc)
            events = client.fine_tuning.jobs.list_events(long.id, limit=100).data
            restart = next(e for e in events if "restarted" in e.message)
            assert restart.level == "warn" and "resumes from its last checkpoint (step" in restart.message
            resumed_from = int(restart.message.split("step ")[1].rstrip(")"))
            long = wait_for_job(client, long.id)
            assert long.status == "succeeded", long.error
            events = client.fine_tuning.jobs.list_events(long.id, limit=100).data[::-1]
            k = next(i for i, e in enumerate(events) if "restarted" in e.message)
            after = [e.data["step"] for e in events[k:] if e.type == "metrics"]
            assert after[0] > resumed_from and after[-1] == 20 * 4   # 16 series, batch 4: 4 steps per epoch
            assert client.files.retrieve(train_file.id).filename == "train.jsonl"
            assert client.fine_tuning.jobs.retrieve(done.id).status == "succeeded"
            assert CODEC.parse(ask(client, done.fine_tuned_model).choices[0].message.content, LENGTH).shape == (LENGTH, 1)
            assert len(client.fine_tuning.jobs.list().data) == 2
        finally:
            proc.terminate()
            proc.wait(30)
