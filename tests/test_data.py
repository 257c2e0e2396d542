"""The digits split and its partitions across clients."""

import numpy as np
import pytest

from fedq.data import (
    NUM_CLASSES,
    PartitionSpec,
    dirichlet_min_size,
    load_digits_split,
    load_partition,
    load_test_share,
    partition_indices,
)
from fedq.errors import DataError


def test_split_is_80_20_stratified_and_disjoint():
    train, test = load_digits_split()
    assert (len(train), len(test)) == (1437, 360)
    assert train.x.shape == (1437, 8, 8) and train.x.dtype == np.float32
    assert train.y.dtype == np.int64
    assert train.x.min() >= 0.0 and train.x.max() <= 1.0
    # Stratified: every class has 20 % of its examples in test, give or take one.
    counts_train, counts_test = np.bincount(train.y), np.bincount(test.y)
    assert np.all(np.abs(counts_test / (counts_train + counts_test) - 0.2) < 0.02)
    # No test image is also a train image.
    train_rows = {row.tobytes() for row in train.x}
    assert sum(row.tobytes() in train_rows for row in test.x) < 5  # digits has a few duplicates


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "pathological"])
def test_partitions_are_disjoint_and_cover_the_train_split(partitioner):
    train, _ = load_digits_split()
    spec = PartitionSpec(partitioner=partitioner, num_partitions=5, dirichlet_alpha=0.3, seed=1)
    parts = [partition_indices(train.y, spec, i) for i in range(5)]
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)), "partitions overlap"
    assert all(len(p) > 0 for p in parts)
    if partitioner != "pathological":  # pathological may leave some classes unused
        assert len(joined) == len(train)


def test_iid_partitions_have_equal_sizes_and_all_classes():
    spec = PartitionSpec(partitioner="iid", num_partitions=4)
    sizes = [len(load_partition(spec, i)) for i in range(4)]
    assert max(sizes) - min(sizes) <= 1
    assert all(len(np.unique(load_partition(spec, i).y)) == NUM_CLASSES for i in range(4))


def test_dirichlet_small_alpha_skews_labels():
    skewed = PartitionSpec(partitioner="dirichlet", num_partitions=4, dirichlet_alpha=0.1)
    iid = PartitionSpec(partitioner="iid", num_partitions=4)

    def top_class_share(spec):
        y = load_partition(spec, 0).y
        return np.bincount(y, minlength=NUM_CLASSES).max() / len(y)

    assert top_class_share(skewed) > 2 * top_class_share(iid)


def test_pathological_gives_each_client_at_most_k_classes():
    spec = PartitionSpec(partitioner="pathological", num_partitions=5, classes_per_client=2)
    for i in range(5):
        assert len(np.unique(load_partition(spec, i).y)) <= 2


def test_partitions_depend_on_the_seed_only():
    train, _ = load_digits_split()
    a = PartitionSpec(partitioner="dirichlet", num_partitions=3, seed=4)
    b = PartitionSpec(partitioner="dirichlet", num_partitions=3, seed=5)
    np.testing.assert_array_equal(
        partition_indices(train.y, a, 0), partition_indices(train.y, a, 0)
    )
    assert not np.array_equal(partition_indices(train.y, a, 0), partition_indices(train.y, b, 0))


@pytest.mark.parametrize(
    ("spec", "partition_id", "message"),
    [
        (PartitionSpec(num_partitions=4), 4, r"partition-id=4 is out of range; allowed: 0..3"),
        (PartitionSpec(num_partitions=4), -1, r"partition-id=-1 is out of range"),
        (PartitionSpec(num_partitions=0), 0, r"num-partitions=0 is out of range; allowed: 1..1437"),
        (
            PartitionSpec(partitioner="pathological", num_partitions=2, classes_per_client=11),
            0,
            r"classes-per-client=11 is out of range; allowed: 1..10",
        ),
        # 1,000 clients of 1,437 examples: only the IID partitioner can split them.
        (
            PartitionSpec(partitioner="dirichlet", num_partitions=1000),
            0,
            r"partitioner='dirichlet' found no split of 1437 examples into num-partitions=1000 "
            r"with at least 1 examples each at dirichlet-alpha=0.5 in 1000 draws; allowed: a "
            r"larger dirichlet-alpha, fewer clients, or partitioner='iid' \(1 or more examples "
            r"each\)$",
        ),
        (
            PartitionSpec(partitioner="pathological", num_partitions=1000),
            0,
            r"partitioner='pathological' cannot split 1437 examples into num-partitions=1000",
        ),
    ],
)
def test_bad_partition_requests_are_refused_with_the_allowed_range(spec, partition_id, message):
    train, _ = load_digits_split()
    with pytest.raises(DataError, match=message):
        partition_indices(train.y, spec, partition_id)


def test_test_shares_split_the_test_set():
    _, test = load_digits_split()
    shares = [load_test_share(3, i) for i in range(3)]
    assert sum(len(s) for s in shares) == len(test)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dirichlet_0_1_splits_30_clients_with_the_default_minimum_size(seed):
    # Flower Datasets' partitioner gives up on seeds 0 and 1 after its 11 draws.
    train, _ = load_digits_split()
    spec = PartitionSpec(partitioner="dirichlet", num_partitions=30, dirichlet_alpha=0.1, seed=seed)
    parts = [partition_indices(train.y, spec, i) for i in range(30)]
    assert min(len(p) for p in parts) >= dirichlet_min_size(len(train), 30) == 10
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(train)))
    # Label skew: most clients hold few of the 10 digits.
    assert np.median([len(np.unique(train.y[p])) for p in parts]) <= 5


def test_dirichlet_0_1_with_50_clients_is_refused_naming_the_values_and_the_way_out():
    train, _ = load_digits_split()
    spec = PartitionSpec(partitioner="dirichlet", num_partitions=50, dirichlet_alpha=0.1)
    with pytest.raises(DataError) as refused:
        partition_indices(train.y, spec, 0)
    assert str(refused.value) == (
        "partitioner='dirichlet' found no split of 1437 examples into num-partitions=50 with "
        "at least 7 examples each at dirichlet-alpha=0.1 in 1000 draws; allowed: a larger "
        "dirichlet-alpha, fewer clients, or partitioner='iid' (28 or more examples each)"
    )


@pytest.mark.parametrize(("clients", "alpha", "seed"), [(5, 0.3, 1), (20, 0.1, 0), (10, 1.0, 3)])
def test_dirichlet_splits_as_flower_datasets_does_where_it_finds_a_split(clients, alpha, seed):
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    train, _ = load_digits_split()
    flower = DirichletPartitioner(
        num_partitions=clients,
        partition_by="label",
        alpha=alpha,
        min_partition_size=dirichlet_min_size(len(train), clients),
        seed=seed,
    )
    flower.dataset = Dataset.from_dict({"label": train.y.tolist(), "row": list(range(len(train)))})
    spec = PartitionSpec("dirichlet", clients, dirichlet_alpha=alpha, seed=seed)
    for i in range(clients):
        expected = np.sort(np.asarray(flower.load_partition(i)["row"]))
        assert np.array_equal(partition_indices(train.y, spec, i), expected)
