"""What a row hands the chat template beyond role and content (dpo_recipes/data/preparation.py, data/formats.py): a `tools`
column, a per-row `chat_template_kwargs` and message keys such as `tool_calls` reach TRL's DPOTrainer as it passes them
to the template, the audit's token counts include them, and a template that ignores them is named."""

import json

import numpy as np
import pytest

from tests.helpers import REPO
from dpo_recipes.report.audit import build_report, format_table
from dpo_recipes.train.config import parse_config
from dpo_recipes.data.preparation import load_preference_data
from dpo_recipes.models.loading import load_tokenizer

DEMO = str(REPO / "recipes/demo-cpu/config.yaml")
# A template that renders every input, the way tool-calling and thinking-switch templates do.
RENDERS_ALL = ("{%- if tools %}TOOLS {{ tools | tojson }}\n{% endif %}"
               "{%- if enable_thinking is defined and enable_thinking is false %}NO THINKING\n{% endif %}"
               "{%- for m in messages %}{{ m.role }}: {{ m.content }}"
               "{% if m.tool_calls %} CALLS {{ m.tool_calls | tojson }}{% endif %}\n{% endfor %}"
               "{%- if add_generation_prompt %}assistant:{% endif %}")
IGNORES_ALL = "{%- for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]


def rows():
    """20 pairs: odd rows have tools, every third row switches thinking off, even rows' chosen reply calls a tool."""
    out = []
    for i in range(20):
        chosen = {"role": "assistant", "content": f"Checking {i}."}
        if i % 2 == 0:
            chosen["tool_calls"] = CALL
        row = {"prompt": [{"role": "user", "content": f"Weather in town {i}?"}], "chosen": [chosen],
               "rejected": [{"role": "assistant", "content": f"No idea {i}."}], "id": i}
        if i % 2:
            row["tools"] = [TOOL]
        if i % 3 == 0:
            row["chat_template_kwargs"] = {"enable_thinking": False}
        out.append(row)
    return out


def prepare(tmp_path, tiny_llama, template):
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    (tmp_path / "t.jinja").write_text(template)
    script_args, training_args, model_args = parse_config([
        "--config", DEMO, "--dataset_name", str(path), "--chat_template_path", str(tmp_path / "t.jinja"),
        "--output_dir", str(tmp_path / "out"), "--max_length", "512"])
    tokenizer = load_tokenizer(str(tiny_llama), model_args, False, script_args.chat_template_path)
    data = load_preference_data(script_args, seed=0, tokenizer=tokenizer, max_length=512)
    return data, tokenizer


def by_id(data):
    return {int(r["prompt"][0]["content"].split()[-1].rstrip("?")): r for r in [*data.train, *data.eval]}


def test_every_input_reaches_the_rows_as_written(tmp_path, tiny_llama):
    data, _ = prepare(tmp_path, tiny_llama, RENDERS_ALL)
    got = by_id(data)
    assert len(got) == 20
    for i, row in enumerate(rows()):
        assert got[i]["chosen"] == row["chosen"]  # tool_calls in even rows only: no row gains another's keys
        assert (json.loads(got[i]["tools"]) if got[i]["tools"] else None) == row.get("tools")
        assert got[i]["chat_template_kwargs"] == row.get("chat_template_kwargs", {})
    assert data.settings["columns_left_out"] == ["id"]


def test_trl_tokenizes_with_them_and_the_audit_counts_the_same(tmp_path, tiny_llama):
    """TRL's DPOTrainer tokenizes our rows: its prompt and completion lengths are the audit's, tools included."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    data, tokenizer = prepare(tmp_path, tiny_llama, RENDERS_ALL)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_llama),
                         args=DPOConfig(output_dir=str(tmp_path / "trl"), max_length=512, report_to=[], use_cpu=True),
                         train_dataset=data.train, processing_class=tokenizer)
    for side in ("prompt", "chosen", "rejected"):
        trl_lengths = np.array([len(ids) for ids in trainer.train_dataset[f"{side}_ids"]])
        assert data.lengths["train"][side].tolist() == trl_lengths.tolist()
    prompts = dict(zip([r["prompt"][0]["content"] for r in data.train], data.lengths["train"]["prompt"]))
    with_tools = [n for content, n in prompts.items() if int(content.split()[-1].rstrip("?")) % 2]
    without = [n for content, n in prompts.items() if not int(content.split()[-1].rstrip("?")) % 2]
    assert min(with_tools) > max(without) + 20  # the tool schema is in the prompt TRL trains on


def test_the_audit_shows_each_input_and_its_effect(tmp_path, tiny_llama):
    data, _ = prepare(tmp_path, tiny_llama, RENDERS_ALL)
    report = build_report(data)
    inputs = report["template_inputs"]
    assert set(inputs) == {"tools", "chat_template_kwargs", "message key tool_calls"}
    train_ids = [int(r["prompt"][0]["content"].split()[-1].rstrip("?")) for r in data.train]
    assert inputs["tools"]["rows"] == sum(i % 2 for i in train_ids)
    assert inputs["chat_template_kwargs"]["rows"] == sum(i % 3 == 0 for i in train_ids)
    assert inputs["message key tool_calls"]["rows"] == sum(i % 2 == 0 for i in train_ids)
    assert not any(entry["ignored"] for entry in inputs.values())
    tools = inputs["tools"]
    assert tools["lengths_with"]["prompt"] > tools["lengths_without"]["prompt"]
    calls = inputs["message key tool_calls"]
    assert calls["lengths_with"]["chosen"] > calls["lengths_without"]["chosen"]
    assert "warning: the chat template ignores" not in format_table(report)


@pytest.mark.parametrize("name", ["tools", "chat_template_kwargs", "message key tool_calls"])
def test_a_template_that_ignores_an_input_is_named(tmp_path, tiny_llama, name):
    data, _ = prepare(tmp_path, tiny_llama, IGNORES_ALL)
    report = build_report(data)
    assert report["template_inputs"][name]["ignored"]
    assert (f"warning: the chat template ignores {name}: a pair renders the same without it, so the model never "
            "sees it; use a template that renders it (chat_template_path)") in format_table(report).splitlines()


def test_tools_in_text_pairs_are_listed_as_left_out(tmp_path):
    from dpo_recipes.train.config import ScriptArguments

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b", "tools": [TOOL]}) + "\n"
                            for i in range(10)))
    data = load_preference_data(ScriptArguments(dataset_name=str(path)), seed=0)
    assert "tools" not in data.train.column_names
    assert data.settings["columns_left_out"] == ["tools"]


@pytest.mark.parametrize("column, value, detail", [
    ("tools", "not json", "field 'tools' is text but not JSON (Expecting value at column 1)"),
    ("tools", {"name": "f"}, "field 'tools' is dict, expected a list of tool schemas"),
    ("chat_template_kwargs", "thinking off", "field 'chat_template_kwargs' is text, expected a mapping such as {enable_thinking: false}"),
])
def test_a_bad_template_value_is_a_counted_defect(tmp_path, column, value, detail):
    from dpo_recipes.train.config import ScriptArguments

    good = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}], column: None} for i in range(10)]
    bad = {**good[0], "prompt": [{"role": "user", "content": "bad"}], column: value}
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*good, bad]))
    data = load_preference_data(ScriptArguments(dataset_name=str(path), data_stop_on="none"), seed=0)
    report = build_report(data)
    assert report["dropped"]["wrong_type"] == 1 and report["kept"] == 10
    assert report["sources"][0]["train"]["first_dropped"]["wrong_type"] == f"{path}: line 11: {detail}"
