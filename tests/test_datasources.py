"""Clients' own data sources (fedq/datasources.py): each kind on small files, every error."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from client.client_app import evaluate_global, train
from client.local_data import TRAIN_KEY, VAL_KEY
from fedq import wire
from fedq.data import load_digits_split
from fedq.datasources import (
    checked,
    describe,
    load_source,
    parse_data_source,
    split_validation,
)
from fedq.errors import ConfigError, DataError
from fedq.models import ModelSpec, build_model
from tests.flower_messages import context, message

DIGITS = ModelSpec("mlp")  # 8x8, 10 classes
TRAIN, _ = load_digits_split()
SMALL = TRAIN.subset(np.arange(40))


def _csv(path: Path, x: np.ndarray, y: np.ndarray, label: str = "label") -> Path:
    rows = [",".join([label, *(f"p{i}" for i in range(x.shape[1]))])]
    rows += [",".join([str(int(t)), *(f"{v:g}" for v in row)]) for row, t in zip(x, y, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _images(root: Path, data, size=(8, 8), mode="L") -> Path:
    from PIL import Image

    for i, (x, y) in enumerate(zip(data.x, data.y, strict=True)):
        folder = root / f"class-{int(y):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (x * 255).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").convert(mode).resize(size).save(folder / f"{i}.png")
    return root


def tiny_dataset():
    """A python source as a user writes one: a list of (x, y) pairs stands for a Dataset."""
    return [(SMALL.x[i], int(SMALL.y[i])) for i in range(len(SMALL))]


def tiny_arrays():
    """A python source returning (x, y) arrays."""
    return SMALL.x.reshape(len(SMALL), -1), SMALL.y


def test_csv_rows_become_the_models_examples(tmp_path):
    path = _csv(tmp_path / "site.csv", SMALL.x.reshape(40, -1), SMALL.y)
    data = load_source(parse_data_source(f"csv:{path}"), DIGITS)
    assert data.x.shape == (40, 8, 8) and data.x.dtype == np.float32
    np.testing.assert_allclose(data.x, SMALL.x, atol=1e-6)
    np.testing.assert_array_equal(data.y, SMALL.y)


def test_a_csv_label_column_by_another_name(tmp_path):
    path = _csv(tmp_path / "site.csv", SMALL.x.reshape(40, -1), SMALL.y, label="digit")
    data = load_source(parse_data_source(f"csv:{path}", label_column="digit"), DIGITS)
    np.testing.assert_array_equal(data.y, SMALL.y)


def test_npz_arrays(tmp_path):
    np.savez(tmp_path / "site.npz", x=SMALL.x, y=SMALL.y)
    data = load_source(parse_data_source(f"npz:{tmp_path / 'site.npz'}"), DIGITS)
    np.testing.assert_array_equal(data.x, SMALL.x)


def test_an_image_folder_is_read_converted_and_resized(tmp_path):
    root = _images(tmp_path / "images", SMALL, size=(16, 16), mode="RGB")
    data = load_source(parse_data_source(f"imagefolder:{root}"), DIGITS)
    assert data.x.shape == (40, 8, 8) and data.x.min() >= 0.0 and data.x.max() <= 1.0
    # Sorted folder names give the labels; every class of SMALL has its folder.
    assert sorted(set(data.y)) == list(range(len(set(SMALL.y))))
    colour = load_source(parse_data_source(f"imagefolder:{root}"), ModelSpec("cnn", (3, 12, 12)))
    assert colour.x.shape == (40, 3, 12, 12)


def test_a_saved_hugging_face_dataset(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = {"pixels": SMALL.x.reshape(40, -1).tolist(), "label": SMALL.y.tolist()}
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "hf"))
    data = load_source(parse_data_source(f"hf:{tmp_path / 'hf'}", feature_column="pixels"), DIGITS)
    np.testing.assert_allclose(data.x, SMALL.x, atol=1e-6)
    np.testing.assert_array_equal(data.y, SMALL.y)


@pytest.mark.parametrize("function", ["tiny_dataset", "tiny_arrays"])
def test_a_python_callable(function):
    data = load_source(parse_data_source(f"python:tests.test_datasources:{function}"), DIGITS)
    np.testing.assert_array_equal(data.x, SMALL.x)
    np.testing.assert_array_equal(data.y, SMALL.y)


def test_the_embedded_digits_and_what_describe_says():
    data = load_source(parse_data_source("digits:test"), DIGITS)
    found = describe(data)
    assert found["examples"] == 360 and found["shape"] == [8, 8]
    assert sum(found["classes"].values()) == 360 and len(found["classes"]) == 10


def _bad_files(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (source, expected message) for every error a client can meet."""
    x, y = SMALL.x.reshape(40, -1), SMALL.y
    (tmp_path / "header.csv").write_text("label,a,b\n")
    (tmp_path / "words.csv").write_text(
        "label,"
        + ",".join(f"p{i}" for i in range(64))
        + "\n"
        + "3,"
        + ",".join(["0.5"] * 63 + ["abc"])
        + "\n"
    )
    (tmp_path / "broken.png").parent.mkdir(exist_ok=True)
    broken = tmp_path / "broken" / "class-0"
    broken.mkdir(parents=True)
    (broken / "x.png").write_bytes(b"not an image")
    nan = x.copy()
    nan[3, 5] = np.nan
    np.savez(tmp_path / "nan.npz", x=nan, y=y)
    np.savez(tmp_path / "labels.npz", x=x, y=np.where(y == 0, 12, y))
    np.savez(tmp_path / "fractional.npz", x=x, y=y + 0.5)
    np.savez(tmp_path / "noy.npz", x=x)
    return {
        "missing": (
            "csv:/nonexistent/site.csv",
            "/nonexistent/site.csv: no such file or directory",
        ),
        "no label column": (
            f"csv:{_csv(tmp_path / 'k.csv', x, y, label='digit')}",
            "no label column 'label'; columns: digit, p0",
        ),
        "37 features": (
            f"csv:{_csv(tmp_path / 'f.csv', x[:, :37], y)}",
            "an example has 37 values, the model takes 64 (input-shape 8,8)",
        ),
        "empty": (f"csv:{tmp_path / 'header.csv'}", "the data is empty: no examples"),
        "non-numeric": (
            f"csv:{tmp_path / 'words.csv'}",
            "column 'p63' has a non-numeric value 'abc' (row 1)",
        ),
        "non-finite": (f"npz:{tmp_path / 'nan.npz'}", "example 3 holds NaN or Inf"),
        "label out of range": (
            f"npz:{tmp_path / 'labels.npz'}",
            "labels must be integers in 0..9; found 12 (example",
        ),
        "fractional label": (
            f"npz:{tmp_path / 'fractional.npz'}",
            f"labels must be integers in 0..9; found {SMALL.y[0] + 0.5} (example 0)",
        ),
        "no y array": (f"npz:{tmp_path / 'noy.npz'}", "no array 'y'"),
        "unreadable image": (f"imagefolder:{tmp_path / 'broken'}", "not a readable image"),
        "no class folders": (
            f"imagefolder:{tmp_path / 'broken' / 'class-0'}",
            "no class subfolders",
        ),
        "not a saved dataset": (f"hf:{tmp_path}", "not a dataset saved with save_to_disk"),
        "not importable": ("python:no_such_module:f", "cannot be loaded"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "no label column",
        "37 features",
        "empty",
        "non-numeric",
        "non-finite",
        "label out of range",
        "fractional label",
        "no y array",
        "unreadable image",
        "no class folders",
        "not a saved dataset",
        "not importable",
    ],
)
def test_every_defect_is_one_line_naming_what_is_wrong(tmp_path, case):
    source, expected = _bad_files(tmp_path)[case]
    with pytest.raises(DataError, match=re.escape(expected)) as caught:
        load_source(parse_data_source(source), DIGITS)
    assert "\n" not in str(caught.value)


def test_images_that_cannot_take_the_models_channels(tmp_path):
    root = _images(tmp_path / "images", SMALL)
    with pytest.raises(DataError, match="images need an input-shape of H,W, 1,H,W or 3,H,W"):
        load_source(parse_data_source(f"imagefolder:{root}"), ModelSpec("cnn", (5, 8, 8)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("parquet:x.pq", "data='parquet:x.pq' is not a data source; allowed: csv:PATH"),
        ("csv:", "data='csv:' is not a data source"),
        ("python:module", "data='python:module': expected python:module:function"),
        ("digits:valid", "data='digits:valid': allowed: digits:train, digits:test"),
    ],
)
def test_a_bad_source_spec_is_refused(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_data_source(text)


def test_the_validation_share_is_seeded_disjoint_and_never_empty():
    train, val = split_validation(SMALL, 0.1, seed=5)
    assert (len(train), len(val)) == (36, 4)
    _, again_val = split_validation(SMALL, 0.1, seed=5)
    np.testing.assert_array_equal(val.y, again_val.y)
    rows = {r.tobytes() for r in train.x}
    assert not any(r.tobytes() in rows for r in val.x if (SMALL.x == r).all(axis=(1, 2)).sum() == 1)
    tiny = SMALL.subset(np.arange(3))
    assert [len(part) for part in split_validation(tiny, 0.01, seed=0)] == [2, 1]
    with pytest.raises(DataError, match="1 example cannot be split"):
        split_validation(SMALL.subset(np.arange(1)), 0.1, seed=0)


def test_checked_refuses_a_mismatch_of_examples_and_labels():
    with pytest.raises(DataError, match="40 examples but 39 labels"):
        checked(SMALL.x, SMALL.y[:39], DIGITS)


def _instruction(model) -> object:
    config = ConfigRecord(
        {wire.SERVER_ROUND: 1, wire.LOCAL_STEPS: 3, wire.BATCH_SIZE: 8, wire.LR: 0.1}
    )
    content = RecordDict({wire.ARRAYS: ArrayRecord(model.state_dict()), wire.CONFIG: config})
    return message(content, dst=11)


def test_a_client_trains_on_its_own_data_and_evaluates_on_its_held_out_share(tmp_path):
    path = _csv(tmp_path / "site.csv", SMALL.x.reshape(40, -1), SMALL.y)
    node = {"partition-id": 0, "num-partitions": 2, "data": f"csv:{path}", "val-fraction": 0.25}
    ctx = context(node)
    model = build_model(DIGITS, seed=0)
    reply = train(_instruction(model), ctx)
    assert reply.content[wire.METRICS][wire.NUM_EXAMPLES] == 30
    held_out = ctx.state.array_records[VAL_KEY]["y"].numpy()
    assert len(held_out) == 10 and len(ctx.state.array_records[TRAIN_KEY]["y"].numpy()) == 30
    content = RecordDict(
        {wire.ARRAYS: ArrayRecord(model.state_dict()), wire.CONFIG: ConfigRecord()}
    )
    evaluation = evaluate_global(message(content, dst=11, message_type="evaluate"), ctx)
    assert evaluation.content[wire.METRICS][wire.NUM_EXAMPLES] == 10


def test_a_client_whose_data_does_not_fit_says_why(tmp_path):
    path = _csv(tmp_path / "site.csv", SMALL.x.reshape(40, -1)[:, :37], SMALL.y)
    ctx = context({"partition-id": 0, "num-partitions": 2, "data": f"csv:{path}"})
    with pytest.raises(DataError, match="an example has 37 values, the model takes 64"):
        train(_instruction(build_model(DIGITS, seed=0)), ctx)
