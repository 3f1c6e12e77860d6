"""The Helm chart, offline: lint, render in every mode, Kubernetes schemas, config, security.

No helm binary or cluster: `helm_python` is Helm's own Go SDK (render, lint, values.schema.json)
and `kubernetes_validate` holds the Kubernetes OpenAPI schemas, checked in strict mode (unknown
fields are errors). ServiceMonitor is a CRD with no bundled schema: it is checked against the
subset of the Prometheus Operator schema the chart uses (SERVICE_MONITOR_SCHEMA below).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, SecretStr

from sidecar import cli, loader
from sidecar.config import Config
from tests.support.promtool import RULES, run_promtool

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "claude-sidecar"
EXAMPLES = ROOT / "helm" / "examples"
# The version Helm's SDK renders for (.Capabilities) and a recent bundled schema set.
KUBE_VERSION = "1.36.0"
SECRET_ENV = {
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "JWT_SECRET": "x" * 32,
    "REDIS_URL": "redis://redis.example:6379/0",
}
# The config section that routes to the app container (app.port's default 3000).
APP_SECTION = 'app: {url: "http://127.0.0.1:3000"}\n'
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def production_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((EXAMPLES / "production-values.yaml").read_text())
    return values


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def inject_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The injection example with its dependency fetched (a copy: the repo tree stays clean)."""
    copied = tmp_path_factory.mktemp("helm") / "helm"
    shutil.copytree(ROOT / "helm", copied, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    example = copied / "examples" / "inject"
    helm.dependency_update(example)
    return example


@pytest.fixture(scope="module")
def inject_chart(inject_dir: Path) -> Iterator[Any]:
    with helm.Chart.load(inject_dir) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None = None, name: str = "shop") -> list[Any]:
    """Every rendered object (NOTES.txt and empty templates left out)."""
    manifests = chart.render(values, name=name, namespace="shop")
    return [
        doc
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def notes(chart: Any, values: dict[str, Any] | None = None) -> str:
    text: str = chart.render(values, name="shop", namespace="shop")[
        "claude-sidecar/templates/NOTES.txt"
    ]
    return text


def one(docs: list[Any], kind: str, name: str | None = None) -> Any:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod_spec(docs: list[Any]) -> Any:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def sidecar_container(spec: Any) -> Any:
    containers = spec.get("initContainers", []) + spec["containers"]
    return next(c for c in containers if c["name"] == "claude-sidecar")


def kinds(docs: list[Any]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def validate_kubernetes(doc: Any) -> None:
    if doc["kind"] == "PrometheusRule":
        jsonschema.validate(doc, PROMETHEUS_RULE_SCHEMA)
    elif doc["apiVersion"] == "monitoring.coreos.com/v1":
        jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
    else:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def config_text(docs: list[Any]) -> str:
    text: str = one(docs, "ConfigMap")["data"]["sidecar.yaml"]
    return text


# --------------------------------------------------------------------------- lint + schemas


@pytest.mark.parametrize("values", [None, "production"])
def test_lint_is_clean(values: str | None) -> None:
    report = helm.lint(
        CHART,
        production_values() if values else None,
        strict=True,
        kube_version=f"v{KUBE_VERSION}",
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_injection_example_lints_clean(inject_dir: Path) -> None:
    report = helm.lint(
        inject_dir, strict=True, with_subcharts=True, kube_version=f"v{KUBE_VERSION}"
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_values_render_valid_manifests(chart: Any) -> None:
    docs = render(chart)
    assert kinds(docs) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    for doc in docs:
        validate_kubernetes(doc)


def test_every_gate_on_renders_valid_manifests(chart: Any) -> None:
    docs = render(chart, production_values())
    assert kinds(docs) == [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
        "PodDisruptionBudget", "PrometheusRule", "Service", "Service", "ServiceAccount",
        "ServiceMonitor",
    ]  # fmt: skip
    for doc in docs:
        validate_kubernetes(doc)


def test_names_that_read_as_numbers_or_booleans_stay_strings(chart: Any) -> None:
    """A release `123` (Helm allows it), nameOverride `1` or a service account `true` were
    written unquoted: labels and names became numbers and the API server refused them."""
    values = production_values()
    values.update(nameOverride="1", priorityClassName="100", serviceAccount={"name": "true"})
    values["prometheusRule"] = {"enabled": True}
    docs = [d for d in chart.render(values, name="123", namespace="shop").items()]
    rendered = [doc for path, text in docs if not path.endswith("NOTES.txt")
                for doc in yaml.safe_load_all(text) if doc]  # fmt: skip
    for doc in rendered:
        validate_kubernetes(doc)
    labels = one(rendered, "Deployment")["spec"]["selector"]["matchLabels"]
    assert labels == {"app.kubernetes.io/name": "1", "app.kubernetes.io/instance": "123"}
    spec = pod_spec(rendered)
    assert (spec["serviceAccountName"], spec["priorityClassName"]) == ("true", "100")
    names = {d["kind"]: d["metadata"]["name"] for d in render(chart, {"fullnameOverride": "7"})}
    assert names["Deployment"] == names["ConfigMap"][: -len("-config")] == "7"


def test_deployment_disabled_renders_only_the_configmap_and_alerts(chart: Any) -> None:
    every_gate = production_values() | {"deployment": {"enabled": False}}
    # The alerts select series by job and namespace, not this chart's pods: an injected
    # sidecar gets them too. Everything else needs the chart's own Deployment.
    docs = render(chart, every_gate)
    assert kinds(docs) == ["ConfigMap", "PrometheusRule"]
    jsonschema.validate(one(docs, "PrometheusRule"), PROMETHEUS_RULE_SCHEMA)
    assert kinds(render(chart, {"deployment": {"enabled": False}})) == ["ConfigMap"]
    assert "and PrometheusRule shop-claude-sidecar." in notes(chart, every_gate)
    assert "Injection mode" in notes(chart, {"deployment": {"enabled": False}})


def test_injection_mode_renders_valid_manifests(inject_chart: Any) -> None:
    docs = render(inject_chart, name="web")
    assert kinds(docs) == ["ConfigMap", "Deployment", "Service"]
    for doc in docs:
        validate_kubernetes(doc)


def test_schema_validation_is_strict_enough_to_fail(chart: Any) -> None:
    """Negative control: a typo in a rendered field must fail the Kubernetes schema check."""
    deployment = copy.deepcopy(one(render(chart), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(deployment)
    monitor = copy.deepcopy(one(render(chart, production_values()), "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "often"
    with pytest.raises(jsonschema.ValidationError):
        validate_kubernetes(monitor)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"ports": {"http": "8080", "admin": 9090}}, "/ports/http"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"replicas": 3}, "replicas"),
        ({"service": {"type": "Ingress"}}, "/service/type"),
        ({"otel": {"protocol": "udp"}}, "/otel/protocol"),
        ({"secrets": {"env": [{"name": "ANTHROPIC-KEY", "key": "k"}]}}, "/secrets/env/0/name"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"config": 42}, "/config"),
        ({"probes": {"liveness": {"path": "healthz"}}}, "/probes/liveness/path"),
        # Names the API server would refuse, after Helm had applied the objects before them.
        ({"nameOverride": "Claude_Sidecar"}, "/nameOverride"),
        ({"fullnameOverride": "shop sidecar"}, "/fullnameOverride"),
        ({"serviceAccount": {"name": "Shop"}}, "/serviceAccount/name"),
        ({"priorityClassName": "High Priority"}, "/priorityClassName"),
        # runAsNonRoot (kept from the defaults) with UID 0: the kubelet refuses the container.
        ({"securityContext": {"runAsUser": 0}}, "/securityContext/runAsUser"),
        ({"securityContext": {"runAsUser": "10001"}}, "/securityContext/runAsUser"),
        # The SDK splits keys on "," and "=" and does not decode them: the key would be lost.
        ({"otel": {"resourceAttributes": {"team,region": "eu"}}}, "propertyName 'team,region'"),
        ({"otel": {"resourceAttributes": {"a=b": "c"}}}, "propertyName 'a=b'"),
    ],
)
def test_bad_values_are_rejected_by_the_schema(
    chart: Any, values: dict[str, Any], field: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(field)):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name="shop")


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("mode", ["default", "production", "inject"])
def test_configmap_config_passes_sidecar_check(
    chart: Any, inject_chart: Any, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if mode == "inject":
        docs = render(inject_chart, name="web")
    else:
        docs = render(chart, production_values() if mode == "production" else None)
    text = config_text(docs)
    container = sidecar_container(pod_spec(docs))
    env_names = {e["name"] for e in container["env"]}

    # Every ${VAR} without a default is in the container's env: the pod can start.
    needed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    assert needed <= env_names, needed - env_names
    # The env the pod gets: literal values as rendered (OTEL_EXPORTER_OTLP_PROTOCOL is read
    # by `sidecar check` too), secrets and downward-API fields as stand-ins.
    env = {
        e["name"]: e["value"] if "value" in e else SECRET_ENV.get(e["name"], "value")
        for e in container["env"]
    }
    config = loader.validate(loader.parse_yaml(text, "configmap"), env)

    # The ports Kubernetes probes and routes to are the ones the config listens on.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.server.listen == f"0.0.0.0:{ports['sidecar-http']}"
    assert config.server.admin_listen == f"0.0.0.0:{ports['sidecar-admin']}"

    # The real CLI agrees: `sidecar check` exits 0 on the mounted file.
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["check", "-c", str(path)]) == 0


def test_config_is_rendered_verbatim_with_a_checksum(chart: Any) -> None:
    config = production_values()["config"]
    secret = {"existingSecret": "shop-secrets"}
    docs = render(chart, {"config": config, "secrets": secret})
    assert config_text(docs) == config
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    checksum = annotations["checksum/claude-sidecar-config"]
    assert checksum == hashlib.sha256(config.encode()).hexdigest()

    changed = render(
        chart,
        {"config": config.replace("max_prompt_chars: 20000", "max_prompt_chars: 1"),
         "secrets": secret},
    )  # fmt: skip
    changed_annotations = one(changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert changed_annotations["checksum/claude-sidecar-config"] != checksum

    static = render(chart, {"rollOnConfigChange": False, "podAnnotations": {"team": "shop"}})
    assert one(static, "Deployment")["spec"]["template"]["metadata"]["annotations"] == {
        "team": "shop"
    }


def test_secrets_come_from_secret_refs_never_the_configmap(chart: Any) -> None:
    docs = render(chart, production_values())
    assert "${ANTHROPIC_API_KEY}" in config_text(docs)
    env = {e["name"]: e for e in sidecar_container(pod_spec(docs))["env"]}
    for name in ("ANTHROPIC_API_KEY", "JWT_SECRET", "REDIS_URL"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "shop-claude-sidecar"
        assert "value" not in env[name]
    assert not [d for d in docs if d["kind"] == "Secret"]  # the chart never renders one

    pasted = "claude:\n  api_key: sk-ant-api03-abcdefghijklmnop\n"
    with pytest.raises(helm.HelmRenderError, match="Secret"):
        chart.render({"config": pasted}, name="shop")


@pytest.mark.parametrize(
    "config",
    [
        # A first line indented more than the next: a block scalar pasted with nindent
        # took its indentation from it, and the next line broke the manifest.
        '  # trial config\nserver: {listen: "0.0.0.0:8080", admin_listen: "0.0.0.0:9090"}\n',
        "\n    # indented after a blank line\nserver: {}\n",
        "server: {}",  # no final newline
        "server: {}\n\n\n",  # several
        "telemetry: {log_format: json}   \n# trailing spaces, a\ttab, \u00fcn\u00efcode\n",
    ],
)
def test_any_config_text_reaches_the_configmap_exactly(chart: Any, config: str) -> None:
    for values in ({"config": config}, {"config": config, "deployment": {"enabled": False}}):
        (configmap,) = [d for d in render(chart, values) if d["kind"] == "ConfigMap"]
        validate_kubernetes(configmap)
        assert configmap["data"]["sidecar.yaml"] == config


def secret_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key the sidecar holds as a secret (`SecretStr`: `***` in `sidecar check`),
    `routes.` standing for each route."""
    paths: list[str] = []
    for name, info in model.model_fields.items():
        for arg in _leaf_types(info.annotation):
            if arg is SecretStr:
                paths.append(prefix + name)
            elif isinstance(arg, type) and issubclass(arg, BaseModel):
                paths += secret_paths(arg, f"{prefix}{name}.")
    return paths


def _leaf_types(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, UnionType, list):
        return [leaf for arg in get_args(annotation) for leaf in _leaf_types(arg)]
    return [annotation]


def config_with(path: str, value: str) -> str:
    """A config setting the dotted `path` (`routes.` is the first route) to `value`."""
    keys = path.split(".")
    node: dict[str, Any] = {keys[-1]: value}
    for key in reversed(keys[1:-1]):
        node = {key: node}
    if keys[0] == "routes":
        return yaml.safe_dump({"routes": [{"path": "/", "handler": "prompt", **node}]})
    return yaml.safe_dump({keys[0]: node})


SECRET_PATHS = secret_paths(Config)


def test_every_secret_key_of_the_config_is_known() -> None:
    """Negative control for the walk below: it finds the secrets the docs name."""
    assert {"claude.api_key", "auth.jwt.secret", "quotas.redis_url", "resume.redis_url",
            "cache.redis_url", "telemetry.user_hash_key", "routes.auth.jwt.secret"} <= set(
        SECRET_PATHS
    )  # fmt: skip


@pytest.mark.parametrize("path", SECRET_PATHS)
@pytest.mark.parametrize(
    "value",
    [
        "not-a-reference-but-the-secret-itself-0123456789",
        "redis://:hunter2@redis.shop:6379/0",
        # The default is the secret, written out in the ConfigMap.
        "${SECRET_VALUE:-the-secret-itself-0123456789abcdef}",
        "redis://:${REDIS_PASSWORD}@redis.shop:6379/0",
    ],
)
@pytest.mark.parametrize("deployment", [True, False])
def test_a_secret_written_into_the_config_fails_the_render(
    chart: Any, path: str, value: str, deployment: bool
) -> None:
    values = {
        "config": config_with(path, value),
        "secrets": {"existingSecret": "shop-secrets"},
        "deployment": {"enabled": deployment},
    }
    shown = re.escape(path.replace("routes.", "routes.0."))
    with pytest.raises(helm.HelmRenderError, match=f"config {shown} is a secret") as refused:
        chart.render(values, name="shop")
    assert "hunter2" not in str(refused.value)
    assert "itself" not in str(refused.value)


@pytest.mark.parametrize("path", SECRET_PATHS)
@pytest.mark.parametrize("deployment", [True, False])
def test_a_secret_var_set_as_a_plain_env_value_fails_the_render(
    chart: Any, path: str, deployment: bool
) -> None:
    """The secret would be written out in the Deployment instead of the ConfigMap."""
    values = {
        "config": config_with(path, "${SECRET_VALUE}"),
        "secrets": {"existingSecret": "shop-secrets"},
        "env": [{"name": "SECRET_VALUE", "value": "the-secret-itself-0123456789abcdef"}],
        "deployment": {"enabled": deployment},
    }
    shown = re.escape(path.replace("routes.", "routes.0."))
    with pytest.raises(
        helm.HelmRenderError, match=f"config {shown} reads " + r"\$\{SECRET_VALUE\}"
    ):
        chart.render(values, name="shop")
    pasted = {"env": [{"name": "CLAUDE", "value": "sk-ant-api03-abcdefghijklmnop"}]}
    with pytest.raises(helm.HelmRenderError, match="env CLAUDE holds an Anthropic API key"):
        chart.render(pasted, name="shop")


URL_PATHS = ["app.url", "claude.base_url", "auth.jwt.jwks_url", "telemetry.otlp_endpoint",
             "routes.auth.jwt.jwks_url"]  # fmt: skip


@pytest.mark.parametrize("path", URL_PATHS)
@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("https://admin:hunter2@host.example:8443/x", True),
        ("https://itsatoken@host.example/x", True),
        ("https://admin:${URL_PASSWORD}@host.example/x", False),  # from the environment
        ("https://host.example/a@b", False),  # an @ in the path is no userinfo
    ],
)
def test_a_url_with_written_out_credentials_fails_the_render(
    chart: Any, path: str, url: str, refused: bool
) -> None:
    values = {
        "config": config_with(path, url),
        "secrets": {"existingSecret": "shop-secrets"},
        "env": [{"name": "URL_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        "deployment": {"enabled": False},  # the ConfigMap alone: the pod's checks aside
    }
    if not refused:
        assert url in config_text(render(chart, values))
        return
    shown = re.escape(path.replace("routes.", "routes.0."))
    with pytest.raises(helm.HelmRenderError, match=f"config {shown} carries credentials") as error:
        chart.render(values, name="shop")
    assert "hunter2" not in str(error.value)
    assert "itsatoken" not in str(error.value)


@pytest.mark.parametrize("path", SECRET_PATHS)
def test_a_secret_read_from_the_environment_renders(chart: Any, path: str) -> None:
    values = {
        "config": config_with(path, "${SECRET_VALUE}"),
        "secrets": {"existingSecret": "shop-secrets"},
        "env": [{"name": "SECRET_VALUE", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
    }
    assert "${SECRET_VALUE}" in config_text(render(chart, values))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ports": {"http": 8081, "admin": 9090}}, "server.listen"),
        ({"config": 'server: {admin_listen: "127.0.0.1:9090"}\n'}, "pod IP"),
        ({"config": "server: [unclosed\n"}, "not valid YAML"),
        ({"terminationGracePeriodSeconds": 20}, "must exceed"),
        # Read as 0, a ${VAR} grace would let Kubernetes kill the drain after 10 s.
        (
            {"config": 'server: {shutdown_grace_seconds: "${GRACE:-120}"}\n'},
            r"server\.shutdown_grace_seconds is \"\$\{GRACE:-120\}\", not a number",
        ),
        ({"app": {"image": {"repository": "web"}}}, "app.image.tag is required"),
        # The containers of a pod share one network: one of the two could not listen.
        ({"app": {"image": {"repository": "web", "tag": "1"}, "port": 8080}}, "app.port 8080"),
        ({"app": {"image": {"repository": "web", "tag": "1"}, "port": 9090}}, "app.port 9090"),
        (
            {
                "app": {"image": {"repository": "web", "tag": "1"}, "port": 9090},
                "nativeSidecar": True,
            },
            "app.port 9090",
        ),
    ],
)
def test_values_that_contradict_the_config_fail_at_render(
    chart: Any, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(values, name="shop")


# --------------------------------------------------------------------------- pod shape


@pytest.mark.parametrize("mode", ["default", "production", "inject"])
def test_security_context_is_hardened(chart: Any, inject_chart: Any, mode: str) -> None:
    if mode == "inject":
        docs = render(inject_chart, name="web")
    else:
        docs = render(chart, production_values() if mode == "production" else None)
    spec = pod_spec(docs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False

    container = sidecar_container(spec)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert isinstance(security["runAsUser"], int)
    assert security["runAsUser"] > 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]

    # Writable: /tmp only (an emptyDir). The config directory is mounted without subPath so
    # in-place ConfigMap edits reach the file.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"/tmp", "/etc/claude-sidecar"}
    assert mounts["/etc/claude-sidecar"]["readOnly"] is True
    assert "subPath" not in mounts["/etc/claude-sidecar"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    configmap = one(docs, "ConfigMap")["metadata"]["name"]
    assert volumes[mounts["/etc/claude-sidecar"]["name"]]["configMap"]["name"] == configmap


def test_probes_shutdown_and_prestop(chart: Any) -> None:
    config = 'server: {listen: "0.0.0.0:8080", admin_listen: "0.0.0.0:9090", shutdown_grace_seconds: 100.5}\n'
    spec = pod_spec(render(chart, {"config": config, "preStopSleepSeconds": 7}))
    container = sidecar_container(spec)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"]["path"] == path
        assert ports[container[probe]["httpGet"]["port"]] == 9090  # the admin port
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    # preStop 7 + drain 100.5 < grace
    assert spec["terminationGracePeriodSeconds"] == 113
    no_drain = 'server: {listen: "0.0.0.0:8080", admin_listen: "0.0.0.0:9090", shutdown_grace_seconds: 0}\n'
    assert pod_spec(render(chart, {"config": no_drain}))["terminationGracePeriodSeconds"] == 10
    assert (
        pod_spec(render(chart, {"config": "claude: {}\n"}))["terminationGracePeriodSeconds"] == 40
    )
    explicit = pod_spec(render(chart, {"terminationGracePeriodSeconds": 90}))
    assert explicit["terminationGracePeriodSeconds"] == 90


@pytest.mark.parametrize(
    ("grace", "explicit", "expected"),
    [("1.5", None, 12), ("90", None, 100), ('"${GRACE:-120}"', 200, 200)],
)
def test_termination_grace_follows_the_configs_grace(
    chart: Any, grace: str, explicit: int | None, expected: int
) -> None:
    values = {
        "config": f"server: {{shutdown_grace_seconds: {grace}}}\n",
        "terminationGracePeriodSeconds": explicit,
    }
    assert pod_spec(render(chart, values))["terminationGracePeriodSeconds"] == expected


@pytest.mark.parametrize(
    ("native", "app_seconds", "expected"),
    [
        # native: the app's preStop 5 and exit first, then the sidecar's preStop and drain
        (True, 20, 5 + 20 + 5 + 30 + 5),
        (True, 0, 5 + 0 + 5 + 30 + 5),
        # side by side: the app sleeps through the sidecar's preStop and drain, then exits
        (False, 20, 5 + 30 + 20 + 5),
        (False, 60, 5 + 30 + 60 + 5),
    ],
)
def test_termination_grace_counts_the_apps_own_shutdown(
    chart: Any, native: bool, app_seconds: int, expected: int
) -> None:
    app = {"image": {"repository": "web", "tag": "1"}, "shutdownSeconds": app_seconds}
    values = {
        "nativeSidecar": native,
        "app": app,
        "config": "server: {shutdown_grace_seconds: 30}\n" + APP_SECTION,
    }
    assert pod_spec(render(chart, values))["terminationGracePeriodSeconds"] == expected


@pytest.mark.parametrize(
    ("native", "grace", "app_sleep"),
    [(False, "30", 5 + 30), (False, "12.5", 5 + 13), (True, "30", 5)],
)
def test_the_app_container_outlives_the_sidecars_drain(
    chart: Any, inject_chart: Any, native: bool, grace: str, app_sleep: int
) -> None:
    """The app got SIGTERM at once while the sidecar (preStop, then drain) still relayed
    requests to it: they broke when the app exited. Beside a plain sidecar the app's preStop
    now covers the sidecar's preStop and drain; before a native sidecar (stopped after the
    app) it covers the time endpoints take to drop the pod. Injected, likewise."""
    config = f"server: {{shutdown_grace_seconds: {grace}}}\n" + APP_SECTION
    app = {"image": {"repository": "web", "tag": "1"}, "shutdownSeconds": 10}
    values = {"nativeSidecar": native, "app": app, "config": config}
    spec = pod_spec(render(chart, values))
    container = next(c for c in spec["containers"] if c["name"] == "app")
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(app_sleep)]
    assert spec["terminationGracePeriodSeconds"] > app_sleep + 10
    sidecar = {"nativeSidecar": native, "config": config}
    injected = pod_spec(render(inject_chart, {"claude-sidecar": sidecar}, name="web"))
    shop = next(c for c in injected["containers"] if c["name"] == "shop")
    assert shop["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(app_sleep)]
    assert injected["terminationGracePeriodSeconds"] > app_sleep + 10


def test_an_explicit_grace_must_cover_the_apps_prestop_and_exit(chart: Any) -> None:
    app = {"image": {"repository": "web", "tag": "1"}, "shutdownSeconds": 20}
    values = {"app": app, "terminationGracePeriodSeconds": 50,
              "config": "server: {shutdown_grace_seconds: 30}\n" + APP_SECTION}  # fmt: skip
    with pytest.raises(helm.HelmRenderError, match="must exceed the app's preStop sleep"):
        render(chart, values)
    values["terminationGracePeriodSeconds"] = 56
    assert pod_spec(render(chart, values))["terminationGracePeriodSeconds"] == 56


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('app: {url: "http://127.0.0.1:3001"}\n',
         "on port 3001 but the app container listens on app.port 3000"),
        ('app: {url: "http://localhost"}\n', "on port 80 but"),
        ('app: {url: "http://web.shop.svc:3000"}\n', "is not the app container beside the sidecar"),
        ("claude: {}\n", "has no app section, so the sidecar never routes to it"),
    ],
)  # fmt: skip
def test_an_app_url_that_misses_the_app_container_fails_the_render(
    chart: Any, config: str, message: str
) -> None:
    """app.port (the container's port) and the config's app.url were stated apart: a
    mismatch, or no app section at all, rendered a pod whose sidecar routed nowhere."""
    values = {"app": {"image": {"repository": "web", "tag": "1"}}, "config": config}
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(chart, values)


@pytest.mark.parametrize(
    "config", ['app: {url: "http://[::1]:3000"}\n', "app: {}\n", 'app: {url: "${APP_URL}"}\n']
)
def test_an_app_url_on_the_app_port_renders(chart: Any, config: str) -> None:
    values = {"app": {"image": {"repository": "web", "tag": "1"}}, "config": config,
              "env": [{"name": "APP_URL", "value": "http://127.0.0.1:3000"}]}  # fmt: skip
    app = next(c for c in pod_spec(render(chart, values))["containers"] if c["name"] == "app")
    assert app["ports"][0]["containerPort"] == 3000


def test_the_injected_app_port_is_the_config_app_url_port(inject_chart: Any) -> None:
    config = yaml.safe_load((EXAMPLES / "inject" / "values.yaml").read_text())["claude-sidecar"]
    moved = config["config"].replace("127.0.0.1:8080", "127.0.0.1:8081")
    docs = render(inject_chart, {"claude-sidecar": {"config": moved}}, name="web")
    shop = next(c for c in pod_spec(docs)["containers"] if c["name"] == "shop")
    assert shop["ports"] == [{"name": "app", "containerPort": 8081}]
    variable = config["config"].replace('"http://127.0.0.1:8080"', '"${APP_URL}"')
    sidecar = {"config": variable, "env": [{"name": "APP_URL", "value": "http://127.0.0.1:1"}]}
    with pytest.raises(helm.HelmRenderError, match="appPort cannot tell the app's port"):
        render(inject_chart, {"claude-sidecar": sidecar}, name="web")


def test_an_explicit_grace_must_leave_a_native_sidecar_the_apps_shutdown_too(chart: Any) -> None:
    app = {"image": {"repository": "web", "tag": "1"}, "shutdownSeconds": 20}
    values = {"nativeSidecar": True, "app": app, "terminationGracePeriodSeconds": 50,
              "config": "server: {shutdown_grace_seconds: 30}\n" + APP_SECTION}  # fmt: skip
    with pytest.raises(Exception, match="must exceed"):
        render(chart, values)


def test_pod_mode_puts_the_app_behind_the_sidecar(chart: Any) -> None:
    docs = render(chart, production_values())
    spec = pod_spec(docs)
    app = next(c for c in spec["containers"] if c["name"] == "app")
    assert app["image"] == "registry.example.com/shop/web:2.4.1"
    assert app["ports"] == [{"name": "app", "containerPort": 3000, "protocol": "TCP"}]

    service = one(docs, "Service", "shop-claude-sidecar")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [8080]
    sidecar_ports = {p["name"]: p["containerPort"] for p in sidecar_container(spec)["ports"]}
    assert sidecar_ports["sidecar-http"] == 8080
    assert service["spec"]["selector"].items() <= spec_labels(docs).items()


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("ports", [{"http": 8080, "admin": 9090}, {"http": 8000, "admin": 9100}])
def test_services_and_network_policy_reach_the_sidecar_by_port_number(
    chart: Any, native: bool, ports: dict[str, int]
) -> None:
    """A native sidecar is an init container: before Kubernetes 1.32 a Service's named
    targetPort found no port in it (no endpoints, kubernetes#127958), and network plugins
    that look up named ports among the containers only admit nothing (kubernetes#125285)."""
    values = production_values()
    values["nativeSidecar"] = native
    values["ports"] = ports
    values["config"] = values["config"].replace(":8080", f":{ports['http']}")
    values["config"] = values["config"].replace(":9090", f":{ports['admin']}")
    docs = render(chart, values)
    spec = pod_spec(docs)
    assert (sidecar_container(spec) in spec.get("initContainers", [])) is native
    declared = {p["containerPort"] for p in sidecar_container(spec)["ports"]}
    targets = [
        port["targetPort"] for d in docs if d["kind"] == "Service" for port in d["spec"]["ports"]
    ]
    assert sorted(targets) == sorted(ports.values())
    policy = one(docs, "NetworkPolicy")["spec"]
    allowed = [port["port"] for rule in policy["ingress"] for port in rule["ports"]]
    assert allowed == [ports["http"], ports["admin"]]
    assert set(targets) | set(allowed) <= declared


def spec_labels(docs: list[Any]) -> dict[str, str]:
    labels: dict[str, str] = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def test_native_sidecar_is_an_init_container_that_restarts(chart: Any) -> None:
    app = {"image": {"repository": "web", "tag": "1"}}
    spec = pod_spec(render(chart, {"nativeSidecar": True, "config": APP_SECTION, "app": app}))
    assert [c["name"] for c in spec["initContainers"]] == ["claude-sidecar"]
    assert spec["initContainers"][0]["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["containers"]] == ["app"]

    plain = pod_spec(render(chart))
    assert "initContainers" not in plain
    assert "restartPolicy" not in sidecar_container(plain)


def test_pass_through_values_reach_the_pod(chart: Any) -> None:
    digest = "sha256:" + "a" * 64
    values = {
        "image": {"digest": digest},
        "imagePullSecrets": [{"name": "registry"}],
        "env": [{"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"}],
        "app": {
            "image": {"repository": "web", "tag": "1"},
            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
        },
        "extraVolumes": [{"name": "cache", "emptyDir": {}}],
        "config": APP_SECTION,
    }
    docs = render(chart, values)
    for doc in docs:
        validate_kubernetes(doc)
    spec = pod_spec(docs)
    sidecar = sidecar_container(spec)
    assert sidecar["image"] == f"ghcr.io/example/claude-sidecar@{digest}"
    assert {"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"} in sidecar["env"]
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    assert {"name": "cache", "emptyDir": {}} in spec["volumes"]
    app = next(c for c in spec["containers"] if c["name"] == "app")
    assert app["volumeMounts"] == [{"name": "cache", "mountPath": "/cache"}]


def test_otel_env_carries_pod_identity_from_the_downward_api(chart: Any) -> None:
    env = sidecar_container(pod_spec(render(chart, production_values())))["env"]
    by_name = {e["name"]: e for e in env}
    assert (
        by_name["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"]
        == "http://otel-collector.observability:4318"
    )
    assert by_name["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "http/protobuf"
    assert by_name["OTEL_SERVICE_NAME"]["value"] == "shop-claude-sidecar"
    attributes = dict(
        a.split("=", 1) for a in by_name["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(",")
    )
    assert attributes["deployment.environment"] == "production"
    order = [e["name"] for e in env]
    for key, field in (
        ("k8s.pod.name", "metadata.name"),
        ("k8s.namespace.name", "metadata.namespace"),
    ):
        var = re.fullmatch(r"\$\((\w+)\)", attributes[key])
        assert var, attributes[key]
        # $(VAR) expands only when VAR is defined earlier in the list.
        assert order.index(var[1]) < order.index("OTEL_RESOURCE_ATTRIBUTES")
        assert by_name[var[1]]["valueFrom"]["fieldRef"]["fieldPath"] == field


# --------------------------------------------------------------------------- gated objects


def test_gated_objects_select_the_sidecar_pods(chart: Any) -> None:
    docs = render(chart, production_values())
    labels = spec_labels(docs)
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    allowed = [port["port"] for rule in policy["ingress"] for port in rule["ports"]]
    assert allowed == [8080, 9090]  # never the app's port
    assert policy["policyTypes"] == ["Ingress", "Egress"]

    metrics = one(docs, "Service", "shop-claude-sidecar-metrics")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    )
    public = one(docs, "Service", "shop-claude-sidecar")
    assert (
        not monitor["spec"]["selector"]["matchLabels"].items()
        <= public["metadata"]["labels"].items()
    )
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in metrics["spec"]["ports"]}
    assert metrics["spec"]["ports"][0]["targetPort"] == 9090


@pytest.mark.parametrize(
    ("interval", "timeout", "renders"),
    [
        ("30s", "10s", True),
        ("1m", "60s", True),
        ("2m", "90s", True),
        ("1h", "59m", True),
        ("0010s", "9s", True),  # leading zeros read as decimal
        ("5s", "10s", False),  # the interval lowered, the default timeout kept
        ("1m", "61s", False),
        ("500ms", "1s", False),
        ("0010s", "11s", False),
    ],
)
def test_a_scrape_timeout_above_the_interval_fails_the_render(
    chart: Any, interval: str, timeout: str, renders: bool
) -> None:
    """The Prometheus Operator skips such a ServiceMonitor: nothing would be scraped."""
    values = {"serviceMonitor": {"enabled": True, "interval": interval, "scrapeTimeout": timeout}}
    if renders:
        endpoint = one(render(chart, values), "ServiceMonitor")["spec"]["endpoints"][0]
        assert (endpoint["interval"], endpoint["scrapeTimeout"]) == (interval, timeout)
    else:
        with pytest.raises(helm.HelmRenderError, match=r"exceeds serviceMonitor\.interval"):
            chart.render(values, name="shop")


def test_pdb_max_unavailable_and_hpa_bounds(chart: Any) -> None:
    docs = render(chart, {"podDisruptionBudget": {"enabled": True, "maxUnavailable": 1}})
    assert one(docs, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": one(docs, "Deployment")["spec"]["selector"]["matchLabels"]},
    }
    with pytest.raises(helm.HelmRenderError, match="minReplicas"):
        chart.render(
            {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, name="x"
        )


WEB = {"repository": "registry.example.com/shop/web", "tag": "2.4.1"}


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        # The app container without requests: the pod's utilization has no denominator.
        ({"app": {"image": WEB}}, "app.resources.requests has no cpu"),
        ({"app": {"image": WEB, "resources": {"requests": {"cpu": "1"}}},
          "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80}},
         "app.resources.requests has no memory"),
        ({"resources": {"requests": None}}, "resources.requests has no cpu"),
    ],
)  # fmt: skip
def test_autoscaling_on_a_resource_a_container_requests_nothing_of_fails_the_render(
    chart: Any, values: dict[str, Any], missing: str
) -> None:
    """The HPA divides usage by the requests of every container of the pod; one missing
    and it computes nothing (FailedGetResourceMetric), so the Deployment never scales."""
    values = {"autoscaling": {"enabled": True}, "config": REDIS_STORES + APP_SECTION,
              "secrets": {"existingSecret": "shop-secrets"}, **values}  # fmt: skip
    with pytest.raises(helm.HelmRenderError, match=re.escape(missing)):
        chart.render(values, name="shop")
    # A limit alone is the request too; with requests on both containers it renders.
    fixed = copy.deepcopy(values)
    fixed["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}}
    fixed.setdefault("app", {})["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}}
    validate_kubernetes(one(render(chart, fixed), "HorizontalPodAutoscaler"))


def test_injection_notes_name_every_template_to_include(chart: Any) -> None:
    text = notes(chart, {"deployment": {"enabled": False}})
    for template in ("container", "volumes", "podAnnotations", "terminationGracePeriodSeconds",
                     "appLifecycle", "appPort"):  # fmt: skip
        assert f'"claude-sidecar.{template}"' in text


def test_notes_tell_how_to_reach_it_and_warn_about_memory_quotas(chart: Any) -> None:
    text = notes(chart)
    assert "kubectl -n shop port-forward svc/shop-claude-sidecar 8080:80" in text
    assert "/readyz" in text
    assert '--from-literal=anthropic-api-key="$ANTHROPIC_API_KEY"' in text
    assert "WARNING" not in text  # one replica by default
    allowed = notes(chart, {"replicaCount": 3, "allowMemoryStoresWithReplicas": True})
    assert 'quotas.store is "memory" with more than one replica' in allowed
    assert "WARNING" not in notes(chart, production_values())  # quotas in Redis


# --------------------------------------------------------------------------- injection


@pytest.mark.parametrize(
    ("sidecar", "grace"),
    [
        # Beside the app: its preStop (the sidecar's 5 + 20) and then its own 10 s exit.
        ({}, 5 + 20 + 10 + 5),
        ({"app": {"shutdownSeconds": 40}}, 5 + 20 + 40 + 5),
        # A native sidecar's preStop and drain start once the parent's app has exited.
        ({"nativeSidecar": True}, 5 + 10 + 5 + 20 + 5),
        ({"nativeSidecar": True, "app": {"shutdownSeconds": 30}}, 5 + 30 + 5 + 20 + 5),
    ],
)
def test_injected_grace_counts_the_parents_app(
    inject_chart: Any, sidecar: dict[str, Any], grace: int
) -> None:
    docs = render(inject_chart, {"claude-sidecar": sidecar}, name="web")
    spec = pod_spec(docs)
    assert spec["terminationGracePeriodSeconds"] == grace
    assert (sidecar_container(spec) in spec.get("initContainers", [])) is bool(
        sidecar.get("nativeSidecar")
    )


def test_injection_shares_one_configmap_and_checksum(inject_chart: Any) -> None:
    docs = render(inject_chart, name="web")
    configmap = one(docs, "ConfigMap")
    spec = pod_spec(docs)
    assert [c["name"] for c in spec["containers"]] == ["claude-sidecar", "shop"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["claude-sidecar-config"]["configMap"]["name"] == configmap["metadata"]["name"]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    expected = hashlib.sha256(configmap["data"]["sidecar.yaml"].encode()).hexdigest()
    assert annotations["checksum/claude-sidecar-config"] == expected
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == 8000
    # The sidecar's own values (port 8000) reach the injected container, not the chart defaults.
    ports = {p["name"]: p["containerPort"] for p in sidecar_container(spec)["ports"]}
    assert ports == {"sidecar-http": 8000, "sidecar-admin": 9090}


TLS_CONFIG = """server:
  listen: "0.0.0.0:8080"
  admin_listen: "0.0.0.0:9090"
  tls: {cert_file: /etc/claude-sidecar-tls/tls.crt, key_file: /etc/claude-sidecar-tls/tls.key}
auth:
  mode: required
  jwt: {public_key_file: /etc/jwt/key.pem, algorithms: [RS256]}
routes:
  - {path: /v1/, handler: anthropic, auth: {jwt: {public_key_file: /etc/partner/jwt.pem}}}
"""
FILE_VOLUMES: dict[str, list[dict[str, Any]]] = {
    "extraVolumes": [
        {"name": "tls", "secret": {"secretName": "shop-tls"}},
        {"name": "jwt", "configMap": {"name": "jwt-keys"}},
    ],
    "extraVolumeMounts": [
        {"name": "tls", "mountPath": "/etc/claude-sidecar-tls", "readOnly": True},
        {"name": "jwt", "mountPath": "/etc/jwt/key.pem", "subPath": "key.pem"},
        {"name": "jwt", "mountPath": "/etc/partner/", "readOnly": True},
    ],
}


def _mounts_name_pod_volumes(spec: Any) -> None:
    volumes = {v["name"] for v in spec["volumes"]}
    for container in spec.get("initContainers", []) + spec["containers"]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, (container["name"], mount["name"])


@pytest.mark.parametrize("mode", ["pod", "native", "inject"])
def test_files_the_config_reads_are_mounted_into_the_sidecar(
    chart: Any, inject_chart: Any, mode: str
) -> None:
    values: dict[str, Any] = {"config": TLS_CONFIG, **FILE_VOLUMES}
    if mode == "inject":
        values["ports"] = {"http": 8080}
        docs = render(inject_chart, {"claude-sidecar": values}, name="web")
    else:
        if mode == "native":
            values["nativeSidecar"] = True
            values["app"] = {"image": {"repository": "web", "tag": "1"}}
            values["config"] = TLS_CONFIG + APP_SECTION
        docs = render(chart, values)
    for doc in docs:
        validate_kubernetes(doc)
    spec = pod_spec(docs)
    mounts = sidecar_container(spec)["volumeMounts"]
    for mount in FILE_VOLUMES["extraVolumeMounts"]:
        assert mount in mounts
    assert {v["name"] for v in FILE_VOLUMES["extraVolumes"]} <= {v["name"] for v in spec["volumes"]}
    _mounts_name_pod_volumes(spec)


MOUNTS = FILE_VOLUMES["extraVolumeMounts"]


@pytest.mark.parametrize(
    ("mounts", "message"),
    [
        ([], r"auth\.jwt\.public_key_file is \"/etc/jwt/key\.pem\", but no"),
        ([MOUNTS[0], MOUNTS[2]], r"auth\.jwt\.public_key_file is \"/etc/jwt/key\.pem\", but no"),
        (MOUNTS[:2], r"routes\.0\.auth\.jwt\.public_key_file is \"/etc/partner/jwt\.pem\""),
        (MOUNTS[1:], r"server\.tls\.cert_file is \"/etc/claude-sidecar-tls/tls\.crt\", but no"),
        ([*MOUNTS, {"name": "tls", "mountPath": "/tmp"}], "the chart's own mount"),
        (
            [*MOUNTS, {"name": "tls", "mountPath": "/etc/claude-sidecar/tls"}],
            "the chart's own mount",
        ),
    ],
    ids=["none", "jwt-key", "route-jwt-key", "tls", "over-tmp", "under-config"],
)
def test_a_file_the_config_reads_that_no_mount_holds_fails_the_render(
    chart: Any, mounts: list[Any], message: str
) -> None:
    # Rendered, such a pod would only crash-loop on the config error.
    values = {
        "config": TLS_CONFIG,
        "extraVolumes": FILE_VOLUMES["extraVolumes"],
        "extraVolumeMounts": mounts,
    }
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(values, name="shop")


def test_extra_volume_mounts_need_a_name_and_an_absolute_path(chart: Any) -> None:
    for mount in ({"mountPath": "/x"}, {"name": "x", "mountPath": "relative"}):
        with pytest.raises(helm.HelmValuesError):
            chart.render({"extraVolumeMounts": [mount]}, name="shop")


def test_a_native_sidecar_needs_an_app_container_beside_it(chart: Any) -> None:
    # A pod of init containers only has no containers: the API server refuses it.
    with pytest.raises(helm.HelmRenderError, match=r"nativeSidecar needs app\.image\.repository"):
        chart.render({"nativeSidecar": True}, name="shop")


# --------------------------------------------------------------------------- secrets

REAL_CLAUDE = 'claude: {base_url: "https://api.anthropic.com", api_key: "${ANTHROPIC_API_KEY}"}\n'


def test_default_values_need_no_secret(chart: Any) -> None:
    """The trial defaults (built-in fake, no auth) start without any Secret to exist."""
    docs = render(chart)
    env = sidecar_container(pod_spec(docs))["env"]
    assert not [e for e in env if "secretKeyRef" in e.get("valueFrom", {})]
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert "No Secret is used" in notes(chart)


def test_secret_create_renders_the_secret_the_pod_reads(chart: Any) -> None:
    values = {
        "config": REAL_CLAUDE,
        "secrets": {"create": True, "data": {"anthropic-api-key": "sk-ant-trial",
                                             "jwt-secret": "j" * 32}},
    }  # fmt: skip
    docs = render(chart, values)
    secret = one(docs, "Secret")
    validate_kubernetes(secret)
    assert secret["metadata"]["name"] == "shop-claude-sidecar"
    assert secret["stringData"] == {"anthropic-api-key": "sk-ant-trial", "jwt-secret": "j" * 32}
    env = {e["name"]: e for e in sidecar_container(pod_spec(docs))["env"]}
    ref = env["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("shop-claude-sidecar", "anthropic-api-key")
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "sk-ant-trial" not in config_text(docs)
    assert "was created from secrets.data" in notes(chart, values)
    for doc in docs:
        validate_kubernetes(doc)


def test_secret_keys_that_read_as_other_yaml_types_stay_the_keys_given(chart: Any) -> None:
    """`yes`, `1e3`, `0x10` unquoted are a bool and numbers to YAML: the Secret got other keys."""
    data = {"anthropic-api-key": "k", "jwt-secret": "j", "yes": "a", "1e3": "b", "0x10": "c",
            "null": "d", "007": "e"}  # fmt: skip
    secret = one(render(chart, {"secrets": {"create": True, "data": data}}), "Secret")
    validate_kubernetes(secret)
    assert secret["stringData"] == data


@pytest.mark.parametrize("roll_on_config", [True, False])
def test_a_changed_rendered_secret_rolls_the_pods(chart: Any, roll_on_config: bool) -> None:
    # Env vars are read at start: only a new pod gets a changed key.
    def annotations(data: dict[str, str]) -> dict[str, str]:
        values = {
            "config": REAL_CLAUDE,
            "rollOnConfigChange": roll_on_config,
            "secrets": {"create": True, "data": {"jwt-secret": "j" * 32, **data}},
        }
        found: dict[str, str] = pod_template(render(chart, values))["metadata"].get(
            "annotations", {}
        )
        return found

    first = annotations({"anthropic-api-key": "sk-ant-first"})
    second = annotations({"anthropic-api-key": "sk-ant-second"})
    key = "checksum/claude-sidecar-secret"
    assert first[key] != second[key]
    assert annotations({"anthropic-api-key": "sk-ant-first"}) == first
    assert ("checksum/claude-sidecar-config" in first) is roll_on_config
    assert "sk-ant-first" not in json.dumps(first)
    # An existing Secret is not the chart's to read: no checksum (docs: rollout restart).
    existing = {"config": REAL_CLAUDE, "secrets": {"existingSecret": "mine"}}
    assert key not in pod_template(render(chart, existing))["metadata"].get("annotations", {})


def pod_template(docs: list[Any]) -> Any:
    return one(docs, "Deployment")["spec"]["template"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": REAL_CLAUDE}, "needs its API key from a Secret"),
        ({"config": 'auth: {mode: required, jwt: {secret: "${JWT_SECRET}"}}\n'},
         r"config reads \$\{JWT_SECRET\}"),
        ({"secrets": {"existingSecret": "mine", "create": True}}, "not both"),
        ({"config": REAL_CLAUDE, "secrets": {"create": True, "data": {"jwt-secret": "j"}}},
         'no key "anthropic-api-key"'),
    ],
)  # fmt: skip
def test_a_config_needing_a_missing_secret_fails_the_render(
    chart: Any, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(values, name="shop")


def test_notes_warn_about_real_claude_without_auth(chart: Any) -> None:
    open_proxy = {"config": REAL_CLAUDE + "auth: {mode: none}\n",
                  "secrets": {"existingSecret": "shop-keys"}}  # fmt: skip
    assert 'auth.mode is "none" with real Claude' in notes(chart, open_proxy)
    assert "auth.mode" not in notes(chart)  # the fake trial spends nothing
    guarded = {"config": REAL_CLAUDE, "secrets": {"existingSecret": "shop-keys"}}
    assert "auth.mode" not in notes(chart, guarded)  # auth defaults to required


def test_existing_secret_is_referenced_never_rendered(chart: Any) -> None:
    docs = render(chart, {"config": REAL_CLAUDE, "secrets": {"existingSecret": "shop-keys"}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    env = {e["name"]: e for e in sidecar_container(pod_spec(docs))["env"]}
    assert env["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "shop-keys"


# --------------------------------------------------------------------------- replicas

REDIS_QUOTAS = 'quotas: {store: redis, redis_url: "${REDIS_URL}"}\n'


@pytest.mark.parametrize(
    ("values", "stores"),
    [
        ({"replicaCount": 2}, "quotas.store"),
        ({"autoscaling": {"enabled": True}}, "quotas.store"),
        ({"replicaCount": 3, "config": REDIS_QUOTAS + "resume: {enabled: true}\n"},
         "resume.store"),
        ({"replicaCount": 3, "config": REDIS_QUOTAS}, "resume.store"),  # on by default
        ({"replicaCount": 3,
          "config": REDIS_QUOTAS + "cache: {enabled: true, store: memory}\n"}, "cache.store"),
        # The cache off at the top but on for one route: that route's entries are per pod.
        ({"replicaCount": 3,
          "config": REDIS_QUOTAS + "resume: {enabled: false}\nroutes:\n"
                    "  - {path: /v1/, handler: anthropic, cache: {enabled: true}}\n"},
         "cache.store"),
    ],
)  # fmt: skip
def test_replicas_with_memory_stores_fail_the_render(
    chart: Any, values: dict[str, Any], stores: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(stores) + ".*store: redis"):
        chart.render(values, name="shop")


def test_replicas_render_with_shared_stores_or_when_allowed(chart: Any) -> None:
    assert one(render(chart), "Deployment")["spec"]["replicas"] == 1
    shared = render(
        chart,
        {
            "replicaCount": 3,
            "config": REDIS_QUOTAS + "resume: {enabled: false}\n",
            "secrets": {"existingSecret": "shop-secrets"},
        },
    )
    assert one(shared, "Deployment")["spec"]["replicas"] == 3
    routed = (REDIS_QUOTAS + "resume: {enabled: false}\ncache: {store: redis}\nroutes:\n"
              "  - {path: /v1/, handler: anthropic, cache: {enabled: true}}\n"
              "  - {path: /, handler: app, cache: null}\n")  # fmt: skip
    secrets = {"existingSecret": "shop-secrets"}
    assert one(
        render(chart, {"replicaCount": 3, "config": routed, "secrets": secrets}), "Deployment"
    )
    allowed = render(chart, {"replicaCount": 2, "allowMemoryStoresWithReplicas": True})
    assert one(allowed, "Deployment")["spec"]["replicas"] == 2
    with pytest.raises(helm.HelmValuesError, match="allowMemoryStoresWithReplicas"):
        chart.validate_schema({"allowMemoryStoresWithReplicas": "yes"})


def test_notes_say_the_image_is_a_placeholder_with_build_steps(chart: Any) -> None:
    text = notes(chart)
    assert "placeholder" in text
    assert "docker build -t REGISTRY/claude-sidecar:" in text
    assert "docker push REGISTRY/claude-sidecar:" in text
    assert "placeholder" not in notes(chart, {"image": {"repository": "registry.shop/sidecar"}})


# --------------------------------------------------------------------------- alerting rules

PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["alert", "expr"],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "expr": {"type": "string"},
                                        "for": {"type": "string", "pattern": "^[0-9]+(s|m|h)$"},
                                        "labels": {"type": "object"},
                                        "annotations": {"type": "object"},
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def test_prometheus_rule_is_gated_and_matches_the_shipped_rules(chart: Any) -> None:
    assert "PrometheusRule" not in kinds(render(chart))
    docs = render(chart, {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}})
    rule = one(docs, "PrometheusRule")
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    assert rule["metadata"]["labels"]["release"] == "kps"
    shipped = yaml.safe_load(RULES.read_text())
    assert rule["spec"]["groups"] == shipped["groups"]  # defaults = deploy/prometheus


def test_prometheus_rule_thresholds_come_from_values(chart: Any, tmp_path: Path) -> None:
    values = {"prometheusRule": {
        "enabled": True, "streamErrorRatio": 0.02, "timeToFirstTokenSeconds": "2.5",
        "claudeThrottledRatio": 0.1, "rejectionSpikeFactor": 5, "rejectionSpikeMinPerSecond": 1,
    }}  # fmt: skip
    rule = one(render(chart, values), "PrometheusRule")
    rules = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert rules["ClaudeSidecarStreamErrorRatioHigh"]["expr"].rstrip().endswith("> 0.02")
    # The bucket in both spellings: `2.5` has one; a whole number has `5` and `5.0`.
    assert 'le=~"2\\\\.5(\\\\.0)?"' in rules["ClaudeSidecarTimeToFirstTokenSlow"]["expr"]
    whole = one(render(chart, {"prometheusRule": {"enabled": True,
                                                  "timeToFirstTokenSeconds": "5.0"}}),
                "PrometheusRule")  # fmt: skip
    slow = [r for r in whole["spec"]["groups"][0]["rules"]
            if r["alert"] == "ClaudeSidecarTimeToFirstTokenSlow"]  # fmt: skip
    assert 'le=~"5(\\\\.0)?"' in slow[0]["expr"]
    assert "above 2.5s" in rules["ClaudeSidecarTimeToFirstTokenSlow"]["annotations"]["summary"]
    assert "> 5 * sum" in rules["ClaudeSidecarRejectionsSpiking"]["expr"]
    assert rules["ClaudeSidecarClaudeThrottling"]["expr"].rstrip().endswith("> 0.1")
    assert "runbook_url" not in rules["ClaudeSidecarNotReady"]["annotations"]
    docs_url = "https://git.example.com/sidecar/blob/main/docs/observability.md"
    linked = one(render(chart, {"prometheusRule": {"enabled": True, "runbookBaseUrl": docs_url}}),
                 "PrometheusRule")  # fmt: skip
    for linked_rule in linked["spec"]["groups"][0]["rules"]:
        anchor = linked_rule["alert"].lower()
        assert linked_rule["annotations"]["runbook_url"] == f"{docs_url}#{anchor}"
    with pytest.raises(helm.HelmValuesError, match="timeToFirstTokenSeconds"):
        chart.validate_schema({"prometheusRule": {"timeToFirstTokenSeconds": "3"}})
    # The rendered rules are valid Prometheus rules (not only valid YAML).
    path = tmp_path / "rendered-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = run_promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_resource_attribute_values_reach_the_sdk_intact(
    chart: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK splits OTEL_RESOURCE_ATTRIBUTES on commas and percent-decodes each value."""
    from opentelemetry.sdk.resources import OTELResourceDetector

    odd = {"team": "payments,eu", "quota": "50%", "url": "https://shop.example/a=b"}
    env = sidecar_container(pod_spec(render(chart, {"otel": {"resourceAttributes": odd}})))["env"]
    (value,) = [e["value"] for e in env if e["name"] == "OTEL_RESOURCE_ATTRIBUTES"]
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", value)
    attributes = OTELResourceDetector().detect().attributes
    for key, expected in odd.items():
        assert attributes[key] == expected


# --------------------------------------------------------------------------- config vs. pod env

SERVER = 'server: {listen: "0.0.0.0:8080", admin_listen: "0.0.0.0:9090"}\n'
EXISTING = {"existingSecret": "shop-keys"}


@pytest.mark.parametrize(
    "claude",
    [
        'claude: {base_url: "https://api.anthropic.com"}\n',
        'claude: {base_url: "https://api.anthropic.com", api_key: ""}\n',
        'claude: {base_url: "https://api.anthropic.com", api_key: "  "}\n',
    ],
)
def test_a_real_claude_without_its_api_key_fails_the_render(chart: Any, claude: str) -> None:
    """`sidecar check` refuses it: the pod would only crash-loop on the config error."""
    with pytest.raises(helm.HelmRenderError, match=r"claude\.api_key.*ANTHROPIC_API_KEY"):
        chart.render({"config": SERVER + claude, "secrets": EXISTING}, name="shop")


@pytest.mark.parametrize(
    ("config", "values"),
    [
        # A name secrets.env does not map: the Secret has it, the container never gets it.
        ('claude: {base_url: "https://api.anthropic.com", api_key: "${CLAUDE_KEY}"}\n', {}),
        (REAL_CLAUDE + 'quotas: {store: redis, redis_url: "${QUOTA_REDIS}"}\n', {}),
        # A builtin:fake config reading a var no env gives.
        ('auth: {mode: required, jwt: {secret: "${SIGNING_KEY}"}}\n', {}),
    ],
)
def test_a_config_var_the_sidecar_container_lacks_fails_the_render(
    chart: Any, config: str, values: dict[str, Any]
) -> None:
    name = re.findall(r"\$\{([A-Z_]+)\}", config)[-1]
    with pytest.raises(helm.HelmRenderError, match=re.escape(f"${{{name}}}") + ".*secrets.env"):
        chart.render({"config": SERVER + config, "secrets": EXISTING} | values, name="shop")


def test_config_vars_given_by_env_defaults_or_escapes_render(
    chart: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SERVER + (
        'claude: {base_url: "https://api.anthropic.com", api_key: "${CLAUDE_KEY}"}\n'
        'auth: {mode: required, jwt: {secret: "${SIGNING_KEY}"}}\n'
        'screening: {deny_patterns: ["$${jndi:", "${NOT_SET:-x}"]}\n'
        "# ${ONLY_IN_A_COMMENT}\n"
    )
    values = {
        "config": config,
        "secrets": {"existingSecret": "shop-keys",
                    "env": [{"name": "CLAUDE_KEY", "key": "anthropic-api-key"}]},
        "env": [{"name": "SIGNING_KEY", "valueFrom": {"secretKeyRef": {"name": "jwt",
                                                                         "key": "k"}}}],
    }  # fmt: skip
    docs = render(chart, values)
    container = sidecar_container(pod_spec(docs))
    # The config the pod mounts passes `sidecar check` with exactly the env it is given.
    path = tmp_path / "sidecar.yaml"
    path.write_text(config_text(docs))
    for entry in container["env"]:
        monkeypatch.setenv(entry["name"], entry.get("value", "s" * 32))
    assert cli.main(["check", "-c", str(path)]) == 0


@pytest.mark.parametrize(
    "config",
    [
        SERVER + '# later: auth: {mode: required, jwt: {secret: "${JWT_SECRET}"}}\n',
        SERVER + 'screening: {deny_patterns: ["$${JWT_SECRET}"]}\n',  # a literal ${
    ],
)
def test_a_secret_var_only_in_a_comment_or_escaped_needs_no_secret(chart: Any, config: str) -> None:
    """The Secret check read the raw text; the env check already read the parsed config."""
    container = sidecar_container(pod_spec(render(chart, {"config": config})))
    assert not [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]


# Every Kubernetes version the chart supports (Chart.yaml kubeVersion >= 1.25; the native
# sidecar from 1.29) and the newest schemas bundled.
SUPPORTED = [f"1.{minor}.0" for minor in range(25, 38)]


@pytest.mark.parametrize("version", SUPPORTED)
def test_manifests_validate_on_every_supported_kubernetes(chart: Any, version: str) -> None:
    gates = production_values()
    if int(version.split(".")[1]) < 29:
        gates["nativeSidecar"] = False
    for values in (None, gates):
        for doc in render(chart, values):
            if doc["apiVersion"] != "monitoring.coreos.com/v1":
                kubernetes_validate.validate(doc, version, strict=True)


# --------------------------------------------------------------------------- disruption budget

REDIS_STORES = REDIS_QUOTAS + "resume: {enabled: false}\n"


@pytest.mark.parametrize(
    "values",
    [
        {"podDisruptionBudget": {"enabled": True}},  # minAvailable 1 of the default 1 replica
        {"replicaCount": 2, "config": REDIS_STORES,
         "podDisruptionBudget": {"enabled": True, "minAvailable": 2}},
        {"replicaCount": 2, "config": REDIS_STORES,
         "podDisruptionBudget": {"enabled": True, "minAvailable": "100%"}},
        {"replicaCount": 3, "config": REDIS_STORES,
         "podDisruptionBudget": {"enabled": True, "maxUnavailable": 0}},
        {"config": REDIS_STORES, "autoscaling": {"enabled": True, "minReplicas": 1},
         "podDisruptionBudget": {"enabled": True}},
    ],
)  # fmt: skip
def test_a_budget_that_allows_no_eviction_fails_the_render(
    chart: Any, values: dict[str, Any]
) -> None:
    """Such a budget makes every node drain wait forever for this Deployment."""
    with pytest.raises(helm.HelmRenderError, match=r"podDisruptionBudget.*no pod could be evicted"):
        chart.render(values, name="shop")


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 2, "config": REDIS_STORES, "podDisruptionBudget": {"enabled": True}},
        {"replicaCount": 2, "config": REDIS_STORES,
         "podDisruptionBudget": {"enabled": True, "minAvailable": "50%"}},
        {"podDisruptionBudget": {"enabled": True, "maxUnavailable": 1}},
        {"config": REDIS_STORES, "autoscaling": {"enabled": True},  # minReplicas 2
         "podDisruptionBudget": {"enabled": True}},
    ],
)  # fmt: skip
def test_a_budget_that_allows_an_eviction_renders(chart: Any, values: dict[str, Any]) -> None:
    values = {**values, "secrets": {"existingSecret": "shop-secrets"}}  # REDIS_URL
    validate_kubernetes(one(render(chart, values), "PodDisruptionBudget"))


def test_a_tls_listener_is_reached_over_https(chart: Any) -> None:
    values = {"config": TLS_CONFIG, **FILE_VOLUMES}
    # The Service port is named for its protocol (meshes read the name as the protocol).
    (port,) = one(render(chart, values), "Service")["spec"]["ports"]
    assert (port["name"], port["targetPort"]) == ("https", 8080)
    (plain,) = one(render(chart), "Service")["spec"]["ports"]
    assert plain["name"] == "http"
    text = notes(chart, values)
    assert '"https://127.0.0.1:8080/api/stream-response' in text
    assert "From inside the cluster: https://shop-claude-sidecar.shop.svc:80" in text
    assert "http://127.0.0.1:8080" not in text
    # The admin port has no TLS.
    assert "curl http://127.0.0.1:9090/readyz" in text
    assert "From inside the cluster: http://shop-claude-sidecar" in notes(chart)
