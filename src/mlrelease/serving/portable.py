"""Score Spark-trained income models with NumPy alone: no JVM, no pyspark, no MLflow at serving time.

Why: a scoring endpoint that needs a JVM and a Spark session per replica is slow to start, heavy to run
and hard to package for the cloud. The training job (``jobs/train_income.py``, through
``mlrelease.training.portable_export.export_portable``) writes each fitted ``PipelineModel`` as a JSON
document holding what its stages learned; this module reimplements those stages and the four classifier
families and must give the same answers as ``model.transform``: identical labels and P(">50K") within
1e-6 (``tests/jobs/test_portable_parity.py`` checks every row of adult.test). General converters were
not good enough (onnxmltools was off by 0.085 on GBT), so the document carries the parameters and trees
themselves.

Document ``mlrelease.portable.v1`` (JSON object; unknown keys are ignored)::

    format            "mlrelease.portable.v1"
    algorithm         "LogisticRegression" | "DecisionTreeClassifier" | "RandomForestClassifier"
                      | "GBTClassifier"
    spark_version     the Spark version that trained it (informational)
    positive_label    ">50K"   (label 1.0)
    negative_label    "<=50K"  (label 0.0)
    missing_category  "?"      what a null / empty / all-space categorical becomes
    unseen_encoding   "extra_slot" | "all_zeros" (optional, default "all_zeros"), see below
    categorical       [{"name": str, "labels": [str, ...]}, ...]   labels in StringIndexer index order
    numeric           [{"name": str, "surrogate": float}, ...]     Imputer surrogates (training medians)
    num_features      length of the feature vector
    model             algorithm-specific, below

Features, as Spark's stages build them. Categoricals: ``value.strip(" ")`` (Spark's TRIM removes spaces
only), and None or "" becomes ``missing_category``; the value's position in ``labels`` is its index, and a
value not in ``labels`` is *unseen* (reported in :attr:`Scored.unseen`). A ``missing_category`` that is
one of the labels (training saw missing values in that column) is a known value, not an unseen one.
Numerics: a number as float64, None or NaN replaced by the surrogate. An absent field counts as None; a
value of another type raises ValueError (the service validates requests first). The vector is one one-hot
block per categorical (``categorical`` order) followed by the numerics (``numeric`` order). With
``unseen_encoding`` "extra_slot" (what Spark's ``StringIndexer(handleInvalid="keep")`` +
``OneHotEncoder(handleInvalid="keep", dropLast=True)`` really produce, and what the exporter writes) a
block has ``len(labels) + 1`` slots and an unseen value sets the last one; with "all_zeros" a block has
``len(labels)`` slots and an unseen value leaves them all zero. ``num_features`` must equal the sum of
the block sizes plus the number of numerics.

``model`` per algorithm::

    LogisticRegression      {"coefficients": [float * num_features], "intercept": float, "threshold": float}
        margin m = coefficients . x + intercept; P(>50K) = 1 - 1 / (1 + exp(m)) (Spark's own form of the
        sigmoid); label positive iff m > log(threshold / (1 - threshold)), which is Spark's rule
        (threshold 0.5: m > 0; threshold 0: always; threshold 1: never).
    DecisionTreeClassifier  {"tree": TREE}   leaf value = [negative count, positive count]
        P(>50K) = pos / (neg + pos); label positive iff pos > neg (Spark's argmax keeps the first of a tie).
    RandomForestClassifier  {"trees": [TREE, ...]}   leaf values as for the decision tree
        votes = sum over trees, in order, of leaf counts / their total (Spark ignores the tree weights,
        which are all 1.0); P(>50K) = votes_pos / (votes_neg + votes_pos); positive iff votes_pos > votes_neg.
    GBTClassifier           {"trees": [TREE, ...], "tree_weights": [float, ...], "loss": "logistic"}
        (loss is optional; "logistic", the only loss Spark's GBTClassifier has, is the default)
        leaf value = float; margin m = sum of tree_weights[i] * tree i's leaf value;
        P(>50K) = 1 - 1 / (1 + exp(2m)); label positive iff m > 0.

    TREE = {"feature", "threshold", "left_categories", "left", "right", "value"}: parallel lists, one
    entry per node, node 0 the root, children always after their parent. A leaf has feature -1,
    left = right = -1, threshold and left_categories null and a non-null value. An internal node has
    value null, a feature index and either a threshold (x[feature] <= threshold goes left) or
    left_categories, a list of category values (x[feature] in left_categories goes left; Spark treats
    one-hot slots as categorical features with the categories 0 and 1).

All arithmetic is float64. The feature matrix is built once per call and every tree is evaluated for all
rows at once (all trees of a forest together), one NumPy step per tree level.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "mlrelease.portable.v1"
ALGORITHMS = ("LogisticRegression", "DecisionTreeClassifier", "RandomForestClassifier", "GBTClassifier")
UNSEEN_ENCODINGS = ("extra_slot", "all_zeros")
DEFAULT_UNSEEN_ENCODING = "all_zeros"
_MAX_CATEGORY = 10_000
_REEXPORT = (
    "re-export it with mlrelease.training.portable_export.export_portable (run by jobs/train_income.py) "
    "from the model's training run"
)


class PortableModelError(ValueError):
    """A portable model document that is malformed or unsupported; the message names the field and the fix."""


@dataclass(frozen=True)
class Scored:
    """One record's prediction."""

    probability: float  # P(">50K")
    label: str  # ">50K" or "<=50K"
    # Categorical fields whose value training never saw (scored as the unknown bucket).
    unseen: tuple[str, ...]


def _fail(field: str, problem: str, fix: str = _REEXPORT) -> PortableModelError:
    return PortableModelError(f"portable model document: field {field!r} {problem}; {fix}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any, field: str) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise _fail(field, f"must be a finite number, got {value!r}")
    return float(value)


def _string(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise _fail(key, f"must be a non-empty string, got {value!r}")
    return value


def _list(value: Any, field: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(field, f"must be a list, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise _fail(field, f"has {len(value)} entries, expected {length}")
    return value


class _Trees:
    """Every tree of a model flattened into one node table, evaluated for all rows and trees at once."""

    def __init__(self, trees: list[Any], field: str, num_features: int, classification: bool) -> None:
        if not trees:
            raise _fail(field, "is empty; a tree model needs at least one tree")
        features, thresholds, categorical, lefts, rights, values, roots = [], [], [], [], [], [], []
        left_sets: list[tuple[int, list[int]]] = []
        depth = 0
        offset = 0
        for t, tree in enumerate(trees):
            where = f"{field}[{t}]"
            if not isinstance(tree, Mapping):
                raise _fail(where, f"must be an object, got {type(tree).__name__}")
            feature = _list(tree.get("feature"), f"{where}.feature")
            n = len(feature)
            if n == 0:
                raise _fail(f"{where}.feature", "is empty; a tree has at least a root node")
            columns = {
                key: _list(tree.get(key), f"{where}.{key}", n)
                for key in ("threshold", "left_categories", "left", "right", "value")
            }
            node_depth = [0] * n
            for i in range(n):
                at = f"{where}[node {i}]"
                f, left, right = feature[i], columns["left"][i], columns["right"][i]
                threshold, cats, value = (
                    columns["threshold"][i],
                    columns["left_categories"][i],
                    columns["value"][i],
                )
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (f, left, right)):
                    raise _fail(f"{at}.feature/left/right", f"must be integers, got {(f, left, right)!r}")
                if f == -1:
                    if (left, right) != (-1, -1) or threshold is not None or cats is not None:
                        raise _fail(at, "is a leaf (feature -1) but has children, a threshold or categories")
                    if classification:
                        stats = _list(value, f"{at}.value", 2)
                        pair = [_finite(v, f"{at}.value") for v in stats]
                        if min(pair) < 0:
                            raise _fail(f"{at}.value", f"holds negative class counts {pair!r}")
                        values.append(pair)
                    else:
                        values.append([_finite(value, f"{at}.value"), 0.0])
                    features.append(-1)
                    thresholds.append(np.nan)
                    categorical.append(False)
                    lefts.append(-1)
                    rights.append(-1)
                    continue
                if not 0 <= f < num_features:
                    raise _fail(f"{at}.feature", f"is {f}, outside the {num_features} features")
                if not (i < left < n and i < right < n):
                    raise _fail(
                        f"{at}.left/right",
                        f"are ({left}, {right}); children must be later nodes of the same tree (< {n})",
                    )
                if value is not None:
                    raise _fail(f"{at}.value", "must be null on an internal node")
                if (threshold is None) == (cats is None):
                    raise _fail(at, "needs exactly one of threshold (continuous) or left_categories")
                if cats is None:
                    thresholds.append(_finite(threshold, f"{at}.threshold"))
                    categorical.append(False)
                else:
                    cats = _list(cats, f"{at}.left_categories")
                    # Spark caps categories at maxBins; the bound keeps a corrupt document from
                    # allocating a huge lookup table.
                    if not all(
                        _is_number(c) and 0 <= c < _MAX_CATEGORY and float(c).is_integer() for c in cats
                    ):
                        raise _fail(
                            f"{at}.left_categories",
                            f"must be whole numbers in [0, {_MAX_CATEGORY}), got {cats!r}",
                        )
                    thresholds.append(np.nan)
                    categorical.append(True)
                    left_sets.append((offset + i, [int(c) for c in cats]))
                features.append(f)
                lefts.append(offset + left)
                rights.append(offset + right)
                values.append([np.nan, np.nan])
                node_depth[left] = node_depth[right] = node_depth[i] + 1
            depth = max(depth, max(node_depth))
            roots.append(offset)
            offset += n
        self.feature = np.asarray(features, dtype=np.int64)
        self.threshold = np.asarray(thresholds, dtype=np.float64)
        self.categorical = np.asarray(categorical, dtype=bool)
        self.left = np.asarray(lefts, dtype=np.int64)
        self.right = np.asarray(rights, dtype=np.int64)
        self.values = np.asarray(values, dtype=np.float64)
        self.roots = np.asarray(roots, dtype=np.int64)
        self.depth = depth
        width = 1 + max((max(cats, default=0) for _, cats in left_sets), default=0)
        self.left_table = np.zeros((offset, width), dtype=bool)
        for node, cats in left_sets:
            self.left_table[node, cats] = True

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """Leaf node ids, shape (rows, trees): every row walked down every tree, one level per step."""
        rows = np.arange(x.shape[0])[:, None]
        node = np.broadcast_to(self.roots, (x.shape[0], self.roots.size)).copy()
        width = self.left_table.shape[1]
        for _ in range(self.depth):
            feature = self.feature[node]
            internal = feature >= 0
            if not internal.any():
                break
            value = x[rows, np.where(internal, feature, 0)]
            go_left = value <= self.threshold[node]  # NaN threshold (categorical or leaf): False
            categorical = self.categorical[node]
            if categorical.any():
                # A value that is not a category index at all goes right (one-hot slots are 0 or 1).
                known = (value >= 0) & (value < width) & (value == np.floor(value))
                index = np.where(known, value, 0).astype(np.int64)
                go_left = np.where(categorical, known & self.left_table[node, index], go_left)
            node = np.where(internal, np.where(go_left, self.left[node], self.right[node]), node)
        return node


class PortableModel:
    """A loaded ``mlrelease.portable.v1`` document, ready to score raw records; see the module docstring."""

    algorithm: str
    spark_version: str
    document: dict[str, Any]

    def __init__(self, document: dict[str, Any]) -> None:
        """Validate ``document`` and compile it; use :meth:`from_dict` or :meth:`load`."""
        if not isinstance(document, Mapping):
            raise PortableModelError(
                f"portable model document must be a JSON object, got {type(document).__name__}; {_REEXPORT}"
            )
        fmt = document.get("format")
        if fmt != FORMAT:
            raise _fail(
                "format", f"is {fmt!r}, this scorer reads {FORMAT!r}", f"{_REEXPORT}, or upgrade mlrelease"
            )
        algorithm = _string(document, "algorithm")
        if algorithm not in ALGORITHMS:
            raise _fail(
                "algorithm",
                f"is {algorithm!r}, not one of {', '.join(ALGORITHMS)}",
                "train a supported algorithm",
            )
        self.algorithm = algorithm
        self.spark_version = _string(document, "spark_version")
        self.document = dict(document)
        self.positive_label = _string(document, "positive_label")
        self.negative_label = _string(document, "negative_label")
        if self.positive_label == self.negative_label:
            raise _fail("negative_label", f"equals positive_label {self.positive_label!r}")
        self.missing_category = _string(document, "missing_category")
        encoding = document.get("unseen_encoding", DEFAULT_UNSEEN_ENCODING)
        if encoding not in UNSEEN_ENCODINGS:
            raise _fail("unseen_encoding", f"is {encoding!r}, expected one of {', '.join(UNSEEN_ENCODINGS)}")
        self.unseen_encoding = encoding

        self._categorical: list[tuple[str, dict[str, int], int]] = []  # name, label -> slot, block offset
        offset = 0
        names: set[str] = set()
        for i, spec in enumerate(_list(document.get("categorical"), "categorical")):
            where = f"categorical[{i}]"
            if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec["name"]:
                raise _fail(f"{where}.name", "must be a non-empty string")
            labels = _list(spec.get("labels"), f"{where}.labels")
            if not all(isinstance(label, str) for label in labels) or len(set(labels)) != len(labels):
                raise _fail(f"{where}.labels", "must be distinct strings")
            self._categorical.append((spec["name"], {label: k for k, label in enumerate(labels)}, offset))
            names.add(spec["name"])
            offset += len(labels) + (1 if encoding == "extra_slot" else 0)
        self._numeric: list[tuple[str, int]] = []
        surrogates = []
        for i, spec in enumerate(_list(document.get("numeric"), "numeric")):
            where = f"numeric[{i}]"
            if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec["name"]:
                raise _fail(f"{where}.name", "must be a non-empty string")
            surrogates.append(_finite(spec.get("surrogate"), f"{where}.surrogate"))
            self._numeric.append((spec["name"], offset + i))
            names.add(spec["name"])
        if len(names) != len(self._categorical) + len(self._numeric):
            raise _fail("categorical/numeric", "name a field more than once")
        self._surrogates = np.asarray(surrogates, dtype=np.float64)
        expected = offset + len(self._numeric)
        num_features = document.get("num_features")
        if num_features != expected or isinstance(num_features, bool):
            other = "all_zeros" if encoding == "extra_slot" else "extra_slot"
            raise _fail(
                "num_features",
                f"is {num_features!r}, but the blocks and numerics make {expected} with "
                f"unseen_encoding={encoding!r}",
                f"{_REEXPORT} (a hand-written document may need unseen_encoding={other!r})",
            )
        self.num_features = expected

        model = document.get("model")
        if not isinstance(model, Mapping):
            raise _fail("model", f"must be an object, got {type(model).__name__}")
        self._lr: tuple[np.ndarray, float, float] | None = None
        self._trees: _Trees | None = None
        self._tree_weights: np.ndarray | None = None
        if algorithm == "LogisticRegression":
            coefficients = _list(model.get("coefficients"), "model.coefficients", expected)
            weights = np.asarray([_finite(c, "model.coefficients") for c in coefficients], dtype=np.float64)
            intercept = _finite(model.get("intercept"), "model.intercept")
            threshold = _finite(model.get("threshold"), "model.threshold")
            if not 0.0 <= threshold <= 1.0:
                raise _fail("model.threshold", f"is {threshold!r}, must be in [0, 1]")
            # Spark compares the margin with the threshold's logit (LogisticRegressionModel.raw2prediction).
            if threshold == 0.0:
                raw_threshold = -math.inf
            elif threshold == 1.0:
                raw_threshold = math.inf
            else:
                raw_threshold = math.log(threshold / (1.0 - threshold))
            self._lr = (weights, intercept, raw_threshold)
        elif algorithm == "DecisionTreeClassifier":
            self._trees = _Trees([model.get("tree")], "model.tree", expected, classification=True)
        elif algorithm == "RandomForestClassifier":
            self._trees = _Trees(_list(model.get("trees"), "model.trees"), "model.trees", expected, True)
        else:
            trees = _list(model.get("trees"), "model.trees")
            if model.get("loss", "logistic") != "logistic":
                raise _fail("model.loss", f"is {model.get('loss')!r}; only 'logistic' is supported")
            self._trees = _Trees(trees, "model.trees", expected, classification=False)
            weights = _list(model.get("tree_weights"), "model.tree_weights", len(trees))
            self._tree_weights = np.asarray([_finite(w, "model.tree_weights") for w in weights])

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PortableModel:
        """Validate and compile a document; raises :class:`PortableModelError` naming the bad field."""
        return cls(doc)

    @classmethod
    def load(cls, path: str | Path) -> PortableModel:
        """Read a ``portable_model.json``; raises :class:`PortableModelError` if it is no valid document."""
        path = Path(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise PortableModelError(
                f"portable model {path} is not valid JSON ({error}); {_REEXPORT}"
            ) from None
        try:
            return cls.from_dict(document)
        except PortableModelError as error:
            raise PortableModelError(f"{path}: {error}") from None

    # ----------------------------------------------------------------------------------------------

    def _features(self, records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[tuple[str, ...]]]:
        """The feature matrix (rows, num_features) and each record's unseen categorical fields."""
        x = np.zeros((len(records), self.num_features), dtype=np.float64)
        numeric = np.empty((len(records), len(self._numeric)), dtype=np.float64)
        unseen: list[tuple[str, ...]] = []
        extra_slot = self.unseen_encoding == "extra_slot"
        for r, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise ValueError(
                    f"record {r} must be a mapping of field name to value, got {type(record).__name__}"
                )
            unseen_here: list[str] = []
            for name, slots, offset in self._categorical:
                value = record.get(name)
                if value is None:
                    value = self.missing_category
                elif isinstance(value, str):
                    value = value.strip(" ") or self.missing_category  # Spark's TRIM strips spaces only
                else:
                    raise ValueError(
                        f"record {r}: field {name!r} must be a string or None, got {type(value).__name__} "
                        f"{value!r}; validate requests before scoring"
                    )
                slot = slots.get(value)
                if slot is None:
                    unseen_here.append(name)
                    if extra_slot:
                        x[r, offset + len(slots)] = 1.0
                else:
                    x[r, offset + slot] = 1.0
            unseen.append(tuple(unseen_here))
            for j, (name, _) in enumerate(self._numeric):
                value = record.get(name)
                if value is None:
                    numeric[r, j] = np.nan
                elif _is_number(value) or isinstance(value, np.number):
                    numeric[r, j] = float(value)
                else:
                    raise ValueError(
                        f"record {r}: field {name!r} must be a number or None, got {type(value).__name__} "
                        f"{value!r}; validate requests before scoring"
                    )
        numeric = np.where(np.isnan(numeric), self._surrogates, numeric)
        x[:, [column for _, column in self._numeric]] = numeric
        return x, unseen

    def _evaluate(
        self, records: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
        """P(>50K), positive-label mask and unseen fields, with Spark's formulas and decision rules."""
        x, unseen = self._features(records)
        with np.errstate(over="ignore"):
            if self._lr is not None:
                weights, intercept, raw_threshold = self._lr
                margin = x @ weights + intercept
                probability = 1.0 - 1.0 / (1.0 + np.exp(margin))
                positive = margin > raw_threshold
            elif self._tree_weights is not None:  # GBT
                assert self._trees is not None
                leaves = self._trees.leaves(x)
                margin = np.zeros(len(records), dtype=np.float64)
                for t, weight in enumerate(self._tree_weights):  # summed in tree order, as Spark does
                    margin += weight * self._trees.values[leaves[:, t], 0]
                probability = 1.0 - 1.0 / (1.0 + np.exp(2.0 * margin))
                positive = margin > 0.0
            else:  # decision tree (one tree) or random forest
                assert self._trees is not None
                leaves = self._trees.leaves(x)
                if self.algorithm == "DecisionTreeClassifier":
                    votes = self._trees.values[leaves[:, 0]]
                else:  # Spark: each tree's leaf counts normalised, then summed in tree order
                    votes = np.zeros((len(records), 2), dtype=np.float64)
                    for t in range(leaves.shape[1]):
                        counts = self._trees.values[leaves[:, t]]
                        total = counts[:, :1] + counts[:, 1:]
                        votes += np.divide(counts, total, out=np.zeros_like(counts), where=total != 0)
                total = votes[:, 0] + votes[:, 1]
                probability = np.divide(votes[:, 1], total, out=np.zeros(len(records)), where=total != 0)
                positive = votes[:, 1] > votes[:, 0]
        return probability, positive, unseen

    def predict_proba(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """P(">50K") for each record, float64, shape (len(records),)."""
        return self._evaluate(records)[0]

    def score(self, records: Sequence[Mapping[str, Any]]) -> list[Scored]:
        """Probability, label and unseen categorical fields for each record, in order."""
        probability, positive, unseen = self._evaluate(records)
        return [
            Scored(float(p), self.positive_label if pos else self.negative_label, fields)
            for p, pos, fields in zip(probability, positive, unseen, strict=True)
        ]
