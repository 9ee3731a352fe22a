"""Loss variants: the YAML files layered over a recipe's config by `VARIANT=<name>`.

Each variant exists once, in the repository's `variants/` folder (cdpo, ipo, rdpo, madpo), and works with every
recipe; a recipe may add its own `recipes/<name>/variants/<variant>.yaml`, layered after the shared one, for values
only it knows (its MADPO reward model) or its own variants.
"""

from __future__ import annotations

from pathlib import Path

from dpo_recipes.errors import UserError
from dpo_recipes.names import REPO_ROOT

SHARED = REPO_ROOT / "variants"


def variant_files(recipe_dir: Path, variant: str) -> list[Path]:
    """The files of `variant` for this recipe, shared first, then the recipe's own; one line if there is none."""
    files = [path for path in (SHARED / f"{variant}.yaml", Path(recipe_dir) / "variants" / f"{variant}.yaml")
             if path.is_file()]
    if not files:
        raise UserError(f"recipe {Path(recipe_dir).name} has no VARIANT '{variant}'; variants: "
                        f"{' '.join(known_variants(recipe_dir))}")
    return files


def known_variants(recipe_dir: Path) -> list[str]:
    return sorted({p.stem for folder in (SHARED, Path(recipe_dir) / "variants") for p in folder.glob("*.yaml")})
