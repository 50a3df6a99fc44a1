"""infra/: the compose stack, the GPU work-pool template and the Dockerfiles, checked without Docker.

There is no Docker engine on the project machine, so nothing here builds or runs a container:
the compose file is validated against the compose spec (check-jsonschema, offline) and against
the contract the pipeline needs; the job template is rendered by Prefect's own process-worker
code; the Dockerfiles are checked as text. Each check is also shown to fail on a broken copy.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
GPU_TEMPLATE = INFRA / "work-pools" / "gpu-process.json"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
DOCKERFILE_GPU = INFRA / "docker" / "Dockerfile.gpu"
BIN = Path(sys.executable).parent
STORE = "/data/latentstore-data"


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """Subprocess environment: a private PREFECT_HOME, no telemetry, no API to talk to."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    out = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # An address nothing listens on: any accidental API call fails fast instead of starting a server.
    out.update(PREFECT_HOME=str(home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL="http://127.0.0.1:9/api")
    return out


def run(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- (a) compose spec

def check_compose(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)], env)


def test_compose_file_validates_against_the_compose_spec(env):
    result = check_compose(COMPOSE, env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("breakage, expected", [
    (lambda text: text.replace('    ports:\n      - "4200:4200"', '    ports: "not-a-list"', 1),
     "is not of type 'array'"),
    (lambda text: text.replace("\nservices:\n", "\nbogus_top_level: 1\nservices:\n", 1), "bogus_top_level"),
    (lambda text: text.replace("    depends_on:\n      postgres:\n        condition: service_healthy",
                               "    depends_on:\n      postgres:\n        condition: when_it_feels_like_it", 1),
     "when_it_feels_like_it"),
], ids=["ports-not-a-list", "unknown-top-level-key", "bad-depends-on-condition"])
def test_broken_compose_copies_fail_validation(tmp_path, env, breakage, expected):
    text = COMPOSE.read_text()
    broken = breakage(text)
    assert broken != text, "the breakage did not apply: update this test with the compose file"
    path = tmp_path / "docker-compose.yml"
    path.write_text(broken)
    result = check_compose(path, env)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr


# --------------------------------------------------------------------------- (b) compose contract

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} with VAR unset, as on a fresh host."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def environment(service: dict) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate(str(v)) for k, v in raw.items()}


def command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return [interpolate(part) for part in (shlex.split(cmd) if isinstance(cmd, str) else cmd)]


def option(cmd: list[str], name: str) -> str:
    assert name in cmd, f"{name} missing from {cmd}"
    return cmd[cmd.index(name) + 1]


def mounts(service: dict) -> dict[str, str]:
    """target path -> source, for short ("src:dst[:mode]") and long volume syntax."""
    out = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source"), volume["target"]
        out[target] = source
    return out


def test_server_is_backed_by_postgres(compose):
    services = compose["services"]
    postgres, server = services["postgres"], services["prefect-server"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    data = mounts(postgres)["/var/lib/postgresql/data"]
    assert data in compose["volumes"], "the database lives on a named volume"

    server_env = environment(server)
    url = urlsplit(server_env["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert url.scheme == "postgresql+asyncpg"
    assert url.hostname == "postgres" and url.hostname in services
    assert url.username == postgres["environment"]["POSTGRES_USER"]
    assert url.path.lstrip("/") == postgres["environment"]["POSTGRES_DB"]
    assert url.password == interpolate(postgres["environment"]["POSTGRES_PASSWORD"])
    assert server_env["PREFECT_SERVER_API_HOST"] == "0.0.0.0"
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "4200:4200" in server["ports"]
    assert command(server)[:3] == ["prefect", "server", "start"]


def test_worker_polls_the_latentstore_process_pool_on_the_server(compose):
    services = compose["services"]
    worker = services["prefect-worker"]
    cmd = command(worker)
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert option(cmd, "--pool") == "latentstore"
    assert option(cmd, "--type") == "process"
    worker_env = environment(worker)
    api = urlsplit(worker_env["PREFECT_API_URL"])
    assert api.hostname == "prefect-server" and api.hostname in services
    assert api.port == 4200 and api.path == "/api"
    assert worker_env["LATENTSTORE_HOME"] == "/app"
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"


def test_spark_worker_registers_with_the_master(compose):
    services = compose["services"]
    master, worker = services["spark-master"], services["spark-worker"]
    master_cmd, worker_cmd = command(master), command(worker)
    assert master_cmd[:2] == ["spark-class", "org.apache.spark.deploy.master.Master"]
    assert worker_cmd[:2] == ["spark-class", "org.apache.spark.deploy.worker.Worker"]
    master_host = option(master_cmd, "--host")
    assert master_host in {"spark-master", master.get("hostname")}
    master_url = f"spark://{master_host}:{option(master_cmd, '--port')}"
    assert worker_cmd[2] == master_url == "spark://spark-master:7077"
    assert {"7077:7077", f"{option(master_cmd, '--webui-port')}:8080"} <= set(master["ports"])
    # The compose file's header tells the pipeline config to use this same URL.
    assert f'master = "{master_url}"' in COMPOSE.read_text()


def test_store_is_shared_at_the_same_path_by_driver_and_executors(compose):
    services = compose["services"]
    driver, executors = mounts(services["prefect-worker"]), mounts(services["spark-worker"])
    assert STORE in driver and STORE in executors
    assert driver[STORE] == executors[STORE]
    source = driver[STORE]
    assert source in compose["volumes"] or source.startswith(("/", ".")), "a named volume or a bind mount"
    assert environment(services["prefect-worker"])["LATENTSTORE_STORE"] == STORE
    gpu = services.get("prefect-worker-gpu")
    if gpu is not None:
        assert mounts(gpu).get(STORE) == source


def test_driver_and_executors_share_one_project_image(compose):
    services = compose["services"]
    nodes = [services[name] for name in ("prefect-worker", "spark-master", "spark-worker", "prefect-server")]
    assert len({(node["image"], json.dumps(node["build"], sort_keys=True)) for node in nodes}) == 1
    build = nodes[0]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    gpu = services["prefect-worker-gpu"]
    assert (COMPOSE.parent / gpu["build"]["context"] / gpu["build"]["dockerfile"]).resolve() == DOCKERFILE_GPU
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image} by tag"


# --------------------------------------------------------------------------- (c) GPU job template

PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")


def undeclared_placeholders(template: dict) -> set[str]:
    """Placeholders in job_configuration that variables.properties does not declare (what the server refuses)."""
    used = {name.split(".")[0] for name in PLACEHOLDER.findall(json.dumps(template["job_configuration"]))}
    return used - set(template["variables"].get("properties", {}))


@pytest.fixture(scope="module")
def gpu_template() -> dict:
    return json.loads(GPU_TEMPLATE.read_text())


@pytest.fixture
def default_template(env, tmp_path) -> dict:
    out = tmp_path / "default.json"
    result = run([str(BIN / "prefect"), "work-pool", "get-default-base-job-template", "--type", "process",
                  "--file", str(out)], env)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text())


def test_gpu_template_is_a_job_template_with_declared_variables(gpu_template):
    import jsonschema

    assert set(gpu_template) == {"job_configuration", "variables"}
    variables = gpu_template["variables"]
    assert variables["type"] == "object"
    jsonschema.Draft202012Validator.check_schema(variables)
    assert PLACEHOLDER.search(json.dumps(gpu_template["job_configuration"]))
    assert undeclared_placeholders(gpu_template) == set()
    for name, schema in variables["properties"].items():
        if "default" in schema:
            jsonschema.validate(schema["default"], schema)  # every default satisfies its own schema
    # The check itself catches an undeclared variable.
    broken = json.loads(json.dumps(gpu_template))
    broken["job_configuration"]["env"]["EXTRA"] = "{{ not_declared }}"
    assert undeclared_placeholders(broken) == {"not_declared"}


def test_gpu_template_extends_the_default_process_template(gpu_template, default_template):
    job, props = gpu_template["job_configuration"], gpu_template["variables"]["properties"]
    assert set(default_template["job_configuration"]) <= set(job)
    assert set(default_template["variables"]["properties"]) <= set(props)
    # Prefect's own variables keep their types: only titles, descriptions and defaults may change.
    cosmetic = {"title", "description", "default"}
    for name, schema in default_template["variables"]["properties"].items():
        strip = lambda s: {k: v for k, v in s.items() if k not in cosmetic}  # noqa: E731
        assert strip(props[name]) == strip(schema), name
    assert {"CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "LATENTSTORE_STORE"} <= set(job["env"])
    assert props["working_dir"]["default"] == "/app"
    assert props["latentstore_store"]["default"] == STORE


_RENDER = """
import asyncio, json, sys
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.workers.process import ProcessJobConfiguration
template = json.load(open(sys.argv[1]))
WorkPoolCreate(name="latentstore-gpu", type="process", base_job_template=template)  # the server's own check
out = []
for values in json.loads(sys.argv[2]):
    config = asyncio.run(ProcessJobConfiguration.from_template_and_values(template, values))
    out.append({"env": config.env, "working_dir": str(config.working_dir), "stream_output": config.stream_output})
print(json.dumps(out))
"""


def test_process_worker_renders_the_gpu_template(env):
    """What a `latentstore-gpu` worker hands a flow run: pool defaults, deployment overrides merged on top."""
    values = [{}, {"cuda_visible_devices": "1", "env": {"OMP_NUM_THREADS": "8", "EXTRA": "x"}}]
    result = run([sys.executable, "-c", _RENDER, str(GPU_TEMPLATE), json.dumps(values)], env)
    assert result.returncode == 0, result.stdout + result.stderr
    defaults, overridden = json.loads(result.stdout.strip().splitlines()[-1])
    assert defaults["env"] == {"CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "4", "LATENTSTORE_STORE": STORE}
    assert defaults["working_dir"] == "/app" and defaults["stream_output"] is True
    assert overridden["env"] == {"CUDA_VISIBLE_DEVICES": "1", "OMP_NUM_THREADS": "8", "LATENTSTORE_STORE": STORE,
                                 "EXTRA": "x"}


# --------------------------------------------------------------------------- (d) Dockerfiles

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += stripped
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        word, _, args = current.partition(" ")
        out.append((word.upper(), " ".join(args.split())))
        current = ""
    return out


def torch_pin() -> str:
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch==")]
    assert len(pins) == 1
    return pins[0]


def constraint_problems(text: str) -> list[str]:
    """Every pip install uses constraints.txt, copied in before; the project itself is installed."""
    problems, copied, installs_project = [], False, False
    for word, args in instructions(text):
        if word == "COPY" and "constraints.txt" in args.split()[:-1]:
            copied = True
        if word != "RUN":
            continue
        for part in re.split(r"&&|;", args):
            if "pip install" not in part:
                continue
            tokens = part.split()
            if "-c constraints.txt" not in part and "--constraint constraints.txt" not in part:
                problems.append(f"pip install without -c constraints.txt: {part.strip()}")
            elif not copied:
                problems.append("constraints.txt used before it is copied in")
            installs_project |= "." in tokens
    if not installs_project:
        problems.append("the project is never installed (pip install -c constraints.txt .)")
    return problems


def gpu_problems(text: str) -> list[str]:
    """The GPU image takes the CUDA torch: PyPI's torch==<pin>, never the CPU index or a +cpu wheel."""
    body = " ".join(f"{word} {args}" for word, args in instructions(text))
    problems = [f"found {bad!r}" for bad in ("TORCH_CPU_INDEX", "whl/cpu", "+cpu", "--index-url", "cpuonly")
                if bad in body]
    if torch_pin() not in body:
        problems.append(f"{torch_pin()} is not installed")
    return problems


def test_dockerfiles_install_with_constraints():
    for path in (DOCKERFILE, DOCKERFILE_GPU):
        assert constraint_problems(path.read_text()) == [], path.name
    # and the check catches a drifting install
    broken = DOCKERFILE_GPU.read_text().replace("pip install -c constraints.txt .", "pip install .")
    assert constraint_problems(broken)


def test_cpu_image_has_java_and_the_pinned_python():
    steps = instructions(DOCKERFILE.read_text())
    assert steps[0][0] == "FROM" and steps[0][1].startswith("python:3.11-slim")
    assert any(word == "RUN" and "openjdk-17-jre-headless" in args for word, args in steps)
    assert any(word == "RUN" and torch_pin() in args for word, args in steps)


def test_gpu_image_takes_the_cuda_torch_and_runs_the_gpu_pool_worker():
    text = DOCKERFILE_GPU.read_text()
    steps = instructions(text)
    assert steps[0][0] == "FROM" and re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+",
                                                  steps[0][1])
    assert any(word == "RUN" and "python3.11" in args for word, args in steps)
    assert gpu_problems(text) == []
    cmd = json.loads(next(args for word, args in steps if word == "CMD"))
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert option(cmd, "--pool") == "latentstore-gpu" and option(cmd, "--type") == "process"
    template = Path(option(cmd, "--base-job-template"))
    assert ROOT / template.relative_to("/app") == GPU_TEMPLATE  # /app is the repo root inside the image
    # The contract fails on a CPU torch.
    cpu = text.replace("pip install -c constraints.txt torch==2.13.0",
                       "pip install -c constraints.txt --index-url \"$TORCH_CPU_INDEX\" torch==2.13.0")
    assert cpu != text and gpu_problems(cpu)
    assert gpu_problems(text.replace(torch_pin(), "torch==2.13.0+cpu"))
