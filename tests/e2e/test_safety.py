"""Safety on a real run: secrets never written out, weights as safetensors only. The defaults (no remote code unless
asked, safe YAML, redaction) are unit-tested in tests/test_config.py and tests/test_reporting.py."""

import sys

import pytest

from tests.helpers import REPO, run

DEMO = str(REPO / "recipes/demo-cpu/config.yaml")


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
