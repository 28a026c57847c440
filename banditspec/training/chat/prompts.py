"""Chat prompts for self-distillation: a broad, seeded mix of the benchmark's six kinds, none of its prompts.

First-turn prompts (creative, explanation, code edit) come from templates over topic lists and from
functions of the Python standard library's own source; second-turn prompts (summarisation, questions
on a passage, follow-ups) are built on the target's answers to first-turn prompts, so their passages are
prose of the kind the target writes. The benchmark's prompts are never used: `overlapping` finds any
generated prompt that shares a run of words with one of them.
"""

from __future__ import annotations

import ast
import json
import random
import re
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

CREATIVE_FORMS = [
    "Write a short story about {s}.",
    "Write a poem of three stanzas about {s}.",
    "Write a short fairy tale about {s}, with a moral at the end.",
    "Write a diary entry by {s}, describing one unusual day.",
    "Describe a morning in the life of {s}, using vivid sensory details.",
    "Write the opening paragraph of a mystery novel about {s}.",
    "Write a funny limerick and then a short haiku about {s}.",
    "Write a bedtime story for a five-year-old about {s}.",
    "Write a dialogue between {s} and a curious child who asks many questions.",
    "Write a song with two verses and a chorus about {s}.",
]
CREATIVE_SUBJECTS = [
    "a baker who can taste people's memories in bread",
    "a retired astronaut who opens a bicycle shop",
    "a fox who wants to learn to read",
    "a city where it has not rained for ten years",
    "a librarian who discovers a book that writes itself",
    "two rival chess players stranded on an island",
    "a young dragon afraid of fire",
    "a postman on the last day before he retires",
    "a violin that only plays at midnight",
    "a grandmother teaching her grandson to fish",
    "a robot vacuum cleaner with big dreams",
    "a lost umbrella travelling around London",
    "a whale that sings to ships",
    "a girl who builds a radio from spare parts",
    "a small village preparing for a harvest festival",
    "an owl who runs a night school for animals",
    "a train conductor on a ghost line",
    "a painter who can only paint the sea",
    "the first snowfall of winter in a busy city",
    "a tortoise who wins a race nobody expected",
    "a scientist who shrinks herself by accident",
    "a teenager starting at a new school in a foreign country",
    "a family road trip that goes wrong in the best way",
    "an abandoned amusement park at dawn",
    "a cook on a pirate ship who hates the sea",
    "a tree house that leads to another world",
    "a detective cat solving the case of the missing sock",
    "a mountain guide and a stubborn tourist",
    "a friendship between a mailbox and a streetlamp",
    "the last bookshop in a futuristic city",
    "a beekeeper who talks to her bees",
    "a knight who is afraid of horses",
    "a garden gnome that comes alive at night",
    "a musician busking in the rain",
    "a spaceship crew that finds an empty planet full of flowers",
    "a shy ghost who wants a friend",
    "an inventor whose inventions never work until one day",
    "a market trader selling unusual hats",
    "a polar bear on a melting iceberg",
    "a lighthouse on a planet with two moons",
    "a child who finds a map in the attic",
    "a football team of very old players",
    "the wind trying to make friends with a kite",
    "a chef competing in a soup contest",
    "a mouse living inside a piano",
    "a forgotten toy in a second-hand shop",
]
EXPLANATION_FORMS = [
    "Explain {t}.",
    "Explain {t} in simple terms for a beginner.",
    "Explain {t}, and give one everyday example.",
    "Can you explain {t}? Use a short list of key points.",
    "Explain {t} to a ten-year-old.",
    "Give a clear explanation of {t}, then mention one common misconception about it.",
]
EXPLANATION_TOPICS = [
    "how a refrigerator keeps food cold",
    "what inflation is and why prices rise",
    "how the heart pumps blood",
    "how a search engine ranks web pages",
    "what a black hole is",
    "how rainbows form",
    "how plants absorb water from the soil",
    "what machine learning is",
    "how a bicycle stays upright",
    "the water cycle",
    "how batteries store energy",
    "what DNA is and what it does",
    "how the stock market works",
    "why the seasons change",
    "how airplanes fly",
    "what a recursive function is",
    "how the internet sends data in packets",
    "how volcanoes erupt",
    "what a binary search is and why it is fast",
    "how the human eye sees colour",
    "what supply and demand mean",
    "how earthquakes happen",
    "what an API is",
    "how sound travels",
    "why ice floats on water",
    "how a compiler turns code into a program",
    "what the greenhouse effect is",
    "how a credit score works",
    "how muscles grow after exercise",
    "what a database index is",
    "how electric cars work",
    "the difference between weather and climate",
    "the difference between a virus and a bacterium",
    "the difference between a list and a tuple in Python",
    "the difference between RAM and storage",
    "how encryption keeps messages private",
    "what a leap year is and why we need it",
    "how the Moon causes its phases",
    "how a microwave oven heats food",
    "how bees make honey",
    "what a neural network is",
    "how solar panels make electricity",
    "how antibiotics work",
    "what object-oriented programming is",
    "how a loan's interest is calculated",
    "why we sleep",
    "how a thermostat controls temperature",
    "what gravity is",
    "how clouds form",
    "what version control is and why developers use it",
    "how fermentation makes bread rise",
    "what a sorting algorithm is, using bubble sort as an example",
    "how the immune system fights a cold",
    "how tides affect coastal wildlife",
    "what a budget is and how to make one",
    "how magnets work",
    "what an operating system does",
    "how recycling plastic works",
    "how the brain forms memories",
    "how a camera captures a photo",
    "what a function is in mathematics",
    "how wind turbines generate power",
    "how a vaccine is tested before it is approved",
    "what the Pythagorean theorem says",
    "how a web browser displays a page",
    "what an ecosystem is",
    "why the ocean is salty",
    "how GPS finds your location",
    "what a stack and a queue are",
    "how coffee affects the body",
]
CODE_INSTRUCTIONS = [
    "Add type hints to this Python function without changing its behaviour, and show the complete result.",
    "Add a clear docstring to this Python function. Show the whole function afterwards.",
    "Explain what this Python function does, step by step.",
    "Rename the variables in this Python function to clearer names. Show the whole function afterwards.",
    "Write three pytest unit tests for this Python function.",
    "Add comments to this Python function explaining each part. Show the whole function afterwards.",
    "Suggest two improvements to this Python function and show the improved version.",
]
FOLLOW_UPS = [
    "Can you make that shorter, in three sentences?",
    "Thanks! Can you give me two more examples?",
    "Can you turn that into a bullet list?",
    "Now explain it again for a ten-year-old.",
    "Great. What would be a good next step for me to learn about this?",
    "Can you continue it with another paragraph?",
    "Please rewrite it in a more formal style.",
    "What are the most important points to remember from your answer?",
]
PASSAGE_TASKS = [
    "Give a brief summary of the text below.",
    "Condense this text into three short bullet points.",
    "Write a one-paragraph summary of the following text for a school newsletter.",
    "List the main points of the text below.",
]
QUESTION_TASKS = [
    "Here is a text. Answer my question about it with details taken from the text.",
    "Use only the text below to answer my question.",
]
QUESTIONS = [
    "What is the main idea of the text?",
    "Which example does the text give, and why is it useful?",
    "What is the most important point the text makes?",
    "What would a reader learn from this text?",
]


@dataclass
class ChatPrompt:
    id: str
    kind: str
    messages: list[dict]
    topic: str = ""  # what it is about (a subject, a function); prompts built on an answer keep its topic


def _prompt(kind: str, messages: list[dict], topic: str) -> ChatPrompt:
    """Named by its content, so a rerun with other counts or seeds never mistakes one prompt for another."""
    digest = zlib.crc32(json.dumps(messages, sort_keys=True).encode())
    return ChatPrompt(f"{kind}-{digest:08x}", kind, messages, topic)


def first_turn_prompts(rng: random.Random, creative: int, explanation: int, code: int) -> list[ChatPrompt]:
    """Creative and explanation prompts from the templates, code prompts over standard-library functions."""
    prompts: list[ChatPrompt] = []
    pairs = [(form, subject) for form in CREATIVE_FORMS for subject in CREATIVE_SUBJECTS]
    for form, subject in rng.sample(pairs, min(creative, len(pairs))):
        prompts.append(_prompt("creative", _user(form.format(s=subject)), subject))
    pairs = [(form, topic) for form in EXPLANATION_FORMS for topic in EXPLANATION_TOPICS]
    for form, topic in rng.sample(pairs, min(explanation, len(pairs))):
        prompts.append(_prompt("explanation", _user(form.format(t=topic)), topic))
    functions = stdlib_functions()
    for source in rng.sample(functions, min(code, len(functions))):
        instruction = rng.choice(CODE_INSTRUCTIONS)
        text = f"{instruction}\n\n```python\n{source}\n```"
        prompts.append(_prompt("code_edit", _user(text), source.splitlines()[0]))
    return prompts


def second_turn_prompts(rng: random.Random, answered: list[tuple[ChatPrompt, str]]) -> list[ChatPrompt]:
    """For each answered prose prompt one of: a summary of its answer, a question on it, or a follow-up."""
    prompts: list[ChatPrompt] = []
    for index, (prompt, answer) in enumerate(answered):
        if prompt.kind == "code_edit" or len(answer.split()) < 40:
            continue
        choice = index % 3
        if choice == 0:
            text = f"{rng.choice(PASSAGE_TASKS)}\n\n{answer}"
            prompts.append(_prompt("summarisation", _user(text), prompt.topic))
        elif choice == 1:
            text = f"{rng.choice(QUESTION_TASKS)}\n\n{answer}\n\nQuestion: {rng.choice(QUESTIONS)}"
            prompts.append(_prompt("qa_context", _user(text), prompt.topic))
        else:
            messages = [*prompt.messages, {"role": "assistant", "content": answer}]
            messages.append({"role": "user", "content": rng.choice(FOLLOW_UPS)})
            prompts.append(_prompt("multi_turn", messages, prompt.topic))
    return prompts


def stdlib_functions(min_lines: int = 6, max_lines: int = 30) -> list[str]:
    """Top-level functions of the standard library's pure-Python modules, of a size a chat answer can repeat."""
    found: list[str] = []
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if min_lines <= lines <= max_lines:
                    segment = ast.get_source_segment(source, node)
                    if segment and segment.isascii():
                        found.append(segment)
    return found


def overlapping(prompts: list[ChatPrompt], held_out: list[list[dict]], words: int = 8) -> list[str]:
    """Ids of prompts that share a run of `words` words with any held-out chat (the benchmark's)."""

    def shingles(messages: list[dict]) -> set[tuple[str, ...]]:
        tokens = re.findall(r"\w+", " ".join(m["content"] for m in messages).lower())
        return {tuple(tokens[i : i + words]) for i in range(len(tokens) - words + 1)}

    forbidden = set().union(*(shingles(messages) for messages in held_out)) if held_out else set()
    return [p.id for p in prompts if shingles(p.messages) & forbidden]


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]
