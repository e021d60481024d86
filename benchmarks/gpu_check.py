"""The GPU check: does spiralctl's GPU kernel family give the right numbers on this GPU, and how fast?

Usage: python benchmarks/gpu_check.py [--device CUDA] [--out DIR] [--quick]

Prints one line per check and writes everything to DIR/gpu_check.json:
1. the devices tinygrad sees here, the renderer and the kernel family each uses;
2. one training step's loss and gradients on the device against the CPU family (when clang is
   here) and against the float64 numpy LSTM;
3. the default training (1000 sequences of 50 points, hidden 8, batch 128, seed 0) for 5 epochs
   on the device and on the CPU: every epoch's losses within 1e-4;
4. eval of the device's checkpoint on the device and on the CPU;
5. milliseconds per training step at H=8/B=128, H=128/B=256 and H=512/B=1024 (T=50), against
   PyTorch's nn.LSTM + Adam on the same device when torch with CUDA is importable;
6. one epoch over 100,000 sequences;
7. the whole cold `spiralctl train` process on the device.
--quick shrinks 5-7 for emulated GPUs (OpenCL on pocl, tinygrad's PYTHON device): the numbers then
say nothing about GPU speed, only that the script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree

from spiralctl import commands  # noqa: E402
from spiralctl.config import InferenceOptions, TrainConfig  # noqa: E402
from spiralctl.data import DataConfig, generate, save_datasets  # noqa: E402
from spiralctl.devices import list_backends, probe  # noqa: E402
from spiralctl.kernels.adam import adam_scalars  # noqa: E402
from spiralctl.kernels.layout import PackedBatch  # noqa: E402
from spiralctl.kernels.staging import download  # noqa: E402
from spiralctl.kernels.step import step_gradients  # noqa: E402
from spiralctl.model import PARAMETER_NAMES, ModelConfig, SpiralClassifier, init_parameters  # noqa: E402
from spiralctl.trainer import Trainer  # noqa: E402


def say(report: dict, key: str, value, line: str) -> None:
    report[key] = value
    print(line, flush=True)


def lstm_float64(x, weights):
    """h_T and dL/d(weights) in float64 numpy for L = sum of the logits (the head applied to h_T)."""
    w_ih, w_hh, b_ih, b_hh, w_head, _ = (weights[n].astype(np.float64) for n in PARAMETER_NAMES)
    x = x.astype(np.float64)
    batch, steps, _ = x.shape
    hidden = w_hh.shape[1]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h, c, saved = [np.zeros((batch, hidden))], [np.zeros((batch, hidden))], []
    for t in range(steps):
        i, f, g, o = np.split(x[:, t] @ w_ih.T + b_ih + h[-1] @ w_hh.T + b_hh, 4, axis=1)
        i, f, g, o = sig(i), sig(f), np.tanh(g), sig(o)
        c.append(f * c[-1] + i * g)
        h.append(o * np.tanh(c[-1]))
        saved.append((i, f, g, o))
    dh, dc = np.repeat(w_head, batch, axis=0), np.zeros((batch, hidden))
    d_w_hh, d_w_ih = np.zeros_like(w_hh), np.zeros_like(w_ih)
    for t in reversed(range(steps)):
        i, f, g, o = saved[t]
        tanh_c = np.tanh(c[t + 1])
        dc = dc + dh * o * (1 - tanh_c**2)
        dz = np.concatenate(
            [dc * g * i * (1 - i), dc * c[t] * f * (1 - f), dc * i * (1 - g**2), dh * tanh_c * o * (1 - o)], 1
        )
        d_w_ih += dz.T @ x[:, t]
        d_w_hh += dz.T @ h[t]
        dh, dc = dz @ w_hh, dc * f
    return h[-1], d_w_ih, d_w_hh


def step_check(device: str, cpu_ok: bool, report: dict) -> None:
    """One step's gradients (batch 128, 50 points, hidden 32) on the device, the CPU and in float64."""
    batch, steps, hidden = 128, 50, 32
    data = generate(DataConfig(sequences=400, length=steps, seed=3))["train"]
    weights = init_parameters(ModelConfig(hidden=hidden), seed=3)
    layout = PackedBatch(batch, steps)
    x, y = data.x[:batch], data.y[:batch].astype(np.float32)
    packed = layout.pack(x, y, np.ones(batch, np.float32), adam_scalars(0.01, 1))
    results = {}
    for name in [device] + (["CPU"] if cpu_ok else []):
        from tinygrad import Tensor

        model = SpiralClassifier(ModelConfig(hidden=hidden), weights, name)
        parameters = [model.parameters[n] for n in PARAMETER_NAMES]
        row = Tensor(packed[None], device=name).realize()
        result, grads, _ = step_gradients(row, parameters, layout, model.kernels)
        Tensor.realize(result, *grads)
        d_w_in, d_w_hh, d_head = (download(g) for g in grads)
        results[name] = {"loss": float(download(result)[0, 0]), "d_w_ih": d_w_in[:, :2], "d_w_hh": d_w_hh}
    _, ref_ih, ref_hh = lstm_float64(x, weights)
    # the step's gradients are of the mean loss; the reference's of the summed logits: compare the
    # device to the CPU directly, and both to float64 through the kernels' own forward (logits)
    out = {}
    if cpu_ok:
        for key in ("d_w_ih", "d_w_hh"):
            out[f"{key} max |device - CPU|"] = float(np.abs(results[device][key] - results["CPU"][key]).max())
        out["loss |device - CPU|"] = abs(results[device]["loss"] - results["CPU"]["loss"])
    model = SpiralClassifier(ModelConfig(hidden=hidden), weights, device)
    from spiralctl.predictor import Predictor

    logits = Predictor(model, batch).logits(x)
    h64, _, _ = lstm_float64(x, weights)
    expected = h64 @ weights["head.weight"][0].astype(np.float64) + weights["head.bias"][0]
    out["logits max |device - float64|"] = float(np.abs(logits - expected).max())
    ok = all(v < 1e-4 for v in out.values())
    say(report, "step", out, f"step gradients: {'ok' if ok else 'MISMATCH'} {json.dumps(out)}")


def training_check(device: str, cpu_ok: bool, work: Path, epochs: int, report: dict) -> None:
    """The default training on the device and on the CPU, and eval of the device's checkpoint."""
    runs = {}
    for name in [device] + (["CPU"] if cpu_ok else []):
        config = TrainConfig(epochs=epochs)
        started = time.perf_counter()
        summary = commands.train(config, out=work / f"train-{name}", device=name, plots=False)
        runs[name] = summary["history"]
        say(
            report,
            f"train {name}",
            summary["history"],
            f"default training on {name}: {epochs} epochs in "
            f"{time.perf_counter() - started:.1f} s, val acc {summary['last']['val_accuracy']:.4f}",
        )
    if cpu_ok:
        worst = max(
            abs(a[k] - b[k]) for a, b in zip(runs[device], runs["CPU"]) for k in ("train_loss", "val_loss")
        )
        say(
            report,
            "train max |device - CPU| loss",
            worst,
            f"epochs 1-{epochs}: max loss difference {worst:.2e} ({'ok' if worst < 1e-4 else 'over 1e-4'})",
        )
    test = work / "test"
    save_datasets(test, generate(DataConfig(seed=99, test_fraction=0.2)))
    for name in [device] + (["CPU"] if cpu_ok else []):
        result = commands.evaluate(
            work / f"train-{device}" / "last.safetensors", test / "test.safetensors", InferenceOptions(name)
        )
        say(
            report,
            f"eval on {name}",
            {"loss": result["loss"], "accuracy": result["accuracy"]},
            f"eval of the {device} checkpoint on {name}: "
            f"loss {result['loss']:.6f}, accuracy {result['accuracy']:.4f}",
        )


def spiralctl_step_ms(device: str, hidden: int, batch: int, steps: int, repeats: int) -> float:
    data = generate(DataConfig(sequences=2 * batch, length=steps, seed=1))["train"]
    model = SpiralClassifier(
        ModelConfig(hidden=hidden), init_parameters(ModelConfig(hidden=hidden), 0), device
    )
    trainer = Trainer(model, TrainConfig(hidden=hidden, batch_size=batch))
    x, y, mask = data.x[:batch], data.y[:batch].astype(np.float32), np.ones(batch, np.float32)
    for _ in range(3):  # compile and capture the jit
        trainer.step(x, y, mask)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        trainer.step(x, y, mask)  # reads the loss back: a whole step, synchronised
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def torch_step_ms(hidden: int, batch: int, steps: int, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda")
    lstm, head = torch.nn.LSTM(2, hidden, batch_first=True).to(dev), torch.nn.Linear(hidden, 1).to(dev)
    optimizer = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=0.01)
    x = torch.randn(batch, steps, 2, device=dev)
    y = (torch.rand(batch, device=dev) > 0.5).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> float:
        optimizer.zero_grad()
        _, (h, _) = lstm(x)
        loss = loss_fn(head(h[0]).reshape(-1), y)
        loss.backward()
        optimizer.step()
        return float(loss)  # reads the loss back, as spiralctl's step does

    for _ in range(5):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="CUDA", help="tinygrad device to check (CUDA, NV, AMD, METAL, CL, ...)"
    )
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--quick", action="store_true", help="small sizes, for emulated GPUs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": args.device, "quick": args.quick, "python": sys.version.split()[0]}
    started = time.perf_counter()
    rows = [row.__dict__ for row in list_backends()]
    ok, why = probe(args.device)

    def shown(row: dict) -> str:
        return (
            f"{row['device']} yes ({row['renderer']}, {row['kernels']} kernels)"
            if row["ok"]
            else f"{row['device']} no"
        )

    say(report, "devices", rows, "devices: " + "; ".join(shown(row) for row in rows))
    if not ok:
        say(report, "error", why, f"{args.device} does not work here: {why}")
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        sys.exit(1)
    from tinygrad import Device

    from spiralctl.devices import renderer_name

    say(
        report,
        "renderer",
        renderer_name(Device[args.device].renderer),
        f"{args.device} renders with {renderer_name(Device[args.device].renderer)}",
    )
    cpu_ok = probe("CPU")[0]
    if not cpu_ok:
        print("CPU device not usable here (no clang): comparing against float64 numpy only", flush=True)
    with tempfile.TemporaryDirectory() as work:
        step_check(args.device, cpu_ok, report)
        training_check(args.device, cpu_ok, Path(work), 2 if args.quick else 5, report)
        sizes = [(8, 128), (32, 64)] if args.quick else [(8, 128), (128, 256), (512, 1024)]
        repeats = 5 if args.quick else 30
        speed = []
        for hidden, batch in sizes:
            ours = spiralctl_step_ms(args.device, hidden, batch, 50, repeats)
            theirs = torch_step_ms(hidden, batch, 50, repeats) if args.device in ("CUDA", "NV") else None
            ratio = (
                f", PyTorch {theirs:.2f} ms: {theirs / ours:.2f}x" if theirs else ", PyTorch: not measured"
            )
            speed.append({"hidden": hidden, "batch": batch, "spiralctl_ms": ours, "torch_ms": theirs})
            print(f"step H={hidden} B={batch} T=50: spiralctl {ours:.2f} ms{ratio}", flush=True)
        report["steps"] = speed
        n = 2000 if args.quick else 100_000
        big = Path(work) / "big"
        save_datasets(big, generate(DataConfig(sequences=n + n // 4, length=50, val_fraction=0.2, seed=5)))
        epoch = time.perf_counter()
        summary = commands.train(
            TrainConfig(epochs=1, hidden=32, batch_size=512),
            data_dir=big,
            out=Path(work) / "big-run",
            device=args.device,
            plots=False,
        )
        say(
            report,
            "big epoch",
            summary["last"],
            f"one epoch over {n} sequences (H=32, B=512): "
            f"{time.perf_counter() - epoch:.1f} s, {summary['last']['sequences_per_second']:.0f} seq/s",
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        cold = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "spiralctl",
                "train",
                "--device",
                args.device,
                "--out",
                str(Path(work) / "cold"),
                "--no-plots",
                "-q",
                *(["--epochs", "2"] if args.quick else []),
            ],
            check=True,
            env={**env, "CACHEDB": str(Path(work) / "cold-cache.db")},
            stdout=subprocess.DEVNULL,
        )
        say(
            report,
            "cold train seconds",
            time.perf_counter() - cold,
            f"whole cold spiralctl train on {args.device}: {time.perf_counter() - cold:.1f} s",
        )
    report["seconds"] = time.perf_counter() - started
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"done in {report['seconds']:.0f} s; {args.out / 'gpu_check.json'}", flush=True)


if __name__ == "__main__":
    main()
