"""The container files, checked without a Docker engine.

The Dockerfile is read by a small parser (continuations, comments, stages,
ARG defaults); the compose file by PyYAML. The health check commands are run
for real against a live ObservabilityServer.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from bot.logging_setup import redact
from bot.observability import Metrics, ObservabilityServer

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass
class Instruction:
    name: str  # upper case: FROM, RUN, ...
    value: str  # the arguments, continuations joined


@dataclass
class Stage:
    base: str
    alias: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [i.value for i in self.instructions if i.name == name]

    def arg_names(self) -> set[str]:
        return {value.split("=", 1)[0].strip() for value in self.all("ARG")}

    def env(self) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for value in self.all("ENV"):
            for token in shlex.split(value):
                key, _, val = token.partition("=")
                pairs[key] = val
        return pairs


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(ARG defaults declared before the first FROM, the stages in order)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, even inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        name, _, value = line.partition(" ")
        name, value = name.upper(), value.strip()
        if name == "FROM":
            parts = value.split()
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            stages.append(Stage(base=parts[0], alias=alias))
        elif not stages:
            assert name == "ARG", f"only ARG may come before the first FROM, not {name}"
            key, _, default = value.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(name, value))
    return global_args, stages


def expand(text: str, variables: dict[str, str]) -> str:
    """${NAME} and $NAME substituted like Docker does for ARG/ENV values."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def final(dockerfile) -> Stage:
    return dockerfile[1][-1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _torch_runs(dockerfile, overrides: dict[str, str] | None = None) -> list[str]:
    global_args, stages = dockerfile
    variables = {**global_args, **(overrides or {})}
    return [
        expand(run, variables)
        for stage in stages for run in stage.all("RUN") if "torch" in run and "pip install" in run
    ]


def test_multi_stage_build_copies_only_the_venv(dockerfile, final):
    _, stages = dockerfile
    assert len(stages) >= 2
    builder = stages[0]
    assert builder.alias == "builder"
    assert any("venv" in run for run in builder.all("RUN"))
    assert final.all("COPY") == ["--from=builder /opt/venv /opt/venv"]
    assert not any("pip install" in run for run in final.all("RUN")), "installs belong in the builder"


def test_final_stage_runs_as_a_created_non_root_user(final):
    users = final.all("USER")
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert any(f"useradd" in run and user in run for run in final.all("RUN"))
    names = [i.name for i in final.instructions]
    assert names.index("USER") < names.index("CMD")


def test_torch_is_cpu_2_13_0_by_default_and_the_index_is_a_build_arg(dockerfile):
    global_args, stages = dockerfile
    assert global_args["TORCH_INDEX_URL"] == CPU_INDEX
    assert global_args["TORCH_VERSION"] == "2.13.0"
    # The same pin the Makefile's constraints file enforces.
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()

    assert _torch_runs(dockerfile) == [f"pip install --index-url {CPU_INDEX} torch==2.13.0"]
    cuda = "https://download.pytorch.org/whl/cu128"
    assert _torch_runs(dockerfile, {"TORCH_INDEX_URL": cuda}) == [f"pip install --index-url {cuda} torch==2.13.0"]
    # A global ARG is only visible in a stage that declares it again.
    builder = stages[0]
    assert {"TORCH_INDEX_URL", "TORCH_VERSION"} <= builder.arg_names()


def test_the_package_is_installed_with_the_constraints_file(dockerfile):
    builder = dockerfile[1][0]
    runs = builder.all("RUN")
    package = [run for run in runs if re.search(r"pip install .*-c constraints\.txt \.$", run)]
    assert package, runs
    # torch comes first, so the constraints keep it instead of resolving a new one.
    assert runs.index(package[0]) > runs.index(next(r for r in runs if "torch==" in r))


def test_every_variable_used_in_run_is_declared_in_its_stage(dockerfile):
    _, stages = dockerfile
    for stage in stages:
        known = stage.arg_names() | set(stage.env()) | {"PATH"}
        for run in stage.all("RUN"):
            used = {a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", run)}
            assert used <= known, f"{stage.alias or stage.base}: undeclared {used - known} in {run!r}"


def test_copied_files_exist_and_are_not_ignored(dockerfile):
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#") and not p.startswith("!")]
    builder = dockerfile[1][0]
    for copy in builder.all("COPY"):
        *sources, _dest = copy.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is ignored"


def test_the_builder_copies_every_package_the_distribution_installs(dockerfile):
    # `pip install .` finds only the packages copied in: a missing one installs without error
    # and fails later, e.g. `supportbot bench` without benchmarks/.
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in find["include"]}
    assert {"knowledge", "bot", "benchmarks"} <= packages
    copied = {copy.split()[0].rstrip("/") for copy in dockerfile[1][0].all("COPY")}
    assert packages <= copied, f"not copied into the builder: {packages - copied}"


def test_volumes_for_models_and_data_with_the_hf_cache_inside(final):
    volumes = [v for value in final.all("VOLUME") for v in json.loads(value)]
    assert {"/models", "/app/data"} <= set(volumes)
    env = final.env()
    assert env["HF_HOME"].startswith("/models/")
    assert env["DATA_DIR"] == "/app/data"


def test_ports_are_exposed_and_match_the_settings(final):
    exposed = {p for value in final.all("EXPOSE") for p in value.split()}
    env = final.env()
    assert {env["PORT"], env["METRICS_PORT"]} == exposed


def test_cmd_serves_the_bot(final):
    assert json.loads(final.all("CMD")[-1]) == ["supportbot", "serve"]


def test_no_secrets_are_baked_in(dockerfile, final):
    global_args, stages = dockerfile
    names = set(global_args) | {n for stage in stages for n in stage.arg_names() | set(stage.env())}
    assert not [n for n in names if re.search(r"TOKEN|SECRET|KEY|PASSWORD", n, re.IGNORECASE)]
    text = (ROOT / "Dockerfile").read_text()
    assert redact(text) == text  # nothing shaped like a Slack/OpenAI/Bearer token


def test_dockerignore_keeps_local_state_out():
    patterns = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "data", ".git", ".env", ".pytest_cache", "**/__pycache__"} <= patterns


def _healthcheck_code(argv: list[str]) -> str:
    assert argv[:2] == ["python", "-c"], argv
    return argv[2]


def _run_check(code: str, port: int) -> int:
    env = {"METRICS_PORT": str(port), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30).returncode


@pytest.fixture
def health_server():
    with ObservabilityServer(metrics=Metrics(process_metrics=False), port=0, host="127.0.0.1") as server:
        yield server


def test_dockerfile_healthcheck_probes_healthz(final, health_server):
    (value,) = final.all("HEALTHCHECK")
    options, _, command = value.partition(" CMD ")
    assert "--start-period=" in options and "--timeout=" in options
    argv = json.loads(command)
    code = _healthcheck_code(argv)
    assert "/healthz" in code and "urllib" in code
    assert _run_check(code, health_server.port) == 0
    port = health_server.port
    health_server.stop()
    assert _run_check(code, port) != 0


# -- docker-compose.yml ---------------------------------------------------------


def test_compose_runs_the_bot_against_milvus_standalone(compose):
    services = compose["services"]
    assert {"postgres", "etcd", "minio", "standalone", "bot"} <= set(services)  # tests/test_deploy.py: the rest
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5")
    assert services["minio"]["image"].startswith("minio/minio:")
    # Milvus 2.5+ by default: BM25 hybrid search (2.4 stays a documented fallback).
    assert re.fullmatch(r"milvusdb/milvus:\$\{MILVUS_IMAGE_TAG:-v2\.([5-9]|\d\d)\.\d+\}", services["standalone"]["image"])
    standalone_env = services["standalone"]["environment"]
    assert standalone_env == {"ETCD_ENDPOINTS": "etcd:2379", "MINIO_ADDRESS": "minio:9000"}

    bot = services["bot"]
    assert bot["build"]["context"] == "."
    assert bot["command"] == ["supportbot", "serve"]
    assert bot["environment"]["MILVUS_URI"] == "http://standalone:19530"
    assert bot["env_file"] == [".env"]
    targets = {volume.split(":")[1] for volume in bot["volumes"]}
    assert {"/models", "/app/data"} <= targets


def test_compose_starts_services_only_when_their_dependencies_are_healthy(compose):
    services = compose["services"]
    assert services["bot"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "standalone": {"condition": "service_healthy"},
    }
    assert services["standalone"]["depends_on"] == {
        "etcd": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
    }
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check["test"][0] == "CMD" and check["retries"] >= 1, name


def test_compose_volumes_are_named_and_declared(compose):
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in declared, f"{name}: {source} is not a declared named volume"


def test_compose_publishes_ports_on_localhost_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"
    assert "ports" not in compose["services"]["minio"] and "ports" not in compose["services"]["etcd"]


def test_compose_bot_healthcheck_probes_healthz(compose, health_server):
    code = _healthcheck_code(compose["services"]["bot"]["healthcheck"]["test"][1:])
    assert _run_check(code, health_server.port) == 0
    port = health_server.port
    health_server.stop()
    assert _run_check(code, port) != 0


def test_compose_has_no_secrets_inline(compose):
    bot_env = compose["services"]["bot"]["environment"]
    assert not [k for k in bot_env if re.search(r"TOKEN|SECRET|KEY|PASSWORD", k)]
