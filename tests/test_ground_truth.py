"""The ground-truth experiment (bench/ground_truth.py): the true reward, the pairs and their label swaps, best-of-n,
the statistics and hypothesis verdicts on hand-computed tables, and the committed results re-scored from their
samples. (The whole pipeline on a handful of prompts: tests/e2e/test_ground_truth_quick.py.)"""

import itertools
import json
import math
import statistics
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import ground_truth as gt  # noqa: E402
import ground_truth_report as report  # noqa: E402

RESULTS = REPO / "bench" / "results"


def test_reward_is_vader_compound_on_fixed_strings():
    assert gt.true_reward("This movie was wonderful, I loved every minute.") == pytest.approx(0.823, abs=5e-4)
    assert gt.true_reward("The film was boring and the acting was terrible.") == pytest.approx(-0.66, abs=5e-4)
    assert gt.true_reward("The film is ninety minutes long.") == 0.0


def test_prompt_splits_are_disjoint_by_title():
    titles = {s: {r["title"] for r in gt.load_prompts(s)} for s in ("train", "validation", "test")}
    assert [len(titles[s]) for s in ("train", "validation", "test")] == [60, 10, 16]
    assert not (titles["train"] & titles["validation"] or titles["train"] & titles["test"]
                or titles["validation"] & titles["test"])
    assert all(r["title"] in r["prompt"] for r in gt.load_prompts("test"))


def rows(prompt, rewards):
    return [{"prompt": prompt, "title": "T", "completion": f"{prompt}-{i}", "reward": r} for i, r in enumerate(rewards)]


def test_pairs_are_best_against_worst_inwards_with_a_minimum_gap():
    samples = rows("a", [0.1, 0.9, -0.5, 0.3, 0.2, 0.0]) + rows("b", [0.5, 0.5, 0.4, 0.45])
    pairs = gt.make_pairs(samples, min_gap=0.25)
    # a sorted: 0.9, 0.3, 0.2, 0.1, 0.0, -0.5 -> (0.9, -0.5) gap 1.4, (0.3, 0.0) gap 0.3, (0.2, 0.1) gap 0.1 dropped
    assert [(p["score_chosen"], p["score_rejected"]) for p in pairs] == [(0.9, -0.5), (0.3, 0.0)]
    assert [p["chosen"] for p in pairs] == ["a-1", "a-3"] and [p["rejected"] for p in pairs] == ["a-2", "a-5"]
    assert [p["id"] for p in pairs] == [0, 1]
    assert gt.make_pairs(rows("c", [0.2, 0.2]), min_gap=0.0) == []  # a tie is never a pair


def test_swaps_are_seeded_nested_and_recorded(tmp_path):
    a, b = gt.swapped_ids(100, 0.4, seed=3), gt.swapped_ids(100, 0.4, seed=3)
    assert a == b and len(a) == 40 and len(set(a)) == 40
    assert set(gt.swapped_ids(100, 0.2, seed=3)) < set(a)  # a lower rate's swaps are among a higher rate's
    assert gt.swapped_ids(100, 0.4, seed=4) != a
    assert gt.swapped_ids(100, 0.0, seed=3) == []
    pairs = gt.make_pairs(rows("a", [0.9, -0.9, 0.5, -0.5]) + rows("b", [0.8, -0.8]), 0.25)
    noisy = gt.noisy_pairs(pairs, [1])
    assert noisy[0] == {**pairs[0], "swapped": False}
    assert (noisy[1]["chosen"], noisy[1]["rejected"]) == (pairs[1]["rejected"], pairs[1]["chosen"])
    assert (noisy[1]["score_chosen"], noisy[1]["score_rejected"]) == (-0.5, 0.5) and noisy[1]["swapped"]
    # write_pairs records every (eps, seed)'s swaps once; training_pairs reads them back (every variant does)
    folder = tmp_path / "gt"
    gt.write_jsonl(folder / "reference" / "train.jsonl", rows("a", [0.9, -0.9, 0.5, -0.5, 0.3, -0.3]))
    settings = gt.Settings(epsilons=(0.0, 0.4), seeds=(0, 1))
    gt.write_pairs(folder, settings)
    recorded = json.loads((folder / "swaps" / "eps0.4-seed1.json").read_text())
    assert recorded["swapped"] == gt.swapped_ids(3, 0.4, 1) and recorded["pairs"] == 3
    assert [p["id"] for p in gt.training_pairs(folder, 0.4, 1) if p["swapped"]] == recorded["swapped"]


def test_best_of_n_is_the_exact_mean_over_subsets_and_its_kl_the_formula():
    rewards = [[0.3, -0.2, 0.8, 0.1], [0.0, 0.5, -0.5, 0.9]]
    for n in (1, 2, 3, 4):
        brute = statistics.fmean(statistics.fmean(max(c) for c in itertools.combinations(r, n)) for r in rewards)
        assert gt.best_of_n(rewards, n) == pytest.approx(brute)
    assert gt.best_of_n(rewards, 1) == pytest.approx(statistics.fmean(rewards[0] + rewards[1]))
    assert gt.best_of_n_kl(1) == 0.0
    assert gt.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert gt.best_of_n_kl(16) == pytest.approx(2.772588722 - 0.9375)


def test_scales_for_ipo_and_madpo():
    # ln 3 / (beta L) is the per-token margin where DPO's weight is 1/4; IPO's target 1/(2 tau) equals it
    tau = gt.ipo_tau(0.1, 40.0)
    assert 1 / (2 * tau) == pytest.approx(math.log(3) / (0.1 * 40.0), rel=2e-3)
    assert 2 * gt.madpo_scale() == pytest.approx(math.log(999))


def test_t_interval_and_paired_difference_on_a_hand_computed_table():
    # values 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653, half-width 4.302653 / sqrt 3 = 2.484138
    x = report.t_interval([1.0, 2.0, 3.0])
    assert x["mean"] == 2.0 and x["sd"] == 1.0
    assert x["ci95"] == pytest.approx([2 - 2.484138, 2 + 2.484138], abs=1e-5)
    # paired by seed; seed 9 only in one group is left out: differences 1, 1.5, 2 -> mean 1.5, sd 0.5
    d = report.paired_interval({0: 2.0, 1: 3.5, 2: 5.0, 9: 100.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert d["seeds"] == [0, 1, 2] and d["mean"] == 1.5
    assert d["ci95"] == pytest.approx([1.5 - 4.302653 * 0.5 / math.sqrt(3), 1.5 + 4.302653 * 0.5 / math.sqrt(3)],
                                      abs=1e-5)
    assert report.verdict(d) == "supported"
    assert report.verdict(report.t_interval([-1.0, -1.1, -1.2])) == "contradicted"
    assert report.verdict(report.t_interval([-1.0, 2.0, 3.0])) == "unresolved"
    assert report.verdict(report.t_interval([5.0])) == "unresolved"
    assert report.interpolate([(2.0, 0.5), (0.0, 0.1), (4.0, 0.3)], 1.0) == pytest.approx(0.3)
    assert report.interpolate([(0.0, 0.1), (2.0, 0.5)], 3.0) is None


def cell(variant, beta, eps, seed, reward, kl, kind="main", **extra):
    return {"variant": variant, "beta": beta, "epsilon": eps, "seed": seed, "policy_reward": reward, "kl": kl,
            "kind": kind, "margin": 0.1, "accuracy": 0.6, **extra}


def test_hypotheses_on_a_hand_made_table():
    ref = {"reward": 0.3}
    settings = {"main_beta": 0.1, "epsilons": [0.0, 0.4]}
    cells = []
    for s, (r0, r_hi, c_hi, rd_hi) in enumerate([(0.5, 0.35, 0.45, 0.40), (0.6, 0.40, 0.50, 0.46),
                                                 (0.55, 0.30, 0.44, 0.37)]):
        cells += [cell("dpo", 0.1, 0.0, s, r0, 2.0), cell("dpo", 0.1, 0.4, s, r_hi, 1.5),
                  cell("cdpo", 0.1, 0.4, s, c_hi, 1.2), cell("rdpo", 0.1, 0.4, s, rd_hi, 1.6),
                  cell("dpo", 0.03, 0.0, s, r0 + 0.1, 6.0), cell("dpo", 0.3, 0.0, s, r0 - 0.1, 1.0),
                  # MADPO at KL 4: DPO's frontier there is halfway between beta 0.1 (KL 2) and 0.03 (KL 6)
                  cell("madpo_true", 0.1, 0.0, s, r0 + 0.05 + 0.01 * s, 4.0)]
    h = report.hypotheses(cells, ref, settings)
    assert h["H1"]["gain"]["mean"] == pytest.approx(0.25) and h["H1"]["verdict"] == "supported"
    # cDPO minus DPO at eps 0.4: 0.10, 0.10, 0.14; rDPO minus DPO: 0.05, 0.06, 0.07
    assert h["H2"]["parts"]["cdpo"]["reward_difference_vs_dpo"]["mean"] == pytest.approx(0.34 / 3)
    assert h["H2"]["parts"]["cdpo"]["share_difference_vs_dpo"]["mean"] == pytest.approx(0.34 / 3 / 0.25)
    assert h["H2"]["parts"]["rdpo"]["verdict"] == "supported" and h["H2"]["verdict"] == "supported"
    # MADPO minus the frontier at KL 4 (its reward there: r0 + 0.05): 0.00, 0.01, 0.02
    assert h["H4"]["difference_at_equal_kl"]["mean"] == pytest.approx(0.01)
    assert h["H4"]["verdict"] == "supported"
    # cDPO no better than DPO in one seed of three, worse in another: H2 is no longer supported
    worse = [dict(c, policy_reward=c["policy_reward"] - 0.3) if c["variant"] == "cdpo" else c for c in cells]
    assert report.hypotheses(worse, ref, settings)["H2"]["verdict"] == "contradicted"


def test_noise_comparisons_pair_each_variant_with_dpo_by_seed():
    settings = {"main_beta": 0.1, "epsilons": [0.0, 0.2]}
    cells = [cell("dpo", 0.1, 0.2, 0, 0.5, 1.0), cell("dpo", 0.1, 0.2, 1, 0.7, 1.0), cell("dpo", 0.1, 0.2, 2, 0.6, 1.0),
             cell("ipo", 0.1, 0.2, 0, 0.4, 1.0), cell("ipo", 0.1, 0.2, 1, 0.5, 1.0),  # seed 2 not finished
             cell("dpo", 0.1, 0.0, 0, 0.9, 1.0), cell("ipo", 0.1, 0.0, 0, 0.1, 1.0)]  # eps 0: not a noise comparison
    (only,) = report.noise_comparisons(cells, settings)
    diff = only["reward_difference_vs_dpo"]
    assert (only["variant"], only["epsilon"], diff["seeds"]) == ("ipo", 0.2, [0, 1])
    assert diff["mean"] == pytest.approx(-0.15) and diff["sd"] == pytest.approx(math.sqrt(0.005))


def test_over_confidence_verdicts_on_a_hand_made_table():
    def run(variant, seed, margins, rewards, normalised):
        evals = [{"step": 10 * (i + 1), "margin": m, "policy_reward": r, "normalised_logratio_margin": n}
                 for i, (m, r, n) in enumerate(zip(margins, rewards, normalised))]
        return cell(variant, 0.1, 0.0, seed, rewards[-1], 1.0, kind="overconf", evals=evals, loss_beta=1.0)

    cells = [run("dpo", s, [0.5, 1.0 + s, 2.0 + s], [0.5, 0.55, 0.45 + 0.01 * s], [0, 0, 0]) for s in range(3)]
    cells += [run("ipo", s, [0.1, 0.1, 0.1], [0.5, 0.5, 0.5], [0.1, 0.2, 0.2 + 0.01 * s]) for s in range(3)]
    h3 = report.hypotheses(cells, {"reward": 0.3}, {"main_beta": 0.1, "epsilons": [0.0]})["H3"]
    assert h3["dpo_margin_verdict"] == "supported" and h3["dpo_reward_verdict"] == "supported"
    assert h3["ipo_target"] == 0.5 and h3["ipo_verdict"] == "supported" and h3["verdict"] == "supported"
    rising = [dict(c, evals=[dict(e, policy_reward=0.3 + 0.1 * i + 0.01 * c["seed"]) for i, e in enumerate(c["evals"])])
              if c["variant"] == "dpo" else c for c in cells]
    assert report.hypotheses(rising, {"reward": 0.3}, {"main_beta": 0.1, "epsilons": [0.0]})["H3"]["verdict"] == \
        "contradicted"


def committed_cells():
    path = RESULTS / "ground_truth.json"
    return json.loads(path.read_text())["cells"] if path.is_file() else []


def test_committed_results_exist():
    assert committed_cells() and all((REPO / c["samples"]).is_file() for c in committed_cells())


@pytest.mark.parametrize("cell", committed_cells(), ids=lambda c: c["name"])
def test_every_recorded_mean_rescores_from_its_committed_samples(cell):
    rows = [json.loads(line) for line in (REPO / cell["samples"]).read_text().splitlines()]
    final = [r for r in rows if r["step"] == cell["steps"]]
    assert len(final) == cell["n_completions"]
    for r in final[:: max(1, len(final) // 24)]:  # a spread of the replies, re-scored from their text
        assert gt.true_reward(r["completion"]) == pytest.approx(r["reward"], abs=1e-9)
    assert statistics.fmean(r["reward"] for r in final) == pytest.approx(cell["policy_reward"], abs=1e-12)
    for e in cell["evals"]:
        at = [r["reward"] for r in rows if r["step"] == e["step"]]
        assert statistics.fmean(at) == pytest.approx(e["policy_reward"], abs=1e-12)


def test_swaps_are_the_same_for_every_variant_at_an_eps_and_seed():
    cells = [c for c in committed_cells() if "swapped_ids" in c]
    by_key = {}
    for c in cells:
        by_key.setdefault((c["epsilon"], c["seed"]), []).append(c)
    assert by_key
    for (eps, seed), group in by_key.items():
        recorded = json.loads((REPO / group[0]["swaps"]).read_text())["swapped"]
        assert all(c["swapped_ids"] == recorded for c in group)
        assert len(recorded) == round(eps * group[0]["train_pairs"])


def test_progress_names_what_is_left_and_how_long_it_would_take():
    cells = [{"name": "a", "kind": "main", "steps": 10, "seconds": 100.0},
             {"name": "b", "kind": "main", "steps": 10, "seconds": 300.0}]
    p = report.progress(cells, ["a", "b", "c", "overconf-d"], planned_steps=10, jobs=2)
    assert p["finished"] == 2 and p["pending"] == ["c", "overconf-d"]
    # median 20 s per step: c 10 steps, the over-confidence run three times the main budget; two at a time
    assert p["pending_hours_estimate"] == pytest.approx((200 + 600) / 2 / 3600)
