"""Copy a recipe as the template of a new one: `make new-recipe NAME=<new> FROM=<existing> [OWN=1]`.

Everything is copied (config, variants, losses.py, train.py, README, versions.txt; the accelerate.yaml link stays a
relative link to the same launcher config). What names the old recipe is renamed, and each rename is printed:
`output_dir`, `hub_model_id` and `reward_model_name_or_path` in the configs, the README's title, and every mention of
the old recipe in the README and in the configs' comments (make commands, recipes/<old>/, outputs/<old>...). Nothing
existing is overwritten.

With OWN=1 the new recipe's train.py is the whole training path, dpo_recipes/commands/train.py, as a script of its own: it reads
top to bottom and builds the trainer where you can see it, for when the loop itself must change. Without it the copy
is config-only and follows the package's training path.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from dpo_recipes.errors import UserError, exit_on_user_error  # noqa: E402

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
RENAMED_KEYS = ("output_dir", "hub_model_id", "reward_model_name_or_path")


def rename_keys(text: str, old: str, new: str) -> tuple[str, list[str]]:
    """Rename `old` to `new` in the values of RENAMED_KEYS (YAML lines `key: value`); output_dir always moves."""
    changes = []
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)(" + "|".join(RENAMED_KEYS) + r")(\s*:\s*)(\S[^#\n]*?)(\s*(#.*)?)$", line.rstrip("\n"))
        if not match:
            continue
        indent, key, sep, value, tail = match.group(1), match.group(2), match.group(3), match.group(4), match.group(5)
        renamed = value.replace(old, new)
        if renamed == value and key == "output_dir":
            renamed = f"outputs/{new}"  # never share an output folder with the template
        if renamed != value:
            lines[i] = f"{indent}{key}{sep}{renamed}{tail or ''}\n"
            changes.append(f"{key}: {value} -> {renamed}")
    return "".join(lines), changes


def mentions(text: str, old: str, new: str) -> tuple[str, int]:
    """`old` as a recipe name (alone, or in recipes/<old>/, outputs/<old>-reward-model, RECIPE=<old>) -> `new`; a
    longer name that merely starts with it (qwen2.5-0.5b-instruct, a model id in other case) is left alone."""
    return re.subn(r"(?<![\w.-])" + re.escape(old) + r"(?!\w|\.\w|-(?!reward-model|dpo\b)\w)", new, text)


def rename_comments(text: str, old: str, new: str) -> tuple[str, int]:
    """The recipe's name in a YAML file's comment lines (values are rename_keys' business)."""
    lines, count = text.splitlines(keepends=True), 0
    for i, line in enumerate(lines):
        if line.lstrip().startswith("#"):
            lines[i], n = mentions(line, old, new)
            count += n
    return "".join(lines), count


def own_script(run_py: Path, name: str, source: str) -> str:
    """dpo_recipes/commands/train.py as a recipe's own train.py: its own docstring, package-absolute imports, a __main__ block."""
    text = run_py.read_text()
    docstring_end = text.index('"""', 3) + 3
    steps = next(line for line in text[:docstring_end].splitlines() if " -> " in line)  # commands/train.py's order of steps
    header = (f'"""Recipe {name}\'s own training script, made by `make new-recipe NAME={name} FROM={source} OWN=1`\n'
              "from the package's training path (dpo_recipes/commands/train.py) as it was then. It is this recipe's to change:\n"
              "later changes to dpo_recipes/commands/train.py do not reach it, while the modules it imports are still the\n"
              "package's. Its steps, top to bottom:\n\n"
              f"{steps}\n\n"
              f"Run it as every recipe: `make train RECIPE={name}` (`make smoke RECIPE={name}` on CPU), or\n"
              "`accelerate launch --config_file accelerate.yaml train.py --config config.yaml` from the repository\n"
              "root.\n"
              '"""')
    body = re.sub(r"^from \.(\w+) import", r"from dpo_recipes.\1 import", text[docstring_end:], flags=re.M)
    return header + body + '\n\nif __name__ == "__main__":\n    main(Path(__file__).resolve().parent)\n'


def copy_recipe(recipes: Path, name: str, source: str, own: bool = False) -> list[str]:
    if not name or not NAME_RE.match(name):
        raise UserError(f"NAME: {name!r} is not a recipe name (lower-case letters, digits, '.', '_', '-')")
    src, dst = recipes / source, recipes / name
    if not source or not (src / "config.yaml").is_file():
        known = sorted(p.name for p in recipes.iterdir() if (p / "config.yaml").is_file())
        raise UserError(f"FROM: no recipe {source!r}; recipes: {' '.join(known)}")
    if dst.exists():
        raise UserError(f"{dst}: already exists; choose another NAME (nothing was changed)")

    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    changes = []
    for config in [dst / "config.yaml", *sorted((dst / "variants").glob("*.yaml"))]:
        text, changed = rename_keys(config.read_text(), source, name)
        text, count = rename_comments(text, source, name)
        config.write_text(text)
        changes += [f"{config.relative_to(recipes.parent)}: {c}" for c in changed]
        if count:
            changes.append(f"{config.relative_to(recipes.parent)}: {source} -> {name} in {count} comment mention(s)")
    readme = dst / "README.md"
    if readme.is_file():
        text, count = mentions(readme.read_text(), source, name)
        lines = text.splitlines(keepends=True)
        if lines and lines[0].startswith("# "):
            lines[0] = f"# {name} (copied from {source}: update this README)\n"
        readme.write_text("".join(lines))
        changes.append(f"{readme.relative_to(recipes.parent)}: title and {count} mention(s) of {source} -> {name}")
    if own:
        (dst / "train.py").write_text(own_script(recipes.parent / "dpo_recipes" / "commands" / "train.py", name, source))
        changes.append(f"{(dst / 'train.py').relative_to(recipes.parent)}: the training path of dpo_recipes/commands/train.py, "
                       "yours to change")
    link = dst / "accelerate.yaml"
    if link.is_symlink() and not link.exists():  # a relative link from another depth: point it at the same file
        target = (src / os.readlink(src / "accelerate.yaml")).resolve()
        link.unlink()
        link.symlink_to(os.path.relpath(target, dst))
    return changes


@exit_on_user_error
def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3) or argv[2:] not in ([], ["0"], ["1"], [""]):
        raise UserError("usage: make new-recipe NAME=<new> FROM=<existing> [OWN=1]")
    name, source, own = argv[0], argv[1], argv[2:] == ["1"]
    for change in copy_recipe(REPO_ROOT / "recipes", name, source, own):
        print(f"renamed {change}")
    print(f"created recipes/{name} from recipes/{source}; check it on CPU: make smoke RECIPE={name}")


if __name__ == "__main__":
    main(sys.argv[1:])
