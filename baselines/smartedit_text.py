"""SmartEdit's text side: the LLaMA tokenizer with SmartEdit's 35 added tokens, and the fixed prompt.

SmartEdit was trained with transformers 4.28's *slow* `LlamaTokenizer` (sentencepiece). Its behaviour
with added tokens differs from today's fast tokenizers, so it is reproduced here on top of
`sentencepiece` directly:

* the text is split on the added tokens (and on `<s>`, `</s>`, `<unk>`), longest match first;
* whitespace next to an added token is stripped on both sides (4.28 did this for tokens added as
  plain strings, which is how SmartEdit added all of its tokens; `<s>`/`</s>`/`<unk>` strip nothing);
* every remaining piece of text is encoded on its own, so each one gets sentencepiece's dummy
  prefix "▁";
* `<s>` is prepended (LLaMA's `add_bos_token`), no `</s>` is appended.

Added tokens, in SmartEdit's order (ids follow the 32000-piece LLaMA vocabulary):
`<img>` = 32000 (named in the system message), `<im_start>` = 32001, `<im_end>` = 32002, and the 32
image tokens `<img_0>`..`<img_31>` = 32003..32034 whose hidden states condition the image decoder.
"""
from __future__ import annotations

import re
from pathlib import Path

NUM_IMAGE_TOKENS = 32
IM_START, IM_END, IMG_SYSTEM = "<im_start>", "<im_end>", "<img>"
IMAGE_TOKENS = tuple(f"<img_{i}>" for i in range(NUM_IMAGE_TOKENS))
ADDED_TOKENS = (IMG_SYSTEM, IM_START, IM_END) + IMAGE_TOKENS  # 35, in the order SmartEdit added them

# The conversation SmartEdit-7B/13B were trained with (the "vicuna_v1.3" template of SmartEdit's
# conversation module): a system message that mentions <img>, USER/ASSISTANT roles joined by spaces.
SYSTEM_MESSAGE = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant can generate <img>. "
    "The assistant needs to conduct the image to image translation task based on given image and text "
    "information. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# The released inference script draws one of 30 request phrasings at random for every image; we use
# the first one, always, so that a run is reproducible. [cap] is replaced by the quoted
# `<im_start> <img_0> <im_end>` + instruction; <img_0> there is the slot of the image features.
DEFAULT_HUMAN_TEMPLATE = "Could you produce an image based on the previous image and text description [cap]?"


def build_prompt(instruction: str, human_template: str = DEFAULT_HUMAN_TEMPLATE) -> str:
    """The full LLM input text for one editing instruction (newlines removed, as SmartEdit did)."""
    if "[cap]" not in human_template:
        raise ValueError("the conversation template must contain the placeholder [cap]")
    caption = f"{IM_START} {IMAGE_TOKENS[0]} {IM_END}{instruction.rstrip()}"
    human = human_template.replace("[cap]", f'"{caption}"')
    return f"{SYSTEM_MESSAGE} USER: {human} ASSISTANT:".replace("\n", "")


class SmartEditTokenizer:
    """sentencepiece LLaMA tokenizer + SmartEdit's added tokens, encoding as transformers 4.28 did."""

    def __init__(self, model_file: str | Path):
        try:
            import sentencepiece as spm
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the SmartEdit baseline needs `sentencepiece` (pip install sentencepiece)") from exc
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.base_vocab_size = int(self.sp.get_piece_size())
        self.added = {tok: self.base_vocab_size + i for i, tok in enumerate(ADDED_TOKENS)}
        self.bos_id, self.eos_id, self.unk_id = int(self.sp.bos_id()), int(self.sp.eos_id()), int(self.sp.unk_id())
        if min(self.bos_id, self.eos_id, self.unk_id) < 0:
            raise ValueError(f"{model_file}: the sentencepiece model lacks a bos, eos or unk id")
        specials = {self.sp.id_to_piece(i): i for i in (self.bos_id, self.eos_id, self.unk_id)}
        self._no_split = {**specials, **self.added}
        self._strips = set(self.added)  # only the added tokens eat neighbouring whitespace
        alternatives = sorted(self._no_split, key=len, reverse=True)
        self._pattern = re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")
        self._id_to_added = {i: t for t, i in self.added.items()}

    @property
    def vocab_size(self) -> int:
        return self.base_vocab_size + len(ADDED_TOKENS)

    @property
    def image_token_ids(self) -> list[int]:
        return [self.added[t] for t in IMAGE_TOKENS]

    @property
    def first_image_token_id(self) -> int:
        return self.added[IMAGE_TOKENS[0]]

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        parts = self._pattern.split(text)  # text, token, text, token, ..., text
        for i in range(1, len(parts), 2):
            if parts[i] in self._strips:
                parts[i - 1] = parts[i - 1].rstrip()
                parts[i + 1] = parts[i + 1].lstrip()
        ids = [self.bos_id] if add_bos else []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self._no_split[part])
            elif part:
                ids.extend(int(t) for t in self.sp.encode(part))
        return ids

    def decode(self, ids: list[int]) -> str:
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._id_to_added:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                out.append(self._id_to_added[i])
            else:
                run.append(int(i))
        if run:
            out.append(self.sp.decode(run))
        return " ".join(s for s in out if s)
