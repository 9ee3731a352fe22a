"""Normalising one source split to what TRL's DPOTrainer takes. Formats (per source, after the optional column
mapping):
- standard: `prompt`, `chosen`, `rejected` strings;
- conversational: lists of `{role, content}` messages;
- implicit prompt: only `chosen` and `rejected`, full transcripts sharing the prompt. Text transcripts
  ("\\n\\nHuman: ... \\n\\nAssistant: ...", Anthropic HH) and message lists are both split into
  prompt = every turn before the final assistant turn, chosen / rejected = that final turn;
- scored pairs: any of the above plus `score_chosen` / `score_rejected` (UltraFeedback-binarized style, where the
  `prompt` column is a string and `chosen` / `rejected` hold the whole conversation). The scores, and a
  `reward_margin` column if the data has one, are checked and kept for MADPO (margins.py turns scores into margins).

Conversational rows keep what TRL's DPOTrainer hands the chat template: every key of a message (`tool_calls`, say:
such message lists are stored as JSON values, so no row gains the keys of another), a `tools` column (kept as JSON
text, which TRL decodes) and a per-row `chat_template_kwargs` mapping (`{enable_thinking: false}`; an empty one where
the row has none, since TRL unpacks it).

A row that cannot be a clean pair is marked with its reason (data_sources.DEFECTS), field and detail; data/preparation.py drops
or stops on it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re

from datasets import Dataset, Features, Json, List, Value

from .files import kind_of, mixed_types
from .sources import Source
from dpo_recipes.errors import UserError
from dpo_recipes.names import MARGIN_COLUMN, PAIR_COLUMNS, SCORE_COLUMNS

MESSAGES = List({"role": Value("string"), "content": Value("string")})
MESSAGES_WITH_KEYS = List(Json())  # messages with keys beyond role and content (tool_calls, ...), each row as it is
TEMPLATE_COLUMNS = ("tools", "chat_template_kwargs")  # per-row arguments TRL passes to the chat template
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_INTERNAL = ("_row", "_defect", "_field", "_detail", "_key")


class Defect(Exception):
    def __init__(self, reason: str, field: str, detail: str):
        super().__init__(detail)
        self.reason, self.field, self.detail = reason, field, detail


def _messages(value, name: str) -> list[dict]:
    """A validated list of messages with a role and text content, every key kept (the chat template reads them)."""
    if not value:
        raise Defect("empty_field", name, "is an empty list of messages")
    messages = []
    for i, message in enumerate(value, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not message["role"]:
            raise Defect("wrong_type", name, f"message {i} has no role")
        if not isinstance(message.get("content"), str):
            raise Defect("wrong_type", name, f"message {i} content is not text")
        messages.append({key: item for key, item in message.items() if item is not None})
    return messages


def _tools(value) -> str | None:
    """A row's tools as the JSON text TRL decodes (a list of tool schemas), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise Defect("wrong_type", "tools", f"is text but not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(value, list):
        raise Defect("wrong_type", "tools", f"is {kind_of(value)}, expected a list of tool schemas")
    return json.dumps(value, ensure_ascii=False)


def _template_kwargs(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Defect("wrong_type", "chat_template_kwargs", f"is {kind_of(value)}, expected a mapping such as "
                     "{enable_thinking: false}")
    return {key: item for key, item in value.items() if item is not None}


def parse_transcript(text: str, name: str) -> list[dict]:
    """An Anthropic-HH style transcript ("\\n\\nHuman: ... \\n\\nAssistant: ...") as conversational turns."""
    parts = HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise Defect("bad_transcript", name, "is not a '\\n\\nHuman: ... \\n\\nAssistant: ...' transcript")
    return [{"role": HH_ROLES[who], "content": body.strip()} for who, body in zip(parts[1::2], parts[2::2])]


def _split_reply(turns: list[dict], name: str) -> tuple[list[dict], list[dict]]:
    """(prompt turns, [final assistant turn])."""
    if turns[-1]["role"] != "assistant":
        raise Defect("bad_transcript", name, f"ends with a '{turns[-1]['role']}' turn, not an assistant reply")
    if len(turns) < 2:
        raise Defect("bad_transcript", name, "has no prompt turns before the assistant reply")
    return turns[:-1], turns[-1:]


def normalise_pair(prompt, chosen, rejected, kind: str, prompt_kind: str | None) -> dict:
    """One row as TRL's standard or conversational pair; raises Defect.

    `kind` is the source's type of chosen / rejected ('text' or 'messages'), `prompt_kind` its type of prompt (None:
    no prompt column). A row whose values have another type than the source's is wrong_type."""
    fields = (("prompt", prompt),) if prompt_kind else ()
    fields += (("chosen", chosen), ("rejected", rejected))
    for name, value in fields:
        if value is None:
            raise Defect("missing_field", name, "is missing (null)")
    for name, value in fields:
        expected = kind if name != "prompt" else prompt_kind
        if kind_of(value) != expected:
            wanted = "text" if expected == "text" else "a list of messages"
            raise Defect("wrong_type", name, f"is {kind_of(value)}, expected {wanted} like the rest of the source")
    if kind == "text" and prompt_kind == "text":  # TRL standard
        for name, value in fields:
            if not value.strip():
                raise Defect("empty_field", name, "is empty")
        pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    else:  # conversational, possibly with the prompt inside the transcripts
        if kind == "text":
            chosen_turns, rejected_turns = parse_transcript(chosen, "chosen"), parse_transcript(rejected, "rejected")
        else:
            chosen_turns, rejected_turns = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        if prompt_kind == "messages":  # conversational with an explicit prompt: TRL's form as is
            prompt_turns = _messages(prompt, "prompt")
            chosen_reply, rejected_reply = chosen_turns, rejected_turns
        elif prompt_kind == "text" and chosen_turns[0]["role"] == "assistant":  # text prompt, assistant-only replies
            if not prompt.strip():
                raise Defect("empty_field", "prompt", "is empty")
            prompt_turns = [{"role": "user", "content": prompt}]
            chosen_reply, rejected_reply = chosen_turns, rejected_turns
        else:  # implicit prompt: the turns before the final assistant reply (a text prompt column is not needed)
            prompt_turns, chosen_reply = _split_reply(chosen_turns, "chosen")
            rejected_prompt, rejected_reply = _split_reply(rejected_turns, "rejected")
            if rejected_prompt != prompt_turns:
                raise Defect("prompt_mismatch", "rejected", "does not share the prompt turns of chosen")
        for name, reply in (("chosen", chosen_reply), ("rejected", rejected_reply)):
            if not reply[-1]["content"].strip():
                raise Defect("empty_field", name, "has an empty final reply")
        pair = {"prompt": prompt_turns, "chosen": chosen_reply, "rejected": rejected_reply}
    if pair["chosen"] == pair["rejected"]:
        raise Defect("identical_pair", "rejected", "is identical to chosen")
    return pair


def _score(value, name: str) -> float:
    if value is None:
        raise Defect("missing_field", name, "is missing (null)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Defect("wrong_type", name, f"is {value!r}, expected a finite number")
    return float(value)


def _pair_key(pair: dict) -> str:
    # The chat template's arguments (tools, chat_template_kwargs) make a pair another pair when the row has them.
    values = [pair["prompt"], pair["chosen"], pair["rejected"], *(pair[k] for k in TEMPLATE_COLUMNS if pair.get(k))]
    text = json.dumps(values, ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _normalise_batch(batch: dict, indices: list[int], kind: str, prompt_kind: str | None, numbers: list[str],
                     template: list[str]) -> dict:
    """Batched map: TRL-ready pair columns, the numeric columns kept (scores, margins), the chat template's columns
    kept (tools, chat_template_kwargs), the defect (if any) and a key for finding duplicates."""
    empty = "" if kind == "text" and prompt_kind == "text" else []
    out = {name: [] for name in (*PAIR_COLUMNS, *numbers, *template, *_INTERNAL)}
    prompts = batch["prompt"] if prompt_kind else [None] * len(indices)
    for i, index in enumerate(indices):
        scores = [0.0] * len(numbers)
        extras = {"tools": None, "chat_template_kwargs": {}}
        try:
            scores = [_score(batch[name][i], name) for name in numbers]
            pair = normalise_pair(prompts[i], batch["chosen"][i], batch["rejected"][i], kind, prompt_kind)
            if "tools" in template:
                extras["tools"] = _tools(batch["tools"][i])
            if "chat_template_kwargs" in template:
                extras["chat_template_kwargs"] = _template_kwargs(batch["chat_template_kwargs"][i])
            defect = ("", "", "")
            key = _pair_key({**pair, **{name: extras[name] for name in template}})
        except Defect as d:
            pair = {name: empty for name in PAIR_COLUMNS}
            defect, key = (d.reason, d.field, d.detail), ""
        for name in template:
            out[name].append(extras[name])
        for name in PAIR_COLUMNS:
            out[name].append(pair[name])
        out["_row"].append(index + 1)
        out["_defect"].append(defect[0])
        out["_field"].append(defect[1])
        out["_detail"].append(defect[2])
        out["_key"].append(key)
        for name, score in zip(numbers, scores):
            out[name].append(score)
    return out


def _column_kind(ds: Dataset, column: str) -> str | None:
    """'text' or 'messages': the type of the column's first such value (rows of another type are wrong_type)."""
    for value in ds.select_columns([column]).to_iterable_dataset():
        kind = kind_of(value[column])
        if kind in ("text", "messages"):
            return kind
    return None


def normalise(ds: Dataset, source: Source, label: str, num_proc: int | None,
              score_names: tuple[str, str] = SCORE_COLUMNS) -> tuple[Dataset, str]:
    """The source split in TRL's format with defect columns, and the name of the format it was read as."""
    ds = _map_columns(ds, source, label, score_names)
    template = [name for name in TEMPLATE_COLUMNS if name in ds.column_names]
    if len(ds) == 0:
        raise UserError(f"{label}: the split has no rows")
    has_prompt = "prompt" in ds.column_names
    scored = all(name in ds.column_names for name in score_names)
    numbers = [*(score_names if scored else ()), *([MARGIN_COLUMN] if MARGIN_COLUMN in ds.column_names else [])]
    mixed_types(ds, source, label, [c for c in (*PAIR_COLUMNS, *numbers) if c in ds.column_names])
    kind = _column_kind(ds, "chosen")
    if kind is None:
        raise UserError(f"{label}: column 'chosen' holds neither text nor lists of messages in any row")
    prompt_kind = (_column_kind(ds, "prompt") or kind) if has_prompt else None
    if kind == "text" and prompt_kind == "messages":
        raise UserError(f"{label}: column 'prompt' holds messages but 'chosen' holds text; use messages for both, "
                        "or text for both")
    conversational = not (kind == "text" and prompt_kind == "text")
    template = template if conversational else []  # text pairs are not rendered by a chat template
    pair_type = (MESSAGES_WITH_KEYS if any(_has_other_keys(ds.features.get(c)) for c in PAIR_COLUMNS) else MESSAGES) \
        if conversational else Value("string")
    features = {name: pair_type for name in PAIR_COLUMNS}
    features.update({name: TEMPLATE_FEATURES[name] for name in template})
    features.update(_row=Value("int64"), _defect=Value("string"), _field=Value("string"), _detail=Value("string"),
                    _key=Value("string"))
    features.update({name: Value("float64") for name in numbers})
    ds = ds.map(
        _normalise_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={"kind": kind, "prompt_kind": prompt_kind, "numbers": numbers, "template": template},
        remove_columns=ds.column_names,
        features=Features(features),
        num_proc=map_num_proc(num_proc, len(ds)),
        desc=f"Normalising {label}",
    )
    return ds, _format_name(kind, prompt_kind, scored)


TEMPLATE_FEATURES = {"tools": Value("string"), "chat_template_kwargs": Json()}


def _has_other_keys(feature) -> bool:
    """Whether a column's messages may carry keys beyond role and content (a list of JSON values, or of structs
    with more fields)."""
    item = getattr(feature, "feature", None)
    if isinstance(item, Json):
        return True
    return isinstance(item, dict) and not set(item) <= {"role", "content"}


def is_conversational_features(features) -> bool:
    return features["chosen"] in (MESSAGES, MESSAGES_WITH_KEYS)


def _map_columns(ds: Dataset, source: Source, label: str, score_names: tuple[str, str]) -> Dataset:
    """Rename the source's columns to ours; score columns keep the names score_chosen_column / ..._rejected_column."""
    for ours, theirs in source.columns.items():
        if theirs not in ds.column_names:
            raise UserError(f"{label}: columns maps '{ours}' to '{theirs}', which is not a column "
                            f"(columns: {', '.join(ds.column_names)})")
    targets = {theirs: dict(zip(SCORE_COLUMNS, score_names)).get(ours, ours) for ours, theirs in source.columns.items()}
    if targets:
        replaced = [t for t in targets.values() if t in ds.column_names and t not in targets]
        ds = ds.remove_columns(replaced).rename_columns({k: v for k, v in targets.items() if k != v})
    _not_preference_data(ds.column_names, label)
    for name in ("chosen", "rejected"):
        if name not in ds.column_names:
            close = [c for c in ds.column_names if c.strip().lower() == name] or ["<column>"]
            raise UserError(f"{label}: no column '{name}' (columns: {', '.join(ds.column_names)}); name it with "
                            f"dataset_columns, e.g. {{{name}: {close[0]}}}")
    present = [name for name in score_names if name in ds.column_names]
    if len(present) == 1:
        raise UserError(f"{label}: column '{present[0]}' without its partner; scored pairs need both "
                        f"{' and '.join(score_names)}")
    return ds


def _not_preference_data(columns: list[str], label: str) -> None:
    """SFT and KTO files have their own columns; mapping columns cannot make them preference pairs."""
    names = set(columns)
    if {"chosen", "rejected"} & names:
        return
    pairs = "DPO trains on pairs: a prompt with a chosen and a rejected completion"
    if {"completion", "label"} <= names:
        raise UserError(f"{label}: this is KTO data (columns {', '.join(columns)}: one completion per row with a "
                        f"desirable/undesirable label), not preference pairs; {pairs}: pair a desirable and an "
                        "undesirable completion of the same prompt, or train it with TRL's KTOTrainer")
    if "messages" in names or names == {"text"} or names == {"prompt", "completion"}:
        raise UserError(f"{label}: this is SFT data (columns {', '.join(columns)}: one conversation or completion "
                        f"per row), not preference pairs; {pairs}, e.g. generate two replies per prompt and rank "
                        "them, or train it with TRL's SFTTrainer")


def map_num_proc(num_proc: int | None, rows: int) -> int | None:
    """Worker processes for a `Dataset.map` over `rows` rows (None: in this process)."""
    if not num_proc or num_proc <= 1:
        return None
    return max(1, min(num_proc, rows // 1000 or 1))  # a worker per thousand rows at least: start-up costs


def _format_name(kind: str, prompt_kind: str | None, scored: bool) -> str:
    if kind == "text":
        name = "standard" if prompt_kind else "implicit prompt (Human/Assistant transcripts)"
    elif prompt_kind == "text":
        name = "text prompt + message lists"
    else:
        name = "conversational" if prompt_kind else "implicit prompt (message lists)"
    return name + (" + scores" if scored else "")
