"""Throughput of the data layer on many pairs: rows per second, medians over repeats, into bench/results/data.json.

    .venv/bin/python bench/bench_data.py                       # 100,000 pairs, num_proc 1 and 2, 3 repeats
    .venv/bin/python bench/bench_data.py --rows 20000 --num_proc 1 2 4 --repeats 5 --stages normalise tokens

The pairs are synthetic and unique, in two formats: conversational (the demo data's shape) and Anthropic-HH
implicit-prompt transcripts (parsed into turns). Stages, each timed with the datasets cache off so every repeat does
the work:
  normalise  - read the file, normalise rows to TRL's format, mark defects (a multi-process `map`);
  tokens     - token lengths with the tiny Llama tokenizer and its chat template (a multi-process `map`);
  full       - `load_preference_data` end to end: the two above, duplicates, long prompts, held-out carving.
  full_cached - `full` with the cache on and already filled: what a second run of the same data costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import datasets  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from dpo_recipes.train.config import ScriptArguments  # noqa: E402
from dpo_recipes.data.preparation import add_token_lengths, load_preference_data  # noqa: E402
from dpo_recipes.data.files import read_source  # noqa: E402
from dpo_recipes.data.formats import normalise  # noqa: E402
from dpo_recipes.data.sources import Source  # noqa: E402
from dpo_recipes.report.run_record import installed_versions  # noqa: E402
from dpo_recipes.models.tiny import build_tiny  # noqa: E402

TOPICS = ["the moon", "rivers", "bread", "chess", "volcanoes", "trains", "bees", "glass", "maps", "tea"]


def conversational_row(i: int) -> dict:
    topic = TOPICS[i % len(TOPICS)]
    return {
        "prompt": [{"role": "user", "content": f"Question {i}: can you tell me something about {topic}?"}],
        "chosen": [{"role": "assistant", "content": f"Of course. Here is fact number {i} about {topic}, explained "
                                                    "in a couple of friendly sentences."}],
        "rejected": [{"role": "assistant", "content": f"No. Ask someone else about {topic} ({i})."}],
    }


def hh_row(i: int) -> dict:
    topic = TOPICS[i % len(TOPICS)]
    prefix = f"\n\nHuman: Hi, I have question {i}.\n\nAssistant: Sure, go ahead.\n\nHuman: What about {topic}?"
    return {"chosen": prefix + f"\n\nAssistant: Here is a helpful answer about {topic} ({i}).",
            "rejected": prefix + "\n\nAssistant: I would rather not say."}


def write_data(rows: int, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, make in (("conversational", conversational_row), ("hh", hh_row)):
        path = out / f"{name}-{rows}.jsonl"
        if not path.exists():
            with open(path, "w") as f:
                for i in range(rows):
                    f.write(json.dumps(make(i)) + "\n")
        files[name] = path
    return files


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench(files: dict[str, Path], tokenizer, num_procs: list[int], repeats: int, rows: int,
          wanted: list[str]) -> list[dict]:
    results = []
    for fmt, path in files.items():
        source = Source(str(path))
        args = ScriptArguments(dataset_name=str(path))
        for num_proc in num_procs:
            datasets.disable_caching()  # every repeat does the work
            raw = read_source(source).splits["train"]
            normalised, _ = normalise(raw, source, str(path), num_proc)
            conversational = normalised.features["chosen"] != datasets.Value("string")
            stages = {
                "normalise": lambda: normalise(raw, source, str(path), num_proc),
                "tokens": lambda: add_token_lengths(normalised, tokenizer, conversational, str(path), num_proc),
                "full": lambda: load_preference_data(args, seed=0, tokenizer=tokenizer, max_length=1024,
                                                     num_proc=num_proc),
            }
            for stage, fn in stages.items():
                if stage in wanted:
                    results.append(_entry(fmt, stage, num_proc, rows, timed(fn, repeats)))
                    print(json.dumps(results[-1]), flush=True)
            datasets.enable_caching()
            if "full_cached" in wanted:
                stages["full"]()  # fills the cache
                results.append(_entry(fmt, "full_cached", num_proc, rows, timed(stages["full"], repeats)))
                print(json.dumps(results[-1]), flush=True)
    return results


def _entry(fmt: str, stage: str, num_proc: int, rows: int, times: list[float]) -> dict:
    median = statistics.median(times)
    return {"format": fmt, "stage": stage, "num_proc": num_proc, "rows": rows, "seconds": [round(t, 3) for t in times],
            "median_seconds": round(median, 3), "rows_per_second": round(rows / median)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--num_proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", nargs="+", default=["normalise", "full", "full_cached"],
                        choices=["normalise", "tokens", "full", "full_cached"])
    parser.add_argument("--out", default=str(HERE / "results" / "data.json"))
    a = parser.parse_args()
    datasets.logging.disable_progress_bar()
    work = HERE / "tmp"
    files = write_data(a.rows, work / "data")
    tokenizer = AutoTokenizer.from_pretrained(build_tiny("llama", work / "tiny-llama"))
    results = bench(files, tokenizer, a.num_proc, a.repeats, a.rows, a.stages)
    report = {
        "command": "python bench/bench_data.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "note": "CPUs shared with other jobs while measuring"},
        "versions": installed_versions(("datasets", "transformers", "tokenizers", "trl")),
        "repeats": a.repeats,
        "results": results,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    # Plain json: reporting.write_json would redact the "tokenizers" version (its key contains "token").
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
