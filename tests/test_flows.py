"""Prefect: the deployments file, and the whole pipeline flow end to end on a tiny generated corpus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import answer_of, free_port, wait_for_answer
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

from spikemo.features.extract import load_features

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """One Prefect server for this module's flow runs: without it each flow process starts an ephemeral server
    of its own, with a fresh database to migrate."""
    port = free_port()
    environment = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-server")),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_answer(f"http://127.0.0.1:{port}/api/health")
        yield f"http://127.0.0.1:{port}/api"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _flow_environment(workdir: Path, api_url: str | None) -> dict[str, str]:
    """A flow process's environment: its own Prefect home (result storage, caches) and the given server, or
    none: an ephemeral server of its own, as `make demo` runs."""
    environment = {**os.environ, "PREFECT_HOME": str(workdir / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    environment.pop("PREFECT_API_URL", None)
    return {**environment, "PREFECT_API_URL": api_url} if api_url else environment


def test_prefect_yaml_deployments_parse_and_retrain_is_scheduled():
    document = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {deployment["name"]: deployment for deployment in document["deployments"]}
    assert {"preprocess", "retrain", "score"} <= set(deployments)
    for deployment in deployments.values():
        flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
        flow.validate_parameters(deployment.get("parameters", {}))
        assert deployment["work_pool"]["name"] == "spikemo-process"
    schedules = deployments["retrain"]["schedules"]
    assert len(schedules) == 1
    cron = CronSchedule(cron=schedules[0]["cron"], timezone=schedules[0]["timezone"])
    assert cron.cron == "0 3 * * 1"
    assert "schedules" not in deployments["preprocess"]


def _demo(workdir: Path, corpus: Path, config: Path, api_url: str) -> dict:
    environment = {**_flow_environment(workdir, api_url), "SPIKEMO_HOME": str(workdir)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spikemo.cli",
            "demo",
            "--data",
            str(corpus),
            "--config",
            str(config),
            "--cache",
            str(workdir / "cache"),
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_pipeline_flow_end_to_end_then_reuses_caches(tmp_path, tiny_corpus, prefect_api):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"format": "meld", "name": "tinydemo"},
                "features": {"modalities": ["text", "audio", "visual"], "frames_per_clip": 2},
                "model": {
                    "model_dim": 16,
                    "timesteps": 2,
                    "spikformer_depth": 1,
                    "spikformer_heads": 2,
                    "fusion_layers": 1,
                    "fusion_heads": 2,
                    "fusion_hidden": 32,
                },
                "train": {"epochs": 2, "batch_dialogues": 2},
                "tracking": {"experiment": "flow-test"},
            }
        )
    )
    first = _demo(tmp_path, tiny_corpus, config, prefect_api)
    assert first["alias"] == "champion" and first["model_version"] == "1"
    modalities = first["preprocess"]["modalities"]
    assert all(modalities[m]["encoded"] > 0 for m in ("text", "audio", "visual"))
    for modality in modalities.values():
        assert list(Path(modality["cache_path"]).glob("*.parquet"))

    second = _demo(tmp_path, tiny_corpus, config, prefect_api)
    assert all(m["encoded"] == 0 and m["reused"] > 0 for m in second["preprocess"]["modalities"].values())
    assert second["run_id"] == first["run_id"], (
        "unchanged data and config: the training task is served from Prefect's cache"
    )

    query = (  # this dataset's runs on the module's server
        "import json\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId\n"
        "with get_client(sync_client=True) as client:\n"
        "    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_='tinydemo')))\n"
        "    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs])))\n"
        "print(json.dumps([any('dev weighted-F1' in log.message for log in logs)]))\n"
        "print(json.dumps([[r.name, r.state.type.value, str(r.flow_id)] for r in runs]))\n"
    )
    listed = subprocess.run(
        [sys.executable, "-c", query],
        capture_output=True,
        text=True,
        env=_flow_environment(tmp_path, prefect_api),
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    runs = json.loads(listed.stdout.strip().splitlines()[-1])
    assert json.loads(listed.stdout.strip().splitlines()[-2]) == [True], "spikemo's epoch lines reach the run logs"
    states = [state for _, state, _ in runs]
    assert states and all(state == "COMPLETED" for state in states)
    names = {name.rsplit("-", 2)[0] for name, _, _ in runs}  # stage-dataset-YYYYmmdd-HHMMSS
    assert names == {"pipeline-tinydemo", "preprocess-tinydemo", "extract-tinydemo", "train-tinydemo"}
    assert len(states) >= 2 * 4  # pipeline, preprocess, extract, train per run


def test_artifact_keys_are_valid_for_any_dataset_name():
    from flows.common import artifact_key
    from spikemo.config import load_config

    config = load_config(None, {"data.name": "My_Data.v2"})
    assert artifact_key(config, "train") == "my-data-v2-train"


def test_training_cache_key_follows_the_library_code_and_the_tracking_store(
    tmp_path, monkeypatch, meld_conversations, tiny_config
):
    from flows import train
    from spikemo import identity
    from spikemo.stages import preprocess

    config = tiny_config(meld_conversations, tmp_path / "work", tmp_path / "cache")
    parameters = {"config": config, "preprocessed": preprocess(config)}
    before = train._training_inputs(None, parameters)
    assert train._training_inputs(None, parameters) == before
    elsewhere = config.model_copy(
        update={"tracking": config.tracking.model_copy(update={"tracking_uri": "http://127.0.0.1:9"})}
    )  # its runs live in another store: one finished here cannot be registered there
    assert train._training_inputs(None, {**parameters, "config": elsewhere}) != before
    monkeypatch.setattr(identity, "code_digest", lambda: "another version of spikemo")
    assert train._training_inputs(None, parameters) != before


def _serve_then_sigterm(command: list[str], url: str, environment: dict[str, str]) -> bytes:
    """Start a ``spikemo`` server command, wait for ``url`` to answer, SIGTERM the command alone (not its
    group) and check that it exits and its server no longer answers; returns the first answer."""
    server = subprocess.Popen(
        [sys.executable, "-m", "spikemo.cli", *command],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        answer = wait_for_answer(url)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        assert answer_of(url) is None, "the child server survived SIGTERM"
        return answer
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


def test_prefect_ui_on_any_port_calls_its_own_api_and_stops_on_sigterm(tmp_path):
    port = free_port()
    environment = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    answer = _serve_then_sigterm(
        ["prefect-ui", "--workdir", str(tmp_path), "--port", str(port)],
        f"http://127.0.0.1:{port}/ui-settings",
        environment,
    )
    assert json.loads(answer)["api_url"] == f"http://127.0.0.1:{port}/api"


def test_mlflow_ui_stops_on_sigterm(tmp_path):
    port = free_port()
    answer = _serve_then_sigterm(
        ["ui", "--workdir", str(tmp_path), "--port", str(port)], f"http://127.0.0.1:{port}/health", dict(os.environ)
    )
    assert answer.strip() == b"OK"


def test_extraction_runs_on_a_local_dask_cluster(tmp_path, meld_conversations, tiny_config, prefect_api):
    """features.task_runner: dask runs the extraction tasks on a local Dask cluster (prefect-dask)."""
    pytest.importorskip("prefect_dask")
    config = tiny_config(
        meld_conversations,
        tmp_path / "work",
        tmp_path / "cache",
        **{"features.task_runner": "dask", "features.task_workers": 2, "features.shard_size": 200},
    )
    script = (
        "import json, sys\n"
        "from flows.preprocess import preprocess_flow\n"
        "summary = preprocess_flow(config=json.loads(sys.argv[1]))\n"
        "print(json.dumps(summary['modalities']['text']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config.model_dump(mode="json"))],
        capture_output=True,
        text=True,
        env=_flow_environment(tmp_path, prefect_api),
        timeout=900,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = json.loads(result.stdout.strip().splitlines()[-1])
    assert text["encoded"] == 594 and text["failed"] == 0  # 3 shards, spread over the cluster's workers
    # the tasks went through Prefect's Dask client to a local cluster of two worker processes
    assert (
        "PrefectDaskClient" in result.stderr and result.stderr.count("distributed.scheduler - Remove worker addr") == 2
    )


def test_cli_preprocess_extracts_on_an_existing_dask_scheduler_as_threads_would(
    tmp_path, meld_conversations, tiny_config, prefect_api
):
    """`spikemo preprocess --set features.task_runner=dask --set features.dask_address=...` sends the extraction to a
    running `dask scheduler` and its `dask worker` processes; the cache equals one made with threads."""
    pytest.importorskip("prefect_dask")
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    cluster = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    cluster += [
        subprocess.Popen(
            [dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    try:
        with Client(address, timeout=120) as client:
            client.wait_for_workers(2, timeout=120)
            caches = {}
            for runner in ("threads", "dask"):
                config = tiny_config(
                    meld_conversations,
                    tmp_path / runner / "work",
                    tmp_path / runner / "cache",
                    **{"features.shard_size": 200},
                )
                config_file = tmp_path / f"{runner}.yaml"
                config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
                command = [
                    sys.executable,
                    "-m",
                    "spikemo.cli",
                    "preprocess",
                    "--config",
                    str(config_file),
                    "--set",
                    f"features.task_runner={runner}",
                    "--set",
                    f"features.dask_address={address}",
                ]
                result = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    timeout=900,
                    cwd=REPO,
                    env=_flow_environment(tmp_path / runner, prefect_api),
                )
                assert result.returncode == 0, result.stderr[-3000:]
                assert json.loads(result.stdout.strip().splitlines()[-1])["modalities"]["text"]["encoded"] == 594
                caches[runner] = load_features(config.manifest_path, "text", config.features, config.cache)
            prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    finally:
        for process in cluster:
            process.terminate()
            process.wait(timeout=60)
    assert any("extract" in prefix for prefix in prefixes), prefixes  # the scheduler's workers ran the shards
    threads, on_dask = (np.stack(caches[runner]["embedding"].to_list()) for runner in ("threads", "dask"))
    assert np.abs(threads - on_dask).max() < 1e-4


def test_pipeline_flow_fine_tunes_the_text_encoder_then_reuses_it(
    tmp_path, meld_conversations, tiny_config, tiny_models
):
    """features.text.finetune chains fine-tune → extraction → training → registration; a re-run reuses the fine-tune."""
    config = tiny_config(
        meld_conversations,
        tmp_path / "work",
        tmp_path / "cache",
        **{
            "features.text.params": {
                "model": str(tiny_models["bert"]),
                "context_turns": 1,
                "speaker_names": True,
                "max_length": 32,
            },
            "features.text.finetune": {"epochs": 1, "lr": 1e-3},
            "train.epochs": 1,
        },
    )
    script = (  # the pipeline twice in one process, on an ephemeral Prefect server as `make demo` runs it
        "import json, sys\n"
        "from flows.pipeline import pipeline_flow\n"
        "for _ in range(2):\n"
        "    summary = pipeline_flow(config=json.loads(sys.argv[1]))\n"
        "    print(json.dumps({'finetune': summary['preprocess']['text_finetune'],"
        " 'text': summary['preprocess']['modalities']['text'],"
        " 'alias': summary['train']['alias']}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config.model_dump(mode="json"))],
        capture_output=True,
        text=True,
        env=_flow_environment(tmp_path, None),
        timeout=900,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert not first["finetune"]["reused"] and second["finetune"]["reused"]
    assert first["finetune"]["model_path"] == second["finetune"]["model_path"]
    assert first["text"]["encoded"] == 594 and second["text"]["encoded"] == 0
    assert first["alias"] == "champion"


def test_a_deployment_run_by_a_real_worker_logs_spikemo_progress(
    tmp_path, meld_conversations, tiny_config, prefect_api
):
    """prefect.yaml's work pool settings, a Prefect server, `prefect deploy`, `prefect deployment run` and a
    worker process (not in-process): spikemo's INFO lines reach the flow run's logs in the API."""
    import re

    prefect = str(Path(sys.executable).with_name("prefect"))
    environment = {**_flow_environment(tmp_path, prefect_api), "DO_NOT_TRACK": "true"}
    environment.pop("PREFECT_LOGGING_EXTRA_LOGGERS", None)  # only the deployment's own settings may set it
    document = yaml.safe_load((REPO / "prefect.yaml").read_text())
    pool = document["definitions"]["work_pools"]["process_pool"]
    config = tiny_config(meld_conversations, tmp_path / "work", tmp_path / "cache", **{"train.epochs": 2})
    document["deployments"] = [
        {
            "name": "tiny",
            "entrypoint": "flows/train.py:train_flow",
            "work_pool": pool,
            "parameters": {"config": config.model_dump(mode="json")},
        }
    ]
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(document))

    def prefect_cli(*arguments: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [prefect, *arguments], env=environment, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    prefect_cli("work-pool", "create", pool["name"], "--type", "process")
    prefect_cli("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", prefect_cli("deployment", "run", "spikemo-train/tiny")).group(1)
    prefect_cli("worker", "start", "--pool", pool["name"], "--run-once", timeout=600)
    logs = prefect_cli("flow-run", "logs", flow_run_id)
    assert re.search(r"epoch 1 of 0-1: train loss", logs), logs[-3000:]
    assert re.search(r"text \(hf-text\): \d+ encoded, 0 reused", logs), logs[-3000:]
    assert "gating score" in logs and "Downloading artifacts" not in logs


def test_demo_prepares_the_pipeline_while_the_corpus_renders(tmp_path):
    """While the demo generates its corpus, the pipeline's modules are imported and Prefect's temporary API comes
    up in the background, and that API is the one the flows then use; with an API configured none is started."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.demo import temporary_prefect_api

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert temporary_prefect_api() is None
    script = (
        "import sys, httpx\n"
        "from flows.demo import prepare_pipeline_in_background\n"
        "from prefect.server.api.server import SubprocessASGIServer\n"
        "for thread in prepare_pipeline_in_background():\n"
        "    thread.join()\n"
        "server = SubprocessASGIServer()\n"
        "print(server.running, httpx.get(server.api_url + '/health').status_code, 'flows.pipeline' in sys.modules)\n"
    )
    environment = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    environment.pop("PREFECT_API_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, cwd=REPO, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "200", "True"]
