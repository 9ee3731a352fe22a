"""How TRL turns a preference pair into token ids, in one place: the data audit counts with it, the evaluation
report scores with it, and MADPO's reward model scores pairs the way TRL's RewardTrainer trained it.

- DPO (TRL's DPOTrainer): the prompt rendered alone (conversations: the chat template with the generation prompt),
  and prompt + completion rendered whole; the completion starts where the two token sequences diverge (TRL's
  common-prefix rule). Text completions get the EOS token first.
- Reward model (TRL's RewardTrainer): prompt + completion rendered whole (text: EOS appended).
"""

from __future__ import annotations

import json

from trl.data_utils import common_prefix_length, is_conversational


def template_kwargs(example: dict) -> dict:
    """The chat template's extra arguments a row carries (chat_template_kwargs, tools)."""
    kwargs = dict(example.get("chat_template_kwargs") or {})
    tools = example.get("tools")
    if tools is not None:
        kwargs["tools"] = json.loads(tools) if isinstance(tools, str) else tools
    return kwargs


def _render(tokenizer, values: list, conversational: bool, **kwargs) -> list[list[int]]:
    if conversational:
        return [list(ids) for ids in tokenizer.apply_chat_template(values, tokenize=True, return_dict=True,
                                                                    **kwargs)["input_ids"]]
    return [list(ids) for ids in tokenizer(text=values)["input_ids"]]


def tokenize_pairs(tokenizer, prompts: list, chosen: list, rejected: list, conversational: bool,
                   **kwargs) -> list[dict]:
    """prompt_ids, chosen_ids and rejected_ids of each pair, as TRL's DPOTrainer builds them (batched)."""
    if conversational:
        prompt_ids = _render(tokenizer, prompts, True, add_generation_prompt=True, **kwargs)
        full = [_render(tokenizer, [p + c for p, c in zip(prompts, side)], True, **kwargs) for side in (chosen, rejected)]
    else:
        eos = tokenizer.eos_token or ""
        prompt_ids = _render(tokenizer, prompts, False)
        full = [_render(tokenizer, [p + c + ("" if c.endswith(eos) else eos) for p, c in zip(prompts, side)], False)
                for side in (chosen, rejected)]
    pairs = []
    for p, c, r in zip(prompt_ids, *full):
        n = min(common_prefix_length(p, c), common_prefix_length(p, r))
        pairs.append({"prompt_ids": p[:n], "chosen_ids": c[n:], "rejected_ids": r[n:]})
    return pairs


def tokenize_pair(tokenizer, example: dict) -> dict:
    """One row's prompt_ids, chosen_ids and rejected_ids (tokenize_pairs with the row's own template arguments)."""
    return tokenize_pairs(tokenizer, [example["prompt"]], [example["chosen"]], [example["rejected"]],
                          isinstance(example["prompt"], list), **template_kwargs(example))[0]


def generation_prompt_ids(tokenizer, example: dict) -> list[int]:
    """The prompt as the model sees it before replying (chat template with the generation prompt)."""
    prompt = example["prompt"]
    if isinstance(prompt, list):
        return _render(tokenizer, [prompt], True, add_generation_prompt=True, **template_kwargs(example))[0]
    return _render(tokenizer, [prompt], False)[0]


def reward_ids(tokenizer, example: dict, side: str) -> list[int]:
    """Token ids of prompt + `side` ("chosen" or "rejected") as TRL's RewardTrainer builds them for training."""
    completion = example[side]
    if "prompt" in example:  # explicit prompt; otherwise the completion holds the whole conversation
        completion = example["prompt"] + completion
    if is_conversational(example):
        return _render(tokenizer, [completion], True, **template_kwargs(example))[0]
    eos = tokenizer.eos_token
    if eos and not completion.endswith(eos):
        completion = completion + eos
    return _render(tokenizer, [completion], False)[0]
