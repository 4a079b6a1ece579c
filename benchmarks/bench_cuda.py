"""CUDA benchmark: training and whole-scene prediction on a GPU.

    python benchmarks/bench_cuda.py [--steps 30] [--e2e-steps 150] [--skip train e2e predict]

Needs CUDA (exits with a one-line message without it). On the first GPU:

1. **Training steps** (forward, backward, Adam; ``spectraseg.training.loop.accumulation_step``) of
   the default model (``configs/default.toml``: width 16, depth 4, 20 input channels) on
   random data: patches/s at the default batch (4 x 128 px) and at larger batches and
   patches, with float16 autocast (``train.amp``, the default) and without.
2. **The whole training loop** (``spectraseg.training.loop.train`` on a small synthetic dataset:
   patch sampling, normalisation and augmentation on the CPU, steps on the GPU), with
   ``train.workers`` 0 and 4 loader processes, at the default batch and at 16 x 256 px.
3. **Whole-scene prediction** (``spectraseg.inference.tiling.predict_probs``) of a full-size
   3348 x 3392 x 20 scene at several tile and batch sizes, float16 autocast and float32:
   seconds per scene and efficiency (scene px/s over the model's px/s on one batch of
   the same shape, timed alone), and peak GPU memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from spectraseg.runtime import tune_memory

tune_memory()

H, W, C = 3348, 3392, 20
DEVICE = "cuda"
"""``--device``: ``cpu`` only checks that the script runs (with small ``--steps``)."""


def log(msg: str) -> None:
    print(msg, flush=True)


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def bench_steps(steps: int) -> None:
    import torch

    from bench_train import _setup  # this folder: the model and optimizer of the CPU benchmark
    from spectraseg.training.step import accumulation_step

    dev = torch.device(DEVICE)
    log("1. training steps, default model, 20 channels, channels-last, Adam (patches/s)")
    for batch, size in ((4, 128), (16, 128), (64, 128), (16, 256), (32, 256)):
        row = []
        for amp in (DEVICE == "cuda", False):
            torch.manual_seed(0)
            overrides = [f"train.batch_size={batch}", f"train.patch_size={size}"]
            _config, model, opt, loss = _setup(overrides, C, DEVICE)
            scaler = torch.amp.GradScaler(DEVICE) if amp else None
            g = torch.Generator().manual_seed(0)
            data = [
                {
                    "image": torch.randn(batch, C, size, size, generator=g),
                    "mask": (torch.rand(batch, 10, size, size, generator=g) > 0.9).byte(),
                }
                for _ in range(4)
            ]

            def step(k: int, model=model, opt=opt, loss=loss, scaler=scaler, data=data, amp=amp):
                accumulation_step(
                    model, opt, loss, [data[k % 4]], 1, dev, scaler=scaler, amp=amp,
                    channels_last=True,
                )  # fmt: skip

            for k in range(5):
                step(k)
            _sync()
            t0 = time.perf_counter()
            for k in range(steps):
                step(k)
            _sync()
            row.append(steps * batch / (time.perf_counter() - t0))
        log(f"   batch {batch:3d} x {size:3d} px: amp {row[0]:8.0f}   float32 {row[1]:8.0f}")


def bench_e2e(steps: int) -> None:
    from bench_train import loop_config  # this folder: the same loop as the CPU benchmark
    from spectraseg.align.fusion import align_dataset
    from spectraseg.data.synth import synthesize
    from spectraseg.training.loop import train

    log("2. whole training loop on 8 synthetic 512 px scenes (patches/s, validation excluded)")
    with tempfile.TemporaryDirectory(prefix="bench_cuda_") as tmp:
        root = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            synthesize(root / "data", 8, (512, 512), seed=0, progress=False)
            align_dataset(root / "data", root / "cache", progress=False)
        for batch, size in ((4, 128), (16, 256)):
            for workers in (0, 4):
                config = loop_config(
                    root,
                    steps,
                    [
                        f"train.batch_size={batch}",
                        f"train.patch_size={size}",
                        f"train.workers={workers}",
                        f"train.device={DEVICE}",
                    ],
                )
                run = root / f"run_{batch}_{size}_{workers}"
                result = train(config, run, progress=False)
                rate = result.history[-1]["patches_per_s"]
                log(f"   batch {batch:2d} x {size:3d} px, workers {workers}: {rate:7.0f} patches/s")


def bench_predict(rounds: int) -> None:
    import torch

    from spectraseg.inference.tiling import predict_probs
    from spectraseg.models.unet import UNet

    dev = torch.device(DEVICE)
    log("3. whole-scene prediction, 3348 x 3392 x 20, margin 16")
    rng = np.random.default_rng(0)
    scene = rng.standard_normal((C, H, W), dtype=np.float32)
    torch.manual_seed(0)
    model = UNet(C, 10, width=16, depth=4).eval().to(dev, memory_format=torch.channels_last)
    for amp in (True, False):
        for tile, batch in ((480, 1), (480, 8), (1024, 1), (1024, 4), (2048, 1)):
            x = torch.randn(batch, C, tile, tile, device=dev).contiguous(
                memory_format=torch.channels_last
            )
            with (
                torch.inference_mode(),
                torch.autocast(DEVICE, dtype=torch.float16, enabled=amp and DEVICE == "cuda"),
            ):
                for _ in range(3):
                    model(x)
                _sync()
                t0 = time.perf_counter()
                for _ in range(5):
                    model(x)
                _sync()
            pure = 5 * batch * tile * tile / (time.perf_counter() - t0)
            del x
            if DEVICE == "cuda":
                torch.cuda.reset_peak_memory_stats()
            best = float("inf")
            for _ in range(rounds):
                _sync()
                t0 = time.perf_counter()
                predict_probs(model, scene, tile=tile, margin=16, batch=batch, amp=amp)
                _sync()
                best = min(best, time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0
            eff = H * W / best / pure
            log(
                f"   {'amp    ' if amp else 'float32'} tile {tile:4d} x {batch}: {best:6.2f} s, "
                f"model {pure / 1e6:7.1f} Mpx/s, efficiency {eff:.2f}, GPU peak {peak:.2f} GiB"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per variant")
    p.add_argument("--e2e-steps", type=int, default=150, help="steps of each whole-loop run")
    p.add_argument("--rounds", type=int, default=2, help="scene predictions per configuration")
    p.add_argument("--skip", nargs="*", default=[], choices=("train", "e2e", "predict"))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    global DEVICE
    DEVICE = args.device
    if DEVICE == "cpu":
        log("cpu: checking that the script runs; figures are not meaningful")
    elif not torch.cuda.is_available():
        print("bench_cuda: CUDA is not available on this machine", file=sys.stderr)
        return 1
    else:
        props = torch.cuda.get_device_properties(0)
        log(f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")
    if "train" not in args.skip:
        bench_steps(args.steps)
    if "e2e" not in args.skip:
        bench_e2e(args.e2e_steps)
    if "predict" not in args.skip:
        bench_predict(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
