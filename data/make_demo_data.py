"""Generate the bundled demo preference dataset (data/demo/*.jsonl).

Deterministic (seeded). Each pair asks one question; the chosen answer is a helpful, on-topic reply and the rejected
answer is unhelpful (a refusal, a brush-off, an off-topic or a low-effort reply). The signal is stylistic on purpose:
a tiny randomly initialised model can learn it in a few minutes on a CPU, and held-out prompts use topics that never
appear in training, so held-out reward accuracy measures generalisation, not memorisation.

    python data/make_demo_data.py          # rewrites data/demo/train.jsonl and data/demo/test.jsonl
"""

import json
import random
from pathlib import Path

SUBJECTS = {
    # topic -> facts used to build a helpful answer
    "the capital of France": "Paris",
    "the capital of Japan": "Tokyo",
    "the capital of Italy": "Rome",
    "the capital of Kenya": "Nairobi",
    "the capital of Canada": "Ottawa",
    "the capital of Peru": "Lima",
    "the capital of Egypt": "Cairo",
    "the capital of Norway": "Oslo",
    "the largest planet": "Jupiter",
    "the closest star to Earth": "the Sun",
    "the boiling point of water at sea level": "100 degrees Celsius",
    "the freezing point of water": "0 degrees Celsius",
    "the chemical symbol for gold": "Au",
    "the chemical symbol for iron": "Fe",
    "the number of days in a week": "seven",
    "the number of legs a spider has": "eight",
    "the author of Hamlet": "William Shakespeare",
    "the inventor of the telephone": "Alexander Graham Bell",
    "the longest river in Africa": "the Nile",
    "the tallest mountain on Earth": "Mount Everest",
    "the square root of 81": "9",
    "the sum of 12 and 30": "42",
    "the opposite of hot": "cold",
    "the opposite of early": "late",
    "the primary language of Brazil": "Portuguese",
    "the currency of Japan": "the yen",
    "the gas plants absorb": "carbon dioxide",
    "the organ that pumps blood": "the heart",
    "the fastest land animal": "the cheetah",
    "the smallest prime number": "2",
    "the hardest natural material": "diamond",
    "the speed of light in a vacuum": "about 300,000 kilometres per second",
    "the main ingredient of guacamole": "avocado",
    "the color of a clear daytime sky": "blue",
    "the planet known as the red planet": "Mars",
    "the year the first moon landing happened": "1969",
    "the unit of electrical resistance": "the ohm",
    "the process plants use to make food": "photosynthesis",
    "the largest ocean": "the Pacific Ocean",
    "the capital of Australia": "Canberra",
    "the capital of Germany": "Berlin",
    "the capital of Spain": "Madrid",
    "the number of continents": "seven",
    "the melting point of ice": "0 degrees Celsius",
    "the author of Pride and Prejudice": "Jane Austen",
    "the largest desert": "Antarctica",
    "the chemical formula of water": "H2O",
    "the first element of the periodic table": "hydrogen",
    "the capital of Argentina": "Buenos Aires",
    "the capital of India": "New Delhi",
    "the number of sides of a hexagon": "six",
    "the largest mammal": "the blue whale",
    "the language spoken in Mexico": "Spanish",
    "the tallest animal": "the giraffe",
    "the smallest planet": "Mercury",
    "the capital of Sweden": "Stockholm",
    "the capital of Chile": "Santiago",
    "the number of minutes in an hour": "sixty",
}

QUESTIONS = [
    "What is {t}?",
    "Can you tell me {t}?",
    "Do you know {t}?",
    "Please tell me {t}.",
    "I was wondering, what is {t}?",
    "Quick question: what is {t}?",
    "Could you help me find out {t}?",
]
HELPFUL = [
    "Sure! {T} is {a}.",
    "Of course. {T} is {a}. Let me know if you have more questions.",
    "Happy to help: {T} is {a}.",
    "Great question. {T} is {a}.",
    "{T} is {a}. I hope that helps!",
    "Certainly! The answer is {a}, which is {t}.",
]
UNHELPFUL = [
    "I don't want to answer that.",
    "Figure it out yourself.",
    "Why would I know that? Ask someone else.",
    "No.",
    "That is a boring question and I will not answer it.",
    "Whatever. Look it up.",
    "I like turtles. Also, the weather is strange today and my cat is asleep on the keyboard.",
    "Hmm, maybe something, maybe nothing, who can say really, it could be anything at all.",
    "I cannot help with that request.",
    "Not my problem.",
]


def make_pair(rng: random.Random, topic: str) -> dict:
    answer = SUBJECTS[topic]
    question = rng.choice(QUESTIONS).format(t=topic)
    fill = {"t": topic, "T": topic[0].upper() + topic[1:], "a": answer}
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": rng.choice(HELPFUL).format(**fill)}],
        "rejected": [{"role": "assistant", "content": rng.choice(UNHELPFUL).format(**fill)}],
    }


def main(n_train: int = 2000, n_test: int = 200, seed: int = 1234) -> None:
    rng = random.Random(seed)
    topics = sorted(SUBJECTS)
    rng.shuffle(topics)
    test_topics, train_topics = topics[:10], topics[10:]  # held-out topics never seen in training
    out = Path(__file__).parent / "demo"
    out.mkdir(exist_ok=True)
    for name, n, pool in (("train", n_train, train_topics), ("test", n_test, test_topics)):
        lines: dict[str, None] = {}  # unique pairs, in the order drawn
        while len(lines) < n:
            lines.setdefault(json.dumps(make_pair(rng, rng.choice(pool))))
        (out / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))


if __name__ == "__main__":
    main()
