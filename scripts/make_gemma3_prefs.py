#!/usr/bin/env python3
"""Writes examples/rpo_gemma/data/gemma3_prefs.jsonl: a small preference set for the Gemma 3 270M run.

Origin: every record is produced by this script from the hand-written tables below (written for this
repository; no model output, no external data set). Licence: MIT, like the repository.

48 conversational records {"prompt": [user turn], "chosen": [assistant turn], "rejected": [assistant
turn]} in four kinds of 12: arithmetic (correct sum / product vs an off-by-some one), capitals (the
right city vs a wrong, plausible one), opposites (the antonym vs a synonym), and plurals (the correct
plural vs a regularized wrong one). The chosen answer is always a short correct sentence, the rejected
one the same sentence with a wrong fact, so the pair differs in the fact only. Deterministic: rerunning
rewrites the same file.

Usage: python3 scripts/make_gemma3_prefs.py [--out examples/rpo_gemma/data/gemma3_prefs.jsonl]
"""
import argparse
import json

ARITHMETIC = [(3, "+", 4), (12, "+", 9), (7, "*", 6), (15, "-", 8), (9, "*", 9), (21, "+", 14),
              (100, "-", 37), (8, "*", 7), (45, "+", 55), (6, "*", 12), (81, "-", 19), (13, "+", 29)]
CAPITALS = [("France", "Paris", "Lyon"), ("Japan", "Tokyo", "Osaka"), ("Italy", "Rome", "Milan"),
            ("Canada", "Ottawa", "Toronto"), ("Australia", "Canberra", "Sydney"), ("Spain", "Madrid", "Barcelona"),
            ("Germany", "Berlin", "Munich"), ("Brazil", "Brasília", "Rio de Janeiro"), ("Egypt", "Cairo", "Alexandria"),
            ("Turkey", "Ankara", "Istanbul"), ("India", "New Delhi", "Mumbai"), ("Kenya", "Nairobi", "Mombasa")]
OPPOSITES = [("hot", "cold", "warm"), ("big", "small", "large"), ("fast", "slow", "quick"),
             ("happy", "sad", "glad"), ("early", "late", "soon"), ("open", "closed", "ajar"),
             ("light", "dark", "bright"), ("full", "empty", "filled"), ("strong", "weak", "sturdy"),
             ("up", "down", "above"), ("win", "lose", "succeed"), ("ancient", "modern", "old")]
PLURALS = [("mouse", "mice", "mouses"), ("child", "children", "childs"), ("foot", "feet", "foots"),
           ("tooth", "teeth", "tooths"), ("person", "people", "persons"), ("goose", "geese", "gooses"),
           ("man", "men", "mans"), ("woman", "women", "womans"), ("ox", "oxen", "oxes"),
           ("cactus", "cacti", "cactuses"), ("leaf", "leaves", "leafs"), ("knife", "knives", "knifes")]


def record(question, chosen, rejected):
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def records():
    out = []
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for i, (a, op, b) in enumerate(ARITHMETIC):
        right = ops[op](a, b)
        wrong = right + (1 if i % 2 == 0 else -2) * (1 + i % 3)
        out.append(record(f"What is {a} {op} {b}?", f"{a} {op} {b} = {right}.", f"{a} {op} {b} = {wrong}."))
    for country, capital, other in CAPITALS:
        out.append(record(f"What is the capital of {country}?", f"The capital of {country} is {capital}.",
                          f"The capital of {country} is {other}."))
    for word, opposite, similar in OPPOSITES:
        out.append(record(f"What is the opposite of \"{word}\"?", f"The opposite of \"{word}\" is \"{opposite}\".",
                          f"The opposite of \"{word}\" is \"{similar}\"."))
    for word, plural, wrong in PLURALS:
        out.append(record(f"What is the plural of \"{word}\"?", f"The plural of \"{word}\" is \"{plural}\".",
                          f"The plural of \"{word}\" is \"{wrong}\"."))
    # Interleave the four kinds so any prefix of the file has all of them.
    return [out[k * 12 + i] for i in range(12) for k in range(4)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="examples/rpo_gemma/data/gemma3_prefs.jsonl")
    args = parser.parse_args()
    rows = records()
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} records to {args.out}")


if __name__ == "__main__":
    main()
