"""Everything the GPU issue asks a card to show, in one run of about 8 minutes.

    python bench/gpu_check.py --data-dir DIR [--search-seconds 75] [--out FILE]
    python bench/gpu_check.py --dry          # the same steps, tiny, on the CPU

Steps, each timed and each summarised in the table printed at the end:

1. the card, the driver and the torch version;
2. `bench/train_speed.py`: images/s, s/epoch and MFU of every preset at batch 512,
   warm-up epochs excluded, and the `fast` recipe's time to accuracy;
3. `autosearch train zigzag --recipe fast` in full: wall time and test accuracy;
4. short `autosearch start --study zigzag --gpus all` runs with `--workers-per-gpu` 1, 2
   and auto: trials finished and aggregate trained images per second (images trained by
   every trial of the study, over the run's wall time);
5. host synchronisations inside one training epoch, counted with
   `torch.cuda.set_sync_debug_mode("warn")`: the trainer reads its device counters once
   per epoch on purpose, so 1 is the floor.

`bench/gpu_check.sh` wraps it: it decodes the carried CIFAR-10 copy first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    """(exit code, output, seconds) of a command; a timeout is exit code 124."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
        )
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        code = 124
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else ""
    return code, out, time.perf_counter() - started


def card() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda or "-"}
    if torch.cuda.is_available():
        info["card"] = torch.cuda.get_device_name(0)
        smi = shutil.which("nvidia-smi")
        if smi:
            q = "--query-gpu=driver_version,memory.total"
            out = subprocess.run([smi, q, "--format=csv,noheader"], capture_output=True, text=True)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else "-"
    else:
        info["card"] = "cpu (no CUDA device)"
    return info


def speed(data_dir: str | None, dry: bool) -> tuple[list[str], str]:
    cmd = [sys.executable, "bench/train_speed.py"]
    cmd += ["--tiny"] if dry else ["--data-dir", str(data_dir)]
    code, out, _ = run(cmd, timeout=240)
    rows = [line for line in out.splitlines() if line.strip()]
    return rows, "ok" if code == 0 else f"exit {code}"


def train_fast(data_dir: str | None, dry: bool) -> dict:
    cmd = [sys.executable, "-m", "autosearch", "train", "zigzag", "--recipe", "fast", "--json"]
    if dry:
        cmd = [sys.executable, "-m", "autosearch", "train", "--widths", "16,32"]
        cmd += ["--repeats", "1,1", "--epochs", "1", "--subset", "400", "--json"]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    code, out, seconds = run(cmd, timeout=180)
    found = re.search(r"^\{.*\}$", out, re.M)
    if code or not found:
        return {"status": f"exit {code}", "seconds": seconds, "tail": out[-400:]}
    result = json.loads(found.group(0))
    return {
        "status": result["status"],
        "seconds": seconds,
        "train_seconds": result["train_seconds"],
        "test_acc": result["test_acc"],
        "images_per_s": result["images_per_s"],
    }


def search(per_gpu: str, seconds: float, data_dir: str | None, dry: bool, scratch: Path) -> dict:
    """A short `zigzag` search with `per_gpu` workers per GPU; images/s over all of it."""
    import optuna

    db = scratch / f"search-{per_gpu}.db"
    cmd = [sys.executable, "-m", "autosearch", "start", "--study", "zigzag", "--trials", "200"]
    cmd += ["--timeout", str(seconds), "--epochs", "1" if dry else "4"]
    cmd += ["--storage", f"sqlite:///{db}", "--checkpoint-dir", str(scratch / f"ck-{per_gpu}")]
    cmd += ["--log-dir", str(scratch / "logs"), "--seed", "0"]
    if dry:
        cmd += ["--workers", per_gpu if per_gpu != "auto" else "2", "--device", "cpu"]
        cmd += ["--subset", "400", "--val-size", "100", "--max-params", "100000"]
    else:
        cmd += ["--gpus", "all", "--workers-per-gpu", per_gpu]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    code, out, wall = run(cmd, timeout=seconds + 150)
    try:
        trials = optuna.load_study(study_name="zigzag", storage=f"sqlite:///{db}").trials
    except KeyError:  # the run failed before it made the study
        print(out[-800:])
        trials = []
    images, finished = 0.0, 0
    for t in trials:
        a = t.user_attrs
        images += (a.get("images_per_s") or 0.0) * (a.get("train_seconds") or 0.0)
        finished += t.state.is_finished() and a.get("stopped") != "infeasible"
    workers = re.search(r"(\d+) worker\(s\)", out)
    return {
        "per_gpu": per_gpu,
        "workers": int(workers.group(1)) if workers else 1,
        "trained": finished,
        "images_per_s": images / wall if wall > 0 else 0.0,
        "wall": wall,
        "exit": code,
    }


def sync_check(dry: bool) -> str:
    """Host synchronisations in one training epoch of `zigzag` at batch 512."""
    import torch
    from autosearch.models import get_preset, make_spec
    from autosearch.search.training import trainer
    from autosearch.search.training.data import CifarData
    from autosearch.search.training.recipe import get_recipe

    if not torch.cuda.is_available():
        return "n/a (no CUDA device)"
    device = torch.device("cuda")
    n = 64 if dry else 4096
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    data = CifarData(x, y, x[:64], y[:64], x[:64], y[:64], (0.5,) * 3, (0.25,) * 3).to(device)
    spec = make_spec([16], [1]) if dry else get_preset("zigzag")
    recipe = get_recipe("fast").replace(batch_size=512 if not dry else 32, epochs=2)
    from autosearch.models import build_model

    loop = trainer._set_up(build_model(spec), data, recipe, device, 0)
    trainer._train_epoch(loop)  # warm-up: cuDNN's choices and lazy allocations
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer._train_epoch(loop)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    where = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})
    verdict = "ok" if len(syncs) <= 1 else "too many"
    return f"{len(syncs)} per epoch ({verdict}; 1 is the end-of-epoch read) {', '.join(where)}"


def table(info: dict, speed_rows: list[str], fast: dict, searches: list[dict], sync: str) -> str:
    lines = [
        f"# GPU check: {info['card']}",
        "",
        f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | torch {info['torch']} "
        f"| CUDA {info['cuda']} | driver {info.get('driver', '-')}",
        "",
        "## Training speed (bench/train_speed.py)",
        "",
        "```",
        *speed_rows,
        "```",
        "",
        "## `autosearch train zigzag --recipe fast`",
        "",
    ]
    if "test_acc" in fast:
        lines.append(
            f"test accuracy {fast['test_acc']:.4f}, {fast['train_seconds']:.1f} s training, "
            f"{fast['seconds']:.1f} s in all, {fast['images_per_s']:,.0f} img/s"
        )
    else:
        lines.append(f"failed: {fast['status']} {fast.get('tail', '')}")
    lines += ["", "## Short searches", "", "| workers/GPU | workers | trials trained |"]
    lines[-1] += " aggregate img/s | vs 1 worker | wall s | exit |"
    lines.append("|---|---|---|---|---|---|---|")
    base = searches[0]["images_per_s"] if searches else 0.0
    for s in searches:
        ratio = f"{s['images_per_s'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {s['per_gpu']} | {s['workers']} | {s['trained']} | {s['images_per_s']:,.0f} "
            f"| {ratio} | {s['wall']:.0f} | {s['exit']} |"
        )
    lines += ["", f"host syncs inside a training epoch: {sync}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 folder (decoded copy)")
    parser.add_argument("--search-seconds", type=float, default=75.0, help="per search run")
    parser.add_argument("--per-gpu", nargs="+", default=["1", "2", "auto"])
    parser.add_argument("--out", default=None, help="also write the table here")
    parser.add_argument("--dry", action="store_true", help="tiny CPU run of every step")
    args = parser.parse_args(argv)
    if args.dry and args.search_seconds == 75.0:
        args.search_seconds = 20.0

    started = time.perf_counter()
    info = card()
    print(f"card {info['card']} | driver {info.get('driver', '-')} | torch {info['torch']}")
    speed_rows, status = speed(args.data_dir, args.dry)
    print("\n".join(speed_rows) + f"\n[speed: {status}, {time.perf_counter() - started:.0f} s]")
    fast = train_fast(args.data_dir, args.dry)
    print(f"[fast: {fast}]")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        searches = []
        for per_gpu in args.per_gpu:
            searches.append(
                search(per_gpu, args.search_seconds, args.data_dir, args.dry, Path(scratch))
            )
            print(f"[search: {searches[-1]}]")
    sync = sync_check(args.dry)
    report = table(info, speed_rows, fast, searches, sync)
    print(report)
    print(f"[total {time.perf_counter() - started:.0f} s]")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
