"""Live scoring of conversations so far with a causal model: answers, reuse of encodings, CLI and pyfunc."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import serve_on_a_free_port

from spikemo import stages
from spikemo.cli import main
from spikemo.config import DataConfig
from spikemo.data.ingest import file_sha256, ingest
from spikemo.errors import DataError
from spikemo.incremental import IncrementalScorer, _Waiting
from spikemo.predict import Predictor
from spikemo.servers import model_server_command, model_server_environment, stop_process_group
from spikemo.tracking import connect, tracking_uri

MODEL_URI = "models:/spikemo-livetext@champion"


@pytest.fixture(scope="module")
def causal_model(tmp_path_factory, generated_text_config):
    """A causal text SpikEmo with speaker evidence and speaker-centred inputs, on generated transcripts."""
    root = tmp_path_factory.mktemp("live-text")
    config = generated_text_config(
        root,
        "livetext",
        dialogues=60,
        seed=4,
        **{
            "features.text.params": {"model": "minilm", "context_turns": 2, "speaker_names": True},
            "model.causal": True,
            "model.speaker_evidence_rounds": 2,
            "model.speaker_relative_inputs": "centred",
            "train.epochs": 4,
        },
    )
    stages.run_experiment(config)
    connect(config)
    dev = pd.read_csv(root / "dev_sent_emo.csv", dtype={"Dialogue_ID": str}).rename(
        columns={
            "Dialogue_ID": "dialogue_id",
            "Utterance_ID": "utterance_index",
            "Speaker": "speaker",
            "Utterance": "text",
        }
    )[["dialogue_id", "utterance_index", "speaker", "text"]]
    return config, Predictor.from_uri(MODEL_URI), dev


def _request(turns: pd.DataFrame, newest: int = 1) -> dict:
    return {
        "dialogue_id": str(turns["dialogue_id"].iloc[0]),
        "newest": newest,
        "turns": turns[["speaker", "text"]].to_dict("records"),
    }


def test_each_turn_is_answered_as_the_whole_conversation_scores_it_and_encoded_once(causal_model):
    _, predictor, dev = causal_model
    dialogue = max((turns for _, turns in dev.groupby("dialogue_id")), key=len).sort_values("utterance_index")
    whole = predictor.predict_frame(dialogue).sort_values("utterance_index")
    probabilities = [c for c in whole.columns if c.startswith("prob_")]
    scorer = IncrementalScorer(predictor)
    for k in range(len(dialogue)):
        answer = scorer.score(_request(dialogue.iloc[: k + 1]))
        assert answer["causal"] and (answer["encoded"], answer["reused"]) == (1, k)  # only the new turn is encoded
        (turn,) = answer["turns"]
        assert turn["utterance_index"] == k and turn["final"] and turn["label"] == whole["label"].iloc[k]
        expected = whole[probabilities].iloc[k].to_numpy()
        np.testing.assert_allclose(
            [turn["probabilities"][c.removeprefix("prob_")] for c in probabilities], expected, atol=1e-5
        )
    assert len(scorer.score(_request(dialogue, newest=3))["turns"]) == 3


def test_cli_answers_request_lines_and_names_a_bad_one(causal_model, tmp_path, capsys):
    config, _, dev = causal_model
    dialogue = dev[dev["dialogue_id"] == dev["dialogue_id"].iloc[0]]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(_request(dialogue.iloc[: k + 1])) for k in range(len(dialogue))) + "\n")
    common = ["predict", "--incremental", "--workdir", str(config.workdir), "--model", MODEL_URI]
    assert main([*common, "--input", str(requests)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    answers, summary = [json.loads(line) for line in lines[:-1]], json.loads(lines[-1])
    assert [a["turns"][0]["utterance_index"] for a in answers] == list(range(len(dialogue)))
    assert summary["requests"] == len(dialogue) and summary["causal"] and summary["p95_ms"] >= summary["p50_ms"] > 0

    good = json.dumps(_request(dialogue))
    requests.write_text(f'{good}\n{{"dialogue_id": "x", "turns": []}}\nnot json\n{good}\n')
    assert main([*common, "--input", str(requests)]) == 0
    captured = capsys.readouterr()
    answers = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [answer.get("line") for answer in answers[:4]] == [None, 2, 3, None]  # every good request answered, in order
    assert (
        answers[0]["turns"] == answers[3]["turns"]
        and "turns" in answers[1]["error"]
        and "not JSON" in answers[2]["error"]
    )
    assert answers[-1]["requests"] == 2 and answers[-1]["failed_requests"] == 2
    assert [json.loads(line) for line in captured.err.strip().splitlines()] == answers[1:3]


def test_a_memo_smaller_than_one_conversation_still_answers_every_turn(causal_model):
    _, predictor, dev = causal_model
    dialogue = max((turns for _, turns in dev.groupby("dialogue_id")), key=len).sort_values("utterance_index")
    roomy, tight = IncrementalScorer(predictor), IncrementalScorer(predictor, memo_size=2)
    for k in range(len(dialogue)):
        request = _request(dialogue.iloc[: k + 1], newest=k + 1)
        tight_turns, roomy_turns = tight.score(request)["turns"], roomy.score(request)["turns"]
        assert [turn["label"] for turn in tight_turns] == [turn["label"] for turn in roomy_turns]
        for ours, reference in zip(
            tight_turns, roomy_turns
        ):  # re-encoded texts are batched differently: float noise only
            np.testing.assert_allclose(
                list(ours["probabilities"].values()), list(reference["probabilities"].values()), atol=1e-4
            )
    assert len(tight.memo) == 2


def test_requests_answered_as_one_group_get_the_answers_each_gets_alone_and_a_bad_one_its_error(causal_model):
    _, predictor, dev = causal_model
    first, second = [turns.sort_values("utterance_index") for _, turns in list(dev.groupby("dialogue_id"))[:2]]
    requests = [
        _request(first, newest=len(first)),
        {"dialogue_id": "empty", "turns": []},
        _request(second.iloc[:3], newest=3),
        _request(first.iloc[:2].assign(dialogue_id="again"), newest=2),  # turns the first request also encodes
    ]
    alone = [None if not r["turns"] else IncrementalScorer(predictor).score(r) for r in requests]
    scorer = IncrementalScorer(predictor)
    group = [_Waiting(request) for request in requests]
    scorer._answer_all(group)  # as the thread holding the lock answers every request waiting for it
    assert all(waiting.done for waiting in group) and isinstance(group[1].error, DataError)
    for waiting, reference in zip(group, alone):
        if reference is None:
            continue
        answer = waiting.answer
        assert [t["label"] for t in answer["turns"]] == [t["label"] for t in reference["turns"]]
        for ours, theirs in zip(answer["turns"], reference["turns"], strict=True):
            np.testing.assert_allclose(
                list(ours["probabilities"].values()), list(theirs["probabilities"].values()), atol=1e-5
            )
    assert len(scorer.memo) == len(first) + 3  # a turn two requests share is encoded once


def test_pyfunc_newest_turns_match_the_full_prediction(causal_model):
    _, predictor, dev = causal_model
    conversations = dev[dev["dialogue_id"].isin(dev["dialogue_id"].unique()[:3])]
    full = predictor.predict_frame(conversations).sort_values(["dialogue_id", "utterance_index"])
    last = full.groupby("dialogue_id").tail(1).reset_index(drop=True)
    served = mlflow.pyfunc.load_model(MODEL_URI).predict(conversations, params={"newest": 1})
    served = served.sort_values("dialogue_id").reset_index(drop=True)
    assert served["label"].tolist() == last.sort_values("dialogue_id")["label"].tolist()
    assert served["utterance_index"].tolist() == last.sort_values("dialogue_id")["utterance_index"].tolist()


def test_concurrent_threads_through_the_served_model_get_the_answers_of_one_thread(causal_model):
    _, _, dev = causal_model
    dialogues = [turns.sort_values("utterance_index") for _, turns in list(dev.groupby("dialogue_id"))[:8]]
    requests = [dialogue.iloc[: k + 1] for dialogue in dialogues for k in range(len(dialogue))]
    alone = mlflow.pyfunc.load_model(MODEL_URI)
    expected = [alone.predict(request, params={"newest": 1}) for request in requests]
    served = mlflow.pyfunc.load_model(MODEL_URI)
    with ThreadPoolExecutor(max_workers=8) as pool:  # each thread sends one growing conversation, as a caller would
        answers = pool.map(
            lambda dialogue: [
                served.predict(dialogue.iloc[: k + 1], params={"newest": 1}) for k in range(len(dialogue))
            ],
            dialogues,
        )
        got = [answer for per_dialogue in answers for answer in per_dialogue]
    for ours, reference in zip(got, expected, strict=True):
        pd.testing.assert_frame_equal(ours, reference, atol=1e-5)


def _invoke(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def _newest_turn_body(turns: pd.DataFrame) -> bytes:
    split = turns[["dialogue_id", "utterance_index", "speaker", "text"]].to_dict("split")
    return json.dumps(
        {"dataframe_split": {"columns": split["columns"], "data": split["data"]}, "params": {"newest": 1}}
    ).encode()


def test_mlflow_models_serve_answers_every_good_request_and_refuses_bad_ones_under_concurrent_clients(
    causal_model, tmp_path
):  # two worker processes, each answering from its thread pool with its own memo
    config, _, dev = causal_model
    dialogues = [turns.sort_values("utterance_index") for _, turns in list(dev.groupby("dialogue_id"))[:8]]
    alone = mlflow.pyfunc.load_model(MODEL_URI)
    expected = [
        [alone.predict(dialogue.iloc[: k + 1], params={"newest": 1}) for k in range(len(dialogue))]
        for dialogue in dialogues
    ]
    bad_bodies = [b"not json", json.dumps({"dataframe_split": {"columns": ["dialogue_id"], "data": [["7"]]}}).encode()]
    server, port = serve_on_a_free_port(
        lambda port: model_server_command(MODEL_URI, "127.0.0.1", port, workers=2),
        "/ping",
        model_server_environment(MLFLOW_TRACKING_URI=tracking_uri(config)),
        tmp_path / "server.log",
    )
    url = f"http://127.0.0.1:{port}/invocations"

    def client(dialogue: pd.DataFrame) -> list[tuple[int, bytes]]:  # a growing conversation, a bad body after each turn
        return [
            answer
            for k in range(len(dialogue))
            for answer in (_invoke(url, _newest_turn_body(dialogue.iloc[: k + 1])), _invoke(url, bad_bodies[k % 2]))
        ]

    try:
        with ThreadPoolExecutor(max_workers=len(dialogues)) as pool:
            answers = list(pool.map(client, dialogues))
    finally:
        stop_process_group(server)
    for per_client, references in zip(answers, expected, strict=True):
        good, bad = per_client[0::2], per_client[1::2]
        assert [status for status, _ in good] == [200] * len(references)
        assert all(400 <= status < 500 for status, _ in bad), [body[:200] for status, body in bad if status >= 500]
        for (_, body), reference in zip(good, references, strict=True):
            served = pd.DataFrame(json.loads(body)["predictions"])
            pd.testing.assert_frame_equal(served[reference.columns], reference, atol=1e-5, check_dtype=False)


def test_isolated_utterances_given_to_a_context_model_are_warned_about(causal_model, caplog):
    _, predictor, dev = causal_model
    isolated = dev.head(6).assign(dialogue_id=[f"alone{i}" for i in range(6)])
    with caplog.at_level(logging.INFO, logger="spikemo"):
        predictions = predictor.predict_frame(isolated)
    assert predictions["label"].notna().all()
    assert any("single utterance" in record.message and record.levelno == logging.WARNING for record in caplog.records)
    assert any("training population" in record.message for record in caplog.records)


def test_media_are_remembered_by_their_content_as_ingestion_fingerprints_them(causal_model, tmp_path):
    _, predictor, _ = causal_model
    for name, content in {"a.wav": b"clip one", "copy.wav": b"clip one", "b.wav": b"clip two"}.items():
        (tmp_path / name).write_bytes(content)
    scorer = IncrementalScorer(predictor, tmp_path)
    turns = pd.DataFrame(
        {
            "media_path": ["a.wav", "copy.wav", "b.wav", None],
            "media_start": [np.nan, np.nan, 1.0, np.nan],
            "media_end": [np.nan, np.nan, 2.0, np.nan],
        }
    )
    _, keys = scorer._media_sources(turns)
    assert keys[0] == keys[1] != keys[2] and keys[3] is None  # a copy is the same content; b.wav is another
    assert keys[0] == file_sha256(tmp_path / "a.wav") and keys[2] == f"{file_sha256(tmp_path / 'b.wav')}@1.0-2.0"
    ingested = ingest(
        DataConfig(format="manifest", manifest=_manifest_file(tmp_path), root=tmp_path, labels=["calm"]),
        tmp_path / "manifest.parquet",
        require_labels=False,
    ).manifest
    assert ingested.sort_values("utterance_index")["media_fingerprint"].tolist()[:3] == keys[:3]  # the batch path's key
    (tmp_path / "a.wav").write_bytes(b"clip 1!!")  # same size, new content, new mtime
    assert scorer._media_sources(turns)[1][0] != keys[0]


def _manifest_file(folder):
    path = folder / "conversation.csv"
    pd.DataFrame(
        {
            "dialogue_id": ["d"] * 3,
            "utterance_index": [0, 1, 2],
            "speaker": ["A", "B", "A"],
            "text": ["hi", "yo", "ok"],
            "media_path": ["a.wav", "copy.wav", "b.wav"],
            "media_start": [None, None, 1.0],
            "media_end": [None, None, 2.0],
            "split": "test",
        }
    ).to_csv(path, index=False)
    return path
