"""Tiny random-weight pipelines of the real diffusers editing classes, published under the real hub ids.

Each builder makes the pipeline class's real component layout (the same transformer / VAE / text-encoder
classes as the checkpoint, toy sizes), saves it with `save_pretrained` into the session's hub cache, and
returns the snapshot path, so the editors' `from_pretrained(hub_id)` runs for real with HF_HUB_OFFLINE=1.
VAEs get four resolution levels (8x downsampling, as in the real models) so latents stay small even at
the pipelines' 1-megapixel working sizes. The session-scoped fixture `diffusers_editor_hub` builds each
one once per test session (`publish` is idempotent).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from .fixtures_editors import publish_tiny_instruct_pix2pix
from .fixtures_models import clip_image_processor, clip_tokenizer, tiny_clip_config
from .tiny_qwen import CHAT_TEMPLATE, tiny_tokenizer
from .tinyhub import publish

QWEN_EDIT_2511 = "Qwen/Qwen-Image-Edit-2511"
QWEN_EDIT_2509 = "Qwen/Qwen-Image-Edit-2509"
QWEN_EDIT = "Qwen/Qwen-Image-Edit"
FLUX_KONTEXT = "black-forest-labs/FLUX.1-Kontext-dev"
FLUX2_KLEIN_4B = "black-forest-labs/FLUX.2-klein-4B"
LONGCAT_EDIT = "meituan-longcat/LongCat-Image-Edit"
SD_IMG2IMG = "ciebench-tests/tiny-sd-img2img"  # the generic editor's extra class (no built-in entry)
SD_IMG2IMG_FLAGGING = "ciebench-tests/tiny-sd-img2img-flagging"  # the same with a safety checker that flags all
TEXT_DIM = 16


def _qwen_vl(seed: int):
    """A tiny Qwen2.5-VL text encoder + its processor (the Qwen-Image and LongCat text path)."""
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    tokenizer = tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>",
                                                           "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2,
                                            temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor())
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=TEXT_DIM,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config), tokenizer, processor


def _flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                           base_image_seq_len=256, max_image_seq_len=4096)


def publish_tiny_qwen_image_edit(repo_id: str = QWEN_EDIT_2511, plus: bool = True, seed: int = 0) -> Path:
    """QwenImageEditPlusPipeline (2509, 2511) or QwenImageEditPipeline (the first release)."""

    def save(directory: Path) -> None:
        import torch
        from diffusers import (AutoencoderKLQwenImage, QwenImageEditPipeline, QwenImageEditPlusPipeline,
                               QwenImageTransformer2DModel)

        text_encoder, tokenizer, processor = _qwen_vl(seed)
        torch.manual_seed(seed)
        z = 4
        vae = AutoencoderKLQwenImage(base_dim=8, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], latents_mean=[0.0] * z,
                                     latents_std=[1.0] * z)
        transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=4 * z, out_channels=z, num_layers=1,
                                                  attention_head_dim=16, num_attention_heads=2,
                                                  joint_attention_dim=TEXT_DIM, guidance_embeds=False,
                                                  axes_dims_rope=(8, 4, 4))
        cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
        cls(scheduler=_flow_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            processor=processor, transformer=transformer).save_pretrained(directory, safe_serialization=True)

    return publish(repo_id, save)


def publish_tiny_flux_kontext(repo_id: str = FLUX_KONTEXT, seed: int = 0) -> Path:
    def save(directory: Path) -> None:
        import torch
        from diffusers import AutoencoderKL, FluxKontextPipeline, FluxTransformer2DModel
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        torch.manual_seed(seed)
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                            num_hidden_layers=1, max_position_embeddings=77, projection_dim=32,
                                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
        tokenizer = clip_tokenizer(directory.parent / f".{directory.name}-bpe")
        tokenizer.model_max_length = 77  # as in the real checkpoint's tokenizer_config.json
        t5_tokenizer = _t5_tokenizer()
        t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1,
                                     num_heads=2, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                     pad_token_id=0, eos_token_id=1))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 4, 4),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.0609, scaling_factor=1.5035, sample_size=32)
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                                             pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=[4, 4, 8])
        FluxKontextPipeline(scheduler=_flow_scheduler(), vae=vae, text_encoder=clip, tokenizer=tokenizer,
                            text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer,
                            ).save_pretrained(directory, safe_serialization=True)

    return publish(repo_id, save)


def _t5_tokenizer():
    """T5's own tokenizer class over a character-level Unigram vocabulary (<pad>=0, </s>=1, <unk>=2)."""
    import string

    from transformers import T5TokenizerFast

    chars = sorted(set(string.printable.strip()))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -3.0) for c in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def publish_tiny_flux2_klein(repo_id: str = FLUX2_KLEIN_4B, seed: int = 0) -> Path:
    """Flux2KleinPipeline, step-distilled like the 4B release (`is_distilled=True`). The Qwen3 text encoder
    has 28 layers because the pipeline reads hidden states 9, 18 and 27 (its default `text_encoder_out_layers`)."""

    def save(directory: Path) -> None:
        import torch
        from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
        from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

        tokenizer = tiny_tokenizer()
        torch.manual_seed(seed)
        text_encoder = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=8,
                                                    num_hidden_layers=28, num_attention_heads=2, num_key_value_heads=1,
                                                    head_dim=4, max_position_embeddings=1024))
        qwen_tokenizer = Qwen2TokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>",
                                            pad_token="<|endoftext|>", unk_token=None, chat_template=CHAT_TEMPLATE)
        vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                 up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 4, 4),
                                 layers_per_block=1, latent_channels=4, norm_num_groups=1, sample_size=32,
                                 use_quant_conv=False, use_post_quant_conv=False)
        transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * 8,
                                              timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
                                              guidance_embeds=False)
        Flux2KleinPipeline(scheduler=_flow_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=qwen_tokenizer,
                           transformer=transformer, is_distilled=True).save_pretrained(directory, safe_serialization=True)

    return publish(repo_id, save)


def publish_tiny_longcat_image_edit(repo_id: str = LONGCAT_EDIT, seed: int = 0) -> Path:
    def save(directory: Path) -> None:
        import torch
        from diffusers import AutoencoderKL, LongCatImageEditPipeline, LongCatImageTransformer2DModel

        text_encoder, tokenizer, processor = _qwen_vl(seed)
        torch.manual_seed(seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(4, 4, 4, 4),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.0609, scaling_factor=1.5035, sample_size=32)
        transformer = LongCatImageTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                                     attention_head_dim=16, num_attention_heads=2,
                                                     joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
                                                     axes_dims_rope=[4, 4, 8])
        LongCatImageEditPipeline(scheduler=_flow_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                 text_processor=processor, transformer=transformer,
                                 ).save_pretrained(directory, safe_serialization=True)

    return publish(repo_id, save)


def publish_tiny_sd_img2img(repo_id: str = SD_IMG2IMG, seed: int = 0, flag_everything: bool = False) -> Path:
    """A StableDiffusionImg2ImgPipeline: the tiny InstructPix2Pix's layout with a 4-channel UNet input.
    `flag_everything`: with a tiny StableDiffusionSafetyChecker whose concept thresholds (-10) are below
    any cosine similarity, so it flags every image (diffusers then returns it black)."""
    ip2p = publish_tiny_instruct_pix2pix()  # outside `save`: publishing holds a non-reentrant lock

    def save(directory: Path) -> None:
        import torch
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

        source = StableDiffusionInstructPix2PixPipeline.from_pretrained(ip2p)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**{**source.unet.config, "in_channels": 4})
        checker = StableDiffusionSafetyChecker(tiny_clip_config(224)) if flag_everything else None
        if checker is not None:
            with torch.no_grad():
                checker.concept_embeds_weights.fill_(-10.0)
        StableDiffusionImg2ImgPipeline(vae=source.vae, text_encoder=source.text_encoder, tokenizer=source.tokenizer,
                                       unet=unet, scheduler=source.scheduler, safety_checker=checker,
                                       feature_extractor=clip_image_processor(224) if checker is not None else None,
                                       requires_safety_checker=checker is not None,
                                       ).save_pretrained(directory, safe_serialization=True)

    return publish(repo_id, save)


BUILDERS = {
    QWEN_EDIT_2511: lambda: publish_tiny_qwen_image_edit(QWEN_EDIT_2511),
    QWEN_EDIT_2509: lambda: publish_tiny_qwen_image_edit(QWEN_EDIT_2509, seed=1),
    QWEN_EDIT: lambda: publish_tiny_qwen_image_edit(QWEN_EDIT, plus=False, seed=2),
    FLUX_KONTEXT: publish_tiny_flux_kontext,
    FLUX2_KLEIN_4B: publish_tiny_flux2_klein,
    LONGCAT_EDIT: publish_tiny_longcat_image_edit,
    SD_IMG2IMG: publish_tiny_sd_img2img,
    SD_IMG2IMG_FLAGGING: lambda: publish_tiny_sd_img2img(SD_IMG2IMG_FLAGGING, flag_everything=True),
}


@pytest.fixture(scope="session")
def diffusers_editor_hub():
    """Call with a hub id: builds (once per session) and publishes that tiny pipeline, returns its path."""
    return lambda repo_id: BUILDERS[repo_id]()


# Qwen-Image-Edit and LongCat-Image-Edit fix their working area inside `__call__` (1 megapixel for the VAE,
# 384^2 for the vision encoder) through a module-level `calculate_dimensions(target_area, ratio)`; a 1-MP
# VAE pass alone takes seconds on CPU even at toy width. Tests shrink that area (same aspect-ratio rule).
AREA_MODULES = ("diffusers.pipelines.qwenimage.pipeline_qwenimage_edit",
                "diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus",
                "diffusers.pipelines.longcat_image.pipeline_longcat_image_edit")


def shrink_working_area(monkeypatch, divisor: int = 256) -> None:
    import importlib

    for name in AREA_MODULES:
        module = importlib.import_module(name)
        original = module.calculate_dimensions
        monkeypatch.setattr(module, "calculate_dimensions",
                            lambda area, ratio, _f=original: _f(max(32 * 32, area // divisor), ratio))


@pytest.fixture
def small_working_area(monkeypatch):
    shrink_working_area(monkeypatch)
