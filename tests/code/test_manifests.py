"""The manifests Argo CD syncs: valid against KServe's SDK models, Kubernetes' schemas, promtool and
Argo CD's documented fields; and each checker refuses what it should (so a pass means something)."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml
from kubernetes.utils.quantity import parse_quantity

from model.core.config import PROJECT_ROOT, CollectorConfig
from model.core.errors import FlywheelError
from model.core.kserve_sdk import kserve
from model.deploy import manifests
from model.deploy.argocd_checks import check_argocd
from model.deploy.checks import check_environment, check_manifests
from model.deploy.kubernetes_checks import check_core, check_inferenceservice, kserve_build, kserve_errors
from model.deploy.monitoring_checks import check_dashboard, check_podmonitor

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
    # Knative refuses a pod-level securityContext by default: everything is on the container
    assert predictor.security_context is None
    sc = container.security_context
    assert (sc.run_as_non_root, sc.run_as_user, sc.run_as_group) == (True, 10001, 10001)
    assert sc.allow_privilege_escalation is False and sc.read_only_root_filesystem is True
    assert sc.capabilities.drop == ["ALL"] and sc.seccomp_profile.type == "RuntimeDefault"
    assert container.readiness_probe.http_get.path == "/v2/health/ready"
    assert container.resources.limits["memory"] and container.resources.requests["cpu"]
    assert predictor.max_replicas >= predictor.min_replicas >= 1
    assert {e.name for e in container.env} >= {"STORAGE_URI", "FLYWHEEL_MODEL_SHA256", "FLYWHEEL_MODEL_VERSION"}
    assert predictor.canary_traffic_percent is None  # no canary runs in the committed state
    assert predictor.logger.mode == "all"
    assert f"flywheel-collector.flywheel-{env}.svc" in predictor.logger.url
    assert isvc.metadata.annotations["serving.kserve.io/deploymentMode"] == "Knative"
    assert isvc.metadata.annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"


POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _container_sc(d: dict) -> dict:
    return d["spec"]["predictor"]["containers"][0]["securityContext"]


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
        (lambda d: _container_sc(d).update(runAsNonRoot=False), "runAsNonRoot must be true"),
        (lambda d: _container_sc(d).pop("runAsUser"), "runAsUser must be a non-root id"),
        (lambda d: _container_sc(d).update(runAsGroup=0), "runAsGroup must be a non-root id"),
        (lambda d: _container_sc(d).pop("seccompProfile"), "seccompProfile.type must be RuntimeDefault"),
        (lambda d: _container_sc(d).pop("readOnlyRootFilesystem"), "readOnlyRootFilesystem must be true"),
        (lambda d: _container_sc(d).update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation must be false"),
        (lambda d: _container_sc(d)["capabilities"].update(drop=["NET_RAW"]), "capabilities.drop must include ALL"),
        (
            lambda d: _container_sc(d)["capabilities"].update(add=["NET_ADMIN"]),
            "kubernetes.containerspec-addcapabilities",
        ),
        # the old layout: a pod-level securityContext, behind a Knative feature flag that is off by default
        (lambda d: d["spec"]["predictor"].update(securityContext=POD_SECURITY), "kubernetes.podspec-securitycontext"),
        (lambda d: d["spec"]["predictor"].update(nodeSelector={"gpu": "yes"}), "kubernetes.podspec-nodeselector"),
        (
            lambda d: d["spec"]["predictor"]["volumes"].append({"name": "h", "hostPath": {"path": "/x"}}),
            "kubernetes.podspec-volumes-hostpath",
        ),
        (
            lambda d: d["spec"]["predictor"]["containers"][0]["env"].append(
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
            ),
            "kubernetes.podspec-fieldref",
        ),
        (
            lambda d: d["metadata"]["annotations"].update({"serving.kserve.io/deploymentMode": "RawDeployment"}),
            "needs Knative mode",
        ),
        # unset, KServe takes the cluster's default (Standard on current KServe): no canary split
        (lambda d: d["metadata"]["annotations"].pop("serving.kserve.io/deploymentMode"), "needs Knative mode"),
        (lambda d: d["spec"]["predictor"]["logger"].update(url="http://elsewhere/"), "logger.url"),
    ],
)
def test_inferenceservice_check_refuses(mutate, message):
    doc = copy.deepcopy(_isvc("staging"))
    mutate(doc)
    errors = check_inferenceservice(doc, Path("isvc.yaml"), "staging")
    assert any(message in e for e in errors), errors


def test_knative_mode_under_its_deprecated_name_and_zero_values_pass():
    doc = copy.deepcopy(_isvc("staging"))
    assert check_inferenceservice(doc, Path("isvc.yaml"), "staging") == []
    doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Serverless"
    doc["spec"]["predictor"].update(securityContext={}, hostNetwork=False)  # what Knative's masks leave
    assert check_inferenceservice(doc, Path("isvc.yaml"), "staging") == []


def test_core_objects_are_checked_strictly():
    deployment = next(d for d in _docs(MANIFESTS / "staging" / "collector.yaml") if d["kind"] == "Deployment")
    assert check_core(deployment, Path("c.yaml")) == []
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    assert any("resourcez" in e for e in check_core(typo, Path("c.yaml")))
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "two"
    assert check_core(wrong, Path("c.yaml"))
    root = copy.deepcopy(deployment)  # a pod-level securityContext is allowed here, but each container needs its own
    del root["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRoot"]
    assert any("container collector securityContext.runAsNonRoot" in e for e in check_core(root, Path("c.yaml")))


def test_collector_service_selects_the_deployment_and_the_logger_reaches_it():
    for env in ENVS:
        docs = {d["kind"]: d for d in _docs(MANIFESTS / env / "collector.yaml")}
        pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
        assert docs["Service"]["spec"]["selector"].items() <= pod_labels.items()
        url = _isvc(env)["spec"]["predictor"]["logger"]["url"]
        assert url.startswith(
            f"http://{docs['Service']['metadata']['name']}.{docs['Service']['metadata']['namespace']}.svc"
        )


@pytest.mark.parametrize("env", ENVS)
def test_collector_probes_and_spool_survive_a_database_outage(env):
    """Liveness on the process alone (a restart cures no database outage), readiness on whether an event
    is kept; the spool on an emptyDir (it outlives a container restart) whose sizeLimit is above the
    spool's cap, or the kubelet would evict the pod before the collector refuses anything."""
    deployment = next(d for d in _docs(MANIFESTS / env / "collector.yaml") if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    args = container["args"]
    spool_dir = args[args.index("--spool-dir") + 1]
    cap = int(args[args.index("--spool-max-bytes") + 1]) if "--spool-max-bytes" in args else None
    cap = cap or CollectorConfig().spool_max_bytes
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == spool_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert parse_quantity(volume["emptyDir"]["sizeLimit"]) > cap
    assert not mount.get("readOnly")


@pytest.mark.real("promtool")
def test_dashboard_queries_parse_and_cover_both_arms():
    for env in ENVS:
        board = _docs(MANIFESTS / env / "dashboard.yaml")[0]
        assert check_dashboard(board, Path("d.yaml")) == []
        assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    bad = copy.deepcopy(board)
    text = bad["data"]["flywheel-intent.json"]
    assert "group_left (arm)" in text
    bad["data"]["flywheel-intent.json"] = text.replace("group_left (arm)", "group_left (arm,,", 1)
    assert check_dashboard(bad, Path("d.yaml"))


def _podmonitors(env: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _docs(MANIFESTS / env / "podmonitor.yaml")}


@pytest.mark.parametrize("env", ENVS)
def test_podmonitors_follow_the_published_crd_schema(env):
    monitors = _podmonitors(env)
    assert set(monitors) == {"flywheel-intent", "flywheel-queue-proxy", "flywheel-collector"}
    for monitor in monitors.values():
        assert check_podmonitor(monitor, Path("p.yaml")) == []
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    predictor, queue_proxy = monitors["flywheel-intent"]["spec"], monitors["flywheel-queue-proxy"]["spec"]
    assert predictor["selector"]["matchLabels"]["serving.kserve.io/inferenceservice"] == _isvc(env)["metadata"]["name"]
    assert predictor["podMetricsEndpoints"][0]["portNumber"] == 8080  # Knative renames the port: by number
    # the same pods; Knative's name for queue-proxy's request-metrics port (UserQueueMetricsPortName)
    assert queue_proxy["selector"] == predictor["selector"]
    assert queue_proxy["podMetricsEndpoints"] == [{"port": "http-usermetric", "path": "/metrics", "interval": "30s"}]
    # canary analysis and the error alert join the two on the revision label (canary_metrics.REVISION)
    for spec in (predictor, queue_proxy):
        assert spec["podTargetLabels"] == ["serving.knative.dev/revision"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m["spec"]["podMetricsEndpoints"][0].update(intervall="30s"), "'intervall' was unexpected"),
        (lambda m: m["spec"]["podMetricsEndpoints"][0].update(portNumber="8080"), "is not of type 'integer'"),
        (lambda m: m["spec"]["podMetricsEndpoints"][0].update(scheme="ftp"), "is not one of"),
        (lambda m: m["spec"].update(podMetricsEndpoints=[]), "it scrapes nothing"),
        (lambda m: m["spec"].update(selector={}), "empty selects all"),
        (lambda m: m["metadata"]["labels"].pop("release"), "needs the label release: <the kube-prometheus-stack"),
        (lambda m: m["metadata"]["labels"].update(release="-bad-"), "got '-bad-'"),
        (lambda m: m.update(apiVersion="monitoring.coreos.com/v1beta1"), "apiVersion must be monitoring.coreos.com/v1"),
    ],
)
def test_podmonitor_check_refuses(mutate, message):
    monitor = copy.deepcopy(_podmonitors("staging")["flywheel-collector"])
    mutate(monitor)
    errors = check_podmonitor(monitor, Path("p.yaml"))
    assert any(message in e for e in errors), errors


@pytest.mark.real("promtool")
@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # the labels the manifest gives the InferenceService are not the ones KServe gives its pods
        (
            "on them\n  selector:\n    matchLabels:\n      serving.kserve.io/inferenceservice: intent\n",
            "on them\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: flywheel-intent\n",
            "PodMonitor flywheel-intent selects no pod",
        ),
        # Knative names the serving container's port user-port on the pod: http1 never matches
        ("    - portNumber: 8080\n", "    - port: http1\n", "scrapes port 'http1', which InferenceService intent"),
        ("    - port: http\n", "    - port: metrics\n", "scrapes port 'metrics', which Deployment flywheel-collector"),
        # queue-proxy is checked against the ports Knative gives it (checks.QUEUE_PROXY)
        ("    - port: http-usermetric\n", "    - port: user-metrics\n", "scrapes port 'user-metrics', which Infe"),
        ("      app.kubernetes.io/name: flywheel-collector\n  podMetricsEndpoints", "  podMetricsEndpoints", "empty"),
    ],
)
def test_podmonitors_must_find_their_pods(tmp_path, old, new, message):
    folder = tmp_path / "staging"
    shutil.copytree(MANIFESTS / "staging", folder)
    path = folder / "podmonitor.yaml"
    assert check_environment(folder, "staging") == []
    assert path.read_text().count(old) == 1
    path.write_text(path.read_text().replace(old, new))
    errors = check_environment(folder, "staging")
    assert any(message in e for e in errors), errors


@pytest.mark.real("promtool")
def test_the_appproject_must_allow_every_kind_synced(tmp_path):
    root = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, root)
    assert check_manifests(tmp_path) == []
    project = root / "argocd" / "project.yaml"
    text = project.read_text()
    project.write_text(text.replace("    - group: monitoring.coreos.com\n      kind: PodMonitor\n", ""))
    assert any("namespaceResourceWhitelist lacks PodMonitor" in e for e in check_manifests(tmp_path))


NAMESPACES = {env: f"flywheel-{env}" for env in ENVS}


def test_argocd_objects(tmp_path):
    assert {env: manifests.namespace_of(MANIFESTS / env / "inferenceservice.yaml") for env in ENVS} == NAMESPACES
    assert check_argocd(MANIFESTS / "argocd", PROJECT_ROOT, NAMESPACES) == []
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
    errors = check_argocd(folder, tmp_path, NAMESPACES)
    assert any("selfheal: unknown field" in e for e in errors), errors
    assert any("must allow exactly" in e for e in errors), errors
    assert any("limited to this one repository" in e for e in errors), errors
    # the Applications deploy where the environments' InferenceServices live, whatever those namespaces are called
    moved = check_argocd(MANIFESTS / "argocd", PROJECT_ROOT, {**NAMESPACES, "staging": "acme-staging"})
    assert any("destination namespace must be acme-staging for staging" in e for e in moved), moved
    assert any("must allow exactly ['acme-staging', 'flywheel-production']" in e for e in moved), moved


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
        "canaryTrafficPercent: 10 # share of requests on the canary; removed when it is promoted or rolled back",
        'value: "s3://models/flywheel-intent/2/artifact"',
        f'value: "{"b" * 64}"',
        'value: "2"',
        # the record, in the ConfigMap (never in annotations, which would roll the pods)
        'canary: "2"',
        'canary-storage-uri: "s3://models/flywheel-intent/2/artifact"',
        f'canary-sha256: "{"b" * 64}"',
    ]
    assert "# no pod-level securityContext: Knative refuses one" in text2  # comments survive
    state = manifests.read_rollout(path, manifests.load(path, text2))
    assert (state.stable, state.canary, state.canary_percent) == (v1, v2, 10)
    pinned = manifests.write_rollout(path, manifests.load(path, text2), manifests.roll_back(state, path))
    # the rollback pins: the env keeps naming v2 (no new revision), 0% of the traffic goes to it
    changed = [" ".join(line.split()) for line in pinned.splitlines() if line not in text2.splitlines()]
    assert changed == [
        "canaryTrafficPercent: 0 # share of requests on the canary; removed when it is promoted or rolled back",
        'rolled-back: "2"',
        'rolled-back-storage-uri: "s3://models/flywheel-intent/2/artifact"',
        f'rolled-back-sha256: "{"b" * 64}"',
    ]
    back = manifests.read_rollout(path, manifests.load(path, pinned))
    assert (back.stable, back.canary, back.rolled_back, back.served) == (v1, None, v2, v2)
    again = manifests.start_canary(back, v2, 10, path)  # the next release replaces the pinned revision
    assert (again.canary, again.rolled_back, again.canary_percent) == (v2, None, 10)


def test_rollback_after_a_promotion_pins_and_a_second_rollback_restores_under_the_pin():
    """The states of docs/rollout.md: the pin on the promoted revision, then the stable model's env, pin kept."""
    path = MANIFESTS / "production" / "inferenceservice.yaml"
    v1, v2, v3 = (
        manifests.ModelRef(n, f"s3://models/flywheel-intent/{n}/artifact", c * 64) for n, c in zip((1, 2, 3), "abc")
    )
    promoted = manifests.Rollout(stable=v2, previous=v1)
    text = manifests.write_rollout(path, manifests.load(path), promoted)
    pin = manifests.roll_back(promoted, path)
    assert pin == manifests.Rollout(stable=v1, canary_percent=0, rolled_back=v2)  # env still v2: no new revision
    pinned = manifests.write_rollout(path, manifests.load(path, text), pin)
    changed = [" ".join(line.split()) for line in pinned.splitlines() if line not in text.splitlines()]
    assert 'value: "2"' not in changed and "canaryTrafficPercent: 0" in changed[0]
    assert manifests.read_rollout(path, manifests.load(path, pinned)) == pin
    # from the pin only the rolled-back model may be released again: another's revision would start
    # while v2's is the latest ready one, and get its share meanwhile
    with pytest.raises(FlywheelError, match="still serves rolled-back v2.*`flywheel rollback` once more"):
        manifests.start_canary(pin, v3, 10, path)
    assert manifests.start_canary(pin, v3, 0, path).canary == v3  # no share, nothing to leak
    restored = manifests.roll_back(pin, path)
    assert restored == manifests.Rollout(stable=v1, canary_percent=0) and restored.served == v1
    text = manifests.write_rollout(path, manifests.load(path, pinned), restored)
    assert manifests.read_rollout(path, manifests.load(path, text)) == restored
    assert "canaryTrafficPercent: 0" in text and '  rolled-back: "' not in text
    with pytest.raises(FlywheelError, match="already rolled back and restored"):
        manifests.roll_back(restored, path)
    with pytest.raises(FlywheelError, match="no canary is running, nothing to promote"):
        manifests.promote_canary(restored, path)
    release = manifests.start_canary(restored, v3, 10, path)
    assert release == manifests.Rollout(stable=v1, canary=v3, canary_percent=10)
    assert manifests.start_canary(restored, v3, 100, path) == manifests.Rollout(stable=v3, previous=v1)


def test_arms_configmap_must_agree_with_the_inferenceservice():
    path = MANIFESTS / "staging" / "inferenceservice.yaml"
    text = path.read_text()
    v1 = manifests.ModelRef(1, "s3://models/flywheel-intent/1/artifact", "a" * 64)
    released = manifests.write_rollout(
        path, manifests.load(path), manifests.start_canary(manifests.read_rollout(path), v1, 10, path)
    )
    assert manifests.read_rollout(path, manifests.load(path, released)).stable == v1
    stale = released.replace('  stable: "1"', '  stable: "5"')
    with pytest.raises(FlywheelError, match="disagrees with the stable model ConfigMap flywheel-arms records"):
        manifests.read_rollout(path, manifests.load(path, stale))
    without = text.split("\n---\n")[0] + "\n"
    with pytest.raises(FlywheelError, match="expected two documents"):
        manifests.load(path, without)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace("    maxReplicas: 3\n", "    maxReplicas: 3\n    canaryTrafficPercent: 20\n"),
            "ConfigMap flywheel-arms names no canary",
        ),
        (
            lambda t: t.replace('  stable: ""', '  stable: "3"'),
            "must be set together",
        ),
        (lambda t: t.replace('  stable: ""\n', ""), "needs data.stable"),
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
        uid = int(users[-1].split(":")[0])
        assert _container_sc(_isvc(env))["runAsUser"] == uid
        assert deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUser"] == uid
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    return tmp_path / "manifests"


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) == count, (path, old)
    path.write_text(text.replace(old, new))


DIGEST_REF = "ghcr.io/flywheel-mlops/flywheel@sha256:" + "e" * 64


@pytest.mark.real("promtool")
@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        # both pods run as the ServiceAccount that names the pull secret (Knative resolves tags with it too)
        ("staging/inferenceservice.yaml", "    serviceAccountName: flywheel\n", "", "serviceAccountName is unset"),
        (
            "staging/collector.yaml",
            "serviceAccountName: flywheel",
            "serviceAccountName: puller",
            "names puller, a ServiceAccount this environment lacks",
        ),
        (
            "staging/serviceaccount.yaml",
            "imagePullSecrets:\n  - name: flywheel-image-pull\n",
            "",
            "no imagePullSecrets",
        ),
        # the ServiceAccount itself against Kubernetes' schema, strictly
        ("staging/serviceaccount.yaml", "imagePullSecrets:", "imagePullSecret:", "('imagePullSecret' was unexpected)"),
        (
            "staging/serviceaccount.yaml",
            "  - name: flywheel-image-pull",
            "  - nam: flywheel-image-pull",
            "ServiceAccount imagePullSecrets.0: Additional properties are not allowed ('nam' was unexpected)",
        ),
        # one image per environment, by digest or by the tag image.yml keeps pushing for main
        (
            "staging/collector.yaml",
            "image: ghcr.io/flywheel-mlops/flywheel:main",
            f"image: {DIGEST_REF}",
            "the predictor and the collector must run the same image",
        ),
        (
            "staging/inferenceservice.yaml",
            "image: ghcr.io/flywheel-mlops/flywheel:main",
            "image: ghcr.io/flywheel-mlops/flywheel:0.1.0",
            "runs ghcr.io/flywheel-mlops/flywheel:0.1.0: name the image by digest",
        ),
        # every object of an environment in its InferenceService's namespace
        ("staging/serviceaccount.yaml", "namespace: flywheel-staging", "namespace: default", "must be in namespace"),
        # one kube-prometheus-stack selects every PodMonitor and PrometheusRule
        (
            "production/podmonitor.yaml",
            "    release: kube-prometheus-stack\n",
            "    release: monitoring\n",
            "carry different labels release (['kube-prometheus-stack', 'monitoring'])",
        ),
    ],
)
def test_check_manifests_holds_images_accounts_and_namespaces_together(tmp_path, file, old, new, message):
    root = _copy(tmp_path)
    count = (root / file).read_text().count(old)
    _edit(root / file, old, new, count)
    errors = check_manifests(tmp_path)
    assert any(message in e for e in errors), errors


@pytest.mark.real("promtool")
def test_images_by_digest_pass_and_environments_share_one_repository(tmp_path):
    root = _copy(tmp_path)
    for env in ENVS:  # what a release with --image writes
        for name in ("inferenceservice.yaml", "collector.yaml"):
            _edit(root / env / name, "ghcr.io/flywheel-mlops/flywheel:main", DIGEST_REF)
    assert check_manifests(tmp_path) == []
    for name in ("inferenceservice.yaml", "collector.yaml"):
        _edit(root / "production" / name, DIGEST_REF, DIGEST_REF.replace("flywheel-mlops", "someone-else"))
    errors = check_manifests(tmp_path)
    assert any("the environments run images of" in e and "someone-else" in e for e in errors), errors


@pytest.mark.real("promtool")
def test_the_appproject_must_allow_service_accounts_and_distinct_namespaces(tmp_path):
    root = _copy(tmp_path)
    _edit(root / "argocd" / "project.yaml", '    - group: ""\n      kind: ServiceAccount\n', "")
    assert any("namespaceResourceWhitelist lacks ServiceAccount" in e for e in check_manifests(tmp_path))
    root = _copy(tmp_path / "same")
    for path in sorted((root / "production").glob("*.yaml")):
        path.write_text(path.read_text().replace("flywheel-production", "flywheel-staging"))
    errors = check_manifests(tmp_path / "same")
    assert any("must live in different namespaces" in e for e in errors), errors


@pytest.mark.parametrize("env", ENVS)
def test_both_pods_run_as_the_service_account_with_the_pull_secret(env):
    (account,) = _docs(MANIFESTS / env / "serviceaccount.yaml")
    assert account["imagePullSecrets"] == [{"name": "flywheel-image-pull"}]
    assert account["automountServiceAccountToken"] is False
    assert check_core(account, Path("sa.yaml")) == []
    assert kserve_build(_isvc(env)).spec.predictor.service_account_name == account["metadata"]["name"]
    deployment = next(d for d in _docs(MANIFESTS / env / "collector.yaml") if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
