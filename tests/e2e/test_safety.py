"""Safety defaults: no remote code unless asked, safe YAML, safetensors only, secrets never written out."""

import sys

import pytest

from tests.helpers import REPO, run
from dpo_recipes.config import parse_config
from dpo_recipes.errors import UserError

DEMO = str(REPO / "recipes/demo-cpu/config.yaml")


def test_trust_remote_code_is_off_by_default():
    _, train, _ = parse_config(["--config", DEMO])
    assert train.trust_remote_code is False


def test_yaml_python_tags_are_refused(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("tiny_model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        parse_config(["--config", str(bad)])


@pytest.mark.slow
def test_secrets_never_reach_outputs(tmp_path):
    secret, key = "hf_SECRETtoken0123456789", "wandbKEY0123456789abcdef"
    out = tmp_path / "run"
    proc = run([sys.executable, "recipes/demo-cpu/train.py", "--config", DEMO, "--max_steps", "2", "--save_steps", "1",
                "--eval_steps", "1", "--logging_steps", "1", "--hub_token", secret, "--output_dir", str(out)],
               env={"HF_TOKEN": secret, "WANDB_API_KEY": key})
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in written)
    for path in written:
        data = path.read_bytes()
        assert secret.encode() not in data and key.encode() not in data, path
    assert secret not in proc.stdout + proc.stderr and key not in proc.stdout + proc.stderr
    # Weights are safetensors only.
    assert not [p for p in written if p.suffix in (".bin", ".pt", ".pth") and "adapter" in p.name]


def test_redact_hides_secrets_but_keeps_token_counts(monkeypatch):
    from dpo_recipes.reporting import redact

    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    out = redact({"hub_token": "x", "token": "y", "wandb_api_key": "z", "num_tokens": 123, "eval_num_tokens": 9.0,
                  "note": "uses hf_abcdefghijklmnop here", "nested": [{"hub_token": "w"}]})
    assert out == {"hub_token": "<redacted>", "token": "<redacted>", "wandb_api_key": "<redacted>", "num_tokens": 123,
                   "eval_num_tokens": 9.0, "note": "uses <redacted> here", "nested": [{"hub_token": "<redacted>"}]}
