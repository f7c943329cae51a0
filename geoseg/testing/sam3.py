"""A randomly initialised SAM 3 built offline, for tests, notebooks and benchmarks.

The real model is gated and has 840M parameters. The tiny one here has the same
architecture and file layout (config, safetensors, CLIP tokenizer, processor) at 0.3M
parameters, so `from_pretrained(path)` takes the same code path as for `facebook/sam3`.
Like the real checkpoint it is a `Sam3VideoModel`: the detector's weights under
`detector_model.`, the single-object tracker's under `tracker_model.` and its neck
under `tracker_neck.`, the vision backbone stored once, so both `Sam3Model` and
`Sam3TrackerModel` load from it. Nothing is downloaded: the tokenizer's vocabulary is
generated.
"""

from __future__ import annotations

import pathlib
from typing import Any

TINY_SEED = 0

# Token ids of the generated tokenizer: these two first, then the byte-level alphabet.
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for the bytes 0..255."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_tokenizer() -> Any:
    """A CLIP tokenizer over single characters (no merges), built without any download.

    Each character of a word is one token, so prompts reach the 32-token limit sooner
    than with the real CLIP vocabulary: handy for testing the limit.
    """
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    tokens = [_BOS, _EOS] + alphabet + [c + "</w>" for c in alphabet]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)


# width, layers and heads of the ViT; hidden size of the DETR and mask heads; queries
SIZES = {"tiny": (32, 2, 2, 32, 16), "small": (256, 6, 4, 32, 50)}


def sam3_config(size: str = "tiny") -> Any:
    """A `Sam3Config`: "full" is the real architecture (840M parameters); "tiny" (0.3M,
    tests) and "small" (4M, CPU benchmarks) shrink it but keep the 1008 px input, the
    288 px mask grid and the 32-token text encoder."""
    from transformers import Sam3Config

    if size == "full":
        return Sam3Config()
    width, layers, n_heads, fpn, queries = SIZES[size]
    heads = {"hidden_size": fpn, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 2 * fpn}
    return Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "hidden_size": width,
                "intermediate_size": 2 * width,
                "num_hidden_layers": layers,
                "num_attention_heads": n_heads,
                "global_attn_indexes": [layers - 1],
            },
            "fpn_hidden_size": fpn,
        },
        text_config={
            "model_type": "clip_text_model",
            "vocab_size": 2 + 2 * 256,  # tiny_tokenizer's
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        geometry_encoder_config=heads,
        detr_encoder_config=heads,
        detr_decoder_config={**heads, "num_queries": queries},
        mask_decoder_config={"hidden_size": fpn, "num_attention_heads": 2},
    )


def tracker_config(detector: Any, size: str = "tiny") -> Any:
    """The `Sam3TrackerVideoConfig` beside a detector config: its vision encoder (the backbone is
    shared), and for "tiny"/"small" a prompt encoder and mask decoder of the detector's width."""
    from transformers import Sam3TrackerVideoConfig

    if size == "full":
        return Sam3TrackerVideoConfig()
    width = detector.vision_config.fpn_hidden_size
    return Sam3TrackerVideoConfig(
        vision_config=detector.vision_config.to_dict(), prompt_encoder_config={"hidden_size": width},
        mask_decoder_config={"hidden_size": width, "num_attention_heads": 2}, memory_attention_hidden_size=width,
        memory_encoder_hidden_size=width, memory_encoder_output_channels=width // 2, mask_downsampler_embed_dim=width)


def _one_prefix(path: pathlib.Path) -> None:
    """Keys as the released checkpoint has them: `save_pretrained` of the tracker inside the video
    model writes `tracker_model.tracker_model.*`; `facebook/sam3` has `tracker_model.*`."""
    import json

    from safetensors.torch import load_file, save_file

    twice = "tracker_model.tracker_model."
    for shard in sorted(path.glob("*.safetensors")):
        weights = load_file(shard)
        if any(k.startswith(twice) for k in weights):
            save_file({k.replace(twice, "tracker_model.", 1): v for k, v in weights.items()}, shard,
                      metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {k.replace(twice, "tracker_model.", 1): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))


def _spread_outputs(model: Any, tokenizer: Any) -> None:
    """Rescale two output layers so random weights give usable scores and masks.

    At initialisation every score sits near 0.25 and mask logits within ~1e-3 of 0, so
    thresholds cut at random and half precision flips masks. One forward pass on a
    fixed image measures the spread; both heads are linear in their last layer, so
    scaling it sets score logits to std 2.5 and mask logits to std 3; presence is
    pinned high (sigmoid(2) = 0.88).
    """
    import torch

    side = model.config.vision_config.image_size
    ramp = torch.linspace(-1, 1, side)
    image = torch.stack([ramp[:, None].expand(side, side), ramp[None, :].expand(side, side), ramp.outer(ramp)])
    text = tokenizer(["red"], padding="max_length", max_length=32, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        out = model(pixel_values=image[None].to(model.device), **text)
    scoring, masks = model.dot_product_scoring.query_proj, model.mask_decoder.mask_embedder.layers[-1]
    with torch.no_grad():
        for layer, spread, target in ((scoring, out.pred_logits.std(), 2.5), (masks, out.pred_masks.std(), 3.0)):
            layer.weight.mul_(target / spread.item())
            layer.bias.mul_(target / spread.item())
        model.detr_decoder.presence_head.layer3.bias.fill_(2.0)


def build_tiny_sam3(path: str | pathlib.Path, *, size: str = "tiny", seed: int = TINY_SEED,
                    device: str = "cpu") -> pathlib.Path:
    """Save a random SAM 3 (model + processor) to `path` and return it.

    size: "tiny" (tests: ~0.2 s per 1008 px tile on 2 CPU cores), "small" (CPU
    benchmarks) or "full" (the real architecture, for GPU benchmarks; 3.4 GB).
    device: where to build it; "cuda" builds the full size in seconds rather than
    a minute (other random weights than on the CPU, same costs).
    """
    import torch
    from transformers import Sam3ImageProcessor, Sam3Processor, Sam3VideoConfig, Sam3VideoModel

    path = pathlib.Path(path)
    torch.manual_seed(seed)
    detector = sam3_config(size)
    config = Sam3VideoConfig(detector_config=detector.to_dict(),
                             tracker_config=tracker_config(detector, size).to_dict())
    with torch.device(device):
        model = Sam3VideoModel(config).eval()
    tokenizer = tiny_tokenizer()
    _spread_outputs(model.detector_model, tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    _one_prefix(path)
    Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=tokenizer).save_pretrained(path)
    return path
