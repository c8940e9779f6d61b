"""Offline checks of the Lintel Helm chart (deploy/helm/lintel).

Runs with no cluster, no network and no `helm` binary:
- `helm_python` (pip: helm-python-sdk) is Helm v4's Go SDK as a library: strict lint,
  values-schema validation and template rendering, exactly as `helm lint --strict` /
  `helm template` would do them;
- `kubernetes_validate` checks every rendered manifest against the Kubernetes API
  schemas it bundles (strict: unknown fields are errors).

Run: .venv/bin/pytest -q tests/helm
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "lintel"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
RELEASE = "lintel"
# The newest Kubernetes version kubernetes-validate 1.37.0 bundles schemas for.
KUBE_VERSION = "1.37.0"

EXISTING_SECRET_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.example.com/lintel", "tag": "0.1.0-rc1"},
    "adminPassword": {"existingSecret": "lintel-admin-creds", "existingSecretKey": "password"},
    "config": {
        "log": {"level": "info,lintel_engine=debug"},
        "http": {"workers": 2, "shutdown_timeout_secs": 20},
        "bootstrap": {
            "tenant_name": "Head Office",
            "domain": "rooms.example.com",
            "admin_email": "facilities@example.com",
            "demo": False,
        },
    },
    "persistence": {"size": "5Gi", "storageClassName": "fast-ssd"},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "1m"},
        "hosts": [{"host": "rooms.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "rooms-tls", "hosts": ["rooms.example.com"]}],
    },
}

PASSWORD = "correct-horse-battery"
VALUE_PASSWORD_VALUES: dict[str, Any] = {"adminPassword": {"value": PASSWORD}}

COUCHBASE_VALUES: dict[str, Any] = {
    "store": {
        "backend": "couchbase",
        "couchbase": {
            "url": "couchbases://cb1.example.com,cb2.example.com",
            "username": "lintel",
            "existingSecret": "lintel-couchbase",
            "caSecret": "couchbase-ca",
        },
    },
}

# Every install names the Secret holding its master keyring (there is no default key).
MASTER_KEY: dict[str, Any] = {"masterKey": {"existingSecret": "lintel-master-key"}}


def with_master_key(values: dict[str, Any]) -> dict[str, Any]:
    return {**MASTER_KEY, **values}


SCENARIOS = {
    "defaults": with_master_key({}),
    "couchbase": with_master_key(COUCHBASE_VALUES),
    "ingress+existing-secret+config": with_master_key(EXISTING_SECRET_VALUES),
    "password-value": with_master_key(VALUE_PASSWORD_VALUES),
}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def chart():
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


class Rendered:
    """One `helm template` run: parsed manifests plus NOTES.txt."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.notes = ""
        self.docs: list[dict[str, Any]] = []
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc is not None:
                    doc["__source__"] = path
                    self.docs.append(doc)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.kind(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def sts(self) -> dict[str, Any]:
        return self.one("StatefulSet")

    @property
    def pod(self) -> dict[str, Any]:
        return self.sts["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod["containers"]
        assert len(containers) == 1
        return containers[0]

    @property
    def env(self) -> dict[str, str]:
        return {e["name"]: e.get("value") for e in self.container["env"]}

    def toml(self) -> dict[str, Any]:
        return tomllib.loads(self.one("ConfigMap")["data"]["lintel.toml"])


def render(chart, values: dict[str, Any] | None = None, name: str = RELEASE) -> Rendered:
    values = with_master_key(copy.deepcopy(values or {}))
    return Rendered(chart.render(values, name=name, namespace="bms"))


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__source__"}


# --------------------------------------------------------------------------- lint


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_strict_lint_passes(scenario):
    report = helm_python.lint(
        CHART, copy.deepcopy(SCENARIOS[scenario]), strict=True, kube_version=f"v{KUBE_VERSION}"
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == [], report
    # severity 2 = warning, 3 = error (1 = info, e.g. "icon is recommended")
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], serious


def test_lint_catches_a_broken_template(tmp_path):
    """The lint check above is not vacuous: a broken copy of the chart fails it."""
    broken = tmp_path / "lintel"
    shutil.copytree(CHART, broken)
    sts = broken / "templates" / "statefulset.yaml"
    sts.write_text(sts.read_text().replace("replicas: 1", "replicas: {{ .Values.nope.missing }"))
    report = helm_python.lint(broken, strict=True)
    assert report["errors"], report


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_validates_against_kubernetes_schemas(chart, scenario):
    rendered = render(chart, SCENARIOS[scenario])
    assert rendered.docs, "nothing rendered"
    for doc in rendered.docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        try:
            version = kubernetes_validate.validate(strip(doc), KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{doc['__source__']} {doc['kind']}: {path}: {e.message}")
        assert version == "1.37"


def test_validator_is_strict(chart):
    """An unknown field in a rendered manifest is rejected (so the check above can fail)."""
    sts = strip(render(chart).sts)
    sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBE_VERSION, strict=True)


# --------------------------------------------------------------------------- defaults


def test_defaults_render_expected_objects(chart):
    r = render(chart)
    kinds = sorted(d["kind"] for d in r.docs)
    assert kinds == ["ConfigMap", "Service", "Service", "StatefulSet"]
    assert r.kind("Secret") == [], "no Secret without a password"
    assert r.kind("Ingress") == []


def test_single_replica(chart):
    for values in SCENARIOS.values():
        assert render(chart, values).sts["spec"]["replicas"] == 1
    # There is no knob to change it: the schema rejects one.
    with pytest.raises(helm_python.HelmValuesError, match="replicaCount"):
        chart.render({"replicaCount": 2}, name=RELEASE)


def test_container_basics(chart):
    r = render(chart)
    c = r.container
    assert c["image"] == "lintel:0.1.0"  # tag defaults to appVersion
    assert c["args"] == ["serve"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert r.env == {
        "LINTEL_CONFIG": "/etc/lintel/lintel.toml",
        "LINTEL_HTTP__ADDRESS": "0.0.0.0",
        "LINTEL_HTTP__PORT": "8080",
        "LINTEL_DATA_DIR": "/var/lib/lintel",
        "LINTEL_LOG__FORMAT": "json",
        "LINTEL_SECRETS__MASTER_KEY_FILE": "/run/secrets/master-key/master.key",
        "LINTEL_STORE__BACKEND": "embedded",
    }
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
    assert r.pod["terminationGracePeriodSeconds"] == 30
    # Service links would inject LINTEL_PORT etc., which Lintel rejects as unknown keys.
    assert r.pod["enableServiceLinks"] is False


def test_probes(chart):
    c = render(chart).container
    assert c["livenessProbe"]["httpGet"] == {"path": "/api/engine/v2/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/api/engine/v2/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/api/engine/v2/health"


def test_security_context(chart):
    r = render(chart)
    pod_sc = r.pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 10001
    assert pod_sc["fsGroup"] == 10001
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = r.container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert r.pod["automountServiceAccountToken"] is False


def test_volumes_and_claim(chart):
    r = render(chart)
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    assert mounts["data"]["mountPath"] == "/var/lib/lintel"
    assert mounts["config"]["mountPath"] == "/etc/lintel"
    assert mounts["config"]["readOnly"] is True
    assert "admin-password" not in mounts
    vols = {v["name"]: v for v in r.pod["volumes"]}
    assert vols["config"]["configMap"]["name"] == r.one("ConfigMap")["metadata"]["name"]
    assert "data" not in vols, "data comes from the volumeClaimTemplate"
    (claim,) = r.sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]


def test_services_select_the_pod(chart):
    r = render(chart)
    pod_labels = r.sts["spec"]["template"]["metadata"]["labels"]
    assert r.sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    names = set()
    for svc in r.kind("Service"):
        names.add(svc["metadata"]["name"])
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        (port,) = svc["spec"]["ports"]
        assert port["name"] == "http" and port["port"] == 8080 and port["targetPort"] == "http"
    assert r.sts["spec"]["serviceName"] in names
    main = next(s for s in r.kind("Service") if s["spec"].get("clusterIP") != "None")
    assert main["metadata"]["name"] == "lintel"


def test_standard_labels(chart):
    r = render(chart, name="prod")
    for doc in r.docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "lintel"
        assert labels["app.kubernetes.io/instance"] == "prod"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "lintel-0.1.0"
        assert doc["metadata"]["name"].startswith("prod-lintel")


def test_default_config_file_is_valid_and_empty(chart):
    r = render(chart)
    assert r.toml() == {}


# --------------------------------------------------------------------------- options


def test_config_values_reach_lintel_toml(chart):
    r = render(chart, EXISTING_SECRET_VALUES)
    toml = r.toml()
    assert toml == EXISTING_SECRET_VALUES["config"]
    # Helm turns every number into a float; the chart must still write TOML integers,
    # because Lintel's settings are integers and `2.0` would be rejected.
    assert type(toml["http"]["workers"]) is int
    assert "workers = 2\n" in r.one("ConfigMap")["data"]["lintel.toml"]


def test_config_change_rolls_the_pod(chart):
    def checksum(values):
        return render(chart, values).sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"config": {"log": {"level": "debug"}}})
    assert checksum({}) == checksum({})


def test_existing_secret(chart):
    r = render(chart, EXISTING_SECRET_VALUES)
    assert r.kind("Secret") == [], "an existing Secret is used, not created"
    assert r.env["LINTEL_ADMIN_PASSWORD_FILE"] == "/run/secrets/lintel/admin-password"
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    assert mounts["admin-password"] == {
        "name": "admin-password",
        "mountPath": "/run/secrets/lintel",
        "readOnly": True,
    }
    vol = next(v for v in r.pod["volumes"] if v["name"] == "admin-password")
    assert vol["secret"]["secretName"] == "lintel-admin-creds"
    assert vol["secret"]["items"] == [{"key": "password", "path": "admin-password"}]
    assert "lintel-admin-creds" in r.notes


def test_password_value_creates_secret(chart):
    r = render(chart, VALUE_PASSWORD_VALUES)
    secret = r.one("Secret")
    assert base64.b64decode(secret["data"]["admin-password"]).decode() == PASSWORD
    vol = next(v for v in r.pod["volumes"] if v["name"] == "admin-password")
    assert vol["secret"]["secretName"] == secret["metadata"]["name"]
    assert vol["secret"]["items"] == [{"key": "admin-password", "path": "admin-password"}]
    assert r.env["LINTEL_ADMIN_PASSWORD_FILE"] == "/run/secrets/lintel/admin-password"
    assert PASSWORD not in r.one("ConfigMap")["data"]["lintel.toml"]


def test_master_key_is_required_and_mounted_from_its_secret(chart):
    with pytest.raises(helm_python.HelmRenderError, match="masterKey.existingSecret is required"):
        chart.render({}, name=RELEASE)
    r = render(chart, {"masterKey": {"existingSecret": "mk", "existingSecretKey": "keyring"}})
    assert r.env["LINTEL_SECRETS__MASTER_KEY_FILE"] == "/run/secrets/master-key/master.key"
    vol = next(v for v in r.pod["volumes"] if v["name"] == "master-key")
    assert vol["secret"]["secretName"] == "mk"
    assert vol["secret"]["items"] == [{"key": "keyring", "path": "master.key"}]
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    assert mounts["master-key"]["readOnly"] is True
    # The key itself is never in the chart's output.
    assert r.kind("Secret") == []


def test_both_password_sources_fail(chart):
    values = {**MASTER_KEY, "adminPassword": {"value": PASSWORD, "existingSecret": "x"}}
    with pytest.raises(helm_python.HelmRenderError, match="not both"):
        chart.render(values, name=RELEASE)


def test_ingress(chart):
    r = render(chart, EXISTING_SECRET_VALUES)
    ing = r.one("Ingress")
    assert ing["apiVersion"] == "networking.k8s.io/v1"
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"secretName": "rooms-tls", "hosts": ["rooms.example.com"]}]
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "rooms.example.com"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "lintel", "port": {"name": "http"}}
    assert "https://rooms.example.com/" in r.notes


def test_image_and_storage_overrides(chart):
    r = render(chart, EXISTING_SECRET_VALUES)
    assert r.container["image"] == "registry.example.com/lintel:0.1.0-rc1"
    (claim,) = r.sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_notes(chart):
    notes = render(chart).notes
    assert "port-forward svc/lintel 8080:8080" in notes
    assert "Lintel first run" in notes and "logs lintel-0" in notes
    notes = render(chart, VALUE_PASSWORD_VALUES).notes
    assert "get secret lintel-admin" in notes
    assert "Lintel first run" not in notes


def test_embedded_store_by_default(chart):
    r = render(chart)
    assert r.env["LINTEL_STORE__BACKEND"] == "embedded"
    assert not any(k.startswith("LINTEL_STORE__COUCHBASE__") for k in r.env)
    assert {v["name"] for v in r.pod["volumes"]}.isdisjoint({"couchbase-password", "couchbase-ca"})


def test_couchbase_store_reads_its_password_and_ca_from_secrets(chart):
    r = render(chart, COUCHBASE_VALUES)
    env = r.env
    assert env["LINTEL_STORE__BACKEND"] == "couchbase"
    assert env["LINTEL_STORE__COUCHBASE__URL"] == "couchbases://cb1.example.com,cb2.example.com"
    assert env["LINTEL_STORE__COUCHBASE__USERNAME"] == "lintel"
    assert env["LINTEL_STORE__COUCHBASE__BUCKET"] == "lintel"
    assert env["LINTEL_STORE__COUCHBASE__TIMEOUT_MS"] == "10000"
    assert env["LINTEL_STORE__COUCHBASE__CREATE_LAYOUT"] == "false"
    assert env["LINTEL_STORE__COUCHBASE__PASSWORD_FILE"] == "/run/secrets/couchbase/password"
    assert env["LINTEL_STORE__COUCHBASE__CA_FILE"] == "/run/secrets/couchbase-ca/ca.pem"
    assert "LINTEL_STORE__COUCHBASE__PASSWORD" not in env, "no password in the pod spec"
    vols = {v["name"]: v for v in r.pod["volumes"]}
    assert vols["couchbase-password"]["secret"]["secretName"] == "lintel-couchbase"
    assert vols["couchbase-password"]["secret"]["items"] == [{"key": "password", "path": "password"}]
    assert vols["couchbase-ca"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.pem"}]
    mounts = {m["name"]: m["mountPath"] for m in r.container["volumeMounts"]}
    assert mounts["couchbase-password"] == "/run/secrets/couchbase"
    assert mounts["couchbase-ca"] == "/run/secrets/couchbase-ca"


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"persistence": {"size": 12}}, r"/persistence/size': got number, want string"),
        ({"persistence": {"size": "lots"}}, r"/persistence/size"),
        ({"adminPassword": {"value": "short"}}, r"/adminPassword/value"),
        ({"config": {"admin_password": PASSWORD}}, r"/config"),
        ({"service": {"port": "8080"}}, r"/service/port"),
        ({"ingress": {"enabled": "yes"}}, r"/ingress/enabled"),
        ({"image": {"pullPolicy": "Sometimes"}}, r"/image/pullPolicy"),
        ({"persistance": {"size": "1Gi"}}, r"persistance"),  # typo of a top-level key
        ({"store": {"backend": "postgres"}}, r"/store/backend"),
        ({"store": {"backend": "couchbase"}}, r"/store/couchbase"),
        (
            {"store": {"backend": "couchbase", "couchbase": {"url": "http://cb", "username": "u", "existingSecret": "s"}}},
            r"/store/couchbase/url",
        ),
        ({"config": {"store": {"couchbase": {"password": "inline"}}}}, r"/config"),
    ],
)
def test_bad_values_are_rejected_clearly(chart, values, complaint):
    with pytest.raises(helm_python.HelmValuesError, match=complaint):
        chart.render(values, name=RELEASE)
    report = helm_python.lint(CHART, values, strict=True)
    assert report["errors"], f"lint accepted {values}"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_agrees_with_chart(chart):
    """The image cannot be built here (no Docker); at least keep it consistent with the
    chart: same uid, port, data dir and entrypoint."""
    text = DOCKERFILE.read_text()
    instructions = [ln for ln in text.splitlines() if ln and not ln.lstrip().startswith("#")]
    body = "\n".join(instructions)
    assert re.search(r"^FROM rust:1\.95-bookworm AS builder$", body, re.M)
    assert re.search(r"^FROM debian:bookworm-slim$", body, re.M)
    assert "rustup toolchain install" in body
    assert "cargo build --release --locked --bin lintel" in body
    assert re.search(r"^USER 10001:10001$", body, re.M)
    assert "--uid 10001" in body
    assert re.search(r"^EXPOSE 8080$", body, re.M)
    assert re.search(r'^ENTRYPOINT \["lintel"\]$', body, re.M)
    assert re.search(r'^CMD \["serve"\]$', body, re.M)
    assert re.search(r'^VOLUME \["/var/lib/lintel"\]$', body, re.M)
    assert "LINTEL_HTTP__ADDRESS=0.0.0.0" in body
    assert "LINTEL_DATA_DIR=/var/lib/lintel" in body
    assert "/usr/local/bin/lintel" in body
    assert "HEALTHCHECK" not in body

    r = render(chart)
    assert r.pod["securityContext"]["runAsUser"] == 10001
    assert r.container["ports"][0]["containerPort"] == 8080
    assert r.env["LINTEL_DATA_DIR"] == "/var/lib/lintel"
