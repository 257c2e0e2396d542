"""A client's own data: where it comes from, read into arrays, checked against the model.

A SuperNode names its data in its node-config, `data = "KIND:WHERE"`:

* `csv:PATH` — one label column (`label-column`, default `label`), every other column a
  numeric feature;
* `npz:PATH` — arrays `x` (examples first) and `y`;
* `imagefolder:DIR` — one subfolder per class (sorted names give labels 0, 1, ...), images
  read with Pillow, converted to the model's channels (grey or RGB), resized to its
  height and width, scaled to [0, 1];
* `hf:DIR` — a Hugging Face dataset saved with `save_to_disk` (a `train` split if it is a
  DatasetDict), its `label-column` and its `feature-column` (default: `image`, else every
  other column);
* `python:module:function` — a callable returning a torch `Dataset` of (x, y) pairs or a
  pair of arrays (x, y);
* `digits:train`, `digits:test` — the embedded digits split (the server's default test data).

Whatever the source, `load_source` returns `LabeledArrays` shaped for the model (x float32,
`(N, *input_shape)`; y int64 in `0..num_classes-1`) or raises `DataError` with one line
naming what is wrong: a missing or unreadable file, a missing column, 37 features where the
model takes 64, an image that cannot be converted, an empty dataset, a label out of range,
a non-numeric or non-finite feature.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedq.data import LabeledArrays, load_digits_split
from fedq.errors import ConfigError, DataError
from fedq.models import ModelSpec

KINDS: tuple[str, ...] = ("csv", "npz", "imagefolder", "hf", "python", "digits")
# `digits:train` / `digits:test`: the embedded digits split (fedq/data.py).
DIGITS_SPLITS: tuple[str, ...] = ("train", "test")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class DataSource:
    """Where a client's data is and how to read it."""

    kind: str  # one of KINDS
    location: str  # a path, a directory, or module:function
    label_column: str = "label"
    feature_column: str | None = None  # hf: the feature column (None: image, else the rest)

    def describe(self) -> str:
        """The spec this source was parsed from: `KIND:WHERE`."""
        return f"{self.kind}:{self.location}"


def parse_data_source(
    text: str,
    *,
    label_column: str = "label",
    feature_column: str | None = None,
    key: str = "data",
) -> DataSource:
    """`csv:/data/a.csv` -> DataSource; raises ConfigError naming `key` and the bad part."""
    kind, sep, location = text.partition(":")
    if not sep or kind not in KINDS or not location:
        raise ConfigError(
            f"{key}={text!r} is not a data source; allowed: csv:PATH, npz:PATH, "
            "imagefolder:DIR, hf:DIR, python:module:function, digits:train|test"
        )
    if kind == "python" and not _callable_parts(location):
        raise ConfigError(f"{key}={text!r}: expected python:module:function")
    if kind == "digits" and location not in DIGITS_SPLITS:
        raise ConfigError(f"{key}={text!r}: allowed: digits:train, digits:test")
    return DataSource(kind, location, label_column, feature_column)


def load_source(source: DataSource, spec: ModelSpec) -> LabeledArrays:
    """Read `source` and shape it for `spec`'s model; DataError says what does not fit."""
    x, y = _READERS[source.kind](source, spec)
    return checked(x, y, spec)


def checked(x: Any, y: Any, spec: ModelSpec) -> LabeledArrays:
    """Arrays (x, y) as LabeledArrays for `spec`, after every check of the module docstring."""
    x, y = np.asarray(x), np.asarray(y)
    if len(y) == 0 or x.size == 0:
        raise DataError("the data is empty: no examples")
    if len(x) != len(y):
        raise DataError(f"{len(x)} examples but {len(y)} labels")
    features = math.prod(x.shape[1:])
    if features != spec.features:
        shape = ",".join(map(str, spec.input_shape))
        raise DataError(
            f"an example has {features} values, the model takes {spec.features} "
            f"(input-shape {shape})"
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"features must be numbers, not {x.dtype}")
    x = x.astype(np.float32).reshape(len(x), *spec.input_shape)
    if not np.all(np.isfinite(x)):
        row = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0][0])
        raise DataError(f"features must be finite numbers; example {row} holds NaN or Inf")
    return LabeledArrays(x, _labels(y, spec.num_classes))


def split_validation(
    data: LabeledArrays, fraction: float, seed: int
) -> tuple[LabeledArrays, LabeledArrays]:
    """(train, validation): a seeded `fraction` of the examples held out (at least one)."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"val-fraction={fraction!r} must be in (0, 1)")
    if len(data) < 2:
        raise DataError(f"{len(data)} example cannot be split into training and validation")
    order = np.random.default_rng(seed).permutation(len(data))
    held = min(len(data) - 1, max(1, round(fraction * len(data))))
    return data.subset(np.sort(order[held:])), data.subset(np.sort(order[:held]))


def describe(data: LabeledArrays) -> dict[str, Any]:
    """What a dataset holds: examples, the shape of one, and the count of each class."""
    classes, counts = np.unique(data.y, return_counts=True)
    return {
        "examples": len(data),
        "shape": list(data.x.shape[1:]),
        "classes": {int(c): int(n) for c, n in zip(classes, counts, strict=True)},
    }


# --- readers: (x, y) as found, before the common checks ---------------------------------


def _read_csv(source: DataSource, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    path = _existing(source.location)
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    if source.label_column not in frame.columns:
        raise DataError(
            f"{path}: no label column {source.label_column!r}; columns: "
            f"{', '.join(map(str, frame.columns[:8]))} (set node-config label-column)"
        )
    features = frame.drop(columns=[source.label_column])
    for column in features.columns:
        values = pd.to_numeric(features[column], errors="coerce")
        bad = values.isna() & features[column].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(
                f"{path}: column {column!r} has a non-numeric value "
                f"{features[column].iloc[row]!r} (row {row + 1})"
            )
    return features.to_numpy(dtype=np.float64), frame[source.label_column].to_numpy()


def _read_npz(source: DataSource, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    path = _existing(source.location)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                first = sorted(missing)[0]
                raise DataError(f"{path}: no array {first!r}; it holds {archive.files}")
            return archive["x"], archive["y"]
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None


def _read_imagefolder(source: DataSource, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    root = _existing(source.location)
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no class subfolders (one folder of images per class)")
    if len(classes) > spec.num_classes:
        raise DataError(
            f"{root}: {len(classes)} class folders, the model has {spec.num_classes} classes"
        )
    images, labels = [], []
    for label, folder in enumerate(classes):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(_image(path, spec))
                labels.append(label)
    return np.stack(images) if images else np.zeros((0, *spec.input_shape)), np.array(labels)


def _read_hf(source: DataSource, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    from datasets import DatasetDict, load_from_disk

    root = _existing(source.location)
    try:
        dataset = load_from_disk(str(root))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{root}: not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise DataError(f"{root}: a DatasetDict without a 'train' split: {list(dataset)}")
        dataset = dataset["train"]
    columns = dataset.column_names
    if source.label_column not in columns:
        raise DataError(
            f"{root}: no label column {source.label_column!r}; columns: {', '.join(columns)}"
        )
    feature = source.feature_column or ("image" if "image" in columns else None)
    labels = np.asarray(dataset[source.label_column])
    if feature is not None:
        if feature not in columns:
            raise DataError(f"{root}: no feature column {feature!r}; columns: {', '.join(columns)}")
        values = dataset[feature]
        if values and hasattr(values[0], "convert"):  # Pillow images
            pixels = [_pil_array(image, spec, f"{root}[{i}]") for i, image in enumerate(values)]
            return np.stack(pixels), labels
        return np.asarray(values), labels
    rest = [c for c in columns if c != source.label_column]
    return np.stack([np.asarray(dataset[c], dtype=np.float64) for c in rest], axis=1), labels


def _read_python(source: DataSource, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    module_name, function_name = _callable_parts(source.location) or ("", "")
    try:
        function: Callable[[], Any] = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"python:{source.location}: cannot be loaded ({exc})") from None
    result = function()
    if isinstance(result, tuple) and len(result) == 2:
        return np.asarray(result[0]), np.asarray(result[1])
    if hasattr(result, "__len__") and hasattr(result, "__getitem__"):
        pairs = [result[i] for i in range(len(result))]
        if not pairs:
            return np.zeros((0, *spec.input_shape)), np.zeros(0)
        return np.stack([np.asarray(x) for x, _ in pairs]), np.array([int(y) for _, y in pairs])
    raise DataError(
        f"python:{source.location} returned {type(result).__name__}; expected a torch "
        "Dataset of (x, y) pairs or a pair of arrays (x, y)"
    )


def _read_digits(source: DataSource, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    train, test = load_digits_split()
    split = train if source.location == "train" else test
    return split.x, split.y


_READERS: dict[str, Callable[[DataSource, ModelSpec], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _read_digits,
    "csv": _read_csv,
    "npz": _read_npz,
    "imagefolder": _read_imagefolder,
    "hf": _read_hf,
    "python": _read_python,
}


# --- helpers ------------------------------------------------------------------------------


def _existing(location: str) -> Path:
    path = Path(location).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    return path


def _labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """y as int64 in 0..num_classes-1, or DataError naming the first bad label."""
    if y.ndim != 1:
        raise DataError(f"labels must be one integer per example, got shape {y.shape}")
    numeric = np.issubdtype(y.dtype, np.number)
    integral = numeric and np.all(np.isfinite(y)) and np.all(np.mod(y, 1) == 0)
    in_range = integral and np.all((y >= 0) & (y < num_classes))
    if not in_range:
        bad = next((i for i, v in enumerate(y) if not _is_class(v, num_classes)), 0)
        value = y[bad].item() if isinstance(y[bad], np.generic) else y[bad]
        raise DataError(
            f"labels must be integers in 0..{num_classes - 1}; found {value!r} (example {bad})"
        )
    return y.astype(np.int64)


def _is_class(value: Any, num_classes: int) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(number) and number.is_integer() and 0 <= number < num_classes


def _image(path: Path, spec: ModelSpec) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return _pil_array(image, spec, str(path))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def _pil_array(image: Any, spec: ModelSpec, where: str) -> np.ndarray:
    """A Pillow image converted to the model's channels and size, in [0, 1]."""
    if len(spec.input_shape) == 1 or spec.channels not in (1, 3):
        raise DataError(
            f"{where}: images need an input-shape of H,W, 1,H,W or 3,H,W, "
            f"not {','.join(map(str, spec.input_shape))}"
        )
    height, width = spec.input_shape[-2:]
    mode = "L" if spec.channels == 1 else "RGB"
    pixels = np.asarray(image.convert(mode).resize((width, height)), dtype=np.float32) / 255.0
    if spec.channels == 3:
        pixels = pixels.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
    return pixels.reshape(spec.input_shape)


def _callable_parts(location: str) -> tuple[str, str] | None:
    module, _, function = location.rpartition(":")
    return (module, function) if module and function.isidentifier() else None
