"""profiles/slurm on a real single-node SLURM (slurmctld, slurmd, slurmdbd + MariaDB, a fake 2-GPU GRES).

The cluster comes from .ci/slurm-up.sh (see ../shared/notes/slurm-local.md); this module starts it
when it is not already running and then stops the daemons it started. Outside CI the tests skip
when SLURM is not installed or we are not root; in CI (CI=true) that is a failure. Every external
command has a timeout, so nothing here can hang.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
UP, DOWN = ROOT / ".ci/slurm-up.sh", ROOT / ".ci/slurm-down.sh"
STATE = Path(os.environ.get("TRACETUNE_SLURM_STATE", "/var/lib/tracetune-slurm"))
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by tracetune .ci/slurm-up.sh"
PARTITION, ACCOUNT = "gpu", "tracetune"  # as set up by .ci/slurm-up.sh
IN_CI = os.environ.get("CI") == "true"
UP_TIMEOUT_S = 900 if IN_CI else 180  # in CI it may install the Debian packages first
RUN_TIMEOUT_S = 300
RUN = "slurmtest"

# Loaded by every Python process of the submitted job (through PYTHONPATH): records the environment
# SLURM gave it, without relying on what the rule's own code chooses to log.
PROBE = """\
import json, os, sys
if os.environ.get("SLURM_JOB_ID") and os.environ.get("TRACETUNE_PROBE_FILE"):
    with open(os.environ["TRACETUNE_PROBE_FILE"], "a") as f:
        f.write(json.dumps({"argv": sys.argv[:1], "job": os.environ["SLURM_JOB_ID"],
                            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
"""


def run(cmd, timeout, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def unavailable_reason() -> str | None:
    if SLURM_CONF.exists() and MARKER not in SLURM_CONF.read_text():
        return f"{SLURM_CONF} belongs to another SLURM cluster; not touching it"
    if os.geteuid() != 0:
        return "starting the SLURM daemons needs root"
    if shutil.which("slurmctld") is None and not IN_CI:
        return "SLURM is not installed (as root, .ci/slurm-up.sh installs and starts a local cluster)"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running local cluster; stopped afterwards only if this fixture started it."""
    reason = unavailable_reason()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    started_file = STATE / "started"
    already_up = started_file.exists() and started_file.read_text().strip()

    def stop_what_we_started():
        if not already_up:
            return run(["bash", str(DOWN)], 120)

    t0 = time.monotonic()
    try:
        up = run(["bash", str(UP)], UP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_what_we_started()
        pytest.fail(f"{UP.name} took over {UP_TIMEOUT_S}s")
    if up.returncode != 0:
        stop_what_we_started()
        pytest.fail(f"{UP.name} failed:\n{up.stderr[-3000:]}")
    print(f"cluster ready in {time.monotonic() - t0:.1f}s")
    yield
    down = stop_what_we_started()
    assert down is None or down.returncode == 0, down.stderr


def copy_workflow(dest: Path) -> Path:
    """The project's workflow, code, profiles and shipped inputs (as .gitignore keeps them: of data/
    only data/site/), without anything a run produced."""
    skip = shutil.ignore_patterns(".git", ".venv", ".snakemake", "logs", "__pycache__", ".pytest_cache",
                                  "*.egg-info", "node_modules", ".whl")

    def ignore(directory, names):
        if Path(directory) == ROOT / "data":
            return [name for name in names if name != "site"]
        return skip(directory, names)

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def size_profile_for_this_node(profile: Path) -> dict:
    """The shipped SLURM profile with only node-size settings changed (a 2-core CI node), plus
    quick status polling. Returns the shipped train resources, for the checks."""
    settings = yaml.safe_load(profile.read_text())
    shipped_train = dict(settings["set-resources"]["train"])
    settings["set-threads"]["train"] = 1
    settings["set-resources"]["train"]["mem_mb"] = 4000
    settings["slurm-init-seconds-before-status-checks"] = 1
    settings["seconds-between-status-checks"] = 2
    profile.write_text(yaml.safe_dump(settings, sort_keys=False))
    return shipped_train


@pytest.fixture
def tokenizer_source(bundled_model) -> Path:
    """The prepared bundled model (tokenizer + tool template)."""
    return bundled_model


def tiny_training_inputs(workflow: Path, tokenizer_source: Path) -> None:
    """A random 2-layer model with the bundled tokenizer, a few unrolled rows, and two steps of
    training set in the copy's config.yaml (`--config` would turn nested numbers into strings)."""
    from transformers import AutoTokenizer

    from train_fixtures import tiny_model, write_dataset

    base = tiny_model(workflow / "data/models/base", base=tokenizer_source)
    (workflow / "data/dataset").mkdir(parents=True)
    write_dataset(workflow / "data/dataset/train.parquet", AutoTokenizer.from_pretrained(base), n_traces=2)
    config_file = workflow / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config.setdefault("train", {}).update(run=RUN, max_steps=2, save_steps=1)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))


def run_snakemake(workflow: Path, probe_dir: Path, args: list[str]) -> tuple[int, str, list[str]]:
    """Runs Snakemake in its own process group; kills the group and cancels its jobs on timeout."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES" and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(probe_dir), env.get("PYTHONPATH")]))
    env["TRACETUNE_PROBE_FILE"] = str(probe_dir / "records.jsonl")
    cmd = [sys.executable, "-m", "snakemake", *args]
    proc = subprocess.Popen(cmd, cwd=workflow, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake can ignore SIGTERM while polling SLURM
        output, _ = proc.communicate(timeout=30)
        jobs = re.findall(r"submitted with SLURM jobid (\d+)", output)
        if jobs:
            run(["scancel", *jobs], 30)
        pytest.fail(f"snakemake ran over {RUN_TIMEOUT_S}s; output:\n{output[-4000:]}")
    return proc.returncode, output, re.findall(r"submitted with SLURM jobid (\d+)", output)


def accounting(job_id: str) -> dict:
    out = run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,AllocTRES,Partition,Account"], 30)
    state, tres, partition, account = out.stdout.strip().splitlines()[0].split("|")
    return {"state": state, "tres": tres, "partition": partition, "account": account}


def test_train_rule_runs_as_a_gpu_job(slurm_cluster, tokenizer_source, tmp_path):
    workflow = copy_workflow(tmp_path / "workflow")
    shipped_train = size_profile_for_this_node(workflow / "profiles/slurm/config.yaml")
    assert shipped_train.get("gpu") == 1, "profiles/slurm must ask a GPU for the train rule"
    tiny_training_inputs(workflow, tokenizer_source)
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    (probe_dir / "sitecustomize.py").write_text(PROBE)

    t0 = time.monotonic()
    rc, output, jobs = run_snakemake(workflow, probe_dir, [
        f"data/adapters/{RUN}/",
        "--profile", "profiles/slurm",
        # the documented way to pick a site's partition and account for one run
        "--default-resources", f"slurm_partition={PARTITION}", f"slurm_account={ACCOUNT}",
        # the dataset and base model are given: only training may run
        "--allowed-rules", "train",
    ])
    wall = time.monotonic() - t0
    print(f"snakemake --profile profiles/slurm: {wall:.1f}s")
    assert rc == 0, output[-4000:]

    assert len(jobs) == 1, f"expected one sbatch submission (train), got {jobs}:\n{output[-2000:]}"
    job = accounting(jobs[0])
    assert job["state"] == "COMPLETED", job
    assert "gres/gpu=1" in job["tres"], job
    assert (job["partition"], job["account"]) == (PARTITION, ACCOUNT)
    records = [json.loads(line) for line in (probe_dir / "records.jsonl").read_text().splitlines()]
    rule_processes = [r for r in records if r["job"] == jobs[0] and ".snakemake/scripts/" in r["argv"][0]]
    assert rule_processes, f"no Python process of the train rule ran in SLURM job {jobs[0]}: {records}"
    assert all(r["cuda"] == "0" for r in rule_processes), rule_processes

    adapter = workflow / "data/adapters" / RUN
    assert (adapter / "adapter_config.json").is_file(), sorted(p.name for p in adapter.iterdir())
    assert (adapter / "adapter_model.safetensors").is_file()
    # CUDA_VISIBLE_DEVICES names a fake device here: backend auto must ask torch, not the variable
    import torch

    if not torch.cuda.is_available():
        assert json.loads((adapter / "summary.json").read_text())["backend"] == "trl"
