"""The alert rules Argo CD deploys (manifests/<env>/prometheusrule.yaml): valid for promtool, and each
alert unit-tested with ``promtool test rules`` on synthetic series shaped like what the PodMonitors
scrape (predictor series labelled ``model_version`` only, queue-proxy's request count labelled by
revision and status code, the collector's ``flywheel_arm_info`` naming each arm's version), firing
where it should and not where it should not."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from model.core.config import PROJECT_ROOT
from model.deploy import manifests
from model.deploy.monitoring_checks import check_prometheusrule, promtool

MANIFESTS = PROJECT_ROOT / "manifests"
ENVS = manifests.ENVIRONMENTS
ALERTS = {
    "FlywheelP99LatencyHigh",
    "FlywheelErrorRateHigh",
    "FlywheelFallbackRateHigh",
    "FlywheelThumbsDownRateHigh",
    "FlywheelArmWithoutRequests",
    "FlywheelArmsUnknown",
    "FlywheelCollectorNotScraped",
    "FlywheelPredictorNotScraped",
    "FlywheelQueueProxyNotScraped",
    "FlywheelCollectorStoreDown",
    "FlywheelCollectorSpoolFilling",
}
PREDICTOR_SERIES = (
    "flywheel_requests_total",
    "flywheel_request_duration",
    "flywheel_fallbacks",
    "flywheel_predictions",
)
MINUTES = 90  # every synthetic series has a sample a minute for this long


def _rule(env: str) -> dict:
    return yaml.safe_load((MANIFESTS / env / "prometheusrule.yaml").read_text())


def run_promtool_tests(tmp_path: Path, rule: dict, tests: list[dict]) -> None:
    """``promtool test rules`` on ``rule``'s groups; fails with promtool's report unless every test passes."""
    groups = copy.deepcopy(rule["spec"])
    for group in groups["groups"]:  # promtool compares annotations too; their text is not under test
        for r in group["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    done = subprocess.run(
        [promtool(), "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def revision(version: str) -> str:
    """The Knative revision serving ``version`` in these tests (KServe names them <isvc>-predictor-<n>)."""
    return f"intent-predictor-{int(version):05d}"


class Series:
    """Synthetic series for one environment, labelled as the PodMonitors' targets label them (the
    predictor's and queue-proxy's with their pod's revision, from podTargetLabels)."""

    def __init__(self, env: str):
        self.ns = manifests.namespace_of(manifests.isvc_path(PROJECT_ROOT, env))
        self.items: list[dict] = []

    def add(
        self,
        name: str,
        labels: dict,
        per_minute: float = 0,
        start: float = 0,
        job: str = "flywheel-intent",
        values: str = "",
    ):
        target = {"job": f"{self.ns}/{job}", "pod": "flywheel-collector-1"}
        if job != "flywheel-collector":  # a revision's pod: the version's, else the first
            rev = revision(labels.get("model_version", "1"))
            target = {**target, "pod": f"{rev}-deployment-7d9c-x2k4p", "serving_knative_dev_revision": rev}
        merged = {"namespace": self.ns, **target, **labels}
        text = ", ".join(f'{k}="{v}"' for k, v in merged.items())
        values = values or (f"{start}+{per_minute}x{MINUTES}" if per_minute else f"{start}x{MINUTES}")
        self.items.append({"series": f"{name}{{{text}}}", "values": values})
        return self

    def proxied(self, version: str, code: int, per_minute: float = 0, values: str = ""):
        """queue-proxy's count of requests to ``version``'s revision answered ``code`` (its labels as
        exported: otelhttp's attributes and OpenTelemetry's scope; see tests/servers/test_canary_prometheus.py)."""
        labels = {
            "http_request_method": "POST",
            "http_response_status_code": str(code),
            "kn_route_tag": "kn:disabled",
            "network_protocol_name": "http",
            "network_protocol_version": "1.1",
            "otel_scope_name": "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
            "otel_scope_version": "0.64.0",
            "server_address": f"intent-predictor.{self.ns}.svc.cluster.local",
            "url_scheme": "http",
            "container": "queue-proxy",
            "endpoint": "http-usermetric",
        }
        pod = f"{revision(version)}-deployment-7d9c-x2k4p"
        target = {"pod": pod, "serving_knative_dev_revision": revision(version)}
        name = "http_server_request_duration_seconds_count"
        return self.add(name, {**labels, **target}, per_minute, job="flywheel-queue-proxy", values=values)

    def arm(self, arm: str, version: str, pod: str = "flywheel-collector-1"):
        labels = {"arm": arm, "model_version": version, "pod": pod}
        return self.add("flywheel_arm_info", labels, start=1, job="flywheel-collector")

    def up(self, job: str, value: int = 1):
        return self.add("up", {}, start=value, job=job)

    def served(
        self, version: str, per_minute: int, errors: int = 0, slow: int = 0, fallbacks: int = 0, unanswered: int = 0
    ):
        """``per_minute`` answered requests of ``version``, ``errors`` more failing in the model (500),
        ``unanswered`` more failing outside it (502 from queue-proxy), ``slow`` of them over 100 ms."""
        v = {"model_version": version}
        self.add("flywheel_requests_total", {**v, "code": "200"}, per_minute)
        self.proxied(version, 200, per_minute)
        if errors:
            self.add("flywheel_requests_total", {**v, "code": "500"}, errors)
            self.proxied(version, 500, errors)
        if unanswered:
            self.proxied(version, 502, unanswered)
        for le, count in (("0.1", per_minute - slow), ("0.5", per_minute), ("+Inf", per_minute)):
            self.add("flywheel_request_duration_seconds_bucket", {**v, "le": le}, count)
        self.add("flywheel_predictions_total", {**v, "intent": "order_status"}, per_minute)
        return self.add("flywheel_fallbacks_total", v, fallbacks) if fallbacks else self

    def rated(self, version: str, arm: str, up: float, down: float):
        for kind, per_minute in (("thumbs_up", up), ("thumbs_down", down)):
            labels = {"kind": kind, "arm": arm, "model_version": version}
            self.add("flywheel_feedback_total", labels, per_minute, job="flywheel-collector")
        return self


def _test(s: Series, checks: list[dict]) -> dict:
    return {"interval": "1m", "input_series": s.items, "alert_rule_test": checks}


def healthy_collector(s: Series) -> Series:
    s.up("flywheel-collector").up("flywheel-intent").up("flywheel-queue-proxy")
    return s.arm("stable", "1").arm("canary", "2")


def _expect(at: str, alert: str, *fired: dict, ns: str = "", severity: str = "") -> dict:
    """An alert_rule_test entry: ``alert`` fires at ``at`` exactly for the label sets ``fired`` (none: it does not)."""
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": {"namespace": ns, "severity": severity, **labels}} for labels in fired],
    }


@pytest.mark.real("promtool")
def test_prometheus_rules_pass_promtool_and_broken_ones_do_not():
    for env in ENVS:
        rule = _rule(env)
        assert check_prometheusrule(rule, Path("r.yaml")) == []
        assert {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]} == ALERTS
        for r in (r for g in rule["spec"]["groups"] for r in g["rules"]):
            # the predictor's series have no arm label: a rule on them groups by version and joins the arm
            if any(name in r["expr"] for name in PREDICTOR_SERIES):
                assert "by (arm" not in r["expr"] and "flywheel_arm_info" in r["expr"], r["alert"]
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["expr"] = "rate(flywheel_requests_total[5m]"
    assert any("promtool" in e for e in check_prometheusrule(broken, Path("r.yaml")))
    unknown = copy.deepcopy(rule)
    unknown["spec"]["groups"][0]["rules"][0]["fr"] = "5m"  # the CRD's schema refuses what promtool never sees
    assert any("'fr' was unexpected" in e for e in check_prometheusrule(unknown, Path("r.yaml")))


@pytest.mark.real("promtool")
@pytest.mark.parametrize("env", ENVS)
def test_a_bad_canary_fires_per_arm_and_a_healthy_stable_does_not(tmp_path, env):
    """Stable v1 healthy; canary v2 with 5% errors, 10% slow answers, 40% hand-offs and 40% thumbs-down."""
    s = healthy_collector(Series(env))
    s.arm("stable", "1", pod="flywheel-collector-2").arm("canary", "2", pod="flywheel-collector-2")  # two replicas
    s.served("1", 6000, fallbacks=600).served("2", 570, errors=30, slow=60, fallbacks=240)
    s.rated("1", "stable", up=60, down=6).rated("2", "canary", up=6, down=4)
    s.rated("unknown", "unknown", up=0, down=50)  # feedback naming no answer: no arm, no alert
    canary, ns = {"arm": "canary", "model_version": "2"}, s.ns
    checks = [
        _expect("20m", "FlywheelErrorRateHigh", canary, ns=ns, severity="critical"),
        _expect("3m", "FlywheelErrorRateHigh", ns=ns, severity="critical"),  # not before its `for:`
        _expect("20m", "FlywheelP99LatencyHigh", canary, ns=ns, severity="warning"),
        _expect("20m", "FlywheelFallbackRateHigh", ns=ns, severity="warning"),  # for: 30m
        _expect("45m", "FlywheelFallbackRateHigh", canary, ns=ns, severity="warning"),
        _expect("45m", "FlywheelThumbsDownRateHigh", canary, ns=ns, severity="warning"),
    ]
    checks += [
        _expect("60m", alert)
        for alert in ("FlywheelArmWithoutRequests", "FlywheelArmsUnknown")
        + ("FlywheelCollectorNotScraped", "FlywheelPredictorNotScraped", "FlywheelQueueProxyNotScraped")
    ]
    run_promtool_tests(tmp_path, _rule(env), [_test(s, checks)])


@pytest.mark.real("promtool")
@pytest.mark.parametrize("env", ENVS)
def test_errors_outside_the_model_fire_the_error_alert(tmp_path, env):
    """Canary v2's model answers all it gets without an error; 5% of its requests get queue-proxy's 502
    (the model container down), which only queue-proxy counts. A 400 (bad input) is no error."""
    s = healthy_collector(Series(env)).served("1", 6000).served("2", 570, unanswered=30)
    s.proxied("1", 400, 600)
    canary = {"arm": "canary", "model_version": "2"}
    checks = [
        _expect("20m", "FlywheelErrorRateHigh", canary, ns=s.ns, severity="critical"),
        _expect("3m", "FlywheelErrorRateHigh", ns=s.ns, severity="critical"),
    ]
    run_promtool_tests(tmp_path, _rule(env), [_test(s, checks)])


@pytest.mark.real("promtool")
@pytest.mark.parametrize("env", ENVS)
def test_the_dashboards_error_panel_counts_queue_proxys_5xx(tmp_path, env):
    """The panel's query, run on the series above: the canary's 5% of 502s, by arm (none on stable)."""
    board = yaml.safe_load((MANIFESTS / env / "dashboard.yaml").read_text())
    panels = json.loads(next(iter(board["data"].values())))["panels"]
    [expr] = [p["targets"][0]["expr"] for p in panels if p["title"].startswith("Error rate")]
    s = healthy_collector(Series(env)).served("1", 6000).served("2", 570, unanswered=30)
    s.proxied("1", 400, 600)
    canary = {"namespace": s.ns, "model_version": "2", "arm": "canary"}
    labels = "{" + ", ".join(f'{k}="{v}"' for k, v in canary.items()) + "}"
    check = {"expr": expr, "eval_time": "20m", "exp_samples": [{"labels": labels, "value": 0.05}]}
    test = {"interval": "1m", "input_series": s.items, "promql_expr_test": [check]}
    run_promtool_tests(tmp_path, _rule(env), [test])


@pytest.mark.real("promtool")
def test_a_crashed_model_keeps_its_revisions_errors_on_its_version(tmp_path):
    """Canary v2's model is OOM-killed at 10m and never comes back: its series go stale, and every
    request to its revision since is queue-proxy's 502. The revision's version is the one its model
    reported last in the hour, so the errors stay the canary's."""
    s = healthy_collector(Series("staging")).served("1", 6000)
    v2 = {"model_version": "2"}
    s.add("flywheel_requests_total", {**v2, "code": "200"}, values="0+570x10 stale")
    s.proxied("2", 200, values=f"0+570x10 5700x{MINUTES - 10}")
    s.proxied("2", 502, values=f"0x10 0+570x{MINUTES - 10}")
    canary = {"arm": "canary", "model_version": "2"}
    checks = [
        _expect("9m", "FlywheelErrorRateHigh", ns=s.ns, severity="critical"),
        _expect("20m", "FlywheelErrorRateHigh", canary, ns=s.ns, severity="critical"),
        _expect("65m", "FlywheelErrorRateHigh", canary, ns=s.ns, severity="critical"),
        # an hour after its model's last report the revision has no version, and no alert names it
        _expect("75m", "FlywheelErrorRateHigh", ns=s.ns, severity="critical"),
    ]
    run_promtool_tests(tmp_path, _rule("staging"), [_test(s, checks)])


@pytest.mark.real("promtool")
def test_collector_replicas_that_disagree_after_a_promotion_break_no_rule(tmp_path):
    """For a minute after a merge the collector's replicas may name different arms for one version
    (each pod's kubelet refreshes the ConfigMap on its own): the join keeps one arm per version, so the
    rules still evaluate (a join on two right-hand series per version would fail them, and promtool with it)."""
    s = Series("production").up("flywheel-collector").up("flywheel-intent")
    s.arm("stable", "1").arm("canary", "2")  # replica 1 still names the canary
    s.arm("stable", "2", pod="flywheel-collector-2")  # replica 2 already has the promotion of v2
    s.served("2", 600).served("1", 570, errors=30, slow=60)  # v1, still draining, fails
    stable = {"arm": "stable", "model_version": "1"}
    checks = [
        _expect("20m", "FlywheelErrorRateHigh", stable, ns=s.ns, severity="critical"),
        _expect("20m", "FlywheelP99LatencyHigh", stable, ns=s.ns, severity="warning"),
        _expect("20m", "FlywheelArmWithoutRequests"),
    ]
    run_promtool_tests(tmp_path, _rule("production"), [_test(s, checks)])


@pytest.mark.real("promtool")
@pytest.mark.parametrize("env", ENVS)
def test_an_arm_without_requests_fires_after_15_minutes(tmp_path, env):
    s = Series(env).up("flywheel-collector").up("flywheel-intent").arm("stable", "1").arm("canary", "3")
    s.served("1", 600)  # v3, the canary, never shows up: not ready, not scraped, or no traffic
    missing = {"arm": "canary", "model_version": "3"}
    checks = [
        _expect("10m", "FlywheelArmWithoutRequests", ns=s.ns, severity="warning"),
        _expect("20m", "FlywheelArmWithoutRequests", missing, ns=s.ns, severity="warning"),
    ]
    run_promtool_tests(tmp_path, _rule(env), [_test(s, checks)])


@pytest.mark.real("promtool")
@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("collector_up", [None, 0], ids=["no-target", "target-down"])
def test_a_collector_that_is_not_scraped_fires_the_absent_alerts(tmp_path, env, collector_up):
    """Without flywheel_arm_info no per-arm alert can fire (the canary's errors go unseen): that is alerted on."""
    s = Series(env).up("flywheel-intent").served("1", 6000).served("2", 570, errors=30)
    if collector_up is not None:
        s.up("flywheel-collector", collector_up)
    ns = s.ns
    checks = [
        _expect("5m", "FlywheelArmsUnknown", ns=ns, severity="critical"),  # for: 10m
        _expect("15m", "FlywheelArmsUnknown", {}, ns=ns, severity="critical"),
        _expect("15m", "FlywheelCollectorNotScraped", {}, ns=ns, severity="critical"),
        _expect("15m", "FlywheelPredictorNotScraped", ns=ns, severity="critical"),
        _expect("15m", "FlywheelErrorRateHigh", ns=ns, severity="critical"),  # blind without the arms
    ]
    run_promtool_tests(tmp_path, _rule(env), [_test(s, checks)])


@pytest.mark.real("promtool")
def test_no_predictor_target_up_fires(tmp_path):
    s = healthy_collector(Series("staging"))
    s.items = [i for i in s.items if not i["series"].startswith("up{") or "flywheel-collector" in i["series"]]
    s.up("flywheel-intent", 0)
    checks = [
        _expect("15m", "FlywheelPredictorNotScraped", {}, ns=s.ns, severity="critical"),
        _expect("15m", "FlywheelCollectorNotScraped", ns=s.ns, severity="critical"),
    ]
    run_promtool_tests(tmp_path, _rule("staging"), [_test(s, checks)])


@pytest.mark.real("promtool")
@pytest.mark.parametrize("queue_proxy_up", [None, 0], ids=["no-target", "metrics-off"])
def test_no_queue_proxy_target_up_fires(tmp_path, queue_proxy_up):
    """No target (no PodMonitor), or one that never answers (Knative's request-metrics-protocol: none)."""
    s = healthy_collector(Series("staging"))
    s.items = [i for i in s.items if not i["series"].startswith("up{") or "flywheel-queue-proxy" not in i["series"]]
    if queue_proxy_up is not None:
        s.up("flywheel-queue-proxy", queue_proxy_up)
    checks = [
        _expect("5m", "FlywheelQueueProxyNotScraped", ns=s.ns, severity="critical"),  # for: 10m
        _expect("15m", "FlywheelQueueProxyNotScraped", {}, ns=s.ns, severity="critical"),
        _expect("15m", "FlywheelPredictorNotScraped", ns=s.ns, severity="critical"),
    ]
    run_promtool_tests(tmp_path, _rule("staging"), [_test(s, checks)])


@pytest.mark.real("promtool")
def test_thumbs_down_needs_enough_ratings(tmp_path):
    """50% thumbs-down on 12 ratings an hour is noise: the rule wants at least 20 in the hour."""
    s = healthy_collector(Series("staging")).served("1", 600).served("2", 60)
    s.rated("2", "canary", up=0.1, down=0.1)
    checks = [_expect("60m", "FlywheelThumbsDownRateHigh", ns=s.ns, severity="warning")]
    run_promtool_tests(tmp_path, _rule("staging"), [_test(s, checks)])


SPOOL_CAP = 268435456  # collect.spool_max_bytes, as the collector exports it


@pytest.mark.real("promtool")
@pytest.mark.parametrize("env", ENVS)
def test_a_store_outage_warns_and_a_filling_spool_is_critical(tmp_path, env):
    """Replica 1 cannot reach its store from the start, its spool filling by 1/95 of the cap a minute
    (49.5% at 47m, 50.5% at 48m); replica 2 writes to the store. Series as the collector's /metrics has them."""
    s = healthy_collector(Series(env)).served("1", 600).served("2", 60)
    down, fine = {"pod": "flywheel-collector-1"}, {"pod": "flywheel-collector-2"}
    for pod, up, per_minute in ((down, 0, SPOOL_CAP / 95), (fine, 1, 0)):
        s.add("flywheel_collector_store_up", pod, start=up, job="flywheel-collector")
        s.add("flywheel_collector_spool_max_bytes", pod, start=SPOOL_CAP, job="flywheel-collector")
        s.add("flywheel_collector_spool_bytes", pod, per_minute=per_minute, job="flywheel-collector")
    ns = s.ns
    checks = [
        _expect("4m", "FlywheelCollectorStoreDown", ns=ns, severity="warning"),  # for: 5m
        _expect("6m", "FlywheelCollectorStoreDown", down, ns=ns, severity="warning"),
        _expect("47m", "FlywheelCollectorSpoolFilling", ns=ns, severity="critical"),
        _expect("49m", "FlywheelCollectorSpoolFilling", ns=ns, severity="critical"),  # over half since 48m, for: 2m
        _expect("51m", "FlywheelCollectorSpoolFilling", down, ns=ns, severity="critical"),
    ]
    run_promtool_tests(tmp_path, _rule(env), [_test(s, checks)])
