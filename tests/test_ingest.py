"""Ingestion: real MELD / EmoryNLP annotations and the documented outcomes for malformed input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from spikemo.cli import main
from spikemo.config import DataConfig
from spikemo.data.ingest import ingest
from spikemo.data.schema import read_manifest
from spikemo.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MELD_CLASS_COUNTS = {
    "train": {
        "neutral": 4710,
        "joy": 1743,
        "surprise": 1205,
        "anger": 1109,
        "sadness": 683,
        "disgust": 271,
        "fear": 268,
    },
    "dev": {"neutral": 470, "joy": 163, "surprise": 150, "anger": 153, "sadness": 111, "disgust": 22, "fear": 40},
}
MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"


@pytest.fixture(scope="module")
def meld(tmp_path_factory):
    out = tmp_path_factory.mktemp("meld") / "manifest.parquet"
    return ingest(DataConfig(format="meld", root=SHARED / "meld"), out)


def test_meld_counts_match_provenance(meld):
    summary = meld.summary()
    assert summary["splits"]["train"]["utterances"] == 9989
    assert summary["splits"]["train"]["dialogues"] == 1038
    assert summary["splits"]["dev"]["utterances"] == 1109
    assert summary["splits"]["dev"]["dialogues"] == 114
    assert summary["rejected"] == 0
    for split, counts in MELD_CLASS_COUNTS.items():
        got = meld.manifest[meld.manifest["split"] == split]["label"].value_counts().to_dict()
        assert got == counts


def test_meld_keys_turns_and_speakers(meld):
    manifest, metadata = read_manifest(meld.manifest_path)
    assert manifest["utterance_key"].is_unique
    assert manifest["utterance_key"].iloc[0] == "meld/dev/0/0"
    assert metadata["labels"][manifest["label_id"].iloc[0]] == manifest["label"].iloc[0]
    # Utterance ids have gaps in 72 train dialogues; turns are contiguous anyway.
    turns = manifest.groupby(["split", "dialogue_id"])["turn"].agg(["min", "max", "count"])
    assert (turns["min"] == 0).all() and (turns["max"] == turns["count"] - 1).all()
    gaps = manifest.groupby(["split", "dialogue_id"])["utterance_index"].max() + 1 != turns["count"]
    assert gaps.sum() >= 72
    compound = manifest[manifest["speaker"] == "Joey and Chandler"]
    assert len(compound) > 0
    assert metadata["speakers"][compound["speaker_id"].iloc[0]] == "Joey and Chandler"
    # Curly apostrophes survive: the file was read as UTF-8, not cp1252.
    assert manifest[manifest["split"] == "train"]["text"].str.count("\u2019").sum() > 3500
    assert manifest["media_path"].isna().all()


def test_emorynlp_counts(tmp_path):
    result = ingest(DataConfig(format="emorynlp", root=SHARED / "emorynlp"), tmp_path / "emorynlp.parquet")
    summary = result.summary()["splits"]
    assert (summary["train"]["utterances"], summary["train"]["dialogues"]) == (7551, 659)
    assert (summary["dev"]["utterances"], summary["dev"]["dialogues"]) == (954, 89)
    assert "Monica Geller" in set(result.manifest["speaker"])


def test_cli_ingest_prints_table_then_one_json_line(tmp_path, capsys):
    out = tmp_path / "meld.parquet"
    assert main(["ingest", "--format", "meld", "--root", str(SHARED / "meld"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split()[:3] == ["train", "1038", "9989"]
    summary = json.loads(lines[-1])
    assert summary["splits"]["dev"] == {
        "dialogues": 114,
        "utterances": 1109,
        "with_media": 0,
        "rejected": 0,
        "rejected_by_reason": {},
        "media_dropped": 0,
    }
    assert summary["manifest"] == str(out) and out.is_file()


def test_missing_required_column_is_one_line_error(tmp_path, capsys):
    frame = pd.read_csv(SHARED / "meld" / "dev_sent_emo.csv", dtype=str, keep_default_na=False)
    frame.drop(columns=["Emotion"]).to_csv(tmp_path / "dev_sent_emo.csv", index=False)
    code = main(["ingest", "--format", "meld", "--root", str(tmp_path), "--out", str(tmp_path / "m.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert err[-1].startswith("spikemo: error: ") and "dev_sent_emo.csv" in err[-1] and "Emotion" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "m.parquet").exists()


def test_non_utf8_csv_names_the_line(tmp_path):
    (tmp_path / "train_sent_emo.csv").write_bytes(
        (
            MELD_HEADER
            + "\r\n1,Hi,Joey,joy,positive,0,0,1,1,a,b\r\n2,Caf\xe9 time,Ross,neutral,neutral,0,1,1,1,a,b\r\n"
        ).encode("cp1252")
    )
    with pytest.raises(DataError, match=r"train_sent_emo.csv: not UTF-8 .*line 3.*iconv"):
        ingest(DataConfig(format="meld", root=tmp_path), tmp_path / "m.parquet")


def _write_manifest_rows(path: Path, rows: list[dict]) -> None:
    pd.DataFrame(rows).to_csv(path, index=False)


def test_problem_rows_are_set_aside_with_one_reason(tmp_path):
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "a.wav").write_bytes(b"RIFF-a")
    (root / "clips" / "folder").mkdir()
    (tmp_path / "outside.wav").write_bytes(b"secret")
    base = {
        "dialogue_id": "d1",
        "speaker": "Ann",
        "split": "train",
        "text": "hello",
        "label": "happy",
        "media_path": "",
    }
    rows = [
        {**base, "utterance_index": 0, "media_path": "clips/a.wav"},
        {**base, "utterance_index": 1, "label": "furious"},
        {**base, "utterance_index": 2, "text": ""},
        {**base, "utterance_index": 0, "text": "again"},
        {**base, "utterance_index": 3, "media_path": "../outside.wav"},
        {**base, "utterance_index": 4, "media_path": "clips/missing.wav"},
        {**base, "utterance_index": 5, "media_path": "clips/missing.wav", "text": " "},
        {**base, "utterance_index": 6, "media_path": "clips/folder"},
        {**base, "utterance_index": "x"},
        {**base, "utterance_index": 7, "split": "holdout"},
        {**base, "utterance_index": 8, "label": "SAD"},
    ]
    manifest_file = root / "conversations.csv"
    _write_manifest_rows(manifest_file, rows)
    result = ingest(
        DataConfig(format="manifest", manifest=manifest_file, labels=["neutral", "happy", "sad"]),
        tmp_path / "m.parquet",
    )
    problems = result.problems.set_index("source_row")
    expected = {
        3: ("rejected", "unknown label: furious"),
        4: ("rejected", "empty text and no media"),
        5: ("rejected", "duplicated key: dialogue d1 utterance 0 first seen at row 2"),
        6: ("rejected", "media path outside the dataset root"),
        7: ("media_dropped", "missing clip: clips/missing.wav"),
        8: ("rejected", "missing clip and empty text"),
        9: ("rejected", "media path is a directory"),
        10: ("rejected", "utterance index is not an integer"),
        11: ("rejected", "unknown split: holdout"),
    }
    assert set(problems.index) == set(expected)
    for row, (action, reason) in expected.items():
        assert problems.loc[row, "action"] == action
        assert problems.loc[row, "reason"].startswith(reason), problems.loc[row, "reason"]
    manifest = result.manifest.set_index("utterance_index")
    assert sorted(manifest.index) == [0, 4, 8]
    assert manifest.loc[0, "media_path"] == "clips/a.wav"
    assert manifest.loc[0, "media_fingerprint"] == hashlib.sha256(b"RIFF-a").hexdigest()
    assert manifest.loc[0, "text"] == "hello"
    assert manifest.loc[4, "media_path"] is None
    assert manifest.loc[8, "label"] == "sad" and manifest.loc[8, "label_id"] == 2
    on_disk = pd.read_parquet(result.problems_path)
    assert len(on_disk) == len(expected)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_generic_manifest_jsonl_and_parquet_with_segments(tmp_path, suffix):
    (tmp_path / "long.wav").write_bytes(b"0123456789")
    frame = pd.DataFrame(
        {
            "dialogue_id": ["a", "a", "b"],
            "utterance_index": [1, 0, 0],
            "speaker": ["X", "Y", "X"],
            "text": ["second", "first", "other"],
            "label": ["pos", "neg", "pos"],
            "split": ["train", "train", "validation"],
            "media_path": ["long.wav", "long.wav", None],
            "media_start": [2.5, 0.0, None],
            "media_end": [4.0, 2.5, None],
        }
    )
    path = tmp_path / f"convs{suffix}"
    if suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    result = ingest(DataConfig(format="manifest", manifest=path, labels=["neg", "pos"]), tmp_path / "m.parquet")
    manifest = result.manifest
    assert list(manifest["utterance_key"]) == ["convs/dev/b/0", "convs/train/a/0", "convs/train/a/1"]
    assert list(manifest["party"]) == [0, 0, 1]
    digest = hashlib.sha256(b"0123456789").hexdigest()
    assert manifest["media_fingerprint"].tolist() == [None, f"{digest}@0.0-2.5", f"{digest}@2.5-4.0"]


def test_manifest_pointing_at_a_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        ingest(DataConfig(format="manifest", manifest=tmp_path, labels=["a"]), tmp_path / "m.parquet")


def test_no_valid_row_is_unusable(tmp_path):
    path = tmp_path / "m.csv"
    _write_manifest_rows(
        path, [{"dialogue_id": 1, "utterance_index": 0, "speaker": "A", "text": "hi", "label": "zzz", "split": "train"}]
    )
    with pytest.raises(DataError, match="no valid row.*unknown label"):
        ingest(DataConfig(format="manifest", manifest=path, labels=["a"]), tmp_path / "out.parquet")


def test_meld_with_clips_fingerprints_and_refingerprints_changed_clip(tmp_path):
    dev = pd.read_csv(SHARED / "meld" / "dev_sent_emo.csv", dtype=str, keep_default_na=False)
    dev = dev[dev["Dialogue_ID"].isin(["0", "1"])]
    dev.to_csv(tmp_path / "dev_sent_emo.csv", index=False)
    clips = tmp_path / "dev_splits_complete"
    clips.mkdir()
    for d, u in zip(dev["Dialogue_ID"], dev["Utterance_ID"]):
        (clips / f"dia{d}_utt{u}.mp4").write_bytes(f"clip {d} {u}".encode())
    dropped = clips / "dia1_utt0.mp4"
    dropped.unlink()
    out = tmp_path / "m.parquet"
    first = ingest(DataConfig(format="meld", root=tmp_path), out)
    assert first.summary()["splits"]["dev"]["media_dropped"] == 1
    assert first.summary()["splits"]["dev"]["utterances"] == len(dev)
    changed = clips / "dia0_utt1.mp4"
    changed.write_bytes(b"new content")
    second = ingest(DataConfig(format="meld", root=tmp_path), out)
    before = first.manifest.set_index("utterance_key")["media_fingerprint"]
    after = second.manifest.set_index("utterance_key")["media_fingerprint"]
    differs = before[before.fillna("") != after.fillna("")].index.tolist()
    assert differs == ["meld/dev/0/1"]
    assert after["meld/dev/0/1"] == hashlib.sha256(b"new content").hexdigest()


def test_meld_without_clip_folders_warns_once(tmp_path, caplog):
    shutil.copy(SHARED / "meld" / "dev_sent_emo.csv", tmp_path)
    ingest(DataConfig(format="meld", root=tmp_path), tmp_path / "m.parquet")
    text_only = [r for r in caplog.records if "text-only" in r.getMessage()]
    assert len(text_only) == 1
