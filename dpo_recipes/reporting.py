"""What a run leaves behind besides weights: manifest, metrics JSON, plots, and version checks."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

from .errors import UserError, exit_on_user_error
from .threads import thread_record

STACK = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed")
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "HF_API_TOKEN")
# Plots drawn from trainer_state.json's log history: (file, title, [(train key, eval key)])
PLOTS = (
    ("loss.png", "Loss", [("loss", "eval_loss")]),
    ("reward_margins.png", "Reward margin (chosen - rejected)", [("rewards/margins", "eval_rewards/margins")]),
    ("reward_accuracy.png", "Reward accuracy", [("rewards/accuracies", "eval_rewards/accuracies")]),
    ("rewards.png", "Rewards", [("rewards/chosen", "eval_rewards/chosen"), ("rewards/rejected", "eval_rewards/rejected")]),
    ("learning_rate.png", "Learning rate", [("learning_rate", None)]),
)


def installed_versions(packages=STACK) -> dict[str, str | None]:
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def read_validated_versions(recipe_dir: str | Path) -> dict[str, str]:
    """The recipe's `versions.txt`: `name==version` lines it was validated with."""
    path = Path(recipe_dir) / "versions.txt"
    pins = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[name.strip()] = version.strip()
    return pins


def version_drift(recipe_dir: str | Path) -> list[str]:
    """One message per package whose installed version differs from the recipe's validated one."""
    pins = read_validated_versions(recipe_dir)
    installed = installed_versions(pins)
    return [
        f"{name} {installed[name] or 'not installed'} is installed; {Path(recipe_dir).name} was validated with {want}"
        for name, want in pins.items()
        if (installed[name] or "").split("+")[0] != want.split("+")[0]
    ]


def warn_version_drift(recipe_dir: str | Path) -> None:
    for message in version_drift(recipe_dir):
        warnings.warn(message, stacklevel=2)


def redact(value):
    """Replace any secret from the environment, and token-like fields, wherever they appear."""
    secrets = [os.environ[k] for k in SECRET_ENV if os.environ.get(k)]
    if isinstance(value, dict):
        return {k: ("<redacted>" if re.search(r"(^|_)token$|api_key|secret|password", k, re.I) and v else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "<redacted>")
    return value


def git_commit(repo_dir: str | Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo_dir, capture_output=True, text=True).stdout
    return out.stdout.strip() + ("-dirty" if dirty.strip() else "")


def _jsonable(obj):
    if dataclasses.is_dataclass(obj):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=str))


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically (a kill mid-write leaves the old file, never a torn one)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(redact(data), indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def write_manifest(output_dir, *, script_args, training_args, model_args, datasets: dict, recipe_dir) -> dict:
    repo = Path(__file__).resolve().parent.parent
    manifest = {
        "recipe": Path(recipe_dir).name,
        "config": {
            "script": _jsonable(script_args),
            "training": _jsonable(training_args),
            "model": _jsonable(model_args),
        },
        "versions": installed_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": git_commit(repo),
        "datasets": {name: {"fingerprint": ds._fingerprint, "rows": len(ds)} for name, ds in datasets.items()},
        "seed": training_args.seed,
        "threads": thread_record(),
    }
    write_json(Path(output_dir) / "manifest.json", manifest)
    return manifest


def plot_series(log_history: list[dict]) -> dict[str, tuple[str, dict[str, list[tuple[int, float]]]]]:
    """What each plot draws: {file: (title, {metric: [(step, value), ...]})}, finite numbers only; a point logged
    twice at the same step (the final evaluation repeats the last in-training one) is drawn once."""
    out = {}
    for filename, title, series in PLOTS:
        lines = {}
        for train_key, eval_key in series:
            for key in (train_key, eval_key):
                points = []
                for e in log_history:
                    value = e.get(key) if key else None
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                        if (e["step"], value) not in points:
                            points.append((e["step"], value))
                if points:
                    lines[key] = points
        if lines:
            out[filename] = (title, lines)
    return out


def plot_log_history(log_history: list[dict], out_dir: str | Path) -> list[Path]:
    """PNG plots of the logged metrics against the step; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, (title, lines) in plot_series(log_history).items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, points in lines.items():
            ax.plot(*zip(*points), "o--" if key.startswith("eval_") else "-", label=key, markersize=4)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / filename, dpi=100)
        written.append(out_dir / filename)
        plt.close(fig)
    return written


def plot_run(run_dir: str | Path) -> list[Path]:
    """`make plots RUN=<dir>`: plots/ of a run folder from its trainer_state.json, or, for a run still going or
    interrupted, from its latest checkpoint's."""

    run_dir = Path(run_dir)
    state = run_dir / "trainer_state.json"
    if not state.is_file():
        checkpoints = sorted(run_dir.glob("checkpoint-*/trainer_state.json"),
                             key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit() else -1)
        if not checkpoints:
            raise UserError(f"{run_dir}: no trainer_state.json (in the folder or a checkpoint-N/ in it)")
        state = checkpoints[-1]
        print(f"{run_dir}: no final trainer_state.json; plotting {state}", file=sys.stderr)
    try:
        history = json.loads(state.read_text())["log_history"]
    except (ValueError, KeyError):
        raise UserError(f"{state}: not a trainer state (no log_history)") from None
    written = plot_log_history(history, run_dir / "plots")
    if not written:
        raise UserError(f"{state}: no logged metrics to plot (log_history has no loss, rewards or learning rate)")
    return written


def main(argv: list[str] | None = None) -> None:

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "plots":
        print("usage: python -m dpo_recipes.reporting plots RUN_DIR", file=sys.stderr)
        sys.exit(2)
    for path in exit_on_user_error(plot_run)(argv[1]):
        print(path)


if __name__ == "__main__":
    main()
