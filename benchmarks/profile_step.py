r"""Where the time of one train step (and of inference) goes, per module, beside PyTorch.

  python benchmarks/profile_step.py --variant paper --batch_size 32 \
      --output benchmarks/results/profile_step.json
  python benchmarks/profile_step.py --smoke        # tiny model, batch 2: checks the script

Ours: one jitted Adam step of the `poster` head with cross-entropy (the step of
`benchmarks/common.py`) and the jitted eval-mode forward, each traced once with
`jax.profiler` after a warm-up. The trace's XLA:CPU thunks (one per fused kernel) are mapped to
the optimized HLO that XLA dumps (`--xla_dump_to`, set by this script), whose `op_name` metadata
carries the Flax module path (`.../ir_back/body3_1/...`) and `transpose(jvp(...))` for the
backward pass. Every thunk is charged to the first top-level module name in its path
(`face_landback`, `ir_back`, `conv1`, `attn2`, `VIT`, `head`, ...), or to `optimizer/loss`.

Theirs (`tests/torch_reference/poster.py`, same sizes): forward hooks time each top-level child
in train mode, and full backward hooks (pre: the output gradient arrived; post: the input
gradient is done) time its backward. Both sides run on every core.

Thunk times are summed per module; XLA:CPU may run independent thunks concurrently, so the sum
can exceed the step's wall time (both are reported). The table printed last lists ms per module,
forward and backward, for both sides.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

# The HLO dump has to be configured before JAX starts its backend.
DUMP_DIR = tempfile.mkdtemp(prefix="grefel_profile_hlo_")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_dump_to={DUMP_DIR} --xla_dump_hlo_as_text"
    + " --xla_dump_hlo_module_re=.*(train_step|infer).*"
)

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  (the trainer, the CPU name and the pressure reader)

FLAGS = flags.FLAGS
flags.DEFINE_string("variant", "paper", "Model variant (both sides use its sizes).")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_bool("smoke", False, "Tiny model, batch 2: checks the script in seconds.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch module per child.")
flags.DEFINE_string("output", "benchmarks/results/profile_step.json", "JSON output path.")

# Top-level submodules of GReFEL (models/grefel.py) and PosterV2 (tests/torch_reference).
MODULES = (
    "face_landback",
    "last_face_conv",
    "ir_back",
    *(f"{name}{s}" for s in (1, 2, 3) for name in ("conv", "window", "attn", "ffn")),
    "embed_q",
    "embed_k",
    "embed_v",
    "VIT",
    "head",
)
_OP_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*$")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{\s*$")


def hlo_op_names(dump_dir: str, module_pattern: str) -> dict[str, str]:
    """Instruction name -> op_name metadata over the optimized HLO of the dumped modules whose
    file name matches `module_pattern`. A fusion without metadata inherits its root's."""
    op_names: dict[str, str] = {}
    calls: dict[str, str] = {}
    root_of: dict[str, str] = {}
    for path in glob.glob(os.path.join(dump_dir, "*after_optimizations.txt")):
        if not re.search(module_pattern, os.path.basename(path)):
            continue
        computation = None
        for line in pathlib.Path(path).read_text().splitlines():
            header = _COMPUTATION.match(line)
            if header and "=" not in line.split("{")[0]:
                computation = header.group(1)
                continue
            match = _OP_LINE.match(line)
            if not match:
                continue
            name = match.group(1)
            meta = re.search(r'op_name="([^"]*)"', line)
            if meta:
                op_names.setdefault(name, meta.group(1))
            called = re.search(r"calls=%?([\w.\-]+)", line)
            if called:
                calls[name] = called.group(1)
            if line.lstrip().startswith("ROOT") and computation and meta:
                root_of[computation] = meta.group(1)
    for name, computation in calls.items():
        if name not in op_names and computation in root_of:
            op_names[name] = root_of[computation]
    return op_names


def module_of(op_name: str) -> tuple[str, str]:
    """(module, 'fwd'|'bwd') of an op_name path."""
    direction = "bwd" if "transpose(" in op_name else "fwd"
    for part in op_name.split("/"):
        if part in MODULES:
            return part, direction
    return "optimizer/loss", direction


def trace_thunks(fn, log_dir: str) -> tuple[dict[str, float], float]:
    """Runs `fn()` once under the profiler; (thunk name -> summed ms, wall ms)."""
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        start = time.perf_counter()
        fn()
        wall_ms = 1e3 * (time.perf_counter() - start)
    path = glob.glob(os.path.join(log_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    trace = json.load(gzip.open(path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_thunk: dict[str, float] = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and "dur" in event:
            per_thunk[event["name"]] += event["dur"] / 1e3
    return per_thunk, wall_ms


def per_module(per_thunk: dict[str, float], op_names: dict[str, str]) -> dict[str, dict]:
    """Thunk ms grouped by (module, direction); thunks without HLO metadata are runtime
    events (the executor, argument parsing) and are left out."""
    table: dict[str, dict] = collections.defaultdict(lambda: {"fwd": 0.0, "bwd": 0.0})
    for thunk, ms in per_thunk.items():
        if thunk in op_names:
            module, direction = module_of(op_names[thunk])
            table[module][direction] += ms
    return {k: dict(v) for k, v in table.items()}


def top_thunks(per_thunk, op_names, count: int = 15) -> list[dict]:
    """The `count` most expensive thunks with their op_name."""
    rows = [(ms, name) for name, ms in per_thunk.items() if name in op_names]
    return [
        {"thunk": name, "ms": round(ms, 2), "op_name": op_names[name]}
        for ms, name in sorted(rows, reverse=True)[:count]
    ]


def torch_per_module(variant: str, batch: int) -> dict[str, dict]:
    """ms per top-level child of the PyTorch POSTER++ (train mode), forward and backward, from
    the second of two forward+backward passes."""
    import torch
    import torch_reference as ref

    from grefel_jax.models import make_model_config

    torch.set_num_threads(os.cpu_count() or 1)
    model_config = make_model_config(variant, "poster", common.NUM_CLASSES)
    torch.manual_seed(0)
    model = ref.PosterV2(
        common.NUM_CLASSES, **ref.sizes_from_backbone_config(model_config.backbone)
    )
    model.train()
    size = model_config.backbone.image_size
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, common.NUM_CLASSES, (batch,))
    # Each of our top-level modules -> the PyTorch modules that compute it. The ViT is called
    # through its `embed` method (no hook fires on `VIT` itself), so its parts are hooked.
    groups = {n: [m] for n, m in model.named_children() if n in MODULES and n != "VIT"}
    groups["VIT"] = [model.VIT.blocks, model.VIT.norm, model.VIT.se_block]
    groups["head"] = [model.VIT.head]
    marks: list[tuple[str, str, float]] = []

    def mark(name, key):
        def hook(*_):
            marks.append((name, key, time.perf_counter()))

        return hook

    for name, parts in groups.items():
        for part in parts:
            part.register_forward_pre_hook(mark(name, "fwd_start"))
            part.register_forward_hook(mark(name, "fwd_end"))
            part.register_full_backward_pre_hook(mark(name, "bwd_start"))
            part.register_full_backward_hook(mark(name, "bwd_end"))
    for _ in range(2):  # the first pass warms up the allocator and oneDNN's primitives
        marks.clear()
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        backward_end = time.perf_counter()
    table: dict[str, dict] = collections.defaultdict(lambda: {"fwd": 0.0, "bwd": 0.0})
    open_at: dict[tuple[str, str], float] = {}
    for name, key, at in marks:
        direction, edge = key.split("_")
        if edge == "start":
            open_at[(name, direction)] = at
        else:
            table[name][direction] += 1e3 * (at - open_at.pop((name, direction)))
    # ir_back's input (the image) needs no gradient, so its post-backward hook fires at once;
    # its backward is the last part of the graph and runs until backward() returns.
    for (name, direction), at in open_at.items():
        table[name][direction] += 1e3 * (backward_end - at)
    if "ir_back" in table:
        starts = [at for n, k, at in marks if n == "ir_back" and k == "bwd_start"]
        table["ir_back"]["bwd"] = 1e3 * (backward_end - starts[0])
    return {k: dict(v) for k, v in table.items()}


def main(argv):
    del argv
    variant = "tiny" if FLAGS.smoke else FLAGS.variant
    batch = 2 if FLAGS.smoke else FLAGS.batch_size
    pressure_before = common.cpu_pressure()

    from grefel_jax.models import GReFEL, make_model_config

    trainer, state, data = common.jax_trainer(variant, "poster", False, batch)
    holder = {"state": state}

    def train_step():
        holder["state"], metrics = trainer.step(holder["state"], data)
        jax.block_until_ready(metrics)

    model = GReFEL(make_model_config(variant, "poster", common.NUM_CLASSES))

    @jax.jit
    def infer(v, x):
        return model.apply(v, x, train=False)["logits"]

    def inference():  # the train step donates its state: read the variables afresh
        variables = common.trainer_variables(holder["state"])
        jax.block_until_ready(infer(variables, data["image"]))

    report = {"variant": variant, "batch_size": batch, "cpu": common.cpu_name()}
    report["cores"] = os.cpu_count()
    for name, fn, pattern in (("train", train_step, "train_step"), ("infer", inference, "infer")):
        fn()  # compile
        fn()  # warm
        per_thunk, wall_ms = trace_thunks(fn, tempfile.mkdtemp(prefix=f"grefel_trace_{name}_"))
        op_names = hlo_op_names(DUMP_DIR, pattern)
        modules = per_module(per_thunk, op_names)
        report[name] = {
            "wall_ms": wall_ms,
            "thunk_ms_total": sum(v["fwd"] + v["bwd"] for v in modules.values()),
            "modules": modules,
            "top_thunks": top_thunks(per_thunk, op_names, count=60),
        }
    if FLAGS.torch:
        report["torch_train"] = torch_per_module(variant, batch)
    report["pressure_before"] = pressure_before
    report["pressure_after"] = common.cpu_pressure()
    path = pathlib.Path(FLAGS.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))

    torch_rows = report.get("torch_train", {})
    print(
        f"train step wall {report['train']['wall_ms']:.0f} ms, "
        f"thunks {report['train']['thunk_ms_total']:.0f} ms; "
        f"inference wall {report['infer']['wall_ms']:.0f} ms"
    )
    print(
        f"{'module':16s} {'jax fwd':>9s} {'jax bwd':>9s} {'torch fwd':>9s} {'torch bwd':>9s}"
        f" {'jax infer':>9s}"
    )
    names = sorted(
        set(report["train"]["modules"]) | set(torch_rows),
        key=lambda n: -sum(report["train"]["modules"].get(n, {"x": 0}).values()),
    )
    for name in names:
        j = report["train"]["modules"].get(name, {})
        t = torch_rows.get(name, {})
        i = report["infer"]["modules"].get(name, {})
        cells = [j.get("fwd"), j.get("bwd"), t.get("fwd"), t.get("bwd"), i.get("fwd")]
        print(
            f"{name:16s} " + " ".join(f"{c:9.1f}" if c is not None else f"{'-':>9s}" for c in cells)
        )
    print(f"Wrote {path}")


if __name__ == "__main__":
    app.run(main)
