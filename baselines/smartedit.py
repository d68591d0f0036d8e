"""`smartedit`: SmartEdit (Huang et al., CVPR 2024) from the official TencentARC checkpoints, run reproducibly.

Pipeline for one request (official settings unless noted):

1. The source image, squashed to 224 x 224 (bicubic) and CLIP-normalised, goes through CLIP ViT-L/14;
   the second-to-last layer's 256 patch features are projected into the LLM and take the place of
   `<img_0>` in the prompt `<system> USER: <request "<im_start> <img_0> <im_end><instruction>"> ASSISTANT:`.
2. The LLM (LLaVA-1.1 + LoRA) generates until it has emitted 32 image tokens; their final hidden
   states go through the Q-Former to 77 conditioning tokens. Decoding is greedy by default (the
   released script samples at temperature 0.7 and picks one of 30 prompt phrasings at random; we fix
   both: `temperature`, `conversation_template`). With temperature > 0 the sampler is seeded from the
   request's seed.
3. The BIM lets the conditioning tokens and the CLIP grid attend to each other: the conditioning gets
   + 0.5 x its output, the UNet's first feature map gets its grid output (resized to the latent size).
4. InstructPix2Pix-style sampling at 256 x 256 (source squashed, bicubic): Euler ancestral, 100 steps,
   text guidance 7.5, image guidance 1.5, negative = CLIP text embedding of "" (no image latents for
   the unconditional branch), initial noise and ancestral noise from a generator seeded with the
   request's seed on the run device. The released script draws an unseeded seed per image.
5. The 256 x 256 result is resized back to the source size (bicubic) because ciebench compares
   images at the source size; the native output is kept as the trace artefact `smartedit_native.png`.

Precision: the official inference ran the LLM, CLIP, Q-Former and BIM in float32 and the diffusion
part in float16; `llm_dtype="bfloat16"` (preset `lite`) halves the LLM's memory, at the price of
possibly different greedy decisions. Weights come from a folder made once by
`ciebench baselines smartedit prepare` (smartedit_prepare.py; sources in smartedit_sources.py, the
folder's format in smartedit_checkpoint.py); with `prepare_if_missing` the first run makes it.
Loading at edit time (strict, every key from exactly one file) is smartedit_load.py.
"""
from __future__ import annotations

import dataclasses
import gc
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ciebench.editor import EditorConfig, EditRequest, EditResult, Editor

from .smartedit_text import DEFAULT_HUMAN_TEMPLATE, NUM_IMAGE_TOKENS, build_prompt
from .smartedit_sources import CLIP_REPO, IP2P_REPO, VARIANTS, Sources, default_weights_dir

if TYPE_CHECKING:
    from .smartedit_load import SmartEditParts

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class SmartEditConfig(EditorConfig):
    variant: str = "7b"  # "7b" | "13b"
    weights_dir: str | None = None  # prepared folder; default $CIEBENCH_CACHE/smartedit/<repo>-step<step>
    prepare_if_missing: bool = True  # run `prepare` on first use when the folder is not there
    step: int = 15000  # training step of the released checkpoint folders (LLM-15000, ...)
    smartedit_repo: str | None = None  # None: the variant's official repo (resolved at construction)
    smartedit_revision: str | None = None
    vicuna_repo: str | None = None
    llava_delta_repo: str | None = None
    llama_base_repo: str | None = None
    clip_repo: str = CLIP_REPO
    ip2p_repo: str = IP2P_REPO
    steps: int = 100
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    resolution: int = 256
    temperature: float = 0.0  # 0 = greedy
    max_new_tokens: int = 512
    conversation_template: str = DEFAULT_HUMAN_TEMPLATE
    llm_dtype: str = "float32"  # the LLM (7B/13B); CLIP, Q-Former and BIM always run in float32
    diffusion_dtype: str = "auto"  # UNet and VAE; auto = float16 on CUDA (official), float32 on CPU
    attn_implementation: str = "sdpa"  # LLM attention kernel (sdpa | eager)
    save_native_output: bool = True  # keep the 256 x 256 output as a trace artefact

    def __post_init__(self) -> None:  # checked with the config, so a bad value is a usage error (exit 2)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {tuple(VARIANTS)}, not {self.variant!r}")
        for key in ("llm_dtype", "diffusion_dtype"):
            value = getattr(self, key)
            if value not in DTYPES + (("auto",) if key == "diffusion_dtype" else ()):
                raise ValueError(f"{key} must be one of {DTYPES}, not {value!r}")
        if self.temperature < 0 or self.steps < 1 or self.max_new_tokens <= NUM_IMAGE_TOKENS:
            raise ValueError("need temperature >= 0, steps >= 1 and max_new_tokens > 32")
        if self.resolution % 8:
            raise ValueError("resolution must be a multiple of 8")

    def sources(self) -> Sources:
        return Sources.for_variant(
            self.variant, step=self.step, smartedit_repo=self.smartedit_repo,
            smartedit_revision=self.smartedit_revision, vicuna_repo=self.vicuna_repo,
            llava_delta_repo=self.llava_delta_repo, llama_base_repo=self.llama_base_repo,
            clip_repo=self.clip_repo, ip2p_repo=self.ip2p_repo)


class ImageTokensNotGenerated(RuntimeError):
    def __init__(self, message: str, trace: dict[str, Any]):
        super().__init__(message)
        self.trace = trace


class SmartEditEditor(Editor):
    name = "smartedit"
    version = "1"
    requires = ("gpu", "hub:TencentARC/SmartEdit-7B", "setup:ciebench baselines smartedit prepare")
    Config = SmartEditConfig
    presets = {
        "paper": {},  # SmartEdit-7B, official precision (LLM float32, diffusion float16)
        "13b": {"variant": "13b"},
        "lite": {"llm_dtype": "bfloat16"},  # SmartEdit-7B with a bfloat16 LLM: fits a 24 GB GPU
    }

    def __init__(self, config: SmartEditConfig | None = None, **options: Any):
        super().__init__(config, **options)
        cfg = self.config
        src = cfg.sources()  # record the concrete repos in the run spec
        self.config = dataclasses.replace(cfg, smartedit_repo=src.smartedit_repo, vicuna_repo=src.vicuna_repo,
                                          llava_delta_repo=src.llava_delta_repo, llama_base_repo=src.llama_base_repo)
        self._parts: SmartEditParts | None = None

    # ----------------------------------------------------------------------------------------------
    def weights_dir(self) -> Path:
        return Path(self.config.weights_dir) if self.config.weights_dir else default_weights_dir(self.config.sources())

    def required_assets(self) -> list:
        from ciebench.requirements import hub_repo, local_path

        from .smartedit_sources import CLIP_FILES, IP2P_FILES

        cfg, who = self.config, f"editor {self.name}"
        return [local_path(str(self.weights_dir()), used_by=who,
                           detail=f"prepared weights: run `ciebench baselines smartedit prepare --variant {cfg.variant}`"),
                hub_repo(cfg.clip_repo, used_by=who, layout="files", files=CLIP_FILES),
                hub_repo(cfg.ip2p_repo, used_by=who, layout="files", files=IP2P_FILES)]

    def _load(self) -> "SmartEditParts":
        if self._parts is None:
            from .smartedit_load import load_parts

            self._parts = load_parts(self.config, self.weights_dir(), str(self.device))
        return self._parts

    def to(self, device: str) -> "SmartEditEditor":
        previous = self.device
        super().to(device)
        if self._parts is not None and str(previous) != str(device):
            self.close()  # dtypes depend on the device ("auto"); reload there on next use
        return self

    def close(self) -> None:
        self._parts = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    # ----------------------------------------------------------------------------------------------
    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        parts = self._load()
        results = []
        for request in requests:
            started = time.perf_counter()
            try:
                conditioning, modulation, trace = self._understand(parts, request)
            except ImageTokensNotGenerated as exc:
                results.append(EditResult.failure(str(exc), trace=exc.trace))
                continue
            understood = time.perf_counter()
            native = self._generate(parts, request.image, conditioning, modulation, request.seed)
            done = time.perf_counter()
            image = native if native.size == request.image.size else native.resize(request.image.size, Image.BICUBIC)
            trace.update(seed=request.seed, native_size=list(native.size), weights=parts.provenance)
            if self.config.save_native_output:
                trace["artifacts"] = {"smartedit_native.png": native}
            results.append(EditResult(image=image, trace=trace, timings={
                "llm_seconds": understood - started, "diffusion_seconds": done - understood}))
        return results

    def _understand(self, parts: "SmartEditParts", request: EditRequest):
        """Steps 1-3: conditioning tokens (1 x 77 x D) and the UNet modulation (1 x C x h x w)."""
        import torch

        from .smartedit_modules import MODULATION_SCALE

        cfg, model, tok = self.config, parts.model, parts.tokenizer
        device, llm_dtype, diff_dtype = torch.device(self.device), parts.llm_dtype, parts.diff_dtype
        size = parts.image_size
        with torch.no_grad():
            vit = np.asarray(request.image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
            pixels = torch.from_numpy(vit).permute(2, 0, 1).unsqueeze(0).to(device)
            pixels = (pixels - parts.mean) / parts.std
            clip_features = model.encode_image(pixels)
            image_embeds = model.mm_projector(clip_features)

            prompt = build_prompt(request.instruction, cfg.conversation_template)
            ids = tok.encode(prompt)
            slot = ids.index(tok.first_image_token_id)
            text_ids = torch.tensor([ids[:slot] + ids[slot + 1:]], device=device)
            text_embeds = model.embed_tokens(text_ids)
            inputs = torch.cat([text_embeds[:, :slot], image_embeds.to(llm_dtype), text_embeds[:, slot:]], dim=1)
            states, generated = self._image_token_states(model, tok, inputs, request.seed)
            trace = {"llm_generated_text": tok.decode(generated), "llm_generated_tokens": len(generated),
                     "prompt_tokens": len(ids) - 1 + image_embeds.shape[1]}
            if len(states) < NUM_IMAGE_TOKENS:
                raise ImageTokensNotGenerated(
                    f"the LLM produced {len(states)} of {NUM_IMAGE_TOKENS} image tokens before stopping", trace)
            query = model.qformer(torch.cat(states, dim=1).float())
            conditioning = query.to(diff_dtype)
            latent = cfg.resolution // parts.vae_scale
            modulation, residual = model.bim(clip_features, conditioning.float(), (latent, latent))
            conditioning = conditioning + MODULATION_SCALE * residual.to(diff_dtype)
        return conditioning, modulation.to(diff_dtype), trace

    def _image_token_states(self, model: Any, tok: Any, inputs_embeds: Any, seed: int):
        """SmartEdit's decoding loop: feed the prompt, then one token at a time; the final hidden state
        at every step whose input is an image token is kept, until 32 are kept or </s> is produced."""
        import torch

        cfg = self.config
        generator = torch.Generator("cpu").manual_seed(int(seed)) if cfg.temperature > 0 else None
        first_image_id = tok.first_image_token_id

        def choose(hidden: torch.Tensor) -> int:
            logits = model.lm_head(hidden[0, -1]).float()
            if generator is None:
                return int(torch.argmax(logits))
            probs = torch.softmax(logits / cfg.temperature, dim=-1).cpu()
            return int(torch.multinomial(probs, 1, generator=generator))

        llm = model.llm
        cache_arg = "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"
        states: list[torch.Tensor] = []
        generated: list[int] = []
        past = None
        token = None
        for step in range(cfg.max_new_tokens):
            if step == 0:
                out = llm(inputs_embeds=inputs_embeds, use_cache=True)
            else:
                out = llm(input_ids=torch.tensor([[token]], device=inputs_embeds.device), use_cache=True,
                          **{cache_arg: past})
            past = out["cache"] if "cache" in out else out["past_key_values"]
            if token is not None and token >= first_image_id:
                states.append(out.last_hidden_state)
            token = choose(out.last_hidden_state)
            generated.append(token)
            if token == tok.eos_id or len(states) == NUM_IMAGE_TOKENS:
                break
        return states, generated

    def _generate(self, parts: "SmartEditParts", image: Image.Image, conditioning: Any, modulation: Any,
                  seed: int) -> Image.Image:
        """Step 4: InstructPix2Pix-style sampling with the modulated UNet."""
        import torch
        from diffusers import EulerAncestralDiscreteScheduler
        from diffusers.utils.torch_utils import randn_tensor

        cfg, model, vae = self.config, parts.model, parts.vae
        device, dtype = torch.device(self.device), parts.diff_dtype
        scheduler = EulerAncestralDiscreteScheduler.from_config(parts.scheduler_config)
        with torch.no_grad():
            src = np.asarray(image.convert("RGB").resize((cfg.resolution, cfg.resolution), Image.BICUBIC), dtype=np.float32)
            x = torch.from_numpy(2.0 * (src / 255.0) - 1.0).permute(2, 0, 1).unsqueeze(0).to(device, dtype)
            image_latents = vae.encode(x).latent_dist.mode()
            image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
            embeds = torch.cat([conditioning, parts.null_embeds, parts.null_embeds])

            generator = torch.Generator(device=device).manual_seed(int(seed))
            scheduler.set_timesteps(cfg.steps, device=device)
            side = cfg.resolution // parts.vae_scale
            latents = randn_tensor((1, vae.config.latent_channels, side, side), generator=generator, device=device,
                                   dtype=dtype) * scheduler.init_noise_sigma
            g, ig = cfg.guidance_scale, cfg.image_guidance_scale
            with model.unet_modulation(modulation):
                for i, t in enumerate(scheduler.timesteps):
                    expanded = torch.cat([latents] * 3)
                    scaled = torch.cat([scheduler.scale_model_input(expanded, t), image_latents], dim=1)
                    noise = model.unet(scaled, t, encoder_hidden_states=embeds, return_dict=False)[0]
                    # guidance on the predicted clean latents, as the InstructPix2Pix pipeline SmartEdit
                    # used does for sigma-space schedulers (mathematically the same as guiding the noise)
                    sigma = scheduler.sigmas[i]
                    x0_text, x0_image, x0_uncond = (expanded - sigma * noise).chunk(3)
                    x0 = x0_uncond + g * (x0_text - x0_image) + ig * (x0_image - x0_uncond)
                    noise = (x0 - latents) / (-sigma)
                    latents = scheduler.step(noise, t, latents, generator=generator, return_dict=False)[0]
            decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
            decoded = (decoded / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()
        return Image.fromarray((decoded * 255).round().astype(np.uint8))
