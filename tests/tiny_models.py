"""Tiny, randomly initialised Hugging Face models built locally in seconds for the test suite.

Nothing can be fetched from a hub here, so the suite makes its own: a byte-level BPE tokenizer trained on a
small corpus, a 2-layer Llama (head_dim 32, because vLLM's CPU attention kernel refuses 16) with a ChatML
template, and a ``LlamaForSequenceClassification`` reward model sharing that tokenizer. Seeds are fixed, so
every build gives the same weights and the same tokenizer.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

# Enough varied English that the trained merges cover common words; the model itself is random.
_CORPUS = (
    """
The quick brown fox jumps over the lazy dog. A helpful assistant answers questions clearly and politely.
Alignment at decoding time searches over candidate answers and keeps the ones a reward model prefers.
Paris is the capital of France. Water boils at one hundred degrees. The sun rises in the east.
Please write a short poem about the sea, the sky, the wind and the rain. Thank you very much, friend.
Yes. No. Maybe. Good, bad, happy, sad, great, terrible, wonderful, awful, safe, harmful, kind, rude.
One two three four five six seven eight nine ten. Hello world! How are you today? I am fine.
"""
    * 20
)


def build_tokenizer(path: Path, vocab_size: int = 512, extra_special: tuple[str, ...] = ()):
    """Train a byte-level BPE tokenizer on the built-in corpus and save it as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + list(extra_special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(path)
    return hf


def _shape(tokenizer, **overrides) -> dict:
    """The tiny models' common shape: 2 layers, hidden 64, head_dim 32 (vLLM's CPU attention refuses 16)."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        **overrides,
    }


def _config(tokenizer, **overrides):
    from transformers import LlamaConfig

    return LlamaConfig(**_shape(tokenizer, **overrides))


def build_tiny_llama(path: Path, seed: int = 0, init_std: float = 0.5) -> Path:
    """Save a random 2-layer Llama with tokenizer and chat template to ``path``.

    ``init_std`` is large on purpose: with the default 0.02 a random model's next-token distribution is
    nearly uniform, and ties between top tokens would make greedy-equivalence tests flaky.
    """
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_config(tokenizer, initializer_range=init_std))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_classifier(path: Path, seed: int = 1, num_labels: int = 1) -> Path:
    """Save a random ``LlamaForSequenceClassification`` reward model (``num_labels`` logits) to ``path``."""
    import torch
    from transformers import LlamaForSequenceClassification

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(_config(tokenizer, num_labels=num_labels, initializer_range=0.2))
    model.save_pretrained(path, safe_serialization=True)
    return path


PRM_STEP_TAG = "<extra_0>"
"""The step tag of the tiny PRM (Qwen2.5-Math-PRM's): its own special token."""


def build_tiny_prm(path: Path, seed: int = 2) -> Path:
    """Save a random process reward model in Qwen2.5-Math-PRM's layout: a Qwen2 backbone (``model.*``) and a
    Linear-ReLU-Linear head over every position (``score.0``, ``score.2``), two labels, architecture
    ``Qwen2ForProcessRewardModel`` (vLLM's pooling runner serves it; alignd's transformers backend rebuilds it)."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path, extra_special=(PRM_STEP_TAG,))
    config = Qwen2Config(**_shape(tokenizer, num_labels=2, initializer_range=0.3))
    config.architectures = ["Qwen2ForProcessRewardModel"]
    torch.manual_seed(seed)
    backbone = Qwen2Model(config)
    head = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    for module in head:
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.5)
    weights = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    weights.update({f"score.{k}": v.contiguous() for k, v in head.state_dict().items()})
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(path)
    return path
