"""envs/*.yaml: the conda environments of the rule groups parse and agree with pyproject.toml."""

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CPU_ENV = ROOT / "envs/tracetune.yaml"
GPU_ENV = ROOT / "envs/train-gpu.yaml"


def load_pyproject(path=ROOT / "pyproject.toml"):
    return tomllib.loads(path.read_text())["project"]


def by_name(lines):
    """Requirement strings → {canonical name: Requirement}; a name listed twice is an error."""
    reqs = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in reqs, f"{req.name} listed twice"
        reqs[name] = req
    return reqs


def read_env(path):
    """A conda env file → (python version string, {name: Requirement} of its pip section)."""
    env = yaml.safe_load(path.read_text())
    assert isinstance(env, dict) and env.get("name") and env.get("channels"), f"{path.name}: name/channels"
    conda_deps = [d for d in env["dependencies"] if isinstance(d, str)]
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1 and "pip" in conda_deps, f"{path.name}: pip and one pip: section"
    pythons = [d.split("=", 1)[1] for d in conda_deps if d.startswith("python=")]
    assert len(pythons) == 1, f"{path.name}: exactly one python=X.Y pin"
    try:
        return pythons[0], by_name(pip_sections[0])
    except (InvalidRequirement, AssertionError) as e:
        raise AssertionError(f"{path.name}: {e}") from e


def compatible(env_req, project_req):
    """The env spec only narrows pyproject's: it keeps every clause of it (and may add bounds, e.g.
    the caps unsloth puts on transformers), or pins one version that pyproject allows. It has no
    extras pyproject lacks."""
    if not env_req.extras <= project_req.extras:
        return False
    if set(project_req.specifier) <= set(env_req.specifier):
        return True
    pins = [s for s in env_req.specifier if s.operator == "=="]
    return len(pins) == 1 and project_req.specifier.contains(pins[0].version, prereleases=True)


def disagreements(env_reqs, project_reqs, env_name):
    return [
        f"{env_name}: {env_reqs[name]} vs pyproject.toml {project_reqs[name]}"
        for name in env_reqs.keys() & project_reqs.keys()
        if not compatible(env_reqs[name], project_reqs[name])
    ]


@pytest.fixture(scope="module")
def project():
    meta = load_pyproject()
    return {
        "python": SpecifierSet(meta["requires-python"]),
        "main": by_name(meta["dependencies"]),
        "gpu": by_name(meta["optional-dependencies"]["gpu"]),
    }


@pytest.fixture(scope="module")
def envs():
    return {path.name: read_env(path) for path in (CPU_ENV, GPU_ENV)}


def test_every_env_file_is_tested():
    assert sorted(p.name for p in (ROOT / "envs").glob("*.yaml")) == sorted([CPU_ENV.name, GPU_ENV.name])


def test_python_pins_agree_with_requires_python(project, envs):
    pythons = {python for python, _ in envs.values()}
    assert len(pythons) == 1, f"env files pin different pythons: {pythons}"
    assert project["python"].contains(Version(pythons.pop()))


def test_cpu_env_holds_every_project_dependency(project, envs):
    _, cpu = envs[CPU_ENV.name]
    missing = sorted(str(project["main"][n]) for n in project["main"].keys() - cpu.keys())
    assert not missing, f"{CPU_ENV.name} lacks {missing}"
    problems = disagreements(cpu, project["main"], CPU_ENV.name)
    assert not problems, problems
    strays = sorted(cpu.keys() - project["main"].keys())
    assert not strays, f"{CPU_ENV.name} has packages pyproject.toml does not declare: {strays}"


def test_gpu_env_holds_the_gpu_extra_and_agrees(project, envs):
    _, gpu = envs[GPU_ENV.name]
    declared = project["main"] | project["gpu"]
    missing = sorted(project["gpu"].keys() - gpu.keys())
    assert not missing, f"{GPU_ENV.name} lacks the gpu extra's {missing}"
    problems = disagreements(gpu, declared, GPU_ENV.name)
    assert not problems, problems
    strays = sorted(gpu.keys() - declared.keys())
    assert not strays, f"{GPU_ENV.name} has packages pyproject.toml does not declare: {strays}"
    cpu_only = {"snakemake", "mcp", "openai"}
    assert not cpu_only & gpu.keys(), "the GPU env is for train/merge only"


@pytest.mark.parametrize(
    ("env_line", "project_line", "ok"),
    [
        ("torch>=2.6", "torch>=2.6", True),
        ("torch==2.13.0", "torch>=2.6", True),
        ("torch==2.5.0", "torch>=2.6", False),
        ("torch>=2.7", "torch>=2.6", False),
        ("torch>=2.6,<2.15", "torch>=2.6", True),
        ("torch<2.15", "torch>=2.6", False),
        ("transformers>=5.20", "transformers[serving]>=5.20", True),
        ("transformers[serving]>=5.20", "transformers>=5.20", False),
        ("unsloth", "unsloth", True),
        ("unsloth==2026.10.9", "unsloth", True),
    ],
)
def test_compatible(env_line, project_line, ok):
    assert compatible(Requirement(env_line), Requirement(project_line)) is ok


def test_drift_is_reported(project):
    """A pyproject bump the env files missed is named in the failure message."""
    _, cpu = read_env(CPU_ENV)
    bumped = dict(project["main"], polars=Requirement("polars>=99"))
    assert disagreements(cpu, bumped, CPU_ENV.name) == [
        f"{CPU_ENV.name}: {cpu['polars']} vs pyproject.toml polars>=99"
    ]
