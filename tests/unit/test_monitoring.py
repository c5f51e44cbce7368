"""The alert rules in monitoring/ (issue 22, item 2): well-formed rule groups, each rule reading only
metrics the control plane exports (controlplane/metrics.py and api/metrics.py), with a summary. promtool
does not install here from PyPI; this is the check that runs."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from controlplane.config import REPO_ROOT

RULES = Path(REPO_ROOT, "monitoring", "prometheus", "alerts.yml")
SOURCES = [Path(REPO_ROOT, "controlplane", "metrics.py"), Path(REPO_ROOT, "controlplane", "api", "metrics.py")]
PROMQL_WORDS = {"sum", "max", "min", "by", "on", "rate", "unless", "and", "or", "avg", "count"}


def exported() -> set[str]:
    names = set()
    for source in SOURCES:
        names |= set(re.findall(r'"(cds_[a-z_]+)"', source.read_text()))
    # a histogram's series: _count, _sum, _bucket
    return names | {f"{n}_{suffix}" for n in names for suffix in ("count", "sum", "bucket")}


def test_the_alert_rules_read_only_exported_metrics():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {"CdsQueueBackingUp", "CdsJobsFailing", "CdsWarmPoolEmpty"}
    known = exported()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["annotations"]["summary"] and rule["labels"]["severity"] in ("page", "ticket")
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', "", rule["expr"])  # selectors, strings, ranges
        assert expr.count("(") == expr.count(")"), rule["alert"]
        used = {w for w in re.findall(r"[a-z_][a-z0-9_]*", expr) if w not in PROMQL_WORDS}
        used -= {"queue", "playbook", "plan"}  # labels in by/on clauses
        assert used and used <= known, (rule["alert"], used - known)
