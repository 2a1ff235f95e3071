"""The portable scorer on hand-built documents: cleaning rules, unseen flags, tree maths, bad documents.

Spark parity on real models is tested in tests/jobs/test_portable_parity.py; here every expected number
is worked out by hand from a document small enough to read.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlrelease.serving.portable import FORMAT, PortableModel, PortableModelError, Scored

# Two categoricals and two numerics. workclass has "?" as a training label; sex does not.
CATEGORICAL = [
    {"name": "workclass", "labels": ["Private", "?", "State-gov"]},
    {"name": "sex", "labels": ["Male", "Female"]},
]
NUMERIC = [{"name": "age", "surrogate": 37.0}, {"name": "hours_per_week", "surrogate": 40.0}]
# extra_slot layout (what Spark writes): workclass 0-2 + unseen 3, sex 4-5 + unseen 6, age 7, hours 8.
EXTRA_SLOT_FEATURES = 9


def document(algorithm: str, model: dict[str, Any], encoding: str | None = "extra_slot") -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "algorithm": algorithm,
        "spark_version": "4.3.0",
        "positive_label": ">50K",
        "negative_label": "<=50K",
        "missing_category": "?",
        "categorical": copy.deepcopy(CATEGORICAL),
        "numeric": copy.deepcopy(NUMERIC),
        "num_features": EXTRA_SLOT_FEATURES if encoding == "extra_slot" else 7,
        "model": model,
    }
    if encoding is not None:
        doc["unseen_encoding"] = encoding
    return doc


def lr(coefficients: list[float], intercept: float = 0.0, threshold: float = 0.5, **kwargs: Any):
    return document(
        "LogisticRegression",
        {"coefficients": coefficients, "intercept": intercept, "threshold": threshold},
        **kwargs,
    )


def rec(**overrides: Any) -> dict[str, Any]:
    return {"workclass": "Private", "sex": "Male", "age": 30, "hours_per_week": 40, **overrides}


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# One weight per slot so the margin says which slots were set.
SLOT_WEIGHTS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.0, 0.0]


def margin_of(model: PortableModel, record: dict[str, Any]) -> float:
    p = float(model.predict_proba([record])[0])
    return math.log(p / (1.0 - p))


# --------------------------------------------------------------------------------------------------
# logistic regression and the cleaning rules
# --------------------------------------------------------------------------------------------------


def test_lr_probability_is_the_sigmoid_of_the_margin():
    coefficients = [0.5, -0.3, 0.2, -1.0, 0.0, -0.4, 0.0, 0.03, 0.02]
    model = PortableModel.from_dict(lr(coefficients, intercept=-2.0))
    [scored] = model.score([rec(workclass="State-gov", sex="Female", age=50, hours_per_week=60)])
    expected = sigmoid(0.2 - 0.4 + 50 * 0.03 + 60 * 0.02 - 2.0)
    assert scored == Scored(pytest.approx(expected, abs=1e-15), ">50K", ())
    assert model.algorithm == "LogisticRegression" and model.spark_version == "4.3.0"


@pytest.mark.parametrize(
    ("value", "slot_weight"),
    [
        ("Private", 0.1),
        ("  Private  ", 0.1),  # Spark's TRIM
        ("?", 0.2),  # a real training label of workclass
        (None, 0.2),  # null -> "?"
        ("", 0.2),  # empty -> "?"
        ("   ", 0.2),  # all spaces -> "" -> "?"
        ("State-gov", 0.3),
        ("Atlantis", 0.4),  # unseen -> the block's extra slot
        ("\tPrivate", 0.4),  # TRIM strips spaces only, as Spark's does: a tab makes it unseen
    ],
)
def test_categorical_cleaning_matches_the_spark_pipeline(value, slot_weight):
    model = PortableModel.from_dict(lr(SLOT_WEIGHTS))
    assert margin_of(model, rec(workclass=value)) == pytest.approx(slot_weight + 0.5, abs=1e-9)


def test_unseen_fields_are_named_and_question_mark_is_unseen_only_where_training_never_saw_it():
    model = PortableModel.from_dict(lr(SLOT_WEIGHTS))
    scored = model.score(
        [
            rec(),
            rec(workclass="Atlantis"),
            rec(workclass="?", sex="?"),  # "?" is a workclass label, not a sex label
            rec(workclass=None, sex=None),
            rec(workclass="Atlantis", sex="Robot"),
        ]
    )
    assert [s.unseen for s in scored] == [(), ("workclass",), ("sex",), ("sex",), ("workclass", "sex")]
    assert margin_of(model, rec(sex="Robot")) == pytest.approx(0.1 + 0.7, abs=1e-9)


def test_all_zeros_encoding_is_the_default_for_documents_without_the_key():
    coefficients = [0.1, 0.2, 0.3, 0.5, 0.6, 0.0, 0.0]  # blocks of len(labels), no unseen slot
    model = PortableModel.from_dict(lr(coefficients, encoding=None))
    assert margin_of(model, rec(workclass="State-gov")) == pytest.approx(0.3 + 0.5, abs=1e-9)
    [scored] = model.score([rec(workclass="Atlantis")])
    assert scored.unseen == ("workclass",)
    assert margin_of(model, rec(workclass="Atlantis")) == pytest.approx(0.5, abs=1e-9)  # all zeros


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_missing_numerics_take_the_imputer_surrogate(missing):
    coefficients = [0.0] * 7 + [0.1, -0.01]
    model = PortableModel.from_dict(lr(coefficients))
    imputed = model.predict_proba([rec(age=missing, hours_per_week=missing)])[0]
    assert imputed == pytest.approx(sigmoid(37.0 * 0.1 - 40.0 * 0.01), abs=1e-15)
    assert model.predict_proba([{"workclass": "Private", "sex": "Male"}])[0] == imputed  # absent = missing


def test_integer_and_float_numerics_score_the_same():
    model = PortableModel.from_dict(lr([0.0] * 7 + [0.1, -0.01]))
    ints, floats = model.predict_proba([rec(age=41, hours_per_week=50), rec(age=41.0, hours_per_week=50.0)])
    assert ints == floats


@pytest.mark.parametrize(
    ("intercept", "threshold", "label"),
    [
        (0.0, 0.5, "<=50K"),  # P = 0.5 exactly: Spark needs margin > 0
        (1e-9, 0.5, ">50K"),
        (-5.0, 0.0, ">50K"),  # threshold 0: everything positive
        (5.0, 1.0, "<=50K"),  # threshold 1: nothing positive
        (math.log(0.7 / 0.3) - 1e-9, 0.7, "<=50K"),
        (math.log(0.7 / 0.3) + 1e-9, 0.7, ">50K"),
    ],
)
def test_lr_label_follows_sparks_threshold_rule(intercept, threshold, label):
    model = PortableModel.from_dict(lr([0.0] * 9, intercept=intercept, threshold=threshold))
    assert model.score([rec()])[0].label == label


def test_extreme_margins_saturate_without_overflow_warnings():
    model = PortableModel.from_dict(lr([0.0] * 7 + [100.0, 0.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exp(10000) overflows to inf, which is the right answer here
        high, low = model.predict_proba([rec(age=100), rec(age=-100)])
    assert (high, low) == (1.0, 0.0)


def test_predict_proba_is_float64_per_record_and_empty_input_is_fine():
    model = PortableModel.from_dict(lr(SLOT_WEIGHTS))
    probabilities = model.predict_proba([rec()] * 5)
    assert probabilities.dtype == np.float64 and probabilities.shape == (5,)
    assert model.predict_proba([]).shape == (0,)
    assert model.score([]) == []


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        (rec(age="30"), "record 0: field 'age' must be a number"),
        (rec(age=True), "record 0: field 'age' must be a number"),
        (rec(sex=1), "record 0: field 'sex' must be a string"),
        ("not a record", "record 0 must be a mapping"),
    ],
)
def test_unvalidated_values_are_refused_with_the_field_named(record, fragment):
    model = PortableModel.from_dict(lr(SLOT_WEIGHTS))
    with pytest.raises(ValueError, match=fragment):
        model.score([record])


# --------------------------------------------------------------------------------------------------
# trees
# --------------------------------------------------------------------------------------------------


def tree(nodes: list[tuple[int, float | None, list[int] | None, int, int, Any]]) -> dict[str, list[Any]]:
    """(feature, threshold, left_categories, left, right, value) per node -> the columnar TREE shape."""
    keys = ("feature", "threshold", "left_categories", "left", "right", "value")
    return {key: [node[i] for node in nodes] for i, key in enumerate(keys)}


def leaf(value: Any):
    return (-1, None, None, -1, -1, value)


# Node 0: age (feature 7) <= 40.5 ? node 1 : node 4.  Node 1: workclass=Private slot (feature 0) is 1 ?
# leaf 2 : leaf 3.  Node 4: leaf.
def small_tree(values: list[Any]) -> dict[str, list[Any]]:
    return tree(
        [
            (7, 40.5, None, 1, 4, None),
            (0, None, [1], 2, 3, None),
            leaf(values[0]),
            leaf(values[1]),
            leaf(values[2]),
        ]
    )


def test_decision_tree_follows_continuous_and_categorical_splits():
    doc = document("DecisionTreeClassifier", {"tree": small_tree([[90.0, 10.0], [30.0, 30.0], [20.0, 60.0]])})
    model = PortableModel.from_dict(doc)
    scored = model.score(
        [
            rec(age=30),  # <= 40.5, Private -> leaf 2
            rec(age=40.5),  # threshold itself goes left
            rec(age=30, workclass="State-gov"),  # not Private -> leaf 3, a 30/30 tie
            rec(age=41),  # -> leaf 4
            rec(age=None),  # surrogate 37 -> left
        ]
    )
    assert [s.probability for s in scored] == [0.1, 0.1, 0.5, 0.75, 0.1]
    # Spark takes the argmax of the counts and keeps the first class of a tie: 30/30 is negative.
    assert [s.label for s in scored] == ["<=50K", "<=50K", "<=50K", ">50K", "<=50K"]


def test_decision_tree_collapsed_to_a_single_leaf():
    model = PortableModel.from_dict(document("DecisionTreeClassifier", {"tree": tree([leaf([75.0, 25.0])])}))
    assert model.predict_proba([rec(), rec(age=90)]).tolist() == [0.25, 0.25]


def test_random_forest_averages_each_trees_normalised_counts():
    trees = [
        small_tree([[90.0, 10.0], [30.0, 30.0], [20.0, 60.0]]),
        tree([leaf([1.0, 3.0])]),  # a tree with few rows weighs as much as a big one
    ]
    model = PortableModel.from_dict(document("RandomForestClassifier", {"trees": trees}))
    young, old = model.score([rec(age=30), rec(age=60)])
    assert young.probability == pytest.approx((0.1 + 0.75) / 2, abs=1e-15)
    assert young.label == "<=50K"
    assert old.probability == pytest.approx((0.75 + 0.75) / 2, abs=1e-15)
    assert old.label == ">50K"


def test_gbt_margin_is_the_weighted_sum_and_probability_uses_twice_the_margin():
    trees = [small_tree([-0.5, 0.2, 0.9]), tree([leaf(0.3)])]
    doc = document("GBTClassifier", {"trees": trees, "tree_weights": [1.0, 0.1], "loss": "logistic"})
    model = PortableModel.from_dict(doc)
    young, old, tie = model.score([rec(age=30), rec(age=60), rec(age=30, workclass="Atlantis")])
    assert young.probability == pytest.approx(sigmoid(2 * (-0.5 + 0.03)), abs=1e-15)
    assert young.label == "<=50K"
    assert old.probability == pytest.approx(sigmoid(2 * (0.9 + 0.03)), abs=1e-15)
    assert old.label == ">50K"
    assert tie.probability == pytest.approx(sigmoid(2 * (0.2 + 0.03)), abs=1e-15)
    assert tie.unseen == ("workclass",)


def test_categorical_split_on_the_unseen_slot():
    # Feature 3 is workclass's unseen slot; left_categories [0]: x == 0 goes left, x == 1 goes right.
    doc = document(
        "DecisionTreeClassifier", {"tree": tree([(3, None, [0], 1, 2, None), leaf([1, 0]), leaf([0, 1])])}
    )
    model = PortableModel.from_dict(doc)
    known, unseen = model.predict_proba([rec(), rec(workclass="Atlantis")])
    assert (known, unseen) == (0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# bad documents and files
# --------------------------------------------------------------------------------------------------


def mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target: Any = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is KeyError:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return doc


GOOD_LR = lr(SLOT_WEIGHTS)
GOOD_DT = document("DecisionTreeClassifier", {"tree": small_tree([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])})
GOOD_GBT = document("GBTClassifier", {"trees": [small_tree([0.1, 0.2, 0.3])], "tree_weights": [1.0]})


@pytest.mark.parametrize(
    ("doc", "fragments"),
    [
        (
            mutate(GOOD_LR, "format", "mlrelease.portable.v0"),
            ["'format'", "mlrelease.portable.v1", "re-export"],
        ),
        (mutate(GOOD_LR, "algorithm", "NaiveBayes"), ["'algorithm'", "NaiveBayes", "LogisticRegression"]),
        (mutate(GOOD_LR, "spark_version", KeyError), ["'spark_version'"]),
        (
            mutate(GOOD_LR, "num_features", 8),
            ["'num_features'", "is 8", "make 9", "unseen_encoding='all_zeros'"],
        ),
        (mutate(GOOD_LR, "unseen_encoding", "drop"), ["'unseen_encoding'", "extra_slot"]),
        (mutate(GOOD_LR, "model.coefficients", [0.1] * 8), ["'model.coefficients'", "8 entries, expected 9"]),
        (mutate(GOOD_LR, "model.intercept", "1.0"), ["'model.intercept'", "finite number"]),
        (mutate(GOOD_LR, "model.threshold", 1.5), ["'model.threshold'", "[0, 1]"]),
        (mutate(GOOD_LR, "numeric.0.surrogate", None), ["'numeric[0].surrogate'", "finite number"]),
        (mutate(GOOD_LR, "categorical.1.labels", ["Male", "Male"]), ["'categorical[1].labels'", "distinct"]),
        (mutate(GOOD_LR, "model", KeyError), ["'model'", "must be an object"]),
        (mutate(GOOD_DT, "model.tree.left.0", 0), ["model.tree[0][node 0].left/right", "later nodes"]),
        (
            mutate(GOOD_DT, "model.tree.feature.0", 99),
            ["model.tree[0][node 0].feature", "outside the 9 features"],
        ),
        (mutate(GOOD_DT, "model.tree.left.2", 3), ["node 2", "is a leaf"]),
        (mutate(GOOD_DT, "model.tree.value.2", [1.0]), ["node 2].value", "1 entries, expected 2"]),
        (mutate(GOOD_DT, "model.tree.threshold.0", None), ["node 0", "exactly one of threshold"]),
        (
            mutate(GOOD_DT, "model.tree.left_categories.1", [0.5]),
            ["node 1].left_categories", "whole numbers in [0, 10000)"],
        ),
        (mutate(GOOD_DT, "model.tree.value", [None]), ["'model.tree[0].value'", "1 entries, expected 5"]),
        (
            mutate(GOOD_GBT, "model.tree_weights", [1.0, 0.1]),
            ["'model.tree_weights'", "2 entries, expected 1"],
        ),
        (mutate(GOOD_GBT, "model.trees", []), ["'model.trees'", "at least one tree"]),
        (mutate(GOOD_GBT, "model.loss", "squared"), ["'model.loss'", "logistic"]),
    ],
)
def test_bad_documents_are_rejected_naming_the_field(doc, fragments):
    with pytest.raises(PortableModelError) as excinfo:
        PortableModel.from_dict(doc)
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, message


def test_a_document_that_is_not_an_object_is_rejected():
    with pytest.raises(PortableModelError, match="must be a JSON object"):
        PortableModel.from_dict([GOOD_LR])  # type: ignore[arg-type]


def test_load_reads_a_file_and_names_it_when_it_is_bad(tmp_path: Path):
    good = tmp_path / "portable_model.json"
    good.write_text(json.dumps(GOOD_GBT))
    model = PortableModel.load(good)
    assert model.algorithm == "GBTClassifier" and model.document == GOOD_GBT

    broken = tmp_path / "broken.json"
    broken.write_text('{"format": ')
    with pytest.raises(PortableModelError, match=r"broken\.json is not valid JSON"):
        PortableModel.load(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(mutate(GOOD_LR, "format", "x")))
    with pytest.raises(PortableModelError, match=r"wrong\.json: .*'format'"):
        PortableModel.load(str(wrong))
