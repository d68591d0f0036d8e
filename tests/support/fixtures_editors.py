"""Tiny random-weight diffusion editors published under their real hub ids (InstructPix2Pix layout)."""
from __future__ import annotations

from pathlib import Path

from .fixtures_models import clip_tokenizer
from .tinyhub import publish


# One tiny layout per hub id for the whole test session (the hub cache is shared): SmartEdit's tests
# reuse this InstructPix2Pix, so its UNet width is the one SmartEdit's Q-Former needs (a multiple of 64).
TINY_CROSS_DIM = 64
TINY_IP2P_UNET = dict(sample_size=8, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                      cross_attention_dim=TINY_CROSS_DIM, attention_head_dim=2, norm_num_groups=8)


def publish_tiny_instruct_pix2pix(repo_id: str = "timbrooks/instruct-pix2pix", seed: int = 0) -> Path:
    """A StableDiffusionInstructPix2PixPipeline with the real component layout (8-channel UNet input:
    noisy latents + image latents), tiny sizes, the real CLIP tokenizer, saved as safetensors."""
    import torch
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    def save(directory: Path) -> None:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_IP2P_UNET)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=1, norm_num_groups=4, sample_size=32)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=TINY_CROSS_DIM, intermediate_size=128,
                                            num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=77,
                                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
        tokenizer = clip_tokenizer(directory.parent / f".{directory.name}-bpe")
        tokenizer.model_max_length = 77  # as in the real checkpoint's tokenizer_config.json
        pipe = StableDiffusionInstructPix2PixPipeline(
            vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
            scheduler=EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                      num_train_timesteps=1000, steps_offset=1),
            safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        pipe.save_pretrained(directory, safe_serialization=True)

    return publish(repo_id, save)
