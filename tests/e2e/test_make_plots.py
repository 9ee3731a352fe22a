"""Training curves of real runs (reporting.plot_series / plot_log_history / plot_run) and `make plots`."""

import json
import shutil
import sys

import pytest

from tests.helpers import demo_subset, run
from dpo_recipes.report.run_record import PLOTS, plot_series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def real_state(tmp_path_factory):
    """trainer_state.json of a real demo run: 4 logged training steps, 2 evaluations, the final evaluation."""
    root = tmp_path_factory.mktemp("plots")
    data = demo_subset(root / "data", 16, 8)
    out = root / "run"
    run([sys.executable, "recipes/demo-cpu/train.py", "--config", "recipes/demo-cpu/config.yaml", "--dataset_name",
         str(data), "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "4",
         "--per_device_eval_batch_size", "8", "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "2",
         "--save_strategy", "no", "--eval_report", "false", "--report_to", "none"], env={"OMP_NUM_THREADS": "1"})
    return out


@pytest.mark.slow
def test_every_plot_has_its_train_and_eval_series_from_a_real_run(real_state):
    """The metric names TRL logs are the ones the plots draw: every plot gets its training series (one point per
    logged step) and, where it has one, its evaluation series (steps 2 and 4, the final evaluation not twice)."""
    history = json.loads((real_state / "trainer_state.json").read_text())["log_history"]
    series = plot_series(history)
    assert set(series) == {name for name, _, _ in PLOTS}
    for name, _, pairs in PLOTS:
        lines = series[name][1]
        for train_key, eval_key in pairs:
            assert [step for step, _ in lines[train_key]] == [1, 2, 3, 4], (name, train_key)
            if eval_key:
                assert [step for step, _ in lines[eval_key]] == [2, 4], (name, eval_key)
    for step, value in series["loss.png"][1]["loss"]:
        assert value == next(e["loss"] for e in history if e["step"] == step and "loss" in e)
    for name in series:  # the run itself drew them
        assert (real_state / "plots" / name).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_make_plots_on_any_run_folder(real_state, tmp_path):
    """`make plots RUN=<dir>` draws into <dir>/plots; an unfinished run (checkpoints only) is drawn from its latest
    checkpoint, by step number, and says so."""
    finished = tmp_path / "finished"
    finished.mkdir()
    shutil.copy(real_state / "trainer_state.json", finished)
    proc = run(["make", "--no-print-directory", "plots", f"RUN={finished}"])
    written = sorted(p.name for p in (finished / "plots").iterdir())
    assert written == sorted(name for name, _, _ in PLOTS)
    assert all((finished / "plots" / name).read_bytes()[:8] == PNG_MAGIC for name in written)
    assert str(finished / "plots" / "loss.png") in proc.stdout

    unfinished = tmp_path / "unfinished"
    state = json.loads((real_state / "trainer_state.json").read_text())
    for step in (2, 10):  # checkpoint-10 is the latest although "checkpoint-2" sorts after it as text
        (unfinished / f"checkpoint-{step}").mkdir(parents=True)
        kept = [e for e in state["log_history"] if e["step"] <= step and (step == 10 or "eval_loss" not in e)]
        (unfinished / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"log_history": kept}))
    proc = run([sys.executable, "-m", "dpo_recipes.commands.plots", str(unfinished)])
    assert "checkpoint-10" in proc.stderr
    assert (unfinished / "plots" / "reward_accuracy.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("content,message", [(None, "no trainer_state.json"), ("{}", "not a trainer state"),
                                             ('{"log_history": [{"step": 1, "epoch": 0.1}]}', "no logged metrics")])
def test_make_plots_errors_are_one_line(tmp_path, content, message):
    if content is not None:
        (tmp_path / "trainer_state.json").write_text(content)
    proc = run([sys.executable, "-m", "dpo_recipes.commands.plots", str(tmp_path)], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
