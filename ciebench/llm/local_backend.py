"""Local transformers chat models (Qwen2.5-VL-class by default), each loaded once per process and shared
by every client with the same model, revision, device and dtype."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import local_models
from .exchange import ModelOutcome, ModelRequest

if TYPE_CHECKING:
    from .client import LLMClient

_LOCAL_MODELS = local_models._MODELS  # one instance per canonical (model, device, dtype); see local_models.py


class LocalModel:
    """One loaded model (+ processor), shared by every client with the same model/revision/device/dtype."""

    def __init__(self, model: str, revision: str | None, device: str | None, dtype: str):
        import torch
        import transformers

        self.lock = threading.Lock()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        kwargs = dict(revision=revision, trust_remote_code=False)
        self.vision = True
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(model, **kwargs)
            self.model = transformers.AutoModelForImageTextToText.from_pretrained(model, dtype=torch_dtype, **kwargs)
        except ValueError:  # not an image-text-to-text architecture: a text-only chat model
            self.vision = False
            self.processor = transformers.AutoTokenizer.from_pretrained(model, **kwargs)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, **kwargs)
        self.model.to(self.device).eval()
        commit = getattr(self.model.config, "_commit_hash", None)
        self.served = f"{model}@{commit or revision or 'main'}"

    def generate(self, req: ModelRequest, temperature: float, seed: int | None, max_tokens: int) -> ModelOutcome:
        import torch

        if any(not isinstance(im, str) for im in req.images) and not self.vision:
            return ModelOutcome(error="this local model is text-only and cannot take images", kind="fatal",
                                failure="config")
        messages: list[dict[str, Any]] = []
        if self.vision:
            if req.system is not None:
                messages.append({"role": "system", "content": [{"type": "text", "text": req.system}]})
            parts: list[dict[str, Any]] = [{"type": "text", "text": im} if isinstance(im, str) else {"type": "image"}
                                           for im in req.images]
            text_part = {"type": "text", "text": req.text}
            messages.append({"role": "user", "content": [text_part, *parts] if req.text_first else [*parts, text_part]})
            prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            pictures = [im for im in req.images if not isinstance(im, str)]
            inputs = self.processor(text=[prompt], images=pictures or None, return_tensors="pt")
            tokenizer = self.processor.tokenizer
        else:
            if req.system is not None:
                messages.append({"role": "system", "content": req.system})
            texts = [im for im in req.images if isinstance(im, str)]
            content = "\n".join([req.text, *texts] if req.text_first else [*texts, req.text])
            messages.append({"role": "user", "content": content})
            prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = self.processor([prompt], return_tensors="pt")
            tokenizer = self.processor
        inputs = inputs.to(self.device)
        n_in = int(inputs["input_ids"].shape[1])
        gen: dict[str, Any] = {"max_new_tokens": max_tokens}
        if temperature is None:  # the model's own generation config decides
            pass
        elif temperature > 0:
            gen.update(do_sample=True, temperature=float(temperature), top_p=1.0, top_k=0)
        else:
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            gen["pad_token_id"] = tokenizer.eos_token_id
        with self.lock, torch.inference_mode():
            if gen.get("do_sample", getattr(self.model.generation_config, "do_sample", False)):
                torch.manual_seed(int(seed or 0))
            out = self.model.generate(**inputs, **gen)
        new = out[0, n_in:]
        text = tokenizer.decode(new, skip_special_tokens=True)
        # as an HTTP server reports it: a reply that ran into max_new_tokens without ending is cut off,
        # and the judge must not score half a sentence as a whole one
        ended = int(new.shape[0]) > 0 and int(new[-1]) in self._eos_ids(tokenizer)
        finish = "length" if not ended and int(new.shape[0]) >= max_tokens else "stop"
        return ModelOutcome(text=text, usage={"prompt_tokens": n_in, "completion_tokens": int(new.shape[0])},
                            served_model=self.served, finish_reason=finish)

    def _eos_ids(self, tokenizer: Any) -> set[int]:
        ids: set[int] = set()
        for value in (getattr(self.model.generation_config, "eos_token_id", None),
                      getattr(tokenizer, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids


class TransformersBackend:
    """A local transformers chat model (Qwen2.5-VL-class by default), loaded once per process."""

    def __init__(self, client: "LLMClient"):
        self.config = client.config
        self._model: LocalModel | None = None
        self._error: str | None = None

    def load(self) -> LocalModel:
        c = self.config
        key = local_models.model_key(c.model, c.revision, c.device, c.dtype)
        return local_models.shared(key, lambda: LocalModel(c.model, c.revision, key[3], c.dtype))

    def generate(self, req: ModelRequest, temperature: float, seed: int | None) -> ModelOutcome:
        if self._error is not None:
            return ModelOutcome(error=self._error, kind="fatal", failure="config")
        if self._model is None:
            try:
                self._model = self.load()
            except Exception as exc:  # offline without the weights, out of memory, ...
                self._error = f"could not load local model {self.config.model!r}: {type(exc).__name__}: {exc}"
                return ModelOutcome(error=self._error, kind="fatal", failure="config")
        return self._model.generate(req, temperature, seed, self.config.max_tokens)


def release_local_models() -> None:
    """Drop every loaded local model (frees memory; the next call loads again)."""
    local_models.release_all()
