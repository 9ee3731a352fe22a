"""Bring your config: an alignment-handbook recipe or a TRL 0.x DPO config, converted into one this project takes.

    python -m dpo_recipes.commands.migrate OLD.yaml [-o NEW.yaml] [--force]
    make migrate CONFIG=OLD.yaml [OUT=NEW.yaml]

Renamed keys are renamed (renames.py has the table), values whose meaning changed are converted (warmup_ratio,
a null torch_dtype, the handbook's dataset_mixer / dataset_splits), removed keys become comments in the new file that
say what they did and what replaces them, and keys with no equivalent are left out and listed. `padding_free` with a
loss TRL computes (apo_zero, ...) becomes false: neither loss path packs those. The new file is then checked like any
recipe config; a report_to tracker not installed here is left out of that check and named with the command that
installs it. An existing file is only replaced with --force. docs/migrating.md has the details.
"""

from __future__ import annotations

import difflib
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from dpo_recipes.cli import CommandParser, read_yaml
from dpo_recipes.train.config import TRACKER_PACKAGES, _custom_knobs, _known_keys, missing_trackers, parse_config
from dpo_recipes.errors import UserError, exit_on_user_error
from dpo_recipes.train.losses import LOSSES
from dpo_recipes.renames import CHANGES, KeyChange

# What a handbook recipe that leaves these keys out ran with, where TRL 1.16's default differs: key -> (value, why).
HANDBOOK_DEFAULTS = {
    "optim": ("rmsprop", "the handbook's DPOConfig default (src/alignment/configs.py)"),
    "logging_first_step": (True, "the handbook's DPOConfig default (src/alignment/configs.py)"),
    "max_length": (512, "TRL 0.8's DPOTrainer default, which the handbook passed its null max_length to"),
}
HANDBOOK_KEYS = ("dataset_mixer", "dataset_splits", "preprocessing_num_workers")
# Old keys whose conversion reads the current key too (the others give way when the current key is also set).
MERGED = ("dataset_mixer", "warmup_ratio", "push_to_hub_organization", "gradient_checkpointing_use_reentrant")


@dataclass
class Step:
    """What happened to one key of the old config."""

    key: str
    action: str  # renamed, converted, added, removed, kept out
    old: object  # the old value (None for an added key)
    new: dict = field(default_factory=dict)  # the keys and values written for it
    note: str = ""


@dataclass
class Migration:
    config: dict  # the new config
    steps: list[Step]  # one per old key that did not come through as it was (and per added key)
    layout: list[tuple[list[str], str | None]]  # the file: comment lines, then the key written after them
    files: dict[str, str]  # extra files to write next to the new config (a chat template): name -> text

    def changed(self) -> dict[str, str]:
        """Old key -> action, for every key that did not come through as it was."""
        return {step.key: step.action for step in self.steps}


def _loss_types(config: dict) -> list[str]:
    loss_type = config.get("loss_type", "sigmoid")
    return [loss_type] if isinstance(loss_type, str) else list(loss_type or [])


def _when(change: KeyChange) -> str:
    return f" ({change.changed_in})" if change.changed_in else ""


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()


def _line(key: str, value) -> str:
    """One key as YAML: scalars and flat lists / mappings on one line, a list of mappings one entry a line."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "\n".join([f"{key}:"] + [f"  - {_flow(v)}" for v in value])
    if isinstance(value, (list, dict)):
        return f"{key}: {_flow(value)}"
    return yaml.safe_dump({key: value}, default_flow_style=False, width=1000).rstrip("\n")


def _fmt(key: str, value) -> str:
    return yaml.safe_dump({key: value}, default_flow_style=True, sort_keys=False, width=1000).strip()[1:-1]


def _handbook_mixer(config: dict, where: str) -> tuple[dict, str]:
    """alignment-handbook's `dataset_mixer` {name: fraction} + `dataset_splits` (+ `dataset_configs`) as this
    project's data keys. The handbook loaded every listed split of every dataset: names with 'train' are trained on
    (the first int(fraction x rows) rows of each), names with 'test' are held out whole."""
    mixer = config["dataset_mixer"]
    splits = config.get("dataset_splits", ["train", "test"])
    configs = config.get("dataset_configs")
    if not isinstance(mixer, dict) or not mixer:
        raise UserError(f"{where}: dataset_mixer must map dataset names to fractions, got {mixer!r}")
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise UserError(f"{where}: dataset_splits must be a list of split names, got {splits!r}")
    if configs is not None and (not isinstance(configs, list) or len(configs) != len(mixer)):
        raise UserError(f"{where}: dataset_configs must list one configuration per dataset_mixer entry")
    train = [s for s in splits if "train" in s]
    test = [s for s in splits if "test" in s and "train" not in s]
    if len(train) + len(test) != len(splits):
        raise UserError(f"{where}: dataset_splits: every split name needs 'train' or 'test' in it (the handbook "
                        f"refused the others too), got {splits}")
    if len(train) != 1 or len(test) > 1:
        raise UserError(f"{where}: dataset_splits {splits}: one train and at most one test split convert; write "
                        "one dataset_mixture entry per split by hand (docs/data.md)")
    entries, dropped = [], []
    for i, (name, fraction) in enumerate(mixer.items()):
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or fraction < 0:
            raise UserError(f"{where}: dataset_mixer: '{name}' needs a fraction >= 0, got {fraction!r}")
        if fraction == 0:  # the handbook trained on none of its rows (but kept its test split)
            dropped.append(name)
            continue
        entry = {"name": name}
        if configs and configs[i] is not None:
            entry["config"] = configs[i]
        entry.update(split=train[0], test_split=test[0] if test else None, fraction=fraction)
        entries.append(entry)
    note = ("the handbook took the first int(fraction x rows) rows of each train split; here a fraction takes "
            "round(fraction x clean rows), sampled with the run's seed, and test splits are held out whole as before")
    if dropped:
        note += f"; {', '.join(dropped)} had fraction 0 and is left out (its test split too)"
    if not test:
        note += "; no test split was listed: eval_fraction of each source's rows is held out instead"
    if len(entries) == 1 and entries[0]["fraction"] == 1:
        entry = entries[0]
        new = {"dataset_name": entry["name"]}
        if "config" in entry:
            new["dataset_config"] = entry["config"]
        new["dataset_train_split"] = entry["split"]
        if entry["test_split"]:
            new["dataset_test_split"] = entry["test_split"]
        return new, "one source at fraction 1: every clean row of its train split is trained on"
    if not entries:
        raise UserError(f"{where}: dataset_mixer: every fraction is 0, nothing to train on")
    return {"dataset_mixture": entries}, note


def _handbook_mixture(mixture: dict, where: str) -> list[Step]:
    """alignment-handbook's 2025 `dataset_mixture` {datasets: [{id, config, split, columns, weight}],
    test_split_size, seed}: it concatenated the (sub-sampled) datasets, then carved test_split_size rows."""
    datasets = mixture.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise UserError(f"{where}: dataset_mixture.datasets must be a list of datasets")
    entries = []
    for i, item in enumerate(datasets, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise UserError(f"{where}: dataset_mixture.datasets entry {i} needs an `id`")
        entry = {"name": item["id"]}
        if item.get("config") is not None:
            entry["config"] = item["config"]
        entry.update(split=item.get("split", "train"), test_split=None)
        if item.get("weight") is not None:
            entry["fraction"] = item["weight"]
        entries.append(entry)
    size = mixture.get("test_split_size")
    steps = [Step("dataset_mixture", "converted", mixture, {"dataset_mixture": entries},
                  "the handbook's datasets list: id is name, weight (a share of rows, sampled) is fraction; columns "
                  "are left out (a row's columns are found by name here: docs/data.md); each source's held-out rows "
                  "are carved with eval_fraction and the run's seed (the mixture's own seed is not used)")]
    if isinstance(size, float) and 0 < size < 1:
        steps.append(Step("dataset_mixture.test_split_size", "converted", size, {"eval_fraction": size},
                          "a fraction of the whole mixture before; here a fraction of each source's clean rows"))
    elif size is not None:
        steps.append(Step("dataset_mixture.test_split_size", "kept out", size, {},
                          f"{size} rows carved from the whole mixture; here the held-out set is eval_fraction of "
                          f"each source's clean rows: set eval_fraction to about {size} / (rows of the mixture)"))
    return steps


def convert(old: dict, where: str, out_name: str = "new.yaml") -> Migration:
    """The new config for `old` (a YAML mapping read from `where`), with a step for every changed key."""
    known = _known_keys() | set(_custom_knobs())  # with the knobs of losses a recipe registers (losses.py)
    migration = Migration({}, [], [], {})
    converted: set[str] = set()  # current keys written by a conversion: the old file's own value of them is used

    def put(step: Step, comment: str) -> None:
        migration.steps.append(step)
        migration.layout.append(([comment] + ([step.note] if step.note else []), None))
        for key, value in step.new.items():
            migration.config[key] = value
            converted.add(key)
            migration.layout.append(([], key))

    for key, value in old.items():
        if key == "dataset_mixture" and isinstance(value, dict):  # the handbook's 2025 form, not ours (a list)
            for step in _handbook_mixture(value, where):
                put(step, f"{'was' if step.new else step.action} {_fmt(step.key, step.old)}")
        elif key in known:
            if key not in converted:
                migration.config[key] = value
                migration.layout.append(([], key))
        elif key in ("dataset_splits", "dataset_configs"):
            if "dataset_mixer" in old:
                migration.steps.append(Step(key, "converted", value, {}, "merged into dataset_mixer's data keys"))
            else:
                put(Step(key, "kept out", value, {}, "only read with dataset_mixer"), f"kept out {_fmt(key, value)}")
        elif key in CHANGES:
            step = _convert_key(CHANGES[key], value, old, where, out_name, migration.files)
            label = "was" if step.new else step.action
            put(step, f"{label} {_fmt(key, value)}{_when(CHANGES[key])}")
        else:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            put(Step(key, "kept out", value, {}, f"not a key of this project{hint}"), f"kept out {_fmt(key, value)}")
    def replace(key: str, value, note: str) -> None:  # a key kept as it was, whose value must change
        old_value = migration.config[key]
        migration.layout = [(lines, k) for lines, k in migration.layout if k != key]
        put(Step(key, "converted", old_value, {key: value}, note), f"was {_fmt(key, old_value)}")

    # TRL's DPOTrainer has zeroed every dropout, LoRA's included, since 0.x (disable_dropout, default true): an old
    # lora_dropout never acted. It is written as 0.0, so the config says what trained (a non-zero one is refused).
    if migration.config.get("lora_dropout") and migration.config.get("use_peft") and \
            migration.config.get("disable_dropout", True):
        replace("lora_dropout", 0.0, "TRL's disable_dropout (default true) set it to 0 in DPO: it never acted")
    trl_losses = [t for t in _loss_types(migration.config) if t not in LOSSES]
    if migration.config.get("padding_free") and trl_losses:
        replace("padding_free", False, f"loss_type {', '.join(trl_losses)} is computed by TRL, whose DPOTrainer "
                "(1.16) has no padding-free path (it warns and pads), and this project's packed rows feed only its own "
                "loss types (docs/losses.md): the run pads each batch, with the same loss and more memory for batches "
                "of mixed lengths")
    if any(key in old for key in HANDBOOK_KEYS):
        for key, (value, why) in HANDBOOK_DEFAULTS.items():
            if key not in migration.config:
                put(Step(key, "added", None, {key: value}, f"{why}; TRL 1.16's differs"), f"added {_fmt(key, value)}")
    return migration


def _convert_key(change: KeyChange, value, old: dict, where: str, out_name: str, files: dict) -> Step:
    """One renamed or removed key: its new key(s) and value, or why it goes."""
    key, new = change.old, change.new
    if new is None:
        return Step(key, "removed", value, {}, change.note)
    if new in old and key not in MERGED:
        return Step(key, "removed", value, {}, f"{new} is set too and is kept")  # the current key wins
    if key == "torch_dtype":
        if value is None:
            return Step(key, "converted", value, {"dtype": "float32"}, "null loaded float32 under transformers 4; "
                        "transformers 5 reads null as 'auto' (the checkpoint's dtype), so float32 is written out")
        return Step(key, "renamed", value, {"dtype": value}, "TRL's ModelConfig key since 0.23")
    if key == "warmup_ratio":
        steps = old.get("warmup_steps", 0)
        if steps:  # transformers 4 documented warmup_steps as overriding warmup_ratio
            return Step(key, "removed", value, {}, f"warmup_steps: {steps} is set and overrode it already")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            return Step(key, "kept out", value, {}, "a warmup ratio must be in [0, 1); set warmup_steps yourself")
        return Step(key, "converted", value, {"warmup_steps": value}, change.note)
    if key == "use_flash_attention_2":
        if not value or "attn_implementation" in old:
            return Step(key, "removed", value, {}, "attn_implementation decides" if value else "the default")
        return Step(key, "converted", value, {"attn_implementation": "flash_attention_2"}, change.note)
    if key == "include_inputs_for_metrics":
        if not value:
            return Step(key, "removed", value, {}, "false is the default")
        return Step(key, "converted", value, {"include_for_metrics": ["inputs"]}, change.note)
    if key == "push_to_hub_organization":
        name = old.get("hub_model_id") or old.get("push_to_hub_model_id")
        if not name or "/" in str(name):
            return Step(key, "kept out", value, {}, "put the organisation into hub_model_id (org/name) yourself")
        return Step(key, "converted", value, {"hub_model_id": f"{value}/{name}"}, change.note)
    if key == "gradient_checkpointing_use_reentrant":
        kwargs = dict(old.get("gradient_checkpointing_kwargs") or {})
        kwargs.setdefault("use_reentrant", value)
        return Step(key, "converted", value, {"gradient_checkpointing_kwargs": kwargs}, change.note)
    if key == "chat_template":
        if not isinstance(value, str) or not value.strip():
            return Step(key, "removed", value, {}, "empty: the tokenizer's own template is used")
        name = f"{Path(out_name).stem}.chat_template.jinja"
        files[name] = value
        return Step(key, "converted", "<template>", {"chat_template_path": str(Path(out_name).parent / name)},
                    change.note)
    if key == "dataset_mixer":
        new_keys, note = _handbook_mixer(old, where)
        return Step(key, "converted", value, new_keys, note)
    return Step(key, "renamed", value, {new: value}, change.note)


def render(migration: Migration, source: str) -> str:
    """The new config as YAML text with a comment above every changed key and in place of every removed one."""
    lines = [f"# Converted from {source} by `python -m dpo_recipes.commands.migrate` for this project's stack (TRL 1.16,",
             "# transformers 5.24); docs/migrating.md explains every change. Check the values before a run.", ""]

    def comment(text_lines: list[str]) -> None:
        for text in text_lines:
            lines.extend(textwrap.wrap(text, 116, initial_indent="# ", subsequent_indent="#   "))

    written = set()
    for notes, key in migration.layout:
        comment(notes)
        if key is not None and key not in written:
            written.add(key)
            lines.append(_line(key, migration.config[key]))
    return "\n".join(lines) + "\n"


def report(migration: Migration, source: str, target: str, total: int) -> str:
    lines = [f"{source} -> {target}: {len(migration.steps)} of {total} keys changed"]
    for step in migration.steps:
        new = ", ".join(_fmt(k, v) for k, v in step.new.items())
        old = "" if step.action == "added" else _fmt(step.key, step.old)
        what = f"{old} -> {new}" if old and new else (new or old)
        lines.append(f"  {step.action:<9} {what}" + (f"  ({step.note})" if step.note else ""))
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> Migration:
    parser = CommandParser(prog="python -m dpo_recipes.commands.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the old config (YAML)")
    parser.add_argument("-o", "--output", help="the new config (default: <old name>.migrated.yaml next to it)")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")
    args = parser.parse_args(argv)
    source = Path(args.config)
    target = Path(args.output) if args.output else source.with_name(f"{source.stem}.migrated.yaml")
    old = read_yaml(source)
    migration = convert(old, str(source), str(target))
    outputs = [target] + [target.parent / name for name in migration.files]
    for path in outputs:
        if path.exists() and not args.force:
            raise UserError(f"{path}: exists; choose another output with -o, or pass --force to replace it")
    if source.resolve() == target.resolve():
        raise UserError(f"{target}: is the old config; write the new one elsewhere with -o")
    target.parent.mkdir(parents=True, exist_ok=True)
    for name, text in migration.files.items():
        (target.parent / name).write_text(text)
    target.write_text(render(migration, str(source)))
    print(report(migration, str(source), str(target), len(old)))
    # The new file must pass the checks of any recipe config; without a GPU, transformers refuses bf16 unless the
    # run is declared CPU-only, so the check says so (the file itself is left as converted).
    # A tracker whose package is missing here is this machine's to install, not the config's to change: the check
    # runs without it (a layer over the new file) and the report says how to add it.
    cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    report_to = migration.config.get("report_to")
    missing = missing_trackers([report_to] if isinstance(report_to, str) else report_to)
    # Likewise Liger's kernels need a CUDA GPU: on a machine without one the check runs with them off, and says so.
    machine = {}
    if missing:
        present = [name for name in report_to if name not in missing] if isinstance(report_to, list) else []
        machine["report_to"] = present or "none"
    liger_off = bool(migration.config.get("use_liger_kernel")) and not torch.cuda.is_available()
    if liger_off:
        machine["use_liger_kernel"] = False
    with tempfile.TemporaryDirectory() as tmp:
        layer = []
        if machine:
            (Path(tmp) / "machine.yaml").write_text(yaml.safe_dump(machine))
            layer = ["--config", str(Path(tmp) / "machine.yaml")]
        try:
            parse_config(["--config", str(target), *layer, *cpu])
        except UserError as err:
            raise UserError(f"{target} is written but does not pass this project's checks yet: {err}") from None
    print(f"{target}: passes this project's config checks{' (as a CPU run: no GPU here)' if cpu else ''}; "
          f"python -m dpo_recipes.commands.audit --config {target} checks its data with its model's tokenizer")
    if missing:
        print(f"{target}: report_to {', '.join(missing)} needs {' and '.join(TRACKER_PACKAGES[m] for m in missing)}, "
              "not installed here: `make trackers` installs wandb and trackio (requirements-trackers.txt)")
    if liger_off:
        print(f"{target}: use_liger_kernel needs liger-kernel and a CUDA GPU; checked here with it off, kept in the file")
    return migration


if __name__ == "__main__":
    main(sys.argv[1:])
