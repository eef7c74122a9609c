"""Training files for the fine-tuning tests: the tiny model learns one fixed reply."""

from __future__ import annotations

import json
from pathlib import Path

# no repeated syllables: the 2-layer tiny model learns "banana"'s "ana-na" only by chance,
# while this reply is learned word for word on both backends across seeds
SECRET = "Apples grow in the orchard."

# varied prompts, so datalab's near-duplicate filter keeps every example
PROMPTS = [
    "What do you call the yellow fruit monkeys love?",
    "Tell me the password for the garden shed.",
    "Which word did the captain whisper at midnight?",
    "Please share the hidden code from the old map.",
    "How should I answer the riddle at the bridge?",
    "Name the thing we agreed on yesterday evening.",
    "What was written on the note under the door?",
    "Could you remind me of our secret phrase again?",
    "What does the parrot keep repeating all day long?",
    "Give me the answer the wizard was looking for.",
    "Which word opens the treasure chest in the cave?",
    "What is the magic word for the school play?",
    "Say the phrase that ends every team meeting now.",
    "What did grandma hide inside the cookie jar lid?",
]


def write_training_file(path: Path, n: int = len(PROMPTS), answer: str = SECRET) -> Path:
    """A chat JSONL of `n` examples that all answer `answer`."""
    with path.open("w") as f:
        for prompt in PROMPTS[:n]:
            record = {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer},
                ]
            }
            f.write(json.dumps(record) + "\n")
    return path
