"""Deployment files, checked without Docker or Kubernetes: docker-compose.yml (replicas,
PostgreSQL, the GPU profile), deploy/kubernetes/ and the README's `vllm serve` lines.

The manifests are parsed with PyYAML and cross-checked: names that must match (Secret,
ConfigMap, Services, labels, ports) match, every setting they set exists, and the model
servers run the exact command the README documents.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from bot.logging_setup import redact
from bot.settings import BotSettings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
HF_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
SETTINGS = {name.upper() for name in BotSettings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        documents += [dict(doc, _file=path.name) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def find(manifests: list[dict], kind: str, name: str) -> dict:
    (match,) = [d for d in manifests if d["kind"] == kind and d["metadata"]["name"] == name]
    return match


def _default(value: str) -> str:
    """`${NAME:-default}` -> default (what compose uses when .env does not set NAME)."""
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}", str(value))
    return match.group(1) if match else str(value)


def _serve_args(argv: list[str]) -> dict[str, str]:
    """{"--model": ..., "--runner": ..., ...} from a vllm command line (the model as --model)."""
    args = list(argv)
    if args[:2] == ["vllm", "serve"]:
        args = ["--model", *args[2:]]
    pairs = {}
    while args:
        flag = args.pop(0)
        assert flag.startswith("--"), argv
        pairs[flag.replace("_", "-")] = args.pop(0) if args and not args[0].startswith("--") else ""
    return pairs


def _readme_serve_lines() -> dict[str, dict[str, str]]:
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    lines = [shlex.split(line) for line in text.splitlines() if line.strip().startswith("vllm serve ")]
    return {_serve_args(argv)["--model"]: _serve_args(argv) for argv in lines}


# -- docker-compose.yml ------------------------------------------------------------


def test_compose_runs_two_bot_replicas_on_postgresql_and_milvus(compose):
    services = compose["services"]
    bot = services["bot"]
    replicas = int(_default(bot["deploy"]["replicas"]))
    assert replicas == 2
    url = urlsplit(_default_in(bot["environment"]["DATABASE_URL"]))
    postgres = services["postgres"]["environment"]
    assert url.scheme == "postgresql" and url.hostname == "postgres" and url.port == 5432
    assert url.path == f"/{postgres['POSTGRES_DB']}" and url.username == postgres["POSTGRES_USER"]
    assert url.password == _default(postgres["POSTGRES_PASSWORD"])  # one password, from .env when set
    assert services["postgres"]["image"].startswith("postgres:")
    assert "ports" not in services["postgres"]
    # One host port per replica, or the second replica could not start.
    for mapping in bot["ports"]:
        host_ports = mapping.split(":")[1]
        low, _, high = host_ports.partition("-")
        assert int(high or low) - int(low) + 1 >= replicas, mapping
    assert set(bot["environment"]) - {"HF_HOME"} <= SETTINGS  # HF_HOME: the Hugging Face cache, not ours


def _default_in(value: str) -> str:
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_gpu_profile_runs_the_readme_vllm_servers(compose):
    services = compose["services"]
    readme = _readme_serve_lines()
    for name, model in (("embedder", "Qwen/Qwen3-Embedding-0.6B"), ("reranker", "Qwen/Qwen3-Reranker-0.6B")):
        service = services[name]
        assert service["profiles"] == ["gpu"]
        assert service["image"].startswith("vllm/vllm-openai:")
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        args = _serve_args(service["command"])
        assert args["--model"] == model
        documented = readme[model]
        # The README's line with what compose adds for sharing one GPU.
        assert {k: v for k, v in args.items() if k not in ("--gpu-memory-utilization", "--max-model-len")} == {
            k: v for k, v in documented.items() if k not in ("--port", "--max-model-len")
        }
        assert service["healthcheck"]["test"][0] == "CMD"
        assert "profiles" not in services["bot"]  # the bots run without the profile
    assert json.loads(_serve_args(services["reranker"]["command"])["--hf-overrides"]) == HF_OVERRIDES


def test_readme_vllm_lines_use_the_pooling_runner_and_the_reranker_overrides():
    readme = _readme_serve_lines()
    embedder, reranker = readme["Qwen/Qwen3-Embedding-0.6B"], readme["Qwen/Qwen3-Reranker-0.6B"]
    assert embedder["--runner"] == reranker["--runner"] == "pooling"
    assert embedder["--convert"] == "embed"
    assert json.loads(reranker["--hf-overrides"]) == HF_OVERRIDES


# -- deploy/kubernetes -------------------------------------------------------------------


def test_every_manifest_is_well_formed_and_listed(manifests):
    for doc in manifests:
        assert doc.get("apiVersion") and doc.get("kind"), doc["_file"]
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], doc["_file"]
    (kustomization,) = [d for d in manifests if d["kind"] == "Kustomization"]
    listed = set(kustomization["resources"])
    files = {d["_file"] for d in manifests} - {"kustomization.yaml"}
    assert listed == files - {"secret.example.yaml"}  # the filled-in Secret never lives in git
    assert all((K8S / name).is_file() for name in listed)


def _pod(deployment: dict) -> dict:
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    return spec["template"]["spec"]


def _port(container: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def test_the_bot_deployment_has_replicas_probes_resources_and_its_secret(manifests):
    deployment = find(manifests, "Deployment", "supportbot")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = _pod(deployment)
    (container,) = pod["containers"]
    assert container["args"] == ["supportbot", "serve"]
    config = find(manifests, "ConfigMap", "supportbot-config")["data"]
    assert _port(container, "metrics") == int(config["METRICS_PORT"])
    assert _port(container, "http") == int(config["PORT"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    sources = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
    assert sources == {"configMapRef": "supportbot-config", "secretRef": "supportbot-secrets"}
    find(manifests, "Secret", "supportbot-secrets")
    # Longer than the bot's own shutdown grace, so answers in flight finish.
    assert pod["terminationGracePeriodSeconds"] > BotSettings.model_fields["shutdown_grace_seconds"].default
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_disruption_budget_keeps_a_bot_running(manifests):
    deployment = find(manifests, "Deployment", "supportbot")
    budget = find(manifests, "PodDisruptionBudget", "supportbot")
    assert budget["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_model_servers_run_on_gpus_behind_the_services_the_bot_is_pointed_at(manifests):
    config = find(manifests, "ConfigMap", "supportbot-config")["data"]
    readme = _readme_serve_lines()
    for setting, model_setting in (("EMBEDDING_BASE_URL", "EMBEDDING_MODEL"), ("RERANKER_BASE_URL", "RERANKER_MODEL")):
        url = urlsplit(config[setting])
        service = find(manifests, "Service", url.hostname)
        (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
        deployment = find(manifests, "Deployment", url.hostname)
        assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        (container,) = _pod(deployment)["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert service_port["targetPort"] in [p["name"] for p in container["ports"]]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        args = _serve_args(container["args"])
        assert args["--model"] == config[model_setting]
        assert {k: v for k, v in args.items() if k != "--max-model-len"} == {
            k: v for k, v in readme[config[model_setting]].items() if k not in ("--port", "--max-model-len")
        }
        assert url.path == "/v1"  # vLLM serves /v1/embeddings and /v1/rerank


def test_config_and_secret_hold_only_real_settings_and_no_secret_values(manifests):
    config = find(manifests, "ConfigMap", "supportbot-config")["data"]
    secret = find(manifests, "Secret", "supportbot-secrets")["stringData"]
    assert set(config) <= SETTINGS and set(secret) <= SETTINGS
    assert not [k for k in config if re.search(r"TOKEN|SECRET|KEY|PASSWORD|DATABASE_URL", k)]
    assert set(secret.values()) <= {"REPLACE_ME", ""}
    for path in K8S.glob("*.yaml"):
        assert redact(path.read_text()) == path.read_text(), path.name
