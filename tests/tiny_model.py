"""Build a tiny random Llama model that both engines (mlx_lm and transformers) load.

The model is junk — random weights — but it is a real, complete Hugging Face folder:

* ``config.json``: Llama architecture (never qwen2: AutoTokenizer would swap in Qwen's
  pre-tokenizer), hidden 64, 2 layers, 4 heads / 2 KV heads, a top-level ``rope_theta``
  (mlx_lm ignores transformers-5's ``rope_parameters``), ``initializer_range`` 0.2 so that
  LoRA learns a fixed reply in a few dozen steps;
* ``model.safetensors``: float32 weights drawn with NumPy from ``seed`` (no torch needed,
  identical on every machine for a given seed);
* ``tokenizer.json``: a byte-level BPE trained with ``tokenizers`` on a built-in corpus,
  with the special tokens ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``;
* ``tokenizer_config.json``: a ChatML ``chat_template``, eos ``<|im_end|>``, pad
  ``<|endoftext|>``;
* ``generation_config.json``: eos/pad ids so generation stops on ``<|im_end|>``.

Both engines greedy-decode the same tokens from it in float32, which the cross-backend
tests rely on. Building takes well under a second (tokenizer training dominates).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TARGET_VOCAB_SIZE = 768

CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "use_cache": True,
    "torch_dtype": "float32",
}

_SUBJECTS = [
    "The cat",
    "A dog",
    "My friend",
    "The teacher",
    "Our team",
    "The robot",
    "A small bird",
    "The old man",
    "Her sister",
    "The model",
    "This server",
    "The farmer",
    "A student",
    "The city",
    "Your assistant",
    "The orchard",
    "Every child",
    "The engineer",
]
_VERBS = [
    "likes",
    "sees",
    "wants",
    "builds",
    "reads",
    "writes",
    "finds",
    "answers",
    "opens",
    "carries",
    "paints",
    "counts",
    "remembers",
    "explains",
    "trains",
    "serves",
    "plants",
]
_OBJECTS = [
    "the red apple",
    "a long letter",
    "three green boxes",
    "the blue sky",
    "an old book",
    "the quick answer",
    "a new question",
    "the river",
    "some fresh bread",
    "the map",
    "a cold drink",
    "the tiny model",
    "the big garden",
    "an orange tree",
    "the final report",
]
_ENDINGS = [
    "today.",
    "every morning.",
    "in the park.",
    "before dinner.",
    "with care.",
    "again!",
    "at night.",
    "on Monday.",
    "for fun.",
    "very slowly.",
    "near the door?",
    "in 2024.",
]
# also the prompts of the finetune tests' fixed-reply data (tests/finetune/ft_helpers.py)
QUESTIONS = [
    "What is the capital of France?",
    "How are you today?",
    "Can you help me?",
    "Where is the nearest station?",
    "Why is the sky blue?",
    "Who wrote this poem?",
    "What time is it?",
    "How many apples are left?",
    "Which one do you prefer?",
    "Is it going to rain tomorrow?",
    "What does this word mean?",
    "Tell me a joke.",
]
_ANSWERS = [
    "The capital of France is Paris.",
    "I am fine, thank you.",
    "Yes, of course I can help.",
    "It is two blocks north of here.",
    "Sunlight scatters in the air.",
    "Nobody knows for sure.",
    "It is half past three.",
    "There are 7 apples left.",
    "I prefer the second one.",
    "Maybe, bring an umbrella.",
    "It means a small orchard.",
    "Why did the tomato blush?",
]
_WORD_TEXT = (
    "a an the and or but if then else when while for with without from into over under "
    "about after before between during through again never always often sometimes here "
    "there where what which who whom whose why how yes no not very more most less least "
    "one two three four five six seven eight nine ten hundred thousand first second last "
    "system user assistant tool function message content role name model file job data "
    "train test valid loss step epoch batch rate token text json hello world goodbye please "
    "thanks sorry okay sure maybe great good bad happy sad fast slow big small hot cold "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January March June October "
    "Paris London Berlin Madrid Lisbon Tokyo Lima Rome Oslo Cairo café naïve résumé Zürich "
    "São Paulo Ångström piñata façade jalapeño crème brûlée"
)
_WORDS = _WORD_TEXT.split()
_SNIPPETS = [
    '{"role": "user", "content": "hi"}',
    '{"messages": [{"role": "assistant", "content": "ok"}]}',
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "x = [1, 2, 3]; y = {'k': 'v'}",
    "3.14 + 2.71 = 5.85",
    "Email: someone@example.com, phone: +1 (555) 010-9999.",
    "Path: /usr/local/bin, URL: https://example.org/a?b=c&d=e",
    "Tabs\tand\tnewlines\nare whitespace too.",
    "Emoji 🍎🍐🍊 and symbols: © ® ™ € £ ¥ — … «quotes» “smart”.",
]


def tiny_corpus() -> list[str]:
    """A few hundred varied English lines, generated deterministically (no randomness)."""
    lines: list[str] = []
    n_s, n_v, n_o, n_e = len(_SUBJECTS), len(_VERBS), len(_OBJECTS), len(_ENDINGS)
    for i in range(360):
        # Co-prime strides walk the combinations without repeating a simple pattern.
        subject = _SUBJECTS[i % n_s]
        verb = _VERBS[(i * 5 + 1) % n_v]
        obj = _OBJECTS[(i * 7 + 2) % n_o]
        ending = _ENDINGS[(i * 11 + 3) % n_e]
        lines.append(f"{subject} {verb} {obj} {ending}")
    for question, answer in zip(QUESTIONS, _ANSWERS, strict=True):
        lines.append(question)
        lines.append(answer)
        lines.append(f"{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n{answer}{IM_END}")
    for i in range(0, len(_WORDS), 8):
        lines.append(" ".join(_WORDS[i : i + 8]))
    lines.extend(_WORDS)
    lines.extend(w.capitalize() for w in _WORDS)
    lines.extend(_SNIPPETS)
    lines.extend(f"{n} {n * n} {n * 37 % 1000}" for n in range(100))
    return lines


def _train_tokenizer() -> Any:
    """Train the byte-level BPE tokenizer (deterministic for the fixed corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(tiny_corpus(), trainer=trainer)
    return tokenizer


def _random_weights(config: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Llama weights in the Hugging Face naming, N(0, initializer_range), norms at one."""
    rng = np.random.default_rng(seed)
    std = float(config["initializer_range"])
    hidden = int(config["hidden_size"])
    inter = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])
    head_dim = int(config["head_dim"])
    q_out = int(config["num_attention_heads"]) * head_dim
    kv_out = int(config["num_key_value_heads"]) * head_dim

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    weights: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(vocab, hidden)}
    for layer in range(int(config["num_hidden_layers"])):
        prefix = f"model.layers.{layer}"
        weights[f"{prefix}.self_attn.q_proj.weight"] = normal(q_out, hidden)
        weights[f"{prefix}.self_attn.k_proj.weight"] = normal(kv_out, hidden)
        weights[f"{prefix}.self_attn.v_proj.weight"] = normal(kv_out, hidden)
        weights[f"{prefix}.self_attn.o_proj.weight"] = normal(hidden, q_out)
        weights[f"{prefix}.mlp.gate_proj.weight"] = normal(inter, hidden)
        weights[f"{prefix}.mlp.up_proj.weight"] = normal(inter, hidden)
        weights[f"{prefix}.mlp.down_proj.weight"] = normal(hidden, inter)
        weights[f"{prefix}.input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
        weights[f"{prefix}.post_attention_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    weights["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    if not config["tie_word_embeddings"]:
        weights["lm_head.weight"] = normal(vocab, hidden)
    return weights


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_model(dest: Path, *, seed: int = 0) -> Path:
    """Write the tiny model folder into ``dest`` (created if needed) and return it.

    The same ``seed`` always gives the same weights; the tokenizer does not depend on it.
    Existing files of the same names in ``dest`` are overwritten.
    """
    from safetensors.numpy import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tokenizer()
    tokenizer.save(str(dest / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    eos_id, pad_id = ids[IM_END], ids[ENDOFTEXT]

    config = dict(CONFIG)
    config.update(
        vocab_size=tokenizer.get_vocab_size(),
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    _write_json(dest / "config.json", config)
    _write_json(
        dest / "generation_config.json",
        {"bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": pad_id},
    )
    _write_json(
        dest / "tokenizer_config.json",
        {
            # PreTrainedTokenizerFast: the generic tokenizer.json-backed class, known to
            # transformers 4 and 5 alike (5 aliases it to TokenizersBackend).
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": IM_END,
            "pad_token": ENDOFTEXT,
            "unk_token": None,
            "additional_special_tokens": [IM_START],
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": config["max_position_embeddings"],
            "chat_template": CHATML_TEMPLATE,
        },
    )
    save_file(_random_weights(config, seed), str(dest / "model.safetensors"), {"format": "pt"})
    return dest
