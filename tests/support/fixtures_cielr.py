"""Tiny random-weight models for the CIELR editor, published into the temporary hub cache under their
real hub ids, so the editor's real `from_pretrained` code paths run offline:

    ids = publish_cielr_models()          # {"sam": ..., "owl": ..., "depth": ..., "sd": ...}

- SAM 2.1 (`Sam2Model`, Hiera at toy size, 64x64 input; mask logits scaled to O(1): with a mask
  threshold of 1 it yields a few dozen small blobs per image),
- OWLv2 (`Owlv2ForObjectDetection`, 64x64 input) with a real CLIP tokenizer; its class head is set so
  every box scores about 0.5 and takes the query most similar to it,
- Depth Anything V2 (`DepthAnythingForDepthEstimation` over a toy DINOv2),
- Stable Diffusion inpainting (9-channel UNet, VAE, CLIP text encoder and tokenizer, DDIM scheduler).

The CLIP tokenizer is the real one, from tests/support/fixtures_models.py (rebuilt from the BPE file that
open_clip ships).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .tinyhub import publish

SAM_ID = "facebook/sam2.1-hiera-large"
OWL_ID = "google/owlv2-large-patch14-ensemble"
DEPTH_ID = "depth-anything/Depth-Anything-V2-Large-hf"
SD_ID = "stabilityai/stable-diffusion-2-inpainting"
SD15_ID = "stable-diffusion-v1-5/stable-diffusion-inpainting"
SAM_SIZE = 64


def save_clip_tokenizer(folder: Path, max_length: int = 77):
    """Save the real CLIP tokenizer (tests/support/fixtures_models.py builds it) into `folder`; return it."""
    from .fixtures_models import clip_tokenizer

    tok = clip_tokenizer(folder / "_bpe")
    tok.model_max_length = max_length
    tok.save_pretrained(folder)
    return tok


CLIP_VOCAB_SIZE = 49408


def _sam2(folder: Path) -> None:
    import torch
    import transformers
    from transformers import Sam2Config, Sam2Model

    # transformers 5.0 (the floor) has only the "Fast" class; later releases renamed it
    Sam2ImageProcessor = getattr(transformers, "Sam2ImageProcessor", None) or transformers.Sam2ImageProcessorFast

    torch.manual_seed(0)
    s = SAM_SIZE
    cfg = Sam2Config(
        vision_config=dict(
            model_type="sam2_vision_model",
            backbone_config=dict(
                model_type="sam2_hiera_det_model", hidden_size=16, num_attention_heads=1, image_size=[s, s],
                blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
                num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 4, 4, 4],
                global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2]),
            backbone_channel_list=[128, 64, 32, 16],
            backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]], fpn_hidden_size=32),
        prompt_encoder_config=dict(hidden_size=32, image_size=s, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    model = Sam2Model(cfg).eval()
    # Random init gives mask logits of about 1e-5; scale the mask hypernetworks' output layers so that
    # logits are O(1) and a mask threshold of about 1 yields several small blobs per image.
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(4e4)
    model.save_pretrained(folder)
    Sam2ImageProcessor(size={"height": s, "width": s}, mask_size={"height": s // 4, "width": s // 4}).save_pretrained(folder)


def _owlv2(folder: Path) -> None:
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    torch.manual_seed(0)
    cfg = Owlv2Config(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=16),
        projection_dim=32)
    model = Owlv2ForObjectDetection(cfg).eval()
    # Make every box score about sigmoid(2 * cosine) ~ 0.5 (above the 0.1 threshold), its label the
    # query most similar to it: logits = (similarity + shift) * scale with shift 0, scale 2.
    with torch.no_grad():
        head = model.class_head
        head.logit_shift.weight.zero_()
        head.logit_shift.bias.zero_()
        head.logit_scale.weight.zero_()
        head.logit_scale.bias.fill_(1.0)
        # Boxes at their patch's default position and size (the box bias), one per patch.
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(folder)
    tok = save_clip_tokenizer(folder / "_tok", max_length=16)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tok).save_pretrained(folder)
    import shutil

    shutil.rmtree(folder / "_tok")


def _depth(folder: Path) -> None:
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    cfg = DepthAnythingConfig(
        backbone_config=dict(model_type="dinov2", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                             intermediate_size=37, image_size=28, patch_size=14,
                             out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False),
        reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
        patch_size=14)
    DepthAnythingForDepthEstimation(cfg).eval().save_pretrained(folder)
    DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      do_pad=False, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      resample=3).save_pretrained(folder)


def _sd_inpaint(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=9, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4, sample_size=32)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                        num_attention_heads=2, vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=77,
                                        projection_dim=16))
    tok = save_clip_tokenizer(folder / "_tok")
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    import shutil

    shutil.rmtree(folder / "_tok")


def publish_cielr_models(sam_id: str = SAM_ID, owl_id: str = OWL_ID, depth_id: str = DEPTH_ID,
                         sd_id: str = SD_ID) -> dict[str, str]:
    """Publish all four tiny models (idempotent within a session); returns their hub ids."""
    publish(sam_id, _sam2)
    publish(owl_id, _owlv2)
    publish(depth_id, _depth)
    publish(sd_id, _sd_inpaint)
    return {"sam": sam_id, "owl": owl_id, "depth": depth_id, "sd": sd_id}


def publish_sd15_inpaint(repo_id: str = SD15_ID) -> str:
    publish(repo_id, _sd_inpaint)
    return repo_id


# ------------------------------------------------------------------------------ scripted LLM helpers
STAGES = {"TASK: OBJECT LIST": "objects", "TASK: EDIT PLAN": "plan", "TASK: SUFFICIENCY CHECK": "sufficiency",
          "TASK: SPATIAL OPERATOR": "spatial", "TASK: REGION SELECTION": "select", "TASK: EXPLICIT ACTION": "action",
          "TASK: EDIT TYPE": "classify", "TASK: ONE-STEP EDIT": "onestep"}


def scene_image(shift: int = 0) -> Image.Image:
    """The CIELR tests' scene: a red square (shifted right by `shift`), a blue square and a green bar on
    grey, 120 x 90."""
    a = np.full((90, 120, 3), 200, dtype=np.uint8)
    a[20:60, 10 + shift:50 + shift] = (255, 0, 0)
    a[30:80, 70:110] = (0, 0, 255)
    a[5:15, 60:100] = (0, 160, 0)
    return Image.fromarray(a)


def stage_of(text: str) -> str | None:
    """Which CIELR prompt a request is (by its TASK line)."""
    for marker, stage in STAGES.items():
        if marker in text:
            return stage
    return None


def regions_in(text: str) -> list[dict]:
    """The SSR regions listed in a CIELR prompt (one JSON object per line)."""
    import json

    return [json.loads(line) for line in text.splitlines() if line.startswith('{"id"')]


def node(op: str, *args: dict, label: str | None = None, region_ids=(), side=None, n=None, relation=None) -> dict:
    """An operator-tree node with every field present, as the spatial schema requires."""
    return {"op": op, "label": label, "region_ids": list(region_ids), "side": side, "n": n, "relation": relation,
            "args": list(args)}


def sufficient() -> dict:
    return {"sufficient": True, "missing": "none", "new_labels": [], "reason": ""}


def action(kind: str, target: str = "object", new_object: str | None = None, color: str | None = None) -> dict:
    return {"action": kind, "target": target, "new_object": new_object, "color": color,
            "explicit": f"{kind} the {target}"}


def chain_responder(objects=("person", "table", "cup", "wall", "floor")):
    """Scripted answers for whole CIEBench-style runs (the benchmark and the real-data test).

    Requests carry the sample id as ``[#<id>#]`` at the start of the instruction (the plan copies it
    into each step). Every sample follows the paper's chain; a sample whose numeric id is 1 mod 4
    takes a semantic update (a new label ``target <id>``), 2 mod 4 a spatial update (the leftmost
    instance of the first labelled region); the region selected is the operator's region or else the
    smallest one; the action follows the step's edit type."""
    import re

    from ciebench.datasets.edit_types import command_part, derive_edit_type

    marker = re.compile(r"\[#(.+?)#\]")

    def answer(req):
        text = req.text
        stage = stage_of(text)
        if stage == "objects":
            return {"objects": list(objects)}
        m = marker.search(text)
        sid = m.group(1) if m else "?"
        n = int(sid) if sid.isdigit() else 0
        if stage == "plan":
            instruction = text.split("<<<INSTRUCTION\n", 1)[1].split("\nINSTRUCTION>>>", 1)[0]
            kind = derive_edit_type(instruction, [])
            kind = kind if kind in ("remove", "replace", "add", "recolor") else "replace"
            return {"steps": [{"instruction": f"[#{sid}#] {command_part(instruction)[:120]}", "edit_type": kind}]}
        regions = regions_in(text)
        if stage == "sufficiency":
            searched = text.split("Labels already searched for:", 1)[1].split("\n", 1)[0]
            if n % 4 == 1 and f"target {n}" not in searched:
                return {"sufficient": False, "missing": "semantic", "new_labels": [f"target {n}"], "reason": "unlabelled"}
            if n % 4 == 2:
                return {"sufficient": False, "missing": "spatial", "new_labels": [], "reason": "which one"}
            return sufficient()
        if stage == "spatial":
            labelled = [r for r in regions if r.get("source") is None]
            return {"target": "the leftmost one",
                    "operator": node("leftmost", node("select", region_ids=[labelled[0]["id"]]))}
        if stage == "select":
            made = [r["id"] for r in regions if r.get("source") == "operator"]
            return {"region_ids": made or [min(regions, key=lambda r: r["area"])["id"]], "reason": "scripted"}
        if stage == "action":
            kind = text.split("Edit type: ", 1)[1].split("\n", 1)[0].strip()
            return action(kind, "object", new_object="a red ball" if kind in ("replace", "add") else None,
                          color="blue" if kind == "recolor" else None)
        return "unscripted"

    return answer


def tiny_editor_options(base_url: str, concurrency: int = 8) -> dict:
    """CIELREditor options for the tiny models and a scripted server (tests and the benchmark)."""
    return dict(llm=dict(base_url=base_url, api_key_env=None, model="scripted", concurrency=concurrency,
                         timeout_s=30.0, max_retries=2, backoff_base_s=0.05, backoff_max_s=0.2),
                llm_cache=False, points_per_side=4, crop_n_layers=0, mask_threshold=1.0, pred_iou_thresh=0.0,
                stability_score_thresh=0.0, merge_unknown=False, resolution=32, steps=1, dilation_px=2)
