"""The front page's demo figures are the committed run's (docs/results/demo-smollm2), not typed in by hand."""

import json

from tests.helpers import REPO


def row(readme: str, label: str) -> str:
    return next(line for line in readme.splitlines() if line.startswith(f"| {label}"))


def test_readme_demo_table_matches_the_committed_report():
    readme = (REPO / "README.md").read_text()
    report = json.loads((REPO / "docs/results/demo-smollm2/eval_report.json").read_text())
    metrics = json.loads((REPO / "docs/results/demo-smollm2/eval_metrics.json").read_text())
    pairs, probes = report["pairs"], report["probes"]
    accuracy, margin = pairs["reward_accuracy"]["mean"], pairs["reward_margin"]["mean"]
    assert accuracy == metrics["eval_rewards/accuracies"]  # one held-out pass, one number
    assert abs(margin - metrics["eval_rewards/margins"]) < 5e-3
    assert f"| {accuracy:.3f} |" in row(readme, "reward accuracy, all 120 pairs")
    assert f"| {margin:.2f} |" in row(readme, "reward margin")
    change = pairs["logp_change"]
    assert f"{change['chosen']['mean']:.2f} / {change['rejected']['mean']:.2f} nats" in row(readme, "change of log-prob")
    assert f"{report['kl']['k3']['per_completion']['mean']:.2f} nats" in row(readme, "KL(policy")
    facts, style = probes["fact_accuracy"], probes["style_uptake"]
    assert f"| {facts['before']:.3f} | {facts['after']:.3f} (change {facts['change']['mean']:+.3f}" in \
        row(readme, "fact accuracy")
    assert f"| {style['reference']:.3f} | {style['policy']:.3f} (change {style['change']['mean']:+.3f}" in \
        row(readme, "greedy replies in the chosen style")


def test_hh_figures_in_the_readmes_match_the_committed_report():
    """The HH benchmark's DPO numbers quoted in README.md, bench/README.md, docs/benchmarks.md and the recipe's README
    are those of bench/results/hh/real.json (line breaks inside a quote do not count)."""
    real = json.loads((REPO / "bench/results/hh/real.json").read_text())["summary"]
    dpo, base = real["dpo"], real["length_baseline"]

    def ci(stat, digits=3, key="mean"):
        return f"{stat[key]:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"

    def page(path):
        return " ".join((REPO / path).read_text().split())

    quoted = [ci(dpo["accuracy"]), ci(dpo["balanced_accuracy"]), f"{base['accuracy']:.3f}",
              ci(dpo["win_rate"], key="win_rate")]
    for path in ("README.md", "bench/README.md", "docs/benchmarks.md"):
        assert [q for q in quoted if q not in page(path)] == [], path
    bench, by_length = page("bench/README.md"), dpo["accuracy_by_length"]
    assert ci(by_length["chosen shorter"]) in bench and ci(by_length["chosen not shorter"]) in bench
    assert f"+{ci(dpo['accuracy_minus_length_baseline'])}" in bench and ci(dpo["kl_k3"], 2) in bench
    recipe = page("recipes/smollm2-135m/README.md")
    assert ci(dpo["accuracy"]) in recipe and ci(dpo["balanced_accuracy"]) in recipe and ci(dpo["kl_k3"], 2) in recipe
