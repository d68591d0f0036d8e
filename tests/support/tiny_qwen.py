"""A tiny random-weight Qwen2.5-VL (processor + model) published into the temporary hub cache.

The model is the real `Qwen2_5_VLForConditionalGeneration` architecture at toy size, with a byte-level
tokenizer, Qwen's special tokens and a small chat template of our own. Its output head is zeroed, so
greedy decoding always emits token 0, whose text is ``ANSWER`` (``{"score":3}``): with
``max_tokens=1`` the local back end's reply is exactly that JSON, cut off at max_tokens (its
finish_reason "length"), with more tokens it repeats it (invalid JSON); the `answer_ends` variant stops
after it. That lets tests drive both the success and the validate-and-retry paths through the
real `from_pretrained` / chat template / image processor / `generate` code. Building takes a few
seconds on CPU.
"""
from __future__ import annotations

from pathlib import Path

from .tinyhub import publish

REPO_ID = "ciebench-tests/tiny-qwen2.5-vl"
ANSWER = '{"score":3}'
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """A byte-level BPE tokenizer (no merges) with Qwen's special tokens; token 0 is ANSWER. Shared by
    every tiny Qwen-family test model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ANSWER: 0}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _save(folder: Path) -> None:
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor)

    tokenizer = tiny_tokenizer()
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS}

    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2,
                                            temporal_patch_size=2)
    try:
        from transformers import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor()
    except Exception:  # noqa: BLE001 - older transformers: the processor works without one
        video_processor = None
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=video_processor, chat_template=CHAT_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # all logits equal: greedy picks token 0 (ANSWER)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def publish_tiny_qwen(repo_id: str = REPO_ID, answer_ends: bool = False) -> str:
    """Publish the tiny model under `repo_id` in the session's hub cache; returns the repo id. With
    `answer_ends`, its generation config makes ANSWER an end-of-sequence token too, so a reply is
    ANSWER, finished (as a real model's "stop"), instead of running into max_tokens ("length")."""
    if answer_ends:
        publish(repo_id, _save_answer_ends)
    else:
        publish(repo_id, _save)
    return repo_id


def _save_answer_ends(folder: Path) -> None:
    from transformers import GenerationConfig

    _save(folder)
    config = GenerationConfig.from_pretrained(folder)
    config.eos_token_id = [0, config.eos_token_id] if isinstance(config.eos_token_id, int) else [0]
    config.save_pretrained(folder)
