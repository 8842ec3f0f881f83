"""The Dockerfile, checked without a Docker engine.

Lint-level checks read the parsed instructions. The builder stage is also replayed on the
host: its COPY instructions against the build context as .dockerignore filters it, then its RUN
instructions (the frozen `uv sync`), which proves the image gets the service's package and its
dependencies from uv.lock with exactly the files the Dockerfile copies.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SERVICES = ("leads", "opportunities", "campaigns", "reporting")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def logical_lines(text: str) -> Iterator[str]:
    """Instructions with line continuations joined; comment lines dropped, as Docker does."""
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield (pending + line).strip()
        pending = ""
    if pending.strip():
        yield pending.strip()


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), value)


def parse_arg(arguments: str) -> tuple[str, str]:
    name, _, default = arguments.partition("=")
    return name.strip(), default.strip().strip('"')


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(expand(words[0], global_args), name))
        elif stages:
            stages[-1].instructions.append(instruction)
        elif instruction.keyword == "ARG":
            name, default = parse_arg(instruction.arguments)
            global_args[name] = default
    return Dockerfile(global_args, stages)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # moby/patternmatcher semantics: ** spans directories, * and ? stay within one.
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


@dataclass(frozen=True)
class DockerIgnore:
    rules: list[tuple[bool, re.Pattern[str]]]

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                rules.append((line.startswith("!"), _pattern_regex(line.lstrip("!").strip("/"))))
        return cls(rules)

    def excludes(self, path: str) -> bool:
        """Docker's rule: the last pattern matching the path or one of its parents decides."""
        parts = path.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for negated, regex in self.rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                excluded = not negated
        return excluded


def copy_from_context(
    context: Path, source: str, target: Path, into_directory: bool, ignore: DockerIgnore
) -> int:
    """COPY semantics for one source: a file goes to (or into) target, a directory's contents
    into target; files .dockerignore excludes are not in the context. Returns the file count."""
    origin = context / source
    if origin.is_file():
        files = [(origin, target / origin.name if into_directory else target)]
    else:
        files = [(f, target / f.relative_to(origin)) for f in sorted(origin.rglob("*"))]
    copied = 0
    for file, destination in files:
        if file.is_file() and not ignore.excludes(file.relative_to(context).as_posix()):
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, destination)
            copied += 1
    return copied


def replay_builder(
    dockerfile: Dockerfile, context: Path, ignore: DockerIgnore, service: str, rootfs: Path
) -> dict[str, str]:
    """Runs the builder stage's COPY and RUN instructions with rootfs standing in for '/'.

    Host stand-ins: the uv on PATH for the uv image, this interpreter for the base image's
    python; bytecode compilation is skipped (it only costs time here). Returns the stage's ENV.
    """
    variables: dict[str, str] = {}
    env: dict[str, str] = {}
    workdir = rootfs
    for instruction in dockerfile.stage("builder").instructions:
        keyword, arguments = instruction.keyword, instruction.arguments
        if keyword == "ARG":
            name, default = parse_arg(arguments)
            variables[name] = (
                service if name == "SERVICE" else default or dockerfile.global_args.get(name, "")
            )
        elif keyword == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                env[key] = expand(value, variables | env)
        elif keyword == "WORKDIR":
            workdir = rootfs / expand(arguments, variables | env).lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY" and "--from=" not in arguments:
            *sources, destination = [expand(word, variables | env) for word in shlex.split(arguments)]
            target = workdir / destination
            for source in sources:
                into = destination.endswith("/") or len(sources) > 1
                assert copy_from_context(context, source, target, into, ignore), (
                    f"COPY {source}: not in the build context"
                )
        elif keyword == "RUN":
            command = re.sub(r"^(--\S+\s+)+", "", arguments)
            run_env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
            run_env |= variables | env
            run_env |= {"UV_PYTHON": os.path.realpath(sys.executable), "UV_COMPILE_BYTECODE": "0"}
            if "UV_PROJECT_ENVIRONMENT" in env:
                venv = rootfs / env["UV_PROJECT_ENVIRONMENT"].lstrip("/")
                run_env["UV_PROJECT_ENVIRONMENT"] = str(venv)
            result = subprocess.run(
                ["sh", "-c", command],
                cwd=workdir,
                env=run_env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert result.returncode == 0, f"RUN {command}\n{result.stdout}{result.stderr}"
    return env


@pytest.fixture(scope="module")
def dockerfile(repo_root: Path) -> Dockerfile:
    return parse_dockerfile((repo_root / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def dockerignore(repo_root: Path) -> DockerIgnore:
    return DockerIgnore.parse((repo_root / ".dockerignore").read_text())


def test_the_image_is_python_311_slim_in_both_stages(dockerfile: Dockerfile) -> None:
    assert [s.name for s in dockerfile.stages] == ["uv", "builder", "runtime"]
    assert dockerfile.stage("builder").base == "python:3.11-slim"
    assert dockerfile.stage("runtime").base == dockerfile.stage("builder").base
    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", dockerfile.stage("uv").base)


def test_the_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stages[-1]
    users = runtime.all("USER")
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) >= 10000
    assert gid.isdigit() and int(gid) != 0
    # USER comes after every RUN, so nothing at run time executes as root.
    keywords = [i.keyword for i in runtime.instructions]
    assert keywords.index("USER") > max(n for n, k in enumerate(keywords) if k == "RUN")


def test_the_service_build_arg_selects_the_module_to_run(dockerfile: Dockerfile) -> None:
    for stage in ("builder", "runtime"):
        assert "SERVICE" in dockerfile.stage(stage).all("ARG")
    runtime = dockerfile.stage("runtime")
    env = " ".join(runtime.all("ENV"))
    assert "CRM_SERVICE_MODULE=crm_${SERVICE}" in env
    (cmd,) = runtime.all("CMD")
    assert cmd == 'exec python -m "${CRM_SERVICE_MODULE}"'
    guard = next(r for r in dockerfile.stage("builder").all("RUN") if "case" in r)
    assert "|".join(SERVICES) in guard


def test_the_runtime_stage_suits_a_read_only_root_filesystem(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stage("runtime")
    env = shlex.split(" ".join(runtime.all("ENV")))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env
    assert runtime.all("EXPOSE") == ["8000"]
    # Only the built virtualenv is copied in; no source or build context reaches the image.
    assert runtime.all("COPY") == ["--from=builder /app/.venv /app/.venv"]


def test_dependencies_are_installed_frozen_from_the_lock_without_dev(
    dockerfile: Dockerfile,
) -> None:
    runs = dockerfile.stage("builder").all("RUN")
    syncs = [r for r in runs if "uv " in r]
    assert len(syncs) == 2
    for run in syncs:
        words = shlex.split(re.sub(r"^(--\S+\s+)+", "", run))
        assert words[:2] == ["uv", "sync"]
        assert {"--frozen", "--no-dev"} <= set(words)
        assert words[words.index("--package") + 1] == "crm-${SERVICE}"
    assert not any(re.search(r"\bpip install|\buv (lock|add|pip)\b", r) for r in runs)


def test_every_workspace_member_pyproject_is_copied_before_the_first_sync(
    dockerfile: Dockerfile, repo_root: Path
) -> None:
    workspace = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["uv"]
    members = sorted(
        path.relative_to(repo_root).as_posix()
        for pattern in workspace["workspace"]["members"]
        for path in repo_root.glob(pattern)
        if (path / "pyproject.toml").is_file()
    )
    copied: set[str] = set()
    for instruction in dockerfile.stage("builder").instructions:
        if instruction.keyword == "RUN" and "uv sync" in instruction.arguments:
            break
        if instruction.keyword == "COPY":
            copied.update(shlex.split(instruction.arguments)[:-1])
    assert {f"{member}/pyproject.toml" for member in members} <= copied


def test_the_services_are_the_workspace_packages_the_image_can_build(repo_root: Path) -> None:
    names = {
        path.parent.name: tomllib.loads(path.read_text())["project"]["name"]
        for path in (repo_root / "services").glob("*/pyproject.toml")
    }
    assert names == {service: f"crm-{service}" for service in SERVICES}


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_context(
    dockerignore: DockerIgnore,
) -> None:
    for path in (
        ".git/config",
        ".venv/bin/python",
        ".env",
        "deploy/helm/crm/values.yaml",
        "tests/e2e/test_x.py",
        "services/leads/src/crm_leads/__pycache__/x.cpython-311.pyc",
        "services/leads/tests/test_domain.py",
    ):
        assert dockerignore.excludes(path), path
    for path in (
        "uv.lock",
        "pyproject.toml",
        "services/leads/pyproject.toml",
        "services/leads/src/crm_leads/__init__.py",
        "shared/runtime/src/crm_runtime/__init__.py",
        "deploy/local/pyproject.toml",
    ):
        assert not dockerignore.excludes(path), path


@pytest.mark.parametrize("service", SERVICES)
def test_builder_stage_installs_the_service_from_the_lock_file(
    dockerfile: Dockerfile,
    dockerignore: DockerIgnore,
    repo_root: Path,
    tmp_path: Path,
    service: str,
) -> None:
    env = replay_builder(dockerfile, repo_root, dockerignore, service, tmp_path)
    python = tmp_path / env["UV_PROJECT_ENVIRONMENT"].lstrip("/") / "bin" / "python"
    module = f"crm_{service}"
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.find_spec('{module}')\n"
        "assert spec and spec.origin and 'site-packages' in spec.origin, spec\n"
        "import crm_runtime, crm_contracts\n"
    )
    result = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_the_image_command_has_a_module_to_run(repo_root: Path, service: str) -> None:
    # CMD runs `python -m crm_<service>`.
    package = repo_root / "services" / service / "src" / f"crm_{service}"
    assert (package / "__main__.py").is_file()
