"""The embedded digits data: one fixed train/test split, partitioned across clients.

scikit-learn ships the 1,797 real 8x8 handwritten digits, so nothing is downloaded. The split
into train and test is made once with a fixed seed so the server and every client agree on it;
the train split is partitioned IID, by label (Dirichlet) or pathologically.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from fedq.errors import DataError

if TYPE_CHECKING:
    from flwr_datasets.partitioner.partitioner import Partitioner

# scikit-learn, Hugging Face datasets and Flower Datasets are imported inside the functions
# that need them: together they cost ~3 s of start-up, and Flower starts a fresh ClientApp
# process for every message, which reads its cached partition instead (client/local_data.py).

PARTITIONERS: tuple[str, ...] = ("iid", "dirichlet", "pathological")
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8)
# Draws of label proportions before a Dirichlet split that leaves a client too few examples
# is refused (fedq.data.dirichlet_partitions); about 0.2 s for 30 clients of the digits.
MAX_DIRICHLET_DRAWS = 1000
# Fixed for the project's lifetime: changing it changes every reported accuracy.
SPLIT_SEED = 20240
TEST_FRACTION = 0.2
# Digits pixels are integers in [0, 16].
PIXEL_MAX = 16.0


@dataclass(frozen=True)
class LabeledArrays:
    """Images and labels: x is float32 (N, 8, 8) in [0, 1], y is int64 (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> LabeledArrays:
        """Rows at `indices`, in that order."""
        return LabeledArrays(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class PartitionSpec:
    """How the train split is divided among `num_partitions` clients."""

    partitioner: str = "iid"
    num_partitions: int = 1
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    seed: int = 0


@lru_cache(maxsize=1)
def load_digits_split() -> tuple[LabeledArrays, LabeledArrays]:
    """Return the (train, test) split of scikit-learn's digits, 80/20, stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / PIXEL_MAX).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return LabeledArrays(x_train, y_train), LabeledArrays(x_test, y_test)


def partition_indices(labels: np.ndarray, spec: PartitionSpec, partition_id: int) -> np.ndarray:
    """Indices into `labels` (sorted) that make up partition `partition_id` under `spec`."""
    if spec.num_partitions < 1 or spec.num_partitions > len(labels):
        raise DataError(
            f"num-partitions={spec.num_partitions} is out of range; "
            f"allowed: 1..{len(labels)} (the number of training examples)"
        )
    if not 0 <= partition_id < spec.num_partitions:
        raise DataError(
            f"partition-id={partition_id} is out of range; "
            f"allowed: 0..{spec.num_partitions - 1} (num-partitions={spec.num_partitions})"
        )
    if spec.partitioner == "dirichlet":
        return dirichlet_partitions(
            labels,
            spec.num_partitions,
            spec.dirichlet_alpha,
            dirichlet_min_size(len(labels), spec.num_partitions),
            spec.seed,
        )[partition_id]
    from datasets import Dataset

    partitioner = _build_partitioner(spec)
    partitioner.dataset = Dataset.from_dict(
        {"label": labels.tolist(), "row": np.arange(len(labels)).tolist()}
    )
    try:
        rows = np.asarray(partitioner.load_partition(partition_id)["row"], dtype=np.int64)
    except ValueError as exc:  # Flower Datasets found no split (e.g. too many partitions)
        raise DataError(
            f"partitioner={spec.partitioner!r} cannot split {len(labels)} examples into "
            f"num-partitions={spec.num_partitions} ({exc}); use partitioner='iid' "
            f"({len(labels) // spec.num_partitions} or more examples each) or fewer clients"
        ) from None
    return np.sort(rows)


def dirichlet_min_size(num_examples: int, num_partitions: int) -> int:
    """The fewest examples a Dirichlet partition may hold: 10 in small federations, what
    fits in large ones (a quarter of an equal share), at least 1."""
    return max(1, min(10, num_examples // (4 * num_partitions)))


def dirichlet_partitions(
    labels: np.ndarray, num_partitions: int, alpha: float, min_size: int, seed: int
) -> list[np.ndarray]:
    """Label-skewed partitions: each label's examples split by proportions ~ Dirichlet(alpha).

    Returns the sorted indices into `labels` of every partition. A draw that leaves a
    partition with fewer than `min_size` examples is drawn again, up to
    `MAX_DIRICHLET_DRAWS` times. The draws are those of Flower Datasets'
    `DirichletPartitioner` (without self-balancing) for the same seed, so a split it finds
    within its 11 draws comes out the same here; where it gives up after those 11 (alpha 0.1,
    30 clients of the digits, seeds 0 and 1), this draws on. Raises DataError when no draw
    fits.
    """
    rng = np.random.default_rng(seed)
    alphas = np.full(num_partitions, float(alpha))
    by_label = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    for _ in range(MAX_DIRICHLET_DRAWS):
        cuts = [
            (np.cumsum(rng.dirichlet(alphas)) * len(rows)).astype(int)[:-1] for rows in by_label
        ]
        sizes = sum(
            np.diff(cut, prepend=0, append=len(rows))
            for cut, rows in zip(cuts, by_label, strict=True)
        )
        if sizes.min() >= min_size:
            pieces = [np.split(rows, cut) for cut, rows in zip(cuts, by_label, strict=True)]
            return [np.sort(np.concatenate([p[i] for p in pieces])) for i in range(num_partitions)]
    raise DataError(
        f"partitioner='dirichlet' found no split of {len(labels)} examples into "
        f"num-partitions={num_partitions} with at least {min_size} examples each at "
        f"dirichlet-alpha={alpha} in {MAX_DIRICHLET_DRAWS} draws; allowed: a larger "
        f"dirichlet-alpha, fewer clients, or partitioner='iid' "
        f"({len(labels) // num_partitions} or more examples each)"
    )


@lru_cache(maxsize=8)
def load_partition(spec: PartitionSpec, partition_id: int) -> LabeledArrays:
    """The training examples of client `partition_id` (cached: loaded once per process)."""
    train, _ = load_digits_split()
    return train.subset(partition_indices(train.y, spec, partition_id))


@lru_cache(maxsize=8)
def load_test_share(num_partitions: int, partition_id: int) -> LabeledArrays:
    """Client `partition_id`'s IID share of the test split, for federated evaluation."""
    _, test = load_digits_split()
    spec = PartitionSpec(partitioner="iid", num_partitions=min(num_partitions, len(test)))
    return test.subset(partition_indices(test.y, spec, partition_id % spec.num_partitions))


def _build_partitioner(spec: PartitionSpec) -> Partitioner:
    from flwr_datasets.partitioner import IidPartitioner, PathologicalPartitioner

    if spec.partitioner == "iid":
        return IidPartitioner(num_partitions=spec.num_partitions)
    if spec.partitioner == "pathological":
        if not 1 <= spec.classes_per_client <= NUM_CLASSES:
            raise DataError(
                f"classes-per-client={spec.classes_per_client} is out of range; "
                f"allowed: 1..{NUM_CLASSES}"
            )
        return PathologicalPartitioner(
            num_partitions=spec.num_partitions,
            partition_by="label",
            num_classes_per_partition=spec.classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=spec.seed,
        )
    raise DataError(
        f"partitioner={spec.partitioner!r} is not known; allowed: {', '.join(PARTITIONERS)}"
    )
