"""Stable cluster ids: clusterer.algorithms.matching.match_clusters and groups_from_labels."""

from __future__ import annotations

import numpy as np

from clusterer.algorithms.matching import groups_from_labels, match_clusters


def _events(result, label=None, kind=None):
    return [e for e in result.events if (label is None or e.label == label) and (kind is None or e.kind == kind)]


def test_identical_clusters_keep_their_labels_in_any_order():
    previous = {0: [1, 2, 3], 7: [4, 5, 6, 7]}
    result = match_clusters(previous, [[4, 5, 6, 7], [3, 2, 1]], next_label=8)
    assert result.labels == [7, 0]
    assert {e.kind for e in result.events} == {"continued"}
    assert sorted(e.label for e in result.events) == [0, 7]
    cont = _events(result, 7, "continued")[0]
    assert cont.size == 4 and cont.detail["previous_size"] == 4


def test_grown_cluster_continues():
    previous = {3: [1, 2, 3, 4]}
    result = match_clusters(previous, [[1, 2, 3, 4, 5, 6]], next_label=4)
    assert result.labels == [3]
    assert [(e.kind, e.size) for e in result.events] == [("continued", 6)]


def test_split_records_split_on_both_ids_and_one_id_survives():
    previous = {0: list(range(1, 11))}
    result = match_clusters(previous, [list(range(1, 7)), list(range(7, 11))], next_label=5)
    # the larger part keeps the old id, the other one gets a fresh id
    assert result.labels == [0, 5]
    assert _events(result, 0, "continued")
    new_split = _events(result, 5, "split")
    old_split = _events(result, 0, "split")
    assert len(new_split) == 1 and new_split[0].related == [0] and new_split[0].detail == {"from": 0}
    assert len(old_split) == 1 and old_split[0].related == [5] and old_split[0].detail == {"into": 5}
    assert new_split[0].size == 4 and old_split[0].size == 6
    assert not _events(result, kind="death") and not _events(result, kind="birth")


def test_merge_records_merge_and_death_with_merged_into():
    previous = {0: [1, 2, 3, 4, 5], 1: [6, 7, 8, 9, 10]}
    result = match_clusters(previous, [list(range(1, 11))], next_label=2)
    assert len(result.labels) == 1
    survivor = result.labels[0]
    assert survivor in (0, 1)
    gone = 1 - survivor
    merge = _events(result, survivor, "merge")
    death = _events(result, gone, "death")
    assert len(merge) == 1 and merge[0].related == [gone] and merge[0].detail == {"absorbed": gone}
    assert merge[0].size == 10
    assert len(death) == 1 and death[0].detail == {"merged_into": survivor} and death[0].related == [survivor]
    assert death[0].size == 0


def test_brand_new_cluster_gets_next_label_and_birth():
    previous = {0: [1, 2, 3]}
    result = match_clusters(previous, [[1, 2, 3], [20, 21, 22]], next_label=10)
    assert result.labels == [0, 10]
    birth = _events(result, 10, "birth")
    assert len(birth) == 1 and birth[0].size == 3 and birth[0].related == []


def test_first_run_numbers_from_next_label():
    result = match_clusters({}, [[1, 2], [3, 4], [5]], next_label=0)
    assert result.labels == [0, 1, 2]
    assert [e.kind for e in result.events] == ["birth"] * 3


def test_old_cluster_without_successor_dies():
    previous = {0: [1, 2, 3], 1: [4, 5, 6]}
    result = match_clusters(previous, [[1, 2, 3]], next_label=2)
    assert result.labels == [0]
    death = _events(result, 1, "death")
    assert len(death) == 1 and death[0].related == [] and death[0].detail == {}


def test_low_overlap_is_not_a_match():
    # Jaccard 2/10 = 0.2 < 0.3: a new id, and the old one dies (only 2 of its 10 went anywhere)
    previous = {4: list(range(1, 11))}
    result = match_clusters(previous, [[1, 2]], next_label=9, min_jaccard=0.3)
    assert result.labels == [9]
    assert _events(result, 9, "birth")
    assert _events(result, 4, "death")[0].detail == {}


def test_ids_are_never_reused():
    # labels 0..6 were used at some point; previous run only has 3 and 6
    previous = {3: [1, 2, 3], 6: [4, 5, 6]}
    current = [[10, 11], [12, 13], [14, 15, 16]]
    result = match_clusters(previous, current, next_label=7)
    assert result.labels == [7, 8, 9]
    assert all(label >= 7 for label in result.labels)
    assert len(set(result.labels)) == len(result.labels)
    assert {e.label for e in _events(result, kind="death")} == {3, 6}


def test_one_old_id_goes_to_one_new_cluster_only():
    previous = {0: [1, 2, 3, 4]}
    result = match_clusters(previous, [[1, 2], [3, 4]], next_label=1)
    assert sorted(result.labels) == [0, 1]
    assert len(set(result.labels)) == 2


def test_groups_from_labels():
    ids = np.array([10, 11, 12, 13, 14, 15])
    labels = np.array([1, -1, 0, 1, 0, -1])
    groups = groups_from_labels(ids, labels)
    assert set(groups) == {0, 1}
    assert groups[0].tolist() == [12, 14]
    assert groups[1].tolist() == [10, 13]


def test_groups_from_labels_empty_and_all_unassigned():
    assert groups_from_labels(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == {}
    assert groups_from_labels(np.array([1, 2]), np.array([-1, -1])) == {}
