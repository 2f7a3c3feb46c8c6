"""The manifests Argo CD syncs: valid against KServe's SDK models, Kubernetes' schemas, promtool and
Argo CD's documented fields; and each checker refuses what it should (so a pass means something)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from model.core.config import PROJECT_ROOT
from model.core.errors import FlywheelError
from model.core.kserve_sdk import kserve
from model.deploy import manifests
from model.deploy.argocd_checks import check_argocd
from model.deploy.checks import check_manifests
from model.deploy.kubernetes_checks import check_core, check_inferenceservice, kserve_build, kserve_errors
from model.deploy.monitoring_checks import check_dashboard, check_prometheusrule, promtool

MANIFESTS = PROJECT_ROOT / "manifests"
ENVS = manifests.ENVIRONMENTS


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _isvc(env: str) -> dict:
    return _docs(MANIFESTS / env / "inferenceservice.yaml")[0]


@pytest.mark.real("promtool")
def test_all_manifests_are_valid():
    assert check_manifests(PROJECT_ROOT) == []


@pytest.mark.parametrize("env", ENVS)
def test_inferenceservice_deserialises_into_kserve_sdk_models(env):
    doc = _isvc(env)
    assert kserve_errors(doc) == []
    isvc = kserve_build(doc)
    assert isinstance(isvc, kserve.V1beta1InferenceService)
    predictor = isvc.spec.predictor
    container = predictor.containers[0]
    assert container.name == manifests.CONTAINER
    assert predictor.security_context.run_as_non_root is True
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]
    assert container.readiness_probe.http_get.path == "/v2/health/ready"
    assert container.resources.limits["memory"] and container.resources.requests["cpu"]
    assert predictor.max_replicas >= predictor.min_replicas >= 1
    assert {e.name for e in container.env} >= {"STORAGE_URI", "FLYWHEEL_MODEL_SHA256", "FLYWHEEL_MODEL_VERSION"}
    assert predictor.canary_traffic_percent is None  # no canary runs in the committed state
    assert predictor.logger.mode == "all"
    assert f"flywheel-collector.flywheel-{env}.svc" in predictor.logger.url
    assert isvc.metadata.annotations["serving.kserve.io/deploymentMode"] == "Serverless"


def test_required_fields_are_enforced_by_the_sdk_models():
    doc = copy.deepcopy(_isvc("staging"))
    del doc["spec"]["predictor"]["containers"][0]["readinessProbe"]["httpGet"]["port"]
    errors = check_inferenceservice(doc, Path("isvc.yaml"), "staging")
    assert any("V1HTTPGetAction" in e and "port" in e for e in errors), errors


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["spec"]["predictor"].update(canaryTraficPercent=10), "canaryTraficPercent: unknown field"),
        (lambda d: d["spec"]["predictor"].update(canaryTrafficPercent="10"), "expected int"),
        (lambda d: d["spec"]["predictor"].update(canaryTrafficPercent=True), "expected int"),  # YAML's true: no number
        (lambda d: d["spec"]["predictor"]["containers"][0].pop("livenessProbe"), "lacks livenessProbe"),
        (lambda d: d["metadata"]["annotations"].update({"serving.kserve.io/enable-tag-routing": True}), "expected str"),
        (
            lambda d: d["spec"]["predictor"]["containers"][0].update(imagePullPolicy=None, readinessprobe={}),
            "readinessprobe: unknown field",
        ),
        (
            lambda d: d["spec"]["predictor"]["containers"][0]["env"].append({"name": "X", "valu": "1"}),
            "valu: unknown field",
        ),
        (lambda d: d["spec"]["predictor"]["securityContext"].update(runAsNonRoot=False), "runAsNonRoot must be true"),
        (
            lambda d: d["metadata"]["annotations"].update({"serving.kserve.io/deploymentMode": "RawDeployment"}),
            "serverless",
        ),
        (lambda d: d["spec"]["predictor"]["logger"].update(url="http://elsewhere/"), "logger.url"),
    ],
)
def test_inferenceservice_check_refuses(mutate, message):
    doc = copy.deepcopy(_isvc("staging"))
    mutate(doc)
    errors = check_inferenceservice(doc, Path("isvc.yaml"), "staging")
    assert any(message in e for e in errors), errors


def test_core_objects_are_checked_strictly():
    deployment = next(d for d in _docs(MANIFESTS / "staging" / "collector.yaml") if d["kind"] == "Deployment")
    assert check_core(deployment, Path("c.yaml")) == []
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    assert any("resourcez" in e for e in check_core(typo, Path("c.yaml")))
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "two"
    assert check_core(wrong, Path("c.yaml"))
    root = copy.deepcopy(deployment)
    del root["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    assert any("runAsNonRoot" in e for e in check_core(root, Path("c.yaml")))


def test_collector_service_selects_the_deployment_and_the_logger_reaches_it():
    for env in ENVS:
        docs = {d["kind"]: d for d in _docs(MANIFESTS / env / "collector.yaml")}
        pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
        assert docs["Service"]["spec"]["selector"].items() <= pod_labels.items()
        url = _isvc(env)["spec"]["predictor"]["logger"]["url"]
        assert url.startswith(
            f"http://{docs['Service']['metadata']['name']}.{docs['Service']['metadata']['namespace']}.svc"
        )


@pytest.mark.real("promtool")
def test_prometheus_rules_pass_promtool_and_broken_ones_do_not():
    for env in ENVS:
        rule = _docs(MANIFESTS / env / "prometheusrule.yaml")[0]
        assert check_prometheusrule(rule, Path("r.yaml")) == []
        alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
        assert alerts == {
            "FlywheelP99LatencyHigh",
            "FlywheelErrorRateHigh",
            "FlywheelFallbackRateHigh",
            "FlywheelThumbsDownRateHigh",
        }
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["expr"] = "rate(flywheel_requests_total[5m]"
    assert any("promtool" in e for e in check_prometheusrule(broken, Path("r.yaml")))


@pytest.mark.real("promtool")
def test_alerts_fire_on_synthetic_series(tmp_path):
    """promtool's rule unit tests: a canary with 5% errors and slow answers fires; a healthy stable arm does not."""
    rule = _docs(MANIFESTS / "staging" / "prometheusrule.yaml")[0]
    for group in rule["spec"]["groups"]:  # promtool compares annotations too; their text is not under test
        for r in group["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    ns = 'namespace="flywheel-staging"'
    series = []
    for arm, errors, slow in (("stable", 0, 0), ("canary", 5, 90)):
        labels = f'{ns}, arm="{arm}", model_version="{1 if arm == "stable" else 2}"'
        series += [
            {"series": f'flywheel_requests_total{{{labels}, code="200"}}', "values": f"0+{6000 - errors * 60}x30"},
            {"series": f'flywheel_requests_total{{{labels}, code="500"}}', "values": f"0+{errors * 60}x30"},
            {
                "series": f'flywheel_request_duration_seconds_bucket{{{labels}, le="0.1"}}',
                "values": f"0+{6000 - slow * 60}x30",
            },
            {"series": f'flywheel_request_duration_seconds_bucket{{{labels}, le="0.5"}}', "values": "0+6000x30"},
            {"series": f'flywheel_request_duration_seconds_bucket{{{labels}, le="+Inf"}}', "values": "0+6000x30"},
        ]
    canary = {"arm": "canary", "model_version": "2"}
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "20m",
                        "alertname": "FlywheelErrorRateHigh",
                        "exp_alerts": [{"exp_labels": {**canary, "severity": "critical"}}],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "FlywheelP99LatencyHigh",
                        "exp_alerts": [{"exp_labels": {**canary, "severity": "warning"}}],
                    },
                    {"eval_time": "3m", "alertname": "FlywheelErrorRateHigh", "exp_alerts": []},  # not before `for:`
                    {"eval_time": "20m", "alertname": "FlywheelFallbackRateHigh", "exp_alerts": []},
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(tests))
    done = subprocess.run([promtool(), "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


@pytest.mark.real("promtool")
def test_dashboard_queries_parse_and_cover_both_arms():
    for env in ENVS:
        board = _docs(MANIFESTS / env / "dashboard.yaml")[0]
        assert check_dashboard(board, Path("d.yaml")) == []
        assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    bad = copy.deepcopy(board)
    bad["data"]["flywheel-intent.json"] = bad["data"]["flywheel-intent.json"].replace("sum by (arm", "sum by (arm,,", 1)
    assert check_dashboard(bad, Path("d.yaml"))


def test_argocd_objects(tmp_path):
    assert check_argocd(MANIFESTS / "argocd", PROJECT_ROOT) == []
    for env in ENVS:
        app = _docs(MANIFESTS / "argocd" / f"{env}.yaml")[0]
        assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
        assert app["spec"]["source"]["path"] == f"manifests/{env}"
    project = _docs(MANIFESTS / "argocd" / "project.yaml")[0]
    assert {d["namespace"] for d in project["spec"]["destinations"]} == {"flywheel-staging", "flywheel-production"}
    # refusals: an unknown field, a third namespace, a wildcard repository
    folder = tmp_path / "argocd"
    shutil.copytree(MANIFESTS / "argocd", folder)
    (tmp_path / "manifests").mkdir()
    for env in ENVS:
        (tmp_path / "manifests" / env).mkdir()
    text = (folder / "staging.yaml").read_text()
    (folder / "staging.yaml").write_text(text.replace("selfHeal: true", "selfHeal: true\n      selfheal: true"))
    p = folder / "project.yaml"
    p.write_text(
        p.read_text()
        .replace(
            "    - server: https://kubernetes.default.svc\n      namespace: flywheel-production",
            "    - server: https://kubernetes.default.svc\n      namespace: flywheel-production\n"
            "    - server: '*'\n      namespace: '*'",
        )
        .replace("    - https://github.com/flywheel-mlops/flywheel.git", "    - '*'")
    )
    errors = check_argocd(folder, tmp_path)
    assert any("selfheal: unknown field" in e for e in errors), errors
    assert any("must allow exactly" in e for e in errors), errors
    assert any("limited to this one repository" in e for e in errors), errors


@pytest.mark.parametrize("env", ENVS)
def test_round_trip_keeps_the_file_byte_for_byte(env):
    path = MANIFESTS / env / "inferenceservice.yaml"
    assert manifests.dump(manifests.load(path)) == path.read_text()


def test_rollout_edit_changes_only_rollout_lines(tmp_path):
    path = MANIFESTS / "staging" / "inferenceservice.yaml"
    doc = manifests.load(path)
    v1 = manifests.ModelRef(1, "s3://models/flywheel-intent/1/artifact", "a" * 64)
    v2 = manifests.ModelRef(2, "s3://models/flywheel-intent/2/artifact", "b" * 64)
    first = manifests.start_canary(manifests.read_rollout(path, doc), v1, 10, path)
    assert first == manifests.Rollout(stable=v1)  # the first release has no stable to split with
    text = manifests.write_rollout(path, doc, first)
    doc = manifests.load(path, text)
    canary = manifests.start_canary(manifests.read_rollout(path, doc), v2, 10, path)
    text2 = manifests.write_rollout(path, doc, canary)
    old, new = text.splitlines(), text2.splitlines()
    added = [line for line in new if line not in old]
    removed = [line for line in old if line not in new]
    assert removed == [
        '            value: "s3://models/flywheel-intent/1/artifact"',
        f'            value: "{"a" * 64}"',
        '            value: "1"',
    ]
    assert [a.strip() for a in added] == [
        'flywheel.dev/canary-version: "2"',
        'flywheel.dev/canary-storage-uri: "s3://models/flywheel-intent/2/artifact"',
        f'flywheel.dev/canary-sha256: "{"b" * 64}"',
        "canaryTrafficPercent: 10 # share of requests on the canary; removed when it is promoted or rolled back",
        'value: "s3://models/flywheel-intent/2/artifact"',
        f'value: "{"b" * 64}"',
        'value: "2"',
    ]
    assert "# Knative resolves the tag to a digest" in text2  # comments survive
    state = manifests.read_rollout(path, manifests.load(path, text2))
    assert (state.stable, state.canary, state.canary_percent) == (v1, v2, 10)
    back = manifests.write_rollout(path, manifests.load(path, text2), manifests.roll_back(state, path))
    assert back == text  # rollback of a canary is exactly the state before it


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace("    maxReplicas: 3\n", "    maxReplicas: 3\n    canaryTrafficPercent: 20\n"),
            "no flywheel.dev/canary-* annotations",
        ),
        (
            lambda t: t.replace('flywheel.dev/stable-version: ""', 'flywheel.dev/stable-version: "3"'),
            "must be set together",
        ),
        (lambda t: re.sub(r"\n *flywheel.dev/stable-version: \"\"", "", t), "stable-version is missing"),
        (
            lambda t: t.replace('          - name: FLYWHEEL_MODEL_SHA256\n            value: ""\n', ""),
            "lacks env FLYWHEEL_MODEL_SHA256",
        ),
        (
            lambda t: t.replace(
                '          - name: STORAGE_URI\n            value: ""',
                '          - name: STORAGE_URI\n            value: "s3://x/y"',
            ),
            "disagrees",
        ),
        (lambda t: t.replace("spec:\n  predictor:", "spec:\n  predictr:"), "spec.predictor is missing"),
        (lambda t: t + "  : [\n", "cannot read YAML"),
    ],
)
def test_hand_edited_inconsistent_manifest_is_named(edit, message):
    path = MANIFESTS / "staging" / "inferenceservice.yaml"
    with pytest.raises(FlywheelError, match=re.escape(message)) as err:
        manifests.read_rollout(path, manifests.load(path, edit(path.read_text())))
    assert str(path) in str(err.value) or "cannot read YAML" in str(err.value)


def test_dockerfile_is_pinned_and_non_root():
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(re.search(r"@sha256:[0-9a-f]{64}$", f) for f in froms), froms
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert 'ENTRYPOINT ["flywheel"]' in text
    for env in ENVS:  # the manifests run the two subcommands of this image as the same non-root user
        assert _isvc(env)["spec"]["predictor"]["containers"][0]["args"][0] == "serve"
        deployment = next(d for d in _docs(MANIFESTS / env / "collector.yaml") if d["kind"] == "Deployment")
        assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][0] == "collect"
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(users[-1].split(":")[0])
