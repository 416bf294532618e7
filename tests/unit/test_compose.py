"""compose.yaml and the Dockerfile run only what the project has and set only what it reads.

No container engine runs here, so these tests check what can be checked without one: the file
parses, every command a project service runs is a console script whose subcommand and options
exist, every environment variable set on a project service is read by the service's source (found
by a scan, so a variable nobody reads fails), and the promises of the file hold: health checks,
the model store at ML_BASE_PATH, ports on loopback only, one beat, start-up order.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import re
import runpy
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: a dev dependency

from training_tasks.config.settings import PROJECT_ROOT, SOURCE_SCRIPT, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SOURCE_DIRS = ("training_tasks", "workers", "beat_schedules")
SERVICES = ("redis", "postgres", "migrate", "worker", "beat", "flower", "predict", "ui")
# Read by the programs in the images themselves, not by the service.
SET_BY_DOCKER = {"HOSTNAME"}
# Read by the object-store client (obstore) from the environment, not by the service's source.
READ_BY_STORE_CLIENT = {
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}
SEVERAL_HOSTS = ("store", "store-bucket", "worker-a", "worker-b", "predict-remote")
ENV_MAPPINGS = {"os.environ", "environ", "env"}
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


# --- reading the files ---------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def project_services() -> dict[str, dict[str, Any]]:
    """The services that run this project's image (built from the Dockerfile)."""
    return {name: svc for name, svc in services().items() if "build" in svc}


def one_shot_services() -> set[str]:
    """Services that others wait for to finish (the migration step)."""
    return {
        dep
        for svc in services().values()
        for dep, how in _depends_on(svc).items()
        if how.get("condition") == "service_completed_successfully"
    }


def _depends_on(svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = svc.get("depends_on") or {}
    return {name: {} for name in deps} if isinstance(deps, list) else deps


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def healthcheck_argv(svc: dict[str, Any]) -> list[str]:
    """The health check as the container runs it (`$$` is compose's escape for `$`)."""
    test = svc["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test.replace("$$", "$"))
    kind, *rest = test
    if kind == "CMD-SHELL":
        return shlex.split(" ".join(rest).replace("$$", "$"))
    assert kind == "CMD", f"unknown health check form {kind!r}"
    return [a.replace("$$", "$") for a in rest]


def interpolate(value: Any) -> str:
    """What compose makes of `${NAME:-default}` with nothing set in the shell or `.env`."""
    text = str(value).replace("$$", "\0")
    return INTERPOLATION.sub(lambda m: m.group(2) or "", text).replace("\0", "$")


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    # A name without a value (`FLOWER_BASIC_AUTH:`) passes the shell's value through.
    return {name: interpolate(value or "") for name, value in env.items()}


def volume_mounts(svc: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each mount."""
    mounts = []
    for spec in svc.get("volumes") or []:
        if isinstance(spec, dict):
            mounts.append((spec["source"], spec["target"], bool(spec.get("read_only"))))
        else:
            source, target, *mode = spec.split(":")
            mounts.append((source, target, "ro" in (mode[0].split(",") if mode else [])))
    return mounts


def published_ports(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port."""
    ports = []
    for spec in svc.get("ports") or []:
        if isinstance(spec, dict):
            ports.append((spec.get("host_ip", ""), str(spec["published"]), str(spec["target"])))
        else:
            parts = str(spec).rsplit(":", 2)
            host_ip, published, target = ["", *parts] if len(parts) == 2 else parts
            ports.append((host_ip, published, target))
    return ports


def option_value(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# --- what the service reads ----------------------------------------------------------------------


@cache
def variables_read() -> dict[str, frozenset[str]]:
    """Every environment variable the service's source reads, with the files that read it."""
    files = [ROOT / "celeryconfig.py"]
    for folder in SOURCE_DIRS:
        files += sorted((ROOT / folder).rglob("*.py"))
    reads: dict[str, set[str]] = {}
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            for name in _names_read(node):
                reads.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return {name: frozenset(paths) for name, paths in reads.items()}


def _names_read(node: ast.AST) -> list[str]:
    """`os.environ.get("X")`, `env.get("X")`, `os.getenv("X")`, `os.environ["X"]`,
    `read_positive(env, "X", ...)` (a helper handed the environment), and the names in the sandbox's
    `ENV_ALLOWED`, which the worker passes on to the training script (OMP_NUM_THREADS)."""
    found: list[ast.expr] = []
    if isinstance(node, ast.Call):
        func = ast.unparse(node.func)
        if (func.endswith(".get") and func[: -len(".get")] in ENV_MAPPINGS) or func == "os.getenv":
            found += node.args[:1]
        found += [b for a, b in zip(node.args, node.args[1:], strict=False) if _is_env(a)]
    elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        if ast.unparse(node.value) in ENV_MAPPINGS:
            found.append(node.slice)
    elif isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "ENV_ALLOWED" for t in node.targets
    ):
        found += [n for n in ast.walk(node.value) if isinstance(n, ast.Constant)]
    return [
        n.value
        for n in found
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and ENV_NAME.match(n.value)
    ]


def _is_env(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Name | ast.Attribute) and ast.unparse(expr) in ENV_MAPPINGS


# --- what the project can run --------------------------------------------------------------------


@cache
def console_scripts() -> dict[str, str]:
    """Console scripts of this project and of its own dependencies, with their distribution."""
    ours = "training-service"
    names = {_normal(ours)}
    for req in importlib.metadata.requires(ours) or []:
        if "extra ==" not in req:
            names.add(_normal(re.split(r"[^A-Za-z0-9._-]", req, maxsplit=1)[0]))
    return {
        ep.name: ep.dist.name
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.dist is not None and _normal(ep.dist.name) in names
    }


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def run_help(*args: str) -> subprocess.CompletedProcess[str]:
    """`<program> <args> --help`, run in this interpreter from the project's root."""
    return subprocess.run(
        [sys.executable, "-m", *args, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def subcommand(args: list[str]) -> list[str]:
    """The words of a command line before its first option: `db upgrade`, `serve`."""
    words = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    return words


def long_options(args: list[str]) -> set[str]:
    return {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}


# --- compose.yaml --------------------------------------------------------------------------------


def test_compose_defines_every_service_of_the_system() -> None:
    assert set(SERVICES) <= set(services()), sorted(set(SERVICES) - set(services()))
    assert set(project_services()) == {
        *("migrate", "worker", "beat", "flower", "predict", "ui"),
        *("worker-a", "worker-b", "predict-remote"),  # profile several-hosts
    }


def test_redis_keeps_an_append_only_file_never_evicts_and_answers_ping() -> None:
    redis = services()["redis"]
    args = argv(redis["command"])
    assert redis["image"].startswith("redis:7")
    assert option_value(args, "--appendonly") == "yes"
    assert option_value(args, "--maxmemory-policy") == "noeviction"
    assert healthcheck_argv(redis) == ["redis-cli", "ping"]
    assert any(target == "/data" for _, target, _ in volume_mounts(redis))


def test_postgres_keeps_its_data_in_a_volume_and_is_checked_with_pg_isready() -> None:
    postgres = services()["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert healthcheck_argv(postgres)[0] == "pg_isready"
    assert any(t == "/var/lib/postgresql/data" for _, t, _ in volume_mounts(postgres))


def test_every_project_command_is_a_console_script_of_the_project_or_its_dependencies() -> None:
    scripts = console_scripts()
    programs = {name: argv(svc["command"])[0] for name, svc in project_services().items()}
    unknown = {name: program for name, program in programs.items() if program not in scripts}
    assert not unknown, f"not a console script of this project or its dependencies: {unknown}"
    assert scripts["trainctl"] == "training-service"


@pytest.mark.parametrize("service", ["migrate", "predict"])
def test_every_trainctl_subcommand_and_option_compose_uses_exists(service: str) -> None:
    program, *args = argv(services()[service]["command"])
    assert program == "trainctl"
    done = run_help("training_tasks.cli", *subcommand(args))
    assert done.returncode == 0, done.stderr
    missing = {opt for opt in long_options(args) if opt not in done.stdout}
    assert not missing, f"`trainctl {' '.join(subcommand(args))}` has no option {missing}"


@pytest.mark.parametrize("service", ["worker", "beat", "flower"])
def test_every_celery_command_loads_the_app_and_its_subcommand_and_options_exist(
    service: str,
) -> None:
    program, *args = argv(services()[service]["command"])
    assert program == "celery"
    assert args[:2] == ["-A", "training_tasks"]
    sub = subcommand(args[2:])
    done = run_help("celery", "-A", "training_tasks", *sub)
    assert done.returncode == 0, done.stderr
    if sub == ["flower"]:  # Flower's own options are tornado options, not in --help
        from flower.options import options

        known = {f"--{name}" for name in options.as_dict()}
        missing = long_options(args) - known
    else:
        missing = {opt for opt in long_options(args) if opt not in done.stdout}
    assert not missing, f"`celery {' '.join(sub)}` has no option {missing}"


def test_the_scan_of_the_source_finds_variables_read_in_each_way() -> None:
    reads = variables_read()
    assert {"training_tasks/config/settings.py", "celeryconfig.py"} <= reads["TRAINING_TIMEOUT_S"]
    assert "training_tasks/config/settings.py" in reads["ALERT_WEBHOOK_URL"]  # _http_url(env, ...)
    assert "celeryconfig.py" in reads["BEAT_MAX_INTERVAL_S"]  # read_positive(os.environ, ...)
    assert "training_tasks/sandbox/runner.py" in reads["OMP_NUM_THREADS"]  # passed on to training
    assert "POSTGRES_PASSWORD" not in reads


def test_every_environment_variable_set_on_a_project_service_is_read_by_the_service() -> None:
    reads = variables_read()
    unread = {
        f"{service}: {name}"
        for service, svc in project_services().items()
        for name in environment(svc)
        # Flower reads its own FLOWER_* options from the environment.
        if name not in reads
        and name not in READ_BY_STORE_CLIENT
        and not (service == "flower" and name.startswith("FLOWER_"))
    }
    names = {name for svc in project_services().values() for name in environment(svc)}
    readers = {name: sorted(reads[name]) for name in sorted(names & set(reads))}
    assert not unread, (
        f"set in compose.yaml but read nowhere in celeryconfig.py, {', '.join(SOURCE_DIRS)}: "
        f"{sorted(unread)}; the others are read by {readers}"
    )


def test_the_service_accepts_the_environment_compose_gives_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for service, svc in project_services().items():
        env = environment(svc)
        settings = Settings.from_env(env)
        assert settings.ml_base_path == Path(env["ML_BASE_PATH"]), service
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        config = runpy.run_path(str(ROOT / "celeryconfig.py"))
        assert config["broker_url"] == env["REDIS_URL"], service


def test_the_service_database_is_the_postgres_service_through_psycopg() -> None:
    from sqlalchemy.engine import make_url

    postgres = environment(services()["postgres"])
    for service, svc in project_services().items():
        url = make_url(environment(svc)["DATABASE_URL"])
        assert url.drivername == "postgresql+psycopg", service
        assert (url.host, url.database) == ("postgres", postgres["POSTGRES_DB"]), service
        assert (url.username, url.password) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
        ), service
        assert environment(svc)["REDIS_URL"].startswith("redis://redis:6379/"), service


def test_every_long_running_project_service_has_a_healthcheck() -> None:
    long_running = set(project_services()) - one_shot_services()
    assert long_running == {
        "worker",
        "beat",
        "flower",
        "predict",
        "ui",
        "worker-a",
        "worker-b",
        "predict-remote",
    }
    missing = {s for s in long_running if not services()[s].get("healthcheck", {}).get("test")}
    assert not missing, f"no health check: {sorted(missing)}"


def test_health_checks_run_existing_programs_and_project_code() -> None:
    for name, svc in project_services().items():
        if "healthcheck" not in svc:
            continue
        program, *args = healthcheck_argv(svc)
        if program == "python":
            assert args[0] == "-c", name
            _check_python_snippet(name, args[1])
        else:
            assert program in console_scripts(), f"{name}: {program} is not a console script"


def _check_python_snippet(service: str, code: str) -> None:
    """The code compiles, its imports resolve and it reads only variables it is given."""
    tree = ast.parse(code)
    given = set(environment(services()[service])) | SET_BY_DOCKER
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert importlib.util.find_spec(alias.name), f"{service}: no module {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{service}: no {node.module}.{alias.name}"
        for name in _names_read(node):
            assert name in given, f"{service}: the health check reads {name}, which is not set"


def test_the_worker_healthcheck_pings_the_workers_own_node_name() -> None:
    worker = services()["worker"]
    node = option_value(argv(worker["command"]), "--hostname") or "celery@%h"
    check = healthcheck_argv(worker)
    assert check[:5] == ["celery", "-A", "training_tasks", "inspect", "ping"]
    # %h is the worker's host name; in a container $HOSTNAME is that same name.
    assert node == "celery@%h"
    assert option_value(check, "--destination") == "celery@$HOSTNAME"
    options = run_help("celery", "-A", "training_tasks", "inspect").stdout
    assert {"--destination", "--timeout"} <= {o for o in long_options(check) if o in options}
    ping = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "training_tasks", "inspect", "--list"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert re.search(r"^\s+ping\b", ping.stdout, re.MULTILINE), ping.stdout + ping.stderr


def test_the_model_store_volume_is_mounted_at_ml_base_path_where_models_are_read() -> None:
    sources = set()
    for name in ("worker", "predict"):
        svc = services()[name]
        base = environment(svc)["ML_BASE_PATH"]
        mounts = {target: (source, ro) for source, target, ro in volume_mounts(svc)}
        assert base in mounts, f"{name} does not mount the model store at {base}"
        sources.add(mounts[base][0])
        assert mounts[base][0] in (compose().get("volumes") or {}), f"{name}: not a named volume"
    assert len(sources) == 1, f"worker and predict mount different model stores: {sources}"
    worker_mounts = {t: ro for _, t, ro in volume_mounts(services()["worker"])}
    assert not worker_mounts[environment(services()["worker"])["ML_BASE_PATH"]], "worker needs rw"


def test_the_several_hosts_profile_has_a_store_and_workers_that_share_no_volume() -> None:
    profile = {n for n, svc in services().items() if "several-hosts" in (svc.get("profiles") or [])}
    assert profile == set(SEVERAL_HOSTS)
    hosts = ("worker-a", "worker-b", "predict-remote")
    folders = {}
    for name in hosts:
        env = environment(services()[name])
        assert env["MODEL_STORE_URL"].startswith("s3://"), name
        assert env["AWS_ENDPOINT_URL"] == "http://store:9000", name
        mounts = {target: (source, ro) for source, target, ro in volume_mounts(services()[name])}
        _, read_only = mounts[env["ML_BASE_PATH"]]
        assert not read_only, f"{name} writes its working folder (a cache of the store)"
        folders[name] = {source for source, _, _ in volume_mounts(services()[name])}
    assert not folders["worker-a"] & folders["worker-b"], "the two workers share a volume"
    assert not folders["predict-remote"] & (folders["worker-a"] | folders["worker-b"])
    bucket = environment(services()["worker-a"])["MODEL_STORE_URL"].split("/")[2]
    assert f"store/{bucket}" in " ".join(argv(services()["store-bucket"]["command"]))
    for name in hosts:
        assert _depends_on(services()[name])["store-bucket"] == {
            "condition": "service_completed_successfully"
        }, name


def test_ports_are_published_on_the_loopback_address_only() -> None:
    for name, svc in services().items():
        for host_ip, _, _ in published_ports(svc):
            assert host_ip == "127.0.0.1", f"{name} publishes a port on {host_ip or 'all'}"


@pytest.mark.parametrize("service", ["flower", "predict", "ui"])
def test_web_services_listen_on_every_container_address_on_the_published_port(
    service: str,
) -> None:
    svc = services()[service]
    args = argv(svc["command"])
    host = option_value(args, "--address") or option_value(args, "--host")
    assert host == "0.0.0.0", f"{service} binds {host}; Docker could not publish the port"
    [(_, _, container_port)] = published_ports(svc)
    assert option_value(args, "--port") == container_port


def test_beat_runs_as_exactly_one_replica() -> None:
    beat = services()["beat"]
    assert int((beat.get("deploy") or {}).get("replicas", 1)) == 1
    assert int(beat.get("scale", 1)) == 1


def test_services_start_after_the_migration_and_healthy_redis_and_postgres() -> None:
    assert _depends_on(services()["migrate"]) == {"postgres": {"condition": "service_healthy"}}
    for name in ("worker", "beat", "predict"):
        deps = _depends_on(services()[name])
        assert deps.get("migrate") == {"condition": "service_completed_successfully"}, name
        assert deps.get("redis") == {"condition": "service_healthy"}, name
    assert _depends_on(services()["flower"]).get("redis") == {"condition": "service_healthy"}


# --- Dockerfile and .dockerignore ----------------------------------------------------------------


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def copy_sources() -> list[str]:
    sources = []
    for instruction, args in dockerfile():
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        if instruction in ("COPY", "ADD") and "--from" not in args:
            sources += words[:-1]
    return sources


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (the last match decides)."""
    patterns = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()]
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        regex = _glob(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def _glob(pattern: str) -> re.Pattern[str]:
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
            token, re.escape(token)
        )
    return re.compile(out)


needs_dockerfile = pytest.mark.skipif(not DOCKERFILE.exists(), reason="no Dockerfile")


@needs_dockerfile
def test_compose_builds_the_projects_dockerfile() -> None:
    for name, svc in project_services().items():
        build = svc["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context / "Dockerfile").resolve() == DOCKERFILE, name


@needs_dockerfile
def test_the_image_installs_the_project_with_pip() -> None:
    runs = [args for instruction, args in dockerfile() if instruction == "RUN"]
    assert any(re.search(r"\bpip install\b[^&;]*\s\.(\s|$)", run) for run in runs), runs


@needs_dockerfile
def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = copy_sources()
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the project"
        assert not dockerignored(source), f"COPY {source}: .dockerignore leaves it out"


@needs_dockerfile
def test_the_image_copies_everything_pyproject_builds_from() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = project["tool"]["setuptools"]
    package_dirs = setuptools.get("package-dir", {})
    needed = {"pyproject.toml", project["project"]["readme"]}
    for module in setuptools.get("py-modules", []):
        package, _, name = module.rpartition(".")
        needed.add(f"{package_dirs[package]}/{name}.py" if package else f"{module}.py")
    find = setuptools["packages"]["find"]
    for where in find.get("where", ["."]):
        for pattern in find["include"]:
            top = Path(where, pattern.split(".")[0].rstrip("*"))
            if (ROOT / top).is_dir():
                needed.add(top.as_posix())
    copied = {Path(s).as_posix().rstrip("/") for s in copy_sources()}
    # A folder copied whole brings everything inside it.
    missing = {n for n in needed if not any(n == c or n.startswith(f"{c}/") for c in copied)}
    assert not missing, f"not copied into the image: {sorted(missing)}"


@needs_dockerfile
def test_the_image_checks_that_the_installed_package_finds_its_training_script() -> None:
    # The wheel is built from ml/scripts/train_model.py and carries it inside the package.
    assert SOURCE_SCRIPT.relative_to(PROJECT_ROOT).as_posix() in copy_sources()
    runs = [args for instruction, args in dockerfile() if instruction == "RUN"]
    assert any(
        "pip install" in run and "BUNDLED_SCRIPT" in run and "is_file()" in run for run in runs
    ), runs


@needs_dockerfile
def test_the_dockerignore_keeps_runtime_data_secrets_and_the_virtualenv_out() -> None:
    for path in (".venv/bin/python", "ml/models/acme/current", ".git/HEAD", ".env"):
        assert dockerignored(path), path
    assert not dockerignored("ml/scripts/train_model.py")
