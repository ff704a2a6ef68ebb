"""``image.encoder``: a pretrained vision backbone's patch features as continuous tokens (LLaVA).

Beside raw patches (``image.patch``, Fuyu), the LLaVA design (Liu et al. 2023) feeds the
patch features of a pretrained ViT — CLIP in LLaVA — through a projector into the LM. Here the
backbone runs inside the tokenizer: ``encode`` pads the image to a square (LLaVA-1.5's
``expand2square``, so the aspect ratio survives), resizes it to the backbone's ``image_size``,
normalises it, runs the backbone under ``torch.no_grad`` and returns the hidden states of block
``layer`` (default ``-2``, the penultimate block, as LLaVA), class token dropped, as
``(grid * grid, width)`` vectors on a ``(1, grid, grid)`` grid (M-RoPE positions, Qwen2-VL).

**The backbone is frozen**: it is not a parameter of the decoder, gets no gradient and is never
in the optimizer. Features are computed once per image by the data loader, and the training
data module caches encoded samples (``data.cache``), so each image passes the backbone once.
The trainable part is the projector into the model width, which lives in the decoder
(``input_proj["image__encoder"]``): linear by default, or LLaVA-1.5's 2-layer MLP with
``arch.projectors: {image.encoder: mlp2}`` in the recipe.

Backbones (``backbone``):

- ``torchvision``: a ``torchvision.models.VisionTransformer``. ``arch`` names a torchvision ViT
  (``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ``vit_l_32``, ``vit_h_14``) or ``custom`` (then
  ``patch_size``, ``num_layers``, ``num_heads``, ``hidden_dim`` and ``mlp_dim`` are required).
  ``weights``: a state dict file (``.safetensors``, or ``.pth``/``.pt`` read with
  ``torch.load(weights_only=True)``, e.g. torchvision's ``vit_b_16-c867db91.pth``); its
  classification head is dropped, its position embeddings interpolated to ``image_size``.
  ImageNet normalisation by default.
- ``hf``: a Hugging Face CLIP or SigLIP vision tower (needs ``transformers``). ``weights``: a
  local folder with ``config.json`` (``clip``, ``clip_vision_model``, ``siglip`` or
  ``siglip_vision_model``) and safetensors weights; normalisation from its
  ``preprocessor_config.json`` when present.

``path``: a folder written by a model export (``model.safetensors``, ``encoder.json``), which
wins over ``weights``. Neither: refused, unless ``random_init=True`` (a ``seed``-ed random
backbone, for tests: the same seed gives the same features; ``pretrained`` is then False, also
after an export carried those weights). The same rule holds for ``image.fsq`` and ``audio.encodec``.

    tok = am.create_tokenizer("image.encoder", arch="vit_b_16", weights="vit_b_16-c867db91.pth")
    tok = am.create_tokenizer("image.encoder", backbone="hf", weights="clip-vit-large-patch14")
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from anymodal.media import MediaLimits, image_size, load_image
from anymodal.segments import Segment
from anymodal.tokenizers.base import ModalityTokenizer, TokenBlock
from anymodal.tokenizers.registry import register_tokenizer

BACKBONES = ("torchvision", "hf")
#: torchvision ViT shapes: patch_size, num_layers, num_heads, hidden_dim, mlp_dim
TORCHVISION_VITS = {
    "vit_b_16": (16, 12, 12, 768, 3072), "vit_b_32": (32, 12, 12, 768, 3072), "vit_l_16": (16, 24, 16, 1024, 4096),
    "vit_l_32": (32, 24, 16, 1024, 4096), "vit_h_14": (14, 32, 16, 1280, 5120),
}
_SHAPE_FIELDS = ("patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HF_TYPES = {"clip": "CLIPVisionModel", "clip_vision_model": "CLIPVisionModel", "siglip": "SiglipVisionModel",
            "siglip_vision_model": "SiglipVisionModel"}
WEIGHTS_FILE = "model.safetensors"
META_FILE = "encoder.json"  # normalisation and shape of an exported backbone


# ---- backbones: (1, 3, S, S) normalised pixels -> list of hidden states (1, N, D), embeddings first --
class _TorchvisionViT(nn.Module):
    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        vit = self.vit
        h = vit.conv_proj(x).flatten(2).transpose(1, 2)  # (1, g*g, D)
        h = torch.cat([vit.class_token.expand(x.shape[0], -1, -1), h], dim=1)  # (1, 1 + g*g, D)
        h = vit.encoder.dropout(h + vit.encoder.pos_embedding)
        states = [h]
        for block in vit.encoder.layers:
            h = block(h)
            states.append(h)
        return states


class _HFVision(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(pixel_values=x, output_hidden_states=True).hidden_states)


def _read_state(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"image.encoder: weights file not found: {file}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle payloads are refused
        raise ValueError(f"image.encoder: {file}: refused to load (only plain tensors are allowed): {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"image.encoder: {file} is not a plain state dict of tensors")
    return state


class ImageEncoderTokenizer(ModalityTokenizer):
    """Frozen pretrained ViT patch features as continuous tokens; see the module docstring.

    ``input_dim`` = the backbone's width; ``num_tokens`` = ``(image_size // patch_size)**2`` for
    every image.
    """

    modality = "image"
    kind = "continuous"
    bidirectional = True

    def __init__(self, backbone: str = "torchvision", arch: str = "vit_b_16", weights: str | None = None,
                 path: str | None = None, random_init: bool = False, seed: int = 0, image_size: int | None = None,
                 patch_size: int | None = None, num_layers: int | None = None, num_heads: int | None = None,
                 hidden_dim: int | None = None, mlp_dim: int | None = None, layer: int = -2,
                 mean: list[float] | None = None, std: list[float] | None = None, max_pixels: int = 4096 * 4096):
        if backbone not in BACKBONES:
            raise ValueError(f"image.encoder: backbone must be one of {BACKBONES}, got {backbone!r}")
        if weights and random_init and not path:
            raise ValueError("image.encoder: give weights=<file> or random_init=True, not both")
        # an export of a random backbone keeps random_init=True in its options: still not pretrained
        self.pretrained = not random_init
        self.backbone, self.layer = backbone, int(layer)
        self.limits = MediaLimits(max_pixels=max_pixels)
        shape = dict(patch_size=patch_size, num_layers=num_layers, num_heads=num_heads, hidden_dim=hidden_dim,
                     mlp_dim=mlp_dim)
        export = Path(path) if path else None
        if export is not None and not (export / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"image.encoder: {export} holds no {WEIGHTS_FILE} (an exported encoder)")
        saved = json.loads((export / META_FILE).read_text()) if export and (export / META_FILE).is_file() else {}
        if backbone == "torchvision":
            self.net, size, default_norm = self._torchvision(arch, shape, image_size, weights, export, random_init,
                                                             seed)
        else:
            given = sorted(k for k, v in shape.items() if v is not None)
            if given or image_size is not None:
                raise ValueError(f"image.encoder: backbone 'hf' takes its shape from config.json; drop "
                                 f"{given + (['image_size'] if image_size is not None else [])}")
            self.net, size, default_norm = self._hf(export or weights)
        self.net.eval().requires_grad_(False)
        self.image_size = size
        self.patch_size = self._patch
        if size % self.patch_size:
            raise ValueError(f"image.encoder: image_size {size} is not a multiple of patch_size {self.patch_size}")
        self.grid = size // self.patch_size
        self.mean = list(mean if mean is not None else saved.get("mean", default_norm[0]))
        self.std = list(std if std is not None else saved.get("std", default_norm[1]))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"image.encoder: mean and std need 3 values (std > 0), got {self.mean}, {self.std}")
        n_states = self._n_layers + 1
        if not -n_states <= self.layer < n_states:
            raise ValueError(f"image.encoder: layer {self.layer} is out of range for {self._n_layers} blocks "
                             f"(0 = embeddings, -1 = last block)")
        self.input_dim = self._width

    # ---- building ------------------------------------------------------------------------------
    def _torchvision(self, arch, shape, image_size, weights, export, random_init, seed):
        from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

        if arch == "custom":
            missing = [k for k, v in shape.items() if v is None]
            if missing:
                raise ValueError(f"image.encoder: arch 'custom' needs {missing}")
        elif arch in TORCHVISION_VITS:
            named = dict(zip(_SHAPE_FIELDS, TORCHVISION_VITS[arch]))
            clash = sorted(k for k, v in shape.items() if v is not None and v != named[k])
            if clash:
                raise ValueError(f"image.encoder: {clash} differ from {arch}'s shape; use arch='custom'")
            shape = named
        else:
            raise ValueError(f"image.encoder: unknown arch {arch!r}; torchvision ViTs: {sorted(TORCHVISION_VITS)} "
                             "or 'custom'")
        size = int(image_size or 224)
        file = export / WEIGHTS_FILE if export else (Path(weights) if weights else None)
        if file is None and not random_init:
            raise ValueError("image.encoder needs pretrained weights: weights=<file> (or path=<export folder>); "
                             "random_init=True builds a random backbone (tests only)")

        def build():
            return VisionTransformer(image_size=size, **shape)

        if file is None:
            with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG stream is untouched
                torch.manual_seed(seed)
                vit = build()
        else:
            state = {k: v.float() for k, v in _read_state(file).items() if not k.startswith("heads.")}
            if "encoder.pos_embedding" in state:
                n = (size // shape["patch_size"]) ** 2 + 1
                if state["encoder.pos_embedding"].shape[1] != n:  # trained at another resolution
                    state = dict(interpolate_embeddings(size, shape["patch_size"], state))
            with torch.device("meta"):  # no random init of weights about to be replaced
                vit = build()
            vit.heads = nn.Identity()
            try:
                vit.load_state_dict(state, strict=True, assign=True)
            except RuntimeError as e:
                raise ValueError(f"image.encoder: {file} does not fit a {arch} ViT: {e}") from None
        vit.heads = nn.Identity()  # features only: the classification head is never used
        self._patch, self._n_layers, self._width = shape["patch_size"], shape["num_layers"], shape["hidden_dim"]
        return _TorchvisionViT(vit), size, (IMAGENET_MEAN, IMAGENET_STD)

    def _hf(self, folder):
        if folder is None:
            raise ValueError("image.encoder: backbone 'hf' needs weights=<checkpoint folder> (or path=<export>)")
        folder = Path(folder)
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"image.encoder: {folder} has no config.json (a Hugging Face vision checkpoint)")
        try:
            import transformers
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError("image.encoder backbone 'hf' needs transformers: pip install 'anymodal[hf]'") from None
        kind = json.loads(cfg_file.read_text()).get("model_type")
        if kind not in HF_TYPES:
            raise ValueError(f"image.encoder: {cfg_file}: model_type {kind!r} is not supported "
                             f"(supported: {sorted(HF_TYPES)})")
        cls = getattr(transformers, HF_TYPES[kind])
        model = cls.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True, use_safetensors=True)
        vc = model.config
        norm = (CLIP_MEAN, CLIP_STD) if kind.startswith("clip") else ((0.5,) * 3, (0.5,) * 3)
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            p = json.loads(pre.read_text())
            norm = (p.get("image_mean", norm[0]), p.get("image_std", norm[1]))
        self._hf_model = model
        self._patch, self._n_layers, self._width = vc.patch_size, vc.num_hidden_layers, vc.hidden_size
        return _HFVision(model), int(vc.image_size), norm

    # ---- the contract ----------------------------------------------------------------------------
    def _pixels(self, segment: Segment) -> torch.Tensor:
        img = load_image(segment.data, name=segment.source, limits=self.limits)  # (3, H, W) in [0, 1]
        mean = torch.tensor(self.mean).view(3, 1, 1)
        _, h, w = img.shape
        if h != w:  # pad to a square with the mean colour (0 after normalisation), LLaVA-1.5
            side = max(h, w)
            canvas = mean.expand(3, side, side).clone()
            top, left = (side - h) // 2, (side - w) // 2
            canvas[:, top:top + h, left:left + w] = img
            img = canvas
        if img.shape[1] != self.image_size:
            img = F.interpolate(img[None], size=(self.image_size,) * 2, mode="bicubic", antialias=True,
                                align_corners=False)[0]
        return ((img - mean) / torch.tensor(self.std).view(3, 1, 1))[None]  # (1, 3, S, S)

    def encode(self, segment: Segment) -> TokenBlock:
        with torch.no_grad():
            states = self.net(self._pixels(segment))
        feats = states[self.layer][0]  # (n, D)
        feats = feats[feats.shape[0] - self.grid * self.grid:]  # drop the class token (CLIP, torchvision)
        return TokenBlock(vectors=feats.float().contiguous(), grid=(1, self.grid, self.grid))

    def num_tokens(self, segment: Segment) -> int:
        image_size(segment.data, name=segment.source, limits=self.limits)  # header only: a bad file fails here
        return self.grid * self.grid

    def state_files(self) -> dict[str, bytes]:
        """The backbone's weights (safetensors) and normalisation, so an export needs no other file."""
        meta = json.dumps({"mean": self.mean, "std": self.std, "patch_size": self.patch_size,
                           "image_size": self.image_size}).encode()
        if self.backbone == "hf":
            with tempfile.TemporaryDirectory() as d:
                self._hf_model.save_pretrained(d, safe_serialization=True)
                files = {"config.json": Path(d, "config.json").read_bytes(),
                         WEIGHTS_FILE: Path(d, WEIGHTS_FILE).read_bytes()}
            return {**files, META_FILE: meta}
        from safetensors.torch import save

        state = {k: v.detach().contiguous() for k, v in self.net.vit.state_dict().items()}
        return {WEIGHTS_FILE: save(state), META_FILE: meta}


register_tokenizer("image.encoder")(ImageEncoderTokenizer)
