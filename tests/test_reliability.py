"""Issue 31, as a user meets it: bad input and bad outputs through the command line (exit status 2, one line
on stderr, nothing written), interrupted and mismatched fits, and ``tsynth serve`` against bad jobs, dying
workers and hostile clients (real HTTP on loopback, the official ``openai`` SDK). Also a seeded fuzz pass
over the data readers (``benchmarks/fuzz_readers.py`` runs thousands of cases; here a few hundred)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openai
import pandas as pd
import pytest
import torch
from server_helpers import ThreadServer, kill_worker, meters, wait_for_event, wait_for_job, write_chat_files

from tsynth import SeriesSet
from tsynth.cli import main
from tsynth.errors import ConfigError


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(capsys, *argv) -> str:
    """Run a command that must be refused: exit status 2, its last stderr line the one error line."""
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("tsynth: error: ") and "Traceback" not in err, err
    return lines[-1]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def long_csv(path: Path, n_items: int = 12, length: int = 24, seed: int = 0, huge: float | None = None) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_items):
        v = np.sin(np.arange(length) / 4 + i) + 0.1 * rng.normal(size=length)
        if huge is not None and i == 3:
            v[5] = huge
        rows.append(pd.DataFrame({"item_id": f"M{i:02d}", "timestamp": pd.date_range("2024-01-01", periods=length,
                                                                                     freq="h"), "value": v}))
    pd.concat(rows).to_csv(path, index=False)
    return path


FIT = ["--epochs", "1", "--ensemble", "1", "--n-bins", "16"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A finished one-epoch fit through the CLI (its checkpoints are removed once the model is written)."""
    tmp = tmp_path_factory.mktemp("reliability")
    data = long_csv(tmp / "meters.csv")
    assert main(["fit", str(data), "-o", str(tmp / "model"), *FIT]) == 0
    assert not (tmp / "model.checkpoints").exists()   # a finished fit keeps no checkpoints unless asked
    return tmp / "model"


# ---------------------------------------------------------------------- case 6 and 7: data errors
def test_huge_values_are_refused_naming_file_and_row(tmp_path, capsys):
    csv = long_csv(tmp_path / "huge.csv", huge=3.4e38)
    line = refused(capsys, "fit", csv, "-o", tmp_path / "m", *FIT)
    assert "huge.csv" in line and "series 'M03', row 79" in line and "too large" in line
    jsonl = tmp_path / "huge.jsonl"
    jsonl.write_text("".join(json.dumps({"consumption": [0.5, 1e308 if k == 2 else 1.0]}) + "\n" for k in range(36)))
    line = refused(capsys, "prepare", jsonl, "-o", tmp_path / "files")
    assert "huge.jsonl: line 3" in line and "1e+308" in line
    assert files_under(tmp_path) == ["huge.csv", "huge.jsonl"]


def test_directory_as_data_file_and_missing_time_column(tmp_path, capsys):
    (tmp_path / "data.csv").mkdir()
    assert "data.csv: is a directory" in refused(capsys, "prepare", tmp_path / "data.csv", "-o", tmp_path / "out")
    notime = tmp_path / "notime.csv"
    pd.read_csv(long_csv(tmp_path / "x.csv")).drop(columns="timestamp").to_csv(notime, index=False)
    line = refused(capsys, "fit", notime, "-o", tmp_path / "m", *FIT)
    assert "no time column" in line and "--time-col" in line and "non-numeric" not in line
    assert not (tmp_path / "m").exists() and not (tmp_path / "out").exists()


def test_a_single_series_names_length_and_stride(tmp_path, capsys):
    one = tmp_path / "one.csv"
    pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=200, freq="h"),
                  "value": np.sin(np.arange(200) / 4)}).to_csv(one, index=False)
    line = refused(capsys, "fit", one, "-o", tmp_path / "m", *FIT)
    assert "1 series" in line and "--length" in line and "--stride" in line
    assert files_under(tmp_path) == ["one.csv"]


# ---------------------------------------------------------------------- case 5: outputs checked first
def test_outputs_are_checked_before_any_work(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    missing = tmp_path / "no-such-data.csv"   # the output error comes first: nothing was read
    assert "afile: is a file, not a model directory" in refused(capsys, "fit", missing, "-o", tmp_path / "afile")
    assert "not a tsynth model directory" in refused(capsys, "fit", missing, "-o", tmp_path / "notes")
    assert "unknown output extension '.txt'" in refused(capsys, "sample", tmp_path / "no-model", "-n", "3", "-o",
                                                        tmp_path / "out.txt")
    assert "afile is a file, not a folder" in refused(capsys, "sample", tmp_path / "no-model", "-n", "3", "-o",
                                                      tmp_path / "afile" / "out.csv")
    assert "afile: is a file, not a folder" in refused(capsys, "evaluate", "--train", missing, "--synthetic",
                                                       missing, "-o", tmp_path / "afile")
    assert files_under(tmp_path) == ["afile", "notes", "notes/todo.txt"]
    assert (tmp_path / "afile").read_text() == "mine"


def test_existing_model_and_output_need_overwrite(model, tmp_path, capsys):
    data = long_csv(tmp_path / "meters.csv")
    line = refused(capsys, "fit", data, "-o", model, *FIT)
    assert "a model directory exists there" in line and "--overwrite" in line
    out = tmp_path / "syn.csv"
    assert run(capsys, "sample", model, "-n", "4", "-o", out)[0] == 0
    first = out.read_text()
    assert "--overwrite" in refused(capsys, "sample", model, "-n", "4", "-o", out, "--seed", "1")
    assert out.read_text() == first
    assert run(capsys, "sample", model, "-n", "4", "-o", out, "--seed", "1", "--overwrite")[0] == 0
    assert out.read_text() != first
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    assert run(capsys, "fit", data, "-o", copy, *FIT, "--overwrite", "--seed", "1")[0] == 0
    assert json.loads((copy / "tsynth.json").read_text())["options"]["train"]["seed"] == 1


# ---------------------------------------------------------------------- case 6: settings and model directories
def test_bad_sampling_settings_and_validity_file(model, tmp_path, capsys):
    assert "--temperature must be a positive number, got nan" in refused(
        capsys, "sample", model, "-n", "3", "-o", tmp_path / "s.csv", "--temperature", "nan")
    assert "--top-p" in refused(capsys, "sample", model, "-n", "3", "-o", tmp_path / "s.csv", "--top-p", "0")
    bad = tmp_path / "validity.json"
    for content, says in (("{", "not a JSON file"), ("[]", "expected a JSON object"),
                          ('{"requested": -1}', "non-negative integer")):
        bad.write_text(content)
        line = refused(capsys, "evaluate", "--train", model, "--synthetic", model, "--validity", bad, "-o",
                       tmp_path / "ev")
        assert f"--validity {bad}" in line and says in line
    assert files_under(tmp_path) == ["validity.json"]


def test_damaged_model_directories_say_what_is_wrong(model, tmp_path, capsys):
    broken = tmp_path / "broken"
    out = tmp_path / "s.csv"
    for damage, says in (
            (lambda d: (d / "tsynth.json").write_text("[]"), "expected a JSON object, got list"),
            (lambda d: (d / "tsynth.json").write_text(json.dumps(
                {k: v for k, v in json.loads((model / "tsynth.json").read_text()).items() if k != "codec"})),
             "no 'codec'"),
            (lambda d: shutil.rmtree(d / "model"), "the weights folder model/ is missing"),
            (lambda d: (d / "tsynth.json").write_text(json.dumps(
                {**json.loads((model / "tsynth.json").read_text()), "options": {"preset": "tiny"}})),
             "incomplete or damaged")):
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(model, broken)
        damage(broken)
        line = refused(capsys, "sample", broken, "-n", "3", "-o", out)
        assert str(broken) in line and says in line, line
    assert not out.exists()


# ---------------------------------------------------------------------- case 7: conditions, huge -n
def test_unknown_condition_fields_are_refused(model, tmp_path, capsys):
    line = refused(capsys, "sample", model, "-n", "3", "-o", tmp_path / "s.csv", "--condition", "colour=red")
    assert "no condition field 'colour'" in line and "its fields:" in line
    assert not (tmp_path / "s.csv").exists()


def test_a_large_sample_is_estimated_and_streamed_to_disk(model, tmp_path, capsys):
    from tsynth.cli import STREAM_FROM

    out = tmp_path / "many.parquet"
    n = STREAM_FROM + 300
    code, stdout, err = run(capsys, "sample", model, "-n", n, "-o", out)
    assert code == 0, err
    assert f"sampling {n:,} series takes about" in stdout and "streamed to" in stdout
    syn = SeriesSet.read(out)
    assert len(syn) == n and syn.length == 24 and len(set(syn.item_id)) == n
    assert files_under(tmp_path) == ["many.parquet"]   # no chunk or temporary file left


def test_length_one_series_keep_their_time_stamps(tmp_path, capsys):
    data = tmp_path / "daily.csv"
    pd.DataFrame({"item_id": [f"M{i:02d}" for i in range(12)], "timestamp": "2024-03-01",
                  "value": np.linspace(1, 2, 12)}).to_csv(data, index=False)
    assert run(capsys, "fit", data, "-o", tmp_path / "m", *FIT)[0] == 0
    assert run(capsys, "sample", tmp_path / "m", "-n", "5", "-o", tmp_path / "s.csv")[0] == 0
    assert set(pd.read_csv(tmp_path / "s.csv")["timestamp"]) == {"2024-03-01"}


# ---------------------------------------------------------------------- running out of memory
def out_of_memory_past(limit: int, real):
    """``real`` (a batch function taking the batch's conditions third, or a training step taking its tokens first)
    that raises torch's out-of-memory error, as a GPU does, where its batch holds more than ``limit`` rows: no test
    machine has a GPU to fill, so the error is raised where a real one would arise."""
    def wrapped(*args, **kwargs):
        rows = args[2] if real.__name__ == "_generate_batch" else args[0]
        if len(rows) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)
    return wrapped


@pytest.mark.parametrize("codec", ["token", "step"])
def test_sampling_out_of_memory_draws_again_in_smaller_batches(tmp_path, monkeypatch, caplog, codec):
    """A batch that does not fit is drawn again at half the size, said in a warning, and the result is exactly
    what asking for that batch size gives; where one series does not fit, one line says what to lower."""
    import tsynth.sample
    import tsynth.stepgen
    from tsynth import Synthesizer
    from tsynth.errors import DeviceMemoryError

    syn = Synthesizer("local", epochs=1, ensemble=1, n_bins=16, codec=codec, seed=0)
    syn.fit(SeriesSet.read(long_csv(tmp_path / "m.csv")), progress=False)
    module = tsynth.sample if codec == "token" else tsynth.stepgen
    draw = module.generate if codec == "token" else module.generate_steps
    models, c = syn.backend.models, syn.backend.codec
    expected = draw(models, c, 10, seed=3, batch_size=2).values
    real = module._generate_batch
    monkeypatch.setattr(module, "_generate_batch", out_of_memory_past(2, real))
    with caplog.at_level("WARNING", logger="tsynth"):
        got = draw(models, c, 10, seed=3).values
    np.testing.assert_array_equal(got, expected)
    said = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(said) == 2, said
    for line, (a, b) in zip(said, ((10, 5), (5, 2))):  # on a GPU the line also says how much memory is free
        assert re.fullmatch(rf"the (machine|GPU) ran out of memory drawing series of 24 steps in batches of {a} "
                            rf"series( \(.+ GiB free on .+\))?: drawing again in batches of {b}", line), line
    monkeypatch.setattr(module, "_generate_batch", out_of_memory_past(0, real))
    with pytest.raises(DeviceMemoryError, match=r"ran out of memory drawing series of 24 steps one series at a time"
                                                r"( \(.+\))?: draw shorter series"):
        draw(models, c, 3, seed=3)


def test_out_of_memory_through_the_cli_names_what_to_lower(model, tmp_path, capsys, monkeypatch):
    """`tsynth fit` that runs out of memory names the batch size to try; `tsynth sample` that cannot draw even
    one series at a time says so; both exit 2 in one line and write nothing."""
    import tsynth.sample
    import tsynth.train
    from tsynth.devicememory import is_out_of_memory

    data = long_csv(tmp_path / "meters.csv")
    monkeypatch.setattr(tsynth.train, "drop_conditions", out_of_memory_past(4, tsynth.train.drop_conditions))
    line = refused(capsys, "fit", data, "-o", tmp_path / "m", *FIT, "--batch-size", "8")
    assert re.fullmatch(r"tsynth: error: the (machine|GPU) ran out of memory training at batch size 8( \(.+\))?: "
                        r"lower the batch size \(--batch-size 4, or batch_size=4\)", line), line
    assert files_under(tmp_path) == ["meters.csv"]
    monkeypatch.setattr(tsynth.sample, "_generate_batch", out_of_memory_past(0, tsynth.sample._generate_batch))
    line = refused(capsys, "sample", model, "-n", "3", "-o", tmp_path / "s.csv")
    assert "ran out of memory drawing series of 24 steps one series at a time" in line, line
    assert files_under(tmp_path) == ["meters.csv"]
    # a CPU allocation the machine cannot serve counts as running out of memory; other runtime errors do not
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


# ---------------------------------------------------------------------- case 3: resume
def test_resume_refuses_the_checkpoints_of_another_fit(tmp_path, capsys):
    a, b = long_csv(tmp_path / "a.csv"), long_csv(tmp_path / "b.csv", seed=1)
    fit = ["--epochs", "2", "--ensemble", "2", "--n-bins", "16", "--prior", "none"]   # a prior fixes the preset
    assert run(capsys, "fit", a, "-o", tmp_path / "ma", *fit, "--keep-checkpoints")[0] == 0
    ckpt = tmp_path / "ma.checkpoints"
    assert (ckpt / "member_1" / "progress.json").exists() and not (ckpt / "inputs").exists()
    line = refused(capsys, "fit", b, "-o", tmp_path / "mb", *fit, "--resume", "--checkpoint-dir", ckpt)
    assert "belongs to another fit" in line and "other training data" in line
    one = ["--epochs", "2", "--ensemble", "1", "--n-bins", "16", "--prior", "none"]   # member 0 alone, in this process
    line = refused(capsys, "fit", a, "-o", tmp_path / "mb", *one, "--resume", "--checkpoint-dir", ckpt,
                   "--preset", "small")
    assert "preset 'tiny' in the checkpoint, 'small' now" in line
    assert not (tmp_path / "mb").exists()
    assert run(capsys, "fit", a, "-o", tmp_path / "mb", *one, "--resume", "--checkpoint-dir", ckpt)[0] == 0
    assert not ckpt.exists()   # the finished fit removed them


# ---------------------------------------------------------------------- case 4: SIGTERM
def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def test_sigterm_stops_the_members_and_removes_temporary_files(tmp_path):
    data = long_csv(tmp_path / "meters.csv", n_items=30)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1"}
    model, ckpt = tmp_path / "model", tmp_path / "model.checkpoints"
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tsynth.cli", "fit", str(data), "-o", str(model), "--epochs",
                                 "400", "--ensemble", "2"], env=env, stdout=log, stderr=log)
        deadline = time.time() + 180
        while not (ckpt / "member_0" / "progress.json").exists():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "log").read_text()
            time.sleep(0.2)
        children = _children(proc.pid)
        if children:   # members train in child processes (on a machine of 2 cores or more)
            assert (ckpt / "inputs").stat().st_mode & 0o777 == 0o700
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
    err = (tmp_path / "log").read_text()
    assert err.strip().splitlines()[-1] == "tsynth: terminated" and "Traceback" not in err
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"member process {pid} outlived the fit"
    assert list(tmpdir.iterdir()) == [] and not model.exists()
    assert {p.name for p in ckpt.iterdir()} <= {"member_0", "member_1"}   # only its own checkpoints stay


# ---------------------------------------------------------------------- fuzz
def test_fuzzed_data_files_never_crash_the_reader(tmp_path):
    from benchmarks.fuzz_readers import fuzz

    result = fuzz(300, seed=31)
    assert result["failures"] == 0, json.dumps(result["first_failures"][:5], indent=1)
    assert result["counts"].get("refused", 0) > 100 and result["counts"].get("accepted", 0) > 0


# ---------------------------------------------------------------------- the server
def poisoned_chat_file(path: Path, n: int = 36) -> Path:
    """The recipe's chat format with values too large for float32 in one example."""
    lines = []
    for i in range(n):
        values = [1e308 if i == 4 and k == 2 else round(float(np.sin(k / 4 + i)), 3) for k in range(24)]
        lines.append(json.dumps({"messages": [
            {"role": "system", "content": "Series."},
            {"role": "user", "content": json.dumps({"item_id": f"MT_{i:03d}"})},
            {"role": "assistant", "content": json.dumps({"consumption": values})}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server of one worker for the tests that break jobs and workers."""
    s = ThreadServer(tmp_path_factory.mktemp("faults"))
    yield s
    s.stop()


def test_a_poisoned_training_file_fails_its_job_not_the_worker(server, tmp_path):
    client = server.client()
    bad = client.files.create(file=poisoned_chat_file(tmp_path / "poison.jsonl"), purpose="fine-tune")
    job = wait_for_job(client, client.fine_tuning.jobs.create(model="tsynth-tiny", training_file=bad.id).id)
    assert job.status == "failed" and job.error.code == "invalid_training_file"
    assert "MT_004" in job.error.message and "too large" in job.error.message
    good, _ = write_chat_files(tmp_path, meters())
    good = client.files.create(file=good, purpose="fine-tune")
    job = wait_for_job(client, client.fine_tuning.jobs.create(model="tsynth-tiny", training_file=good.id,
                                                              hyperparameters={"n_epochs": 1}).id)
    assert job.status == "succeeded", job.error
    assert server.app.state.workers.restarts == 0


def test_a_dead_worker_is_restarted_and_a_job_that_keeps_killing_it_fails(server, tmp_path):
    client = server.client()
    train, _ = write_chat_files(tmp_path, meters())
    file_id = client.files.create(file=train, purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model="tsynth-tiny", training_file=file_id,
                                         hyperparameters={"n_epochs": 50, "batch_size": 4})
    wait_for_event(client, job.id, lambda e: e.type == "metrics")
    kill_worker(server=server)
    resumed = wait_for_event(client, job.id, lambda e: "resumes from" in e.message)
    assert resumed.level == "warn" and "The training process stopped (exit status -9)" in resumed.message
    deadline = time.time() + 120
    while True:   # the restarted worker trains again: a metrics event newer than the warning
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data   # newest first
        if any(e.type == "metrics" for e in events[: [e.id for e in events].index(resumed.id)]):
            break
        assert time.time() < deadline
        time.sleep(0.1)
    kill_worker(server=server)
    job = wait_for_job(client, job.id)
    assert job.status == "failed" and job.error.code == "server_error"
    assert "for the second time" in job.error.message and "not started again" in job.error.message
    after = wait_for_job(client, client.fine_tuning.jobs.create(model="tsynth-tiny", training_file=file_id,
                                                                hyperparameters={"n_epochs": 1}).id)
    assert after.status == "succeeded", after.error   # the restarted worker trains the next job
    assert server.app.state.workers.restarts == 2


def test_base_models_come_only_from_the_operators_allow_list(tmp_path):
    models = tmp_path / "base-models"
    (models / "tiny-llama").mkdir(parents=True)
    (models / "tiny-llama" / "config.json").write_text("{}")
    (models / "empty").mkdir()   # holds no model: not on the list
    server = ThreadServer(tmp_path / "data", workers=0, models_dir=models, base_models=["org/allowed-model"])
    try:
        client = server.client()
        train, _ = write_chat_files(tmp_path, meters())
        file_id = client.files.create(file=train, purpose="fine-tune").id
        answers = set()
        for model in ("/etc", str(tmp_path / "no-such-dir"), str(models / "tiny-llama"), "empty", "../tiny-llama",
                      "HuggingFaceTB/SmolLM2-135M-Instruct", "org/other-model"):
            with pytest.raises(openai.NotFoundError) as e:
                client.fine_tuning.jobs.create(model=model, training_file=file_id)
            assert e.value.code == "model_not_found"
            answers.add((e.value.status_code, e.value.message.replace(model, "MODEL"), e.value.param))
        assert len(answers) == 1   # the same answer whether or not the path exists: nothing to probe
        for model in ("tiny-llama", "org/allowed-model"):
            assert client.fine_tuning.jobs.create(model=model, training_file=file_id).model == model
        assert {"tsynth-tiny", "tiny-llama", "org/allowed-model"} <= {m.id for m in client.models.list()}
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "{}"}])
        assert "cannot generate" in e.value.message
    finally:
        server.stop()


def test_an_empty_api_key_is_refused(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    assert "--api-key is empty" in refused(capsys, "serve", "--api-key", "", "--data-dir", data)
    monkeypatch.setenv("TSYNTH_API_KEY", " ")
    assert "TSYNTH_API_KEY is empty" in refused(capsys, "serve", "--data-dir", data)
    assert not data.exists()
    from tsynth.server import create_app

    with pytest.raises(ConfigError):
        create_app(data, api_key="")


def test_the_storage_quota_refuses_uploads_past_it(tmp_path):
    from tsynth.server.store import Store

    used = Store(tmp_path / "data").usage()
    server = ThreadServer(tmp_path / "data", workers=0, max_storage_bytes=used + 30_000)
    try:
        client = server.client()
        chunk = tmp_path / "chunk.jsonl"
        chunk.write_text(json.dumps({"x": "y" * 9000}) + "\n")
        kept = []
        with pytest.raises(openai.APIStatusError) as e:
            for _ in range(10):
                kept.append(client.files.create(file=chunk, purpose="fine-tune").id)
        assert e.value.status_code == 413 and e.value.code == "storage_quota_exceeded"
        assert 1 <= len(kept) < 10 and {f.id for f in client.files.list()} == set(kept)
        assert not list((tmp_path / "data" / "files").glob(".*"))   # no half-stored upload
        client.files.delete(kept[0])
        assert client.files.create(file=chunk, purpose="fine-tune").bytes == chunk.stat().st_size
    finally:
        server.stop()
