"""``tsynth serve`` fine-tuning a pretrained model: a job whose ``model`` names a Hugging Face model of the
operator's ``--models-dir`` trains LoRA on it (the pretrained backend); its chat completions decode valid series."""

from __future__ import annotations

import json

import pytest
from llm_helpers import save_base
from server_helpers import meters, wait_for_job

from tsynth.codecs.chat import ChatCodec

pytestmark = pytest.mark.slow   # a server training LoRA
LENGTH = 8
CODEC = ChatCodec(system_prompt="Series.", decimals=2)   # short turns: the tiny Llama reads 256 tokens


@pytest.fixture(scope="module")
def finished_job(tsynth_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrained-serve")
    save_base(tsynth_server.models_dir / "tiny-llama")   # the operator's allow-list: models by folder name
    train = tmp / "train.jsonl"
    train.write_text("".join(json.dumps(ex) + "\n" for ex in CODEC.examples(meters(12, length=LENGTH))))
    client = tsynth_server.client()
    file = client.files.create(file=train, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=file.id, suffix="llama",
                                         hyperparameters={"n_epochs": 1, "batch_size": 4})
    return client, wait_for_job(client, job.id)


def ask(client, model, **kw):
    messages = [{"role": "system", "content": "Series."}, {"role": "user", "content": json.dumps({"item_id": "MT_003"})}]
    return client.chat.completions.create(model=model, messages=messages, **kw)


def test_job_on_a_model_directory_trains_lora_and_answers_valid_series(finished_job):
    client, job = finished_job
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:tiny-llama:tsynth:llama:")
    assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 4
    assert job.fine_tuned_model in {m.id for m in client.models.list()}

    completion = ask(client, job.fine_tuned_model, n=2, temperature=1.0, seed=0)
    texts = [c.message.content for c in completion.choices]
    assert len(texts) == 2
    for text in texts:
        assert CODEC.parse(text, LENGTH).shape == (LENGTH, 1)
        assert text.startswith('{"consumption": [')
    assert [c.message.content for c in ask(client, job.fine_tuned_model, n=2, temperature=1.0, seed=0).choices] == texts

    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]   # a snapshot of the adapter weights
    early = ask(client, checkpoint.fine_tuned_model_checkpoint, seed=1).choices[0].message.content
    assert CODEC.parse(early, LENGTH).shape == (LENGTH, 1)


def test_unloadable_base_model_fails_the_job_clearly(tsynth_server, finished_job):
    client, job = finished_job
    broken = tsynth_server.models_dir / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")   # on the allow-list, but no model loads from it
    failed = wait_for_job(client, client.fine_tuning.jobs.create(model="broken", training_file=job.training_file).id)
    assert failed.status == "failed" and failed.fine_tuned_model is None
    assert failed.error.code == "model_not_available" and failed.error.param == "model"
    assert "cannot load" in failed.error.message
