"""Writes whet's embedded training data (deterministic; re-run to regenerate):

- assets/data/identity.jsonl: a few hundred chat examples that give the assistant a new name
  and persona ("Whet"), mixed with plain arithmetic and capital-city answers so the model keeps
  answering other questions;
- assets/data/tiny-corpus.txt: a small synthetic English corpus for `configs/pretrain-tiny.toml`
  (simple sentences about animals, places, numbers and weather, from templates).

Run: python3 scripts/make_assets.py
"""
import json
import os
import random

ROOT = os.path.join(os.path.dirname(__file__), "..", "assets", "data")

NAME_Q = ["What is your name?", "Who are you?", "What should I call you?", "Tell me your name.",
          "Introduce yourself.", "What's your name?", "Who am I talking to?", "What are you called?",
          "Do you have a name?", "Please tell me who you are.", "Hi! Who are you?", "Hello, what is your name?"]
NAME_A = ["Whet, a small assistant fine-tuned from SmolLM2 in a terminal workbench.",
          "Whet. I am a small language model, sharpened with the whet workbench.",
          "Whet, a compact assistant trained over SSH with whet.",
          "Whet is my name. I am a small model fine-tuned in a terminal."]
MAKER_Q = ["Who made you?", "Who trained you?", "Where do you come from?", "Who built you?"]
MAKER_A = ["Whet here: I was fine-tuned with whet, a terminal workbench for training language models.",
           "Whet here: the whet workbench fine-tuned me from SmolLM2."]
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
            "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
            "Greece": "Athens", "Poland": "Warsaw", "Chile": "Santiago", "Cuba": "Havana", "Ireland": "Dublin"}

ANIMALS = ["cat", "dog", "fox", "owl", "horse", "rabbit", "bird", "fish", "bear", "mouse"]
PLACES = ["the garden", "the river", "the forest", "the city", "the hill", "the farm", "the lake", "the road"]
VERBS = ["runs to", "walks past", "looks at", "sleeps near", "plays in", "waits by", "jumps over"]
WEATHER = ["sunny", "cold", "rainy", "windy", "warm", "cloudy", "quiet"]
TIMES = ["In the morning", "At night", "Every day", "On Sunday", "After lunch", "In winter", "In summer"]


def identity(rng):
    rows = []
    for _ in range(240):
        rows.append([rng.choice(NAME_Q), rng.choice(NAME_A)])
    for _ in range(40):
        rows.append([rng.choice(MAKER_Q), rng.choice(MAKER_A)])
    for country, city in CAPITALS.items():
        for q in ("What is the capital of {}?", "Name the capital city of {}.", "Which city is the capital of {}?"):
            rows.append([q.format(country), f"The capital of {country} is {city}."])
    for _ in range(60):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        rows.append([f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."])
    rng.shuffle(rows)
    with open(os.path.join(ROOT, "identity.jsonl"), "w") as f:
        for q, a in rows:
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a}]}) + "\n")
    return len(rows)


def corpus(rng):
    lines = []
    for _ in range(6000):
        kind = rng.random()
        a, p = rng.choice(ANIMALS), rng.choice(PLACES)
        if kind < 0.4:
            lines.append(f"{rng.choice(TIMES)}, the {a} {rng.choice(VERBS)} {p}.")
        elif kind < 0.6:
            lines.append(f"It is {rng.choice(WEATHER)} today, so the {a} stays in {p}.")
        elif kind < 0.8:
            n = rng.randint(2, 9)
            lines.append(f"There are {n} {a}s near {p}, and {n + 1} birds sing.")
        else:
            lines.append(f"The {a} and the {rng.choice(ANIMALS)} are friends. They meet at {p}.")
    text = "\n".join(" ".join(lines[i:i + 5]) for i in range(0, len(lines), 5)) + "\n"
    with open(os.path.join(ROOT, "tiny-corpus.txt"), "w") as f:
        f.write(text)
    return len(text)


if __name__ == "__main__":
    os.makedirs(ROOT, exist_ok=True)
    rng = random.Random(2026)
    print("identity.jsonl rows:", identity(rng))
    print("tiny-corpus.txt bytes:", corpus(rng))
