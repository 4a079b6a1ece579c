"""Training benchmark: throughput of the default U-Net and peak memory vs accumulation.

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--steps 8] [--channels 20]

1. Throughput (patches/s) of optimizer steps (forward, backward, Adam) of the default model
   (``configs/default.toml``: width 16, depth 4, batch 4, 128 px patches, channels-last) on
   random data, as training runs them (``train.amp``: bfloat16 autocast on a CPU with
   native bfloat16), plus variants (float32, contiguous memory format, 256 px patches, group
   norm, width 32).
   Then the whole loop (``spectraseg.training.loop.train`` on a small synthetic dataset, patches
   sampled, normalised and augmented by ``spectraseg.features.patches``).
2. Peak resident memory (``ru_maxrss``) of a fresh process running steps with
   ``train.accumulate=1`` and ``train.accumulate=16``: accumulation adds gradients in place,
   so the peak must stay within 10% (the batch of one forward/backward is the unit of memory).

Both run with the memory settings of the ``spectraseg`` command (:mod:`spectraseg.runtime`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

from spectraseg.runtime import tune_memory

# As the ``spectraseg`` command does before torch starts (spectraseg.runtime); to measure
# without, set SPECTRASEG_TUNE_MEMORY=0.
tune_memory()


def _batches(n: int, channels: int, size: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    while True:
        yield {
            "image": torch.randn(n, channels, size, size, generator=g),
            "mask": (torch.rand(n, 10, size, size, generator=g) > 0.9).to(torch.uint8),
        }


def _setup(overrides: list[str], channels: int, device: str = "cpu"):
    """Config, model (on ``device``, channels-last when the config says so), Adam, loss."""
    import torch

    from spectraseg.config import Config
    from spectraseg.models.losses import build_loss
    from spectraseg.models.unet import build_model

    config = Config().replace(overrides)
    model = build_model(config, channels).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    return config, model, opt, build_loss(config.loss)


def throughput(overrides: list[str], channels: int, steps: int, warmup: int = 5) -> float:
    """Patches per second of full optimizer steps (accumulate=1) for a config variant."""
    import torch

    from spectraseg.runtime import autocast_dtype
    from spectraseg.training.step import accumulation_step

    config, model, opt, loss = _setup(overrides, channels)
    t = config.train
    data = _batches(t.batch_size, channels, t.patch_size)
    cpu = torch.device("cpu")
    kw = {"channels_last": t.channels_last, "amp": autocast_dtype(cpu) if t.amp else None}
    for _ in range(warmup):
        accumulation_step(model, opt, loss, data, 1, cpu, **kw)
    start = time.perf_counter()
    for _ in range(steps):
        accumulation_step(model, opt, loss, data, 1, cpu, **kw)
    return steps * t.batch_size / (time.perf_counter() - start)


def memory_child(accumulate: int, channels: int, steps: int, threads: int, batch: int) -> None:
    """Run ``steps`` optimizer steps with ``accumulate`` micro-batches; print peak RSS (MiB)."""
    import torch

    from spectraseg.training.step import accumulation_step

    torch.set_num_threads(threads)
    overrides = [f"train.accumulate={accumulate}", f"train.batch_size={batch}"]
    config, model, opt, loss = _setup(overrides, channels)
    t = config.train
    data = _batches(t.batch_size, channels, t.patch_size)
    for _ in range(steps):
        accumulation_step(
            model, opt, loss, data, accumulate, torch.device("cpu"),
            channels_last=t.channels_last,
        )  # fmt: skip
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"accumulate": accumulate, "peak_mib": peak_kib / 1024}))


def peak_memory(accumulate: int, channels: int, steps: int, threads: int, batch: int = 4) -> float:
    """Peak RSS (MiB) of a fresh process running ``steps`` optimizer steps."""
    cmd = [
        sys.executable, __file__, "--memory-child", str(accumulate), "--batch", str(batch),
        "--channels", str(channels), "--steps", str(steps), "--threads", str(threads),
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_mib"])


def loop_config(root, steps: int, overrides: list[str]):
    """The default config on the synthetic dataset under ``root`` (``data``, ``cache``):
    ``steps`` steps in one epoch, no validation, plus ``overrides``."""
    from spectraseg.config import Config

    return Config().replace(
        [
            f"data.root={root / 'data'}",
            f"data.cache={root / 'cache'}",
            "data.val_fraction=0",
            f"train.steps={steps}",
            f"train.steps_per_epoch={steps}",
            *overrides,
        ]
    )


def end_to_end(steps: int, threads: int) -> dict:
    """``train()`` with the default config on a small synthetic dataset (synth + align):
    patches/s of the whole loop (sampling, normalisation, steps; validation excluded)."""
    import tempfile
    from pathlib import Path

    from spectraseg.align.fusion import align_dataset
    from spectraseg.data.synth import synthesize
    from spectraseg.training.loop import train

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp)
        synthesize(root / "data", 8, (512, 512), seed=0, progress=False)
        align_dataset(root / "data", root / "cache", progress=False)
        config = loop_config(root, steps, [f"train.threads={threads}"])
        result = train(config, root / "run", progress=False)
        row = result.history[-1]
        return {"steps": result.steps, "patches_per_s": row["patches_per_s"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--channels", type=int, default=20, help="input channels")
    p.add_argument("--e2e-steps", type=int, default=60, help="steps of the whole-loop run")
    p.add_argument("--no-end-to-end", action="store_true", help="skip the whole-loop run")
    p.add_argument("--memory-child", type=int, metavar="K", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.channels, args.steps, args.threads, args.batch)
        return 0

    import torch

    from spectraseg.config import Config
    from spectraseg.runtime import autocast_dtype

    torch.set_num_threads(args.threads)
    d = Config()
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.channels} input channels; "
        f"default model width {d.model.width}, depth {d.model.depth}, norm {d.model.norm}, "
        f"batch {d.train.batch_size}, patch {d.train.patch_size}"
    )
    amp = autocast_dtype(torch.device("cpu"))
    kind = "bfloat16 autocast" if amp else "float32 (no native bfloat16)"
    print(f"train.amp on this CPU: {kind}")
    variants = [
        ("default (channels-last)", []),
        ("float32 (train.amp=false)", ["train.amp=false"]),
        ("contiguous memory format", ["train.channels_last=false"]),
        ("group norm", ["model.norm=group"]),
        ("256 px patches", ["train.patch_size=256"]),
        ("width 32", ["model.width=32"]),
    ]
    print("training throughput (forward + backward + Adam):")
    throughput([], args.channels, args.steps)  # the process's first steps run slower: discard
    for name, overrides in variants:
        pps = throughput(overrides, args.channels, args.steps)
        size = Config().replace(overrides).train.patch_size
        print(f"  {name:<26} {pps:7.1f} patches/s  {pps * size * size / 1e6:6.2f} Mpx/s")
    if not args.no_end_to_end:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # registration fallbacks of the synthetic scenes
            e2e = end_to_end(args.e2e_steps, args.threads)
        print(
            f"  whole training loop (PatchDataset on a synthetic cache, {e2e['steps']} steps): "
            f"{e2e['patches_per_s']:.1f} patches/s"
        )
    steps = 3
    m1 = peak_memory(1, args.channels, steps * 16, args.threads)
    m16 = peak_memory(16, args.channels, steps, args.threads)
    big = peak_memory(1, args.channels, steps, args.threads, batch=64)
    ratio = m16 / m1
    print(
        f"peak RSS, {steps * 16} forward/backward passes of batch 4: accumulate=1 {m1:.0f} MiB, "
        f"accumulate=16 {m16:.0f} MiB (ratio {ratio:.3f}; "
        f"{'within' if abs(ratio - 1) <= 0.10 else 'NOT within'} 10%); "
        f"the same 64 patches as one batch: {big:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
