"""Random-weight stand-ins for the real checkpoints, published where the product's loaders look.

CLIP: a real CLIP BPE tokenizer (built from open_clip's shipped `bpe_simple_vocab_16e6.txt.gz`), a
PIL-backend CLIP image processor with the checkpoint's sizes, and a `CLIPModel` from a config (tiny
for tests, the real ViT-L/14 shapes for benchmarks), saved with `save_pretrained` into the hub cache
so `from_pretrained("openai/clip-vit-large-patch14-336")` runs for real with HF_HUB_OFFLINE=1.

Torchvision trunks: a random state dict under the official file name in
`$TORCH_HOME/hub/checkpoints/`, where torchvision's weights API finds it instead of downloading.

Reusable by any test or benchmark: nothing here is specific to one metric.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from .tinyhub import publish, torch_checkpoint

CLIP_VIT_L14 = "openai/clip-vit-large-patch14"
CLIP_VIT_L14_336 = "openai/clip-vit-large-patch14-336"
SQUEEZENET1_1_FILE = "squeezenet1_1-b8a52dc0.pth"
_BPE_MERGES = 49152 - 256 - 2  # the merges CLIP uses from the 16e6 vocabulary file


def _bytes_to_unicode() -> list[str]:
    """The byte -> printable-character table shared by GPT-2 and CLIP byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    # Vocabulary order is this list's order (printable bytes first), not byte order.
    return [chr(c) for c in codes]


def write_clip_bpe_files(directory: Path) -> Path:
    """vocab.json + merges.txt of the real CLIP tokenizer (49408 tokens), from open_clip's vocabulary."""
    import open_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    gz = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(gz).read().decode("utf-8").split("\n")
    merges = lines[1:_BPE_MERGES + 1]
    base = _bytes_to_unicode()
    vocab = base + [c + "</w>" for c in base] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory


def clip_tokenizer(directory: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(write_clip_bpe_files(directory)))


def clip_image_processor(image_size: int):
    """CLIP's preprocessing at `image_size`: shortest side to `image_size` (bicubic), centre crop."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def tiny_clip_config(image_size: int = 224, patch_size: int | None = None):
    from transformers import CLIPConfig

    patch = patch_size or image_size // 7  # 224 -> 32, 336 -> 48: a whole number of patches, as in real CLIPs
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                max_position_embeddings=77, projection_dim=16, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                  image_size=image_size, patch_size=patch, projection_dim=16)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def vit_l14_config(image_size: int = 336):
    """The published openai/clip-vit-large-patch14(-336) architecture (random weights are the caller's)."""
    from transformers import CLIPConfig

    text = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                  image_size=image_size, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)


def image_size_of(repo_id: str) -> int:
    return 336 if repo_id.endswith("-336") else 224


def publish_clip(repo_id: str, config=None, seed: int = 0) -> Path:
    """Publish a random-weight CLIP under `repo_id` (tiny by default) with a real tokenizer and an
    image processor sized for the repo (336 for `-336`, else 224)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    size = image_size_of(repo_id)
    config = config or tiny_clip_config(size)

    def save(directory: Path) -> None:
        torch.manual_seed(seed)
        CLIPModel(config).eval().save_pretrained(directory)
        tokenizer = clip_tokenizer(directory / "_bpe")
        CLIPProcessor(image_processor=clip_image_processor(size), tokenizer=tokenizer).save_pretrained(directory)
        # the image processor on its own too (preprocessor_config.json), as the real repos ship it
        clip_image_processor(size).save_pretrained(directory)
        for name in ("vocab.json", "merges.txt"):
            (directory / "_bpe" / name).replace(directory / name)
        (directory / "_bpe").rmdir()

    return publish(repo_id, save)


def publish_squeezenet1_1(seed: int = 0) -> Path:
    """A random squeezenet1_1 under torchvision's official checkpoint name."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    return torch_checkpoint(SQUEEZENET1_1_FILE, torchvision.models.squeezenet1_1().state_dict())
