"""The alert rules and the Grafana dashboard in monitoring/ (issue 22, item 2): well-formed, each rule and
panel reading only metrics the control plane exports (controlplane/metrics.py and api/metrics.py), a
rule with its summary and severity. promtool does not install here from PyPI; this is the check that
runs."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from controlplane.config import REPO_ROOT

RULES = Path(REPO_ROOT, "monitoring", "prometheus", "alerts.yml")
SOURCES = [Path(REPO_ROOT, "controlplane", "metrics.py"), Path(REPO_ROOT, "controlplane", "api", "metrics.py")]
DASHBOARD = Path(REPO_ROOT, "monitoring", "grafana", "cloud-desktop.json")
PROMQL_WORDS = {"sum", "max", "min", "by", "on", "rate", "increase", "unless", "and", "or", "avg", "count",
                "histogram_quantile", "le"}
LABELS = {"queue", "playbook", "plan", "status", "endpoint", "outcome", "policy", "action", "service"}  # by/on


def exported(with_series: bool = True) -> set[str]:
    names = set()
    for source in SOURCES:
        names |= set(re.findall(r'"(cds_[a-z_]+)"', source.read_text()))
    if not with_series:
        return names
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
        used = metrics_in(rule["expr"])
        assert used and used <= known, (rule["alert"], used - known)


def metrics_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (its selectors, strings and ranges taken out)."""
    bare = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', "", expr)
    assert bare.count("(") == bare.count(")"), expr
    return {w for w in re.findall(r"[a-z_][a-z0-9_]*", bare) if w not in PROMQL_WORDS | LABELS}


def test_the_dashboards_panels_read_only_exported_metrics():
    import json
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    known = exported()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = metrics_in(target["expr"])
            assert used and used <= known, (panel["title"], used - known)
    shown = {name.removesuffix("_bucket") for p in dashboard["panels"] for t in p["targets"]
             for name in metrics_in(t["expr"])}
    assert shown >= exported(with_series=False), exported(with_series=False) - shown  # every family has a panel
