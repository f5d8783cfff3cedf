"""The pure constraint rule (clusterer.service.constraints.apply_constraints)."""

from __future__ import annotations

import numpy as np

from clusterer.service.constraints import Constraints, apply_constraints, changed_labels

IDS = np.arange(10, dtype=np.int64)


def make(before, **edits) -> Constraints:
    return Constraints(ids=IDS, labels=np.asarray(before, np.int64), **edits)


def test_no_edits_changes_nothing_and_input_is_not_modified():
    labels = np.array([0, 0, 1, 1, 2, 2, -1, 3, 3, 3])
    out = apply_constraints(labels, IDS, make(labels))
    assert np.array_equal(out, labels) and out is not labels
    assert np.array_equal(apply_constraints(labels, IDS, None), labels)


def test_merge_keeps_former_members_together_and_absorbs_a_cluster_made_of_them():
    before = np.array([5, 5, 5, 5, 5, 5, 7, 7, 7, 7])  # 5 is a merged cluster
    new = np.array([5, 5, 5, 20, 20, 20, 7, 7, 7, -1])  # the method split it again (20 fresh)
    out = apply_constraints(new, IDS, make(before, merged={5: [6]}))
    assert out.tolist() == [5, 5, 5, 5, 5, 5, 7, 7, 7, -1]
    # without the edit nothing moves
    assert np.array_equal(apply_constraints(new, IDS, make(before)), new)


def test_merge_pulls_its_members_out_of_a_cluster_they_do_not_dominate():
    before = np.array([5, 5, 7, 7, 7, 7, 7, 7, 7, 7])
    new = np.array([5, 7, 7, 7, 7, 7, 7, 7, 7, 7])
    out = apply_constraints(new, IDS, make(before, merged={5: [6]}))
    assert out.tolist() == [5, 5, 7, 7, 7, 7, 7, 7, 7, 7]


def test_split_parts_that_meet_again_go_back_to_their_own_ids():
    before = np.array([11, 11, 11, 11, 12, 12, 12, 3, 3, 3])
    new = np.array([11, 11, 11, 11, 11, 11, 11, 3, 3, 3])  # the method joined 11 and 12
    out = apply_constraints(new, IDS, make(before, apart=[[11, 12]]))
    assert out.tolist() == [11, 11, 11, 11, 12, 12, 12, 3, 3, 3]
    assert changed_labels(new, out) == {11, 12}


def test_split_parts_joined_under_a_fresh_id_keep_the_ids_of_the_parts():
    before = np.array([11, 11, 11, 11, 12, 12, 12, 3, 3, 3])
    new = np.array([40, 40, 40, 40, 40, 40, 40, 3, 3, 3])
    out = apply_constraints(new, IDS, make(before, apart=[[11, 12]]))
    assert out.tolist() == [11, 11, 11, 11, 12, 12, 12, 3, 3, 3]


def test_a_named_id_passes_to_its_fresh_successor_but_not_to_an_older_cluster():
    before = np.array([4, 4, 4, 4, 9, 9, 9, 9, 9, 9])
    fresh = np.array([30, 30, 30, 30, 9, 9, 9, 9, 9, 9])
    assert apply_constraints(fresh, IDS, make(before, named={4})).tolist()[:4] == [4, 4, 4, 4]
    absorbed = np.array([9] * 10)  # 4 went into 9, an id that existed before: the names do not fight
    assert np.array_equal(apply_constraints(absorbed, IDS, make(before, named={4})), absorbed)


def test_new_sentences_are_left_to_the_method():
    before = np.array([5, 5, 5, 5, 5, -1, -1, -1, -1, -1])
    ids = np.arange(12, dtype=np.int64)  # 10 and 11 were not there before
    new = np.array([5, 5, 5, 5, 5, 8, 8, 8, 8, 8, 8, -1])
    out = apply_constraints(new, ids, make(before, merged={5: [6]}))
    assert out.tolist() == new.tolist()


def test_constrain_result_relabels_a_method_result_for_the_run_plan():
    from clusterer.service.constraints import constrain_result
    from clusterer.service.methods import Labels

    raw = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, -1])
    result = Labels(
        labels=raw,
        similarities=np.full(10, 0.9, np.float32),
        centroids={0: np.ones(2), 1: np.ones(2), 2: np.ones(2)},
        parents={0: 0, 1: 0, 2: 1},
    )
    label_of = {0: 5, 1: 30, 2: 7}  # 30: a fresh id for what was half of merged cluster 5
    before = np.array([5, 5, 5, 5, 5, 5, 7, 7, 7, -1])
    assert constrain_result(result, IDS, label_of, make(before)) is None
    new, identity, events = constrain_result(result, IDS, label_of, make(before, merged={5: [6]}))
    assert new.labels.tolist() == [5, 5, 5, 5, 5, 5, 7, 7, 7, -1]
    assert identity == {5: 5, 7: 7}
    assert set(new.centroids) == {7} and np.isnan(new.similarities[:6]).all() and new.similarities[6] == 0.9
    assert new.parents == {5: 0, 7: 1}
    assert [(e.label, e.kind, e.size, e.detail["moved"]) for e in events] == [(5, "kept", 6, 3), (30, "kept", 0, 3)]
