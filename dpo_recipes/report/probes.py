"""Probes of what a run changed in its greedy replies: style uptake and fact accuracy (the demo's report).

A probes file (JSON, e.g. data/demo-probes.json, named by `eval_report_probes`) holds
- "style_prompts": held-out questions; the report gives the share of greedy replies in the chosen style, policy and
  reference, paired over prompts;
- "facts": {"subject", "question", "accepted": [answer, other forms]} for every subject; the report gives the
  share of greedy replies that state an accepted answer, reference (before) and policy (after), paired over subjects.

The chosen style is defined here, once, by `in_chosen_style`: a reply of exactly two sentences (the answer, then one
supporting detail), at most MAX_WORDS words, with no hedging phrase from HEDGES. data/make_demo_data.py checks that
every chosen demo reply passes and every rejected one fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dpo_recipes.errors import UserError
from .statistics import paired_t_interval

MAX_WORDS = 30
HEDGES = ("i think", "i believe", "not sure", "not entirely", "not certain", "not completely", "probably", "maybe",
          "might", "possibly", "perhaps", "guess", "i suppose", "if i remember", "not mistaken", "don't quote",
          "double-check", "grain of salt", "could be wrong", "i recall", "look it up", "hmm", "no expert",
          "let me think", "let me see", "proper source", "been wrong")
_HEDGE = re.compile(r"\b(?:" + "|".join(re.escape(h) for h in HEDGES) + r")\b")


def sentences(text: str) -> list[str]:
    """Pieces of `text` ended by ., ! or ? followed by white space or the end (a cut-off tail counts as one)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def in_chosen_style(reply: str) -> bool:
    """Exactly two sentences, at most MAX_WORDS words, no hedging phrase."""
    text = reply.strip()
    return (len(sentences(text)) == 2 and len(text.split()) <= MAX_WORDS and text[-1:] in ".!?"
            and not _HEDGE.search(text.lower()))


def states_fact(reply: str, accepted: list[str]) -> bool:
    """Whether the reply contains one of the accepted answers as a whole word or phrase (case-insensitive)."""
    text = reply.lower()
    return any(re.search(r"(?<!\w)" + re.escape(a.lower()) + r"(?!\w)", text) for a in accepted)


def load_probes(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: eval_report_probes file not found")
    try:
        probes = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(probes, dict) or not isinstance(probes.get("style_prompts"), list) \
            or not isinstance(probes.get("facts"), list):
        raise UserError(f"{path}: needs the lists 'style_prompts' (questions) and 'facts' (subject, question, "
                        "accepted)")
    for i, fact in enumerate(probes["facts"]):
        if not (isinstance(fact, dict) and isinstance(fact.get("question"), str)
                and isinstance(fact.get("accepted"), list) and fact["accepted"]):
            raise UserError(f"{path}: facts[{i}] needs 'question' (text) and 'accepted' (a non-empty list)")
    return probes


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def probe_metrics(probes: dict, style_replies: dict[str, list[str]], fact_replies: dict[str, list[str]]) -> dict:
    """Style uptake and fact accuracy from greedy replies ({"policy": [...], "reference": [...]}, in probe order)."""
    style = {who: [in_chosen_style(r) for r in replies] for who, replies in style_replies.items()}
    facts = {who: [states_fact(r, f["accepted"]) for r, f in zip(replies, probes["facts"])]
             for who, replies in fact_replies.items()}
    out = {"style_rule": f"exactly two sentences, at most {MAX_WORDS} words, no hedging phrase"}
    if style["policy"]:
        out["style_uptake"] = {
            "prompts": len(style["policy"]), "policy": _share(style["policy"]), "reference": _share(style["reference"]),
            "change": paired_t_interval([float(x) for x in style["policy"]], [float(x) for x in style["reference"]]),
        }
    if facts["policy"]:
        before, after = facts["reference"], facts["policy"]
        out["fact_accuracy"] = {
            "subjects": len(after), "before": _share(before), "after": _share(after),
            "change": paired_t_interval([float(x) for x in after], [float(x) for x in before]),
            "gained": [f["subject"] for f, b, a in zip(probes["facts"], before, after) if a and not b],
            "lost": [f["subject"] for f, b, a in zip(probes["facts"], before, after) if b and not a],
        }
    return out
