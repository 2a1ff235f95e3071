"""The release gate: may the challenger ship?

Two checks, both on the *held-out* data: an absolute quality bar, and "no worse than the champion"
(the model now aliased ``prod``) by more than a tolerance, the champion having been re-scored on the
same held-out data in the same training run. Modes:

* ``enforce`` (default): a failed check rejects the challenger; the release tasks are skipped.
* ``dry_run``: checks run and are recorded, but the challenger passes regardless (and the record says so).
* ``disabled``: no checks run; the record says the gate was disabled, so it can never be bypassed silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum

PROD_ALIAS = "prod"  # the registry alias of the model in production: the champion


class GateMode(StrEnum):
    ENFORCE = "enforce"
    DRY_RUN = "dry_run"
    DISABLED = "disabled"


@dataclass(frozen=True)
class GatePolicy:
    mode: GateMode = GateMode.ENFORCE
    metric: str = "areaUnderROC"
    min_value: float = 0.88
    champion_tolerance: float = 0.005

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", GateMode(self.mode))
        if not 0.0 <= self.champion_tolerance <= 1.0:
            raise ValueError(f"champion_tolerance={self.champion_tolerance} must be within 0..1")


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateDecision:
    mode: str
    approved: bool  # may the release tasks run?
    checks_passed: bool  # did every check pass (True when disabled: nothing failed)
    metric: str
    challenger_value: float | None
    min_value: float
    champion_version: str | None
    champion_value: float | None
    champion_tolerance: float
    checks: list[CheckResult] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["checks"] = [asdict(c) for c in self.checks]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> GateDecision:
        return cls(**{**data, "checks": [CheckResult(**c) for c in data.get("checks", [])]})


def decide(
    policy: GatePolicy,
    challenger_value: float | None,
    champion_version: str | None = None,
    champion_value: float | None = None,
) -> GateDecision:
    """Apply the gate policy to the challenger's (and champion's) held-out metric."""
    common = dict(
        mode=policy.mode.value,
        metric=policy.metric,
        challenger_value=challenger_value,
        min_value=policy.min_value,
        champion_version=champion_version,
        champion_value=champion_value,
        champion_tolerance=policy.champion_tolerance,
    )
    if policy.mode is GateMode.DISABLED:
        return GateDecision(
            approved=True,
            checks_passed=True,
            checks=[],
            reason="gate DISABLED for this run: no quality checks were applied",
            **common,
        )
    metric = f"held-out {policy.metric}"
    checks: list[CheckResult] = []
    if challenger_value is None:
        checks.append(CheckResult("quality_bar", False, f"challenger has no {metric}"))
    else:
        passed = challenger_value >= policy.min_value
        checks.append(
            CheckResult(
                "quality_bar",
                passed,
                f"challenger {metric} {challenger_value:.4f} {'>=' if passed else '<'} bar {policy.min_value:.4f}",
            )
        )
    if champion_version is None:
        checks.append(CheckResult("champion", True, "no model is aliased 'prod' yet: nothing to compare"))
    elif champion_value is None:
        checks.append(
            CheckResult(
                "champion",
                False,
                f"champion v{champion_version} has no {metric} on this run's held-out data",
            )
        )
    elif challenger_value is not None:
        floor = champion_value - policy.champion_tolerance
        passed = challenger_value >= floor
        checks.append(
            CheckResult(
                "champion",
                passed,
                f"challenger {metric} {challenger_value:.4f} {'>=' if passed else '<'} champion "
                f"v{champion_version} {champion_value:.4f} - tolerance {policy.champion_tolerance:.4f} "
                f"= {floor:.4f}",
            )
        )
    failed = [c for c in checks if not c.passed]
    checks_passed = not failed
    if checks_passed:
        reason = "approved: " + "; ".join(c.detail for c in checks)
    elif policy.mode is GateMode.DRY_RUN:
        reason = "DRY RUN, would have rejected: " + "; ".join(c.detail for c in failed)
    else:
        reason = "rejected: " + "; ".join(c.detail for c in failed)
    return GateDecision(
        approved=checks_passed or policy.mode is GateMode.DRY_RUN,
        checks_passed=checks_passed,
        checks=checks,
        reason=reason,
        **common,
    )


def stale_champion(compared: str | None, current: str | None, challenger: str) -> str | None:
    """Why promoting ``challenger`` now would bypass the gate, or None if it would not.

    The gate compared the challenger with the version that was ``prod`` when training ran. If another
    run moved ``prod`` since, that comparison says nothing about the model being replaced now. (A
    ``current`` equal to the challenger is a retry of a promotion that already happened.)
    """
    if current in (compared, challenger):
        return None
    return (
        f"prod moved to version {current or 'none'} after this run's gate compared the challenger "
        f"(version {challenger}) with version {compared or 'none (no prod model then)'}; "
        "not promoting. Trigger a new run so the gate compares against the current prod model."
    )
