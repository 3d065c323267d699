"""Train-step speed and peak memory on 1 device vs a multi-device mesh, in one JSON.

    python bench/train_scale.py                          # 270M, this CPU: 1 device vs 8 fake devices
    python bench/train_scale.py --model gemma_2b --random --dtype bfloat16 --configs 1:1x1x1 \\
        --batch-size 8 --length 256                      # a GPU/TPU host: random weights, bf16

Each configuration runs in a fresh process (the device count is fixed when
JAX starts): "N:DxFxT" is N devices (fake CPU devices on a CPU host) in a
data x fsdp x tensor mesh. The step is the toolkit's own (`loop.fit`'s
compiled step on the mesh), on fixed-shape batches of real ETHOS prompts
(270M) or random tokens (--random), after a compile warm-up. tokens/s counts
the real tokens in the batch (the `_padded` fields count what was computed); MFU uses toolkit/train/flops.py's formula against
--peak-tflops (this CPU: 0.19 fp32) or the device's datasheet peak. Peak
memory: the process's max RSS on CPU, the device allocator's peak on GPU/TPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.xla_env import force_host_devices  # noqa: E402  (no JAX import)


def worker(args: argparse.Namespace) -> dict:
    devices, mesh_spec = args.worker.split(":")
    if int(devices) > 1:
        force_host_devices(int(devices))
    sys.path.insert(0, str(ROOT))
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from toolkit.config import MeshConfig
    from toolkit.models.configs import Runtime, get_config
    from toolkit.models.build import build_model
    from toolkit.models.lora import LoRAConfig
    from toolkit.train import loop
    from toolkit.train.flops import mfu, train_flops_per_token
    from toolkit.train.mesh import global_batch, like_shardings, make_mesh
    from toolkit.train.step import make_head, make_train_step, split_model

    lora = LoRAConfig(rank=8, alpha=16, targets=("q", "k", "v", "o", "gate", "up", "down"))
    d, f, t = (int(x) for x in mesh_spec.split("x"))
    mesh = make_mesh(MeshConfig(data=d, fsdp=f, tensor=t), devices=jax.devices()[: int(devices)])
    rng = np.random.default_rng(0)
    b, length = args.batch_size, args.length
    if args.random:
        cfg = get_config(args.model)
        rt = Runtime(param_dtype=args.dtype, dtype=args.dtype, remat=args.remat, scan_layers=not args.unrolled)
        with jax.default_device(jax.devices()[0]):
            model = build_model(cfg, runtime=rt, lora=lora, rngs=nnx.Rngs(0))
        tokens = rng.integers(10, cfg.vocab_size, size=(b, length)).astype(np.int32)
        lengths = np.full(b, length, np.int32)
        head: list[int] | None = None
    else:
        from toolkit.data.prompt import PromptEncoder, PromptFormat
        from toolkit.data.sources import ethos_split, load_ethos
        from toolkit.weights.loader import load_pretrained

        model, tok = load_pretrained(args.model, lora=lora, runtime=Runtime(param_dtype=args.dtype, remat=args.remat))
        cfg = model.config
        df = ethos_split(load_ethos(local_dir=ROOT.parent / "shared/data/ethos"))[0]
        enc = PromptEncoder(PromptFormat(instructions="Is the following text hate speech? Answer yes or no"),
                            ("no", "yes"), tok, length)
        ids, _ = enc.encode_all(df["text"].tolist()[: b * 4])
        head = enc.head_ids
        rows = [x[len(head):] for x in ids][:b]
        width = max(len(x) for x in rows)
        tokens = np.zeros((b, width), np.int32)
        for i, x in enumerate(rows):
            tokens[i, : len(x)] = x
        lengths = np.array([len(x) for x in rows], np.int32)
    placement = loop.place_parts(split_model(model), mesh, cfg, model.runtime)
    rt, scanned = model.runtime, model.scanned
    del model
    parts = placement.parts
    tx = optax.adamw(1e-4)
    opt_sh = like_shardings(jax.eval_shape(tx.init, parts.lora), parts.lora, placement.shardings.lora, mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(parts.lora)
    step = make_train_step(parts.train_graph, tx, shardings=placement.shardings._replace(opt_state=opt_sh))
    class_ids, head_arg = jnp.asarray([5, 9], jnp.int32), make_head(head)
    batch = global_batch(mesh, {"tokens": tokens, "lengths": lengths, "labels": rng.integers(0, 2, b).astype(np.int32),
                                "weights": np.ones(b, np.float32)}, b)
    lora_s, rest = jax.tree.map(jnp.copy, parts.lora), jax.tree.map(jnp.copy, parts.rest)
    t0 = time.perf_counter()
    lora_s, opt_state, rest, m = step(lora_s, opt_state, parts.frozen, rest, batch, class_ids, head_arg)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        lora_s, opt_state, rest, m = step(lora_s, opt_state, parts.frozen, rest, batch, class_ids, head_arg)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    dt = float(np.median(times))
    real = int(lengths.sum()) + (len(head) * b if head else 0)
    ctx = real / b
    flops = train_flops_per_token(cfg, ctx) * real / dt
    padded = tokens.size + (len(head) if head else 0)  # the shared head runs once per batch
    padded_flops = train_flops_per_token(cfg, padded / b) * padded / dt
    dev = jax.devices()[0]
    # Fake CPU devices share one host's cores: MFU is against that host's peak, not N of them.
    n_peak = 1 if dev.platform == "cpu" else int(devices)
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    return {"model": cfg.name, "random_weights": args.random, "dtype": args.dtype, "devices": int(devices),
            "remat": rt.remat, "scan_layers": scanned,
            "mesh": mesh_spec, "batch_size": b, "tokens_per_step": real, "padded_shape": list(tokens.shape),
            "compile_s": compile_s, "step_s_median": dt, "step_s_min": float(min(times)),
            "tokens_per_s": real / dt, "examples_per_s": b / dt, "achieved_tflops": flops / 1e12,
            "mfu": mfu(flops, dev.device_kind, n_peak, args.peak_tflops),
            "padded_tokens_per_step": padded, "achieved_tflops_padded": padded_flops / 1e12,
            "mfu_padded": mfu(padded_flops, dev.device_kind, n_peak, args.peak_tflops),
            "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_device_gib": None if not stats else stats.get("peak_bytes_in_use", 0) / 2**30,
            "device_kind": dev.device_kind, "loss": float(m["loss"])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3_270m")
    p.add_argument("--random", action="store_true", help="random weights of a named config (no download)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--remat", default="none")
    p.add_argument("--unrolled", action="store_true", help="one program per layer instead of the layer scan (--random)")
    p.add_argument("--configs", default="1:1x1x1,8:8x1x1,8:1x8x1", help="comma list of DEVICES:DxFxT")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=None, help="per device; this CPU: 0.19")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0
    results = []
    for conf in args.configs.split(","):
        cmd = [sys.executable, __file__, "--worker", conf] + [a for a in sys.argv[1:] if a != "--worker"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        if r.returncode or not line:
            results.append({"config": conf, "error": r.stderr[-1500:]})
        else:
            results.append(json.loads(line[-1][len("RESULT "):]))
    text = json.dumps({"results": results}, indent=2)
    print(text)
    if args.out:
        from toolkit.io_utils import write_text

        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
