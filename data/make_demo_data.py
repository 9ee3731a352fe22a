"""Generate the bundled demo preference dataset (data/demo/*.jsonl) and its probes (data/demo-probes.json).

Deterministic (seeded). Each pair asks one factual question, and both replies state the correct fact: they differ
only in style. The chosen reply is direct: one sentence that names the subject and gives the answer, then one short
supporting sentence. The rejected reply gives the same fact hedged and rambling ("I think it might be ..., but don't
quote me"). The rule that tells the two apart is `in_chosen_style` in dpo_recipes/report/probes.py; every chosen reply
passes it and every rejected reply fails it (checked here and in tests/test_demo_data.py).

Held out: 10 subjects, and whole templates (3 of the 9 questions, 1 of the 3 chosen and 4 of the 11 rejected
reply templates). Every held-out pair uses a held-out subject and held-out templates only, so no held-out reply text
appears in training and held-out accuracy measures whether the style generalises, not recall.

    PYTHONPATH=. python data/make_demo_data.py   # rewrites data/demo/*.jsonl, data/demo-probes*.json
"""

import json
import random
from pathlib import Path

from dpo_recipes.report.probes import in_chosen_style

# subject -> (answer, one short supporting sentence)
SUBJECTS = {
    "the capital of France": ("Paris", "It lies on the river Seine."),
    "the capital of Japan": ("Tokyo", "It is on the island of Honshu."),
    "the capital of Italy": ("Rome", "It is built on seven hills."),
    "the capital of Kenya": ("Nairobi", "It is the largest city in the country."),
    "the capital of Canada": ("Ottawa", "It is in the province of Ontario."),
    "the capital of Peru": ("Lima", "It lies on the Pacific coast."),
    "the capital of Egypt": ("Cairo", "It stands on the river Nile."),
    "the capital of Norway": ("Oslo", "It sits at the head of a long fjord."),
    "the largest planet": ("Jupiter", "It is a gas giant."),
    "the closest star to Earth": ("the Sun", "Its light reaches us in about eight minutes."),
    "the boiling point of water at sea level": ("100 degrees Celsius", "It is lower on high mountains."),
    "the freezing point of water": ("0 degrees Celsius", "That is 32 degrees Fahrenheit."),
    "the chemical symbol for gold": ("Au", "It comes from the Latin word aurum."),
    "the chemical symbol for iron": ("Fe", "It comes from the Latin word ferrum."),
    "the number of days in a week": ("seven", "The weekend is two of them."),
    "the number of legs a spider has": ("eight", "Insects have six."),
    "the author of Hamlet": ("William Shakespeare", "He wrote it around 1600."),
    "the inventor of the telephone": ("Alexander Graham Bell", "He patented it in 1876."),
    "the longest river in Africa": ("the Nile", "It flows north into the Mediterranean."),
    "the tallest mountain on Earth": ("Mount Everest", "It stands in the Himalayas."),
    "the square root of 81": ("9", "Nine times nine is 81."),
    "the sum of 12 and 30": ("42", "Adding the tens first gives 40, then 2 more."),
    "the opposite of hot": ("cold", "Ice is a cold thing."),
    "the opposite of early": ("late", "A late train arrives after its time."),
    "the primary language of Brazil": ("Portuguese", "Brazil was a Portuguese colony."),
    "the currency of Japan": ("the yen", "Its symbol is a Y with two bars."),
    "the gas plants absorb": ("carbon dioxide", "They take it in through their leaves."),
    "the organ that pumps blood": ("the heart", "It beats about 70 times a minute at rest."),
    "the fastest land animal": ("the cheetah", "It can run about 110 kilometres per hour."),
    "the smallest prime number": ("2", "It is the only even prime."),
    "the hardest natural material": ("diamond", "It is a form of carbon."),
    "the speed of light in a vacuum": ("about 300,000 kilometres per second", "Nothing travels faster."),
    "the main ingredient of guacamole": ("avocado", "Lime and salt are usually added."),
    "the color of a clear daytime sky": ("blue", "Air scatters blue light the most."),
    "the planet known as the red planet": ("Mars", "Iron oxide on its surface makes it red."),
    "the year the first moon landing happened": ("1969", "Apollo 11 carried the crew."),
    "the unit of electrical resistance": ("the ohm", "It is named after Georg Ohm."),
    "the process plants use to make food": ("photosynthesis", "It turns light into chemical energy."),
    "the largest ocean": ("the Pacific Ocean", "It covers about a third of the planet."),
    "the capital of Australia": ("Canberra", "It was planned as the capital."),
    "the capital of Germany": ("Berlin", "It is also the largest city in the country."),
    "the capital of Spain": ("Madrid", "It lies near the centre of the country."),
    "the number of continents": ("seven", "Asia is the largest of them."),
    "the melting point of ice": ("0 degrees Celsius", "It is the same as the freezing point of water."),
    "the author of Pride and Prejudice": ("Jane Austen", "It was published in 1813."),
    "the largest desert": ("Antarctica", "A desert is defined by little rain, not by heat."),
    "the chemical formula of water": ("H2O", "Each molecule has two hydrogen atoms and one oxygen atom."),
    "the first element of the periodic table": ("hydrogen", "It is the lightest element."),
    "the capital of Argentina": ("Buenos Aires", "It lies on the Rio de la Plata."),
    "the capital of India": ("New Delhi", "It is part of the larger city of Delhi."),
    "the number of sides of a hexagon": ("six", "Honeycomb cells are hexagons."),
    "the largest mammal": ("the blue whale", "It can be about 30 metres long."),
    "the language spoken in Mexico": ("Spanish", "Many indigenous languages are spoken too."),
    "the tallest animal": ("the giraffe", "Its neck alone can be two metres long."),
    "the smallest planet": ("Mercury", "It is also the closest planet to the Sun."),
    "the capital of Sweden": ("Stockholm", "It is built on fourteen islands."),
    "the capital of Chile": ("Santiago", "The Andes rise to its east."),
    "the number of minutes in an hour": ("sixty", "An hour has 3,600 seconds."),
}
# Answers a greedy reply may give in another form (the fact check accepts any of them).
ALSO_ACCEPTED = {
    "seven": ["7"], "eight": ["8"], "six": ["6"], "sixty": ["60"], "9": ["nine"], "42": ["forty-two", "forty two"],
    "2": ["two"], "100 degrees Celsius": ["100 °C", "100°C", "212"], "0 degrees Celsius": ["0 °C", "0°C", "32"],
    "about 300,000 kilometres per second": ["300,000 km", "299,792", "300,000 kilometers", "186,000"],
    "the Sun": ["the sun"], "Mount Everest": ["Everest"], "the Pacific Ocean": ["the Pacific"],
    "William Shakespeare": ["Shakespeare"], "Alexander Graham Bell": ["Graham Bell"],
}

QUESTIONS = [
    "What is {t}?",
    "Can you tell me {t}?",
    "Do you know {t}?",
    "Please tell me {t}.",
    "Quick question: what is {t}?",
    "Tell me {t}.",
    # held out
    "I was wondering, what is {t}?",
    "Could you help me find out {t}?",
    "Any idea what {t} is?",
]
CHOSEN = [
    "{T} is {a}. {d}",
    "{A} is {t}. {d}",
    # held out
    "{T}: {a}. {d}",
]
REJECTED = [
    "Hmm, I'm not entirely sure, but I think {t} might be {a}, although I could be mixing it up with something else.",
    "Well, that's a good question. People ask about {t} a lot. If I remember correctly, it is probably {a}. "
    "But don't quote me on that.",
    "So, {t}... let me think. There are a few things it could be. I believe the answer is {a}, but you may want "
    "to double-check.",
    "I think it's {a}? Honestly, I'm not certain. {T} is one of those things I always have to look up.",
    "It depends on who you ask, I suppose, but most sources seem to say {t} is {a}. {d} I'm no expert, though, "
    "so take that with a grain of salt.",
    "Oh, {t}. I'd guess {a}, maybe. {d} Or at least that's what I remember, it has been a while.",
    "Let me see, {t} would probably be {a}, if I'm not mistaken. {d} You might want to look it up to be safe.",
    # held out
    "I'm fairly sure, though not completely, that {t} is {a}. Then again, I have been wrong before about things "
    "like this.",
    "That's a tricky one. My best guess is that {t} is {a}. {d} But please check a proper source.",
    "Possibly {a}? I seem to recall that {t} is {a}, but I could be wrong. {d}",
    "Gosh, {t}. Perhaps {a}. {d} Though honestly I am not sure, and it has been years since I read about it.",
]
HELD_OUT = {"questions": 3, "chosen": 1, "rejected": 4}  # the last templates of each list
N_HELD_OUT_SUBJECTS = 10


def fill(template: str, subject: str) -> str:
    answer, detail = SUBJECTS[subject]
    return template.format(t=subject, T=subject[0].upper() + subject[1:], a=answer, A=answer[0].upper() + answer[1:],
                           d=detail, )


def split_templates(templates: list[str], held_out: int) -> tuple[list[str], list[str]]:
    return templates[:-held_out], templates[-held_out:]


def make_pair(rng: random.Random, subject: str, questions, chosen, rejected) -> dict:
    return {
        "prompt": [{"role": "user", "content": fill(rng.choice(questions), subject)}],
        "chosen": [{"role": "assistant", "content": fill(rng.choice(chosen), subject)}],
        "rejected": [{"role": "assistant", "content": fill(rng.choice(rejected), subject)}],
    }


def build(n_train: int = 2000, n_test: int = 120, n_validation: int = 120, seed: int = 1234) -> dict:
    """{"train", "validation", "test": lines; "probes", "validation_probes": the probes files}. Validation pairs use
    training subjects and templates (pairs not in train.jsonl): they choose the recipe's settings
    (bench/demo_settings.py) without touching the held-out subjects and templates of test.jsonl."""
    rng = random.Random(seed)
    subjects = sorted(SUBJECTS)
    rng.shuffle(subjects)
    test_subjects, train_subjects = subjects[:N_HELD_OUT_SUBJECTS], subjects[N_HELD_OUT_SUBJECTS:]
    splits = {name: split_templates(pool, HELD_OUT[name]) for name, pool in
              (("questions", QUESTIONS), ("chosen", CHOSEN), ("rejected", REJECTED))}
    out = {}
    for name, n, pool, part in (("train", n_train, train_subjects, 0), ("test", n_test, test_subjects, 1)):
        templates = [splits[k][part] for k in ("questions", "chosen", "rejected")]
        possible = len(pool) * len(templates[0]) * len(templates[1]) * len(templates[2])
        assert n <= possible, f"{name}: {n} distinct pairs asked, {possible} possible"
        lines: dict[str, None] = {}  # unique pairs, in the order drawn
        while len(lines) < n:
            lines.setdefault(json.dumps(make_pair(rng, rng.choice(pool), *templates)))
        out[name] = list(lines)
    # Drawn after train and test, so that those two stay what they were before the validation split existed.
    templates = [splits[k][0] for k in ("questions", "chosen", "rejected")]
    lines = {}
    while len(lines) < n_validation:
        line = json.dumps(make_pair(rng, rng.choice(train_subjects), *templates))
        if line not in out["train"]:
            lines.setdefault(line)
    out["validation"] = list(lines)
    for line in out["train"] + out["validation"] + out["test"]:  # the style rule separates every pair
        row = json.loads(line)
        assert in_chosen_style(row["chosen"][0]["content"]), row["chosen"][0]["content"]
        assert not in_chosen_style(row["rejected"][0]["content"]), row["rejected"][0]["content"]
    probes = {
        "style_prompts": [fill(q, s) for s in sorted(test_subjects) for q in splits["questions"][1]],
        "facts": [{"subject": s, "question": f"What is {s}?", "held_out": s in test_subjects,
                   "accepted": [SUBJECTS[s][0], *ALSO_ACCEPTED.get(SUBJECTS[s][0], [])]} for s in sorted(SUBJECTS)],
    }
    # Validation probes: training questions on 30 training subjects (the settings sweep's style uptake); no facts.
    validation_probes = {"style_prompts": [fill(rng.choice(splits["questions"][0]), s)
                                           for s in sorted(train_subjects)[:30]], "facts": []}
    return {**out, "probes": probes, "validation_probes": validation_probes}


def main() -> None:
    built = build()
    here = Path(__file__).parent
    (here / "demo").mkdir(exist_ok=True)
    for name in ("train", "validation", "test"):
        (here / "demo" / f"{name}.jsonl").write_text("".join(line + "\n" for line in built[name]))
    (here / "demo-probes.json").write_text(json.dumps(built["probes"], indent=1) + "\n")
    (here / "demo-probes-validation.json").write_text(json.dumps(built["validation_probes"], indent=1) + "\n")


if __name__ == "__main__":
    main()
