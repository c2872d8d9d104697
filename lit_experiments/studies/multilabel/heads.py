"""Heads of the multi-label study: parts that turn frozen tower embeddings into class logits.

Every head is called as ``head(image_emb (B, Di), text_emb (B, Dt) | None)`` and returns a dict with at
least ``logits`` (B, C) and ``fused`` (B, F), the representation the cosine loss and the kNN inference read.
Widths ``Di / Dt / C`` are never given in a YAML: the module calls ``head.build(image_dim, text_dim,
num_classes)`` once it knows the towers and the label space (the layers are created there).

* :class:`MLPHead`: the seed's baseline, an MLP on the concatenated image and text embeddings.
* :class:`AGCHHead`: the seed's AGCH-style head (direction / magnitude decomposition, Hadamard or concat
  fusion, optional tanh hash layer). Every switch the seed's ablations flip (fusion, hash layer, text input)
  is a typed option, so an ablation is a YAML delta (LESSONS F28).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchvision.ops import MLP

from lit_experiments.core.errors import ConfigError

Inputs = Literal["image+text", "image"]
INPUTS = ("image+text", "image")
FUSIONS = ("hadamard", "concat")


def _check_inputs(owner: str, inputs: str) -> None:
    if inputs not in INPUTS:
        raise ConfigError(f"{owner}: inputs={inputs!r}; expected one of {list(INPUTS)}")


def _build_sizes(owner: str, inputs: str, built: tuple | None, image_dim: int, text_dim: int | None,
                 num_classes: int) -> tuple[int, int | None, int] | None:
    """The sizes to build with, or None when the head is already built for exactly these (other sizes: error)."""
    sizes = (int(image_dim), None if inputs == "image" or text_dim is None else int(text_dim), int(num_classes))
    if built is not None:
        if sizes != built:
            raise ConfigError(f"{owner}.build{sizes}: already built for {built}")
        return None
    _check_build(owner, inputs, *sizes)
    return sizes


def _check_build(owner: str, inputs: str, image_dim: int, text_dim: int | None, num_classes: int) -> None:
    if image_dim < 1 or num_classes < 1:
        raise ConfigError(f"{owner}.build: image_dim={image_dim}, num_classes={num_classes}; "
                          "expected both >= 1")
    if inputs == "image+text" and (text_dim is None or text_dim < 1):
        raise ConfigError(f"{owner}.build: inputs='image+text' needs text_dim >= 1, got {text_dim!r} "
                          "(use inputs: image for an image-only head)")


def _text_or_fail(owner: str, text_emb: torch.Tensor | None, batch: int) -> torch.Tensor:
    if text_emb is None:
        raise ValueError(f"{owner}(inputs='image+text') got text_emb=None; pass the text embeddings "
                         "or configure inputs: image")
    if text_emb.ndim != 2 or text_emb.shape[0] != batch:
        raise ValueError(f"{owner}: text_emb has shape {tuple(text_emb.shape)}; expected ({batch}, Dt)")
    return text_emb


class MLPHead(nn.Module):
    """The seed's baseline: ``cat(image_emb, text_emb) -> MLP(hidden) -> Linear(C)``.

    The hidden layers are a ``torchvision.ops.MLP`` (Linear, ReLU, Dropout per layer); the classifier is a
    plain ``Linear`` so no dropout falls on the logits. ``fused`` is the last hidden activation (the
    concatenated input when ``hidden`` is empty, which makes the head a linear probe).

    Args:
        hidden: widths of the hidden layers (``[]``: a linear classifier).
        dropout: dropout after each hidden layer.
        inputs: ``"image+text"`` (concatenated embeddings) or ``"image"`` (image-only variant, text ignored).
    """

    def __init__(self, hidden: list[int] | None = None, dropout: float = 0.1,
                 inputs: Inputs = "image+text") -> None:
        super().__init__()
        hidden = [512] if hidden is None else [int(h) for h in hidden]
        if any(h < 1 for h in hidden):
            raise ConfigError(f"MLPHead: hidden={hidden}; expected widths >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"MLPHead: dropout={dropout}; expected 0 <= dropout < 1")
        _check_inputs("MLPHead", inputs)
        self.hidden, self.dropout, self.inputs = hidden, float(dropout), inputs
        self.body: nn.Module | None = None
        self.classifier: nn.Linear | None = None
        self.sizes: tuple[int, int | None, int] | None = None
        self.fused_dim: int | None = None

    def build(self, image_dim: int, text_dim: int | None, num_classes: int) -> None:
        """Create the layers for these widths (once; a second call with other widths is an error)."""
        sizes = _build_sizes("MLPHead", self.inputs, self.sizes, image_dim, text_dim, num_classes)
        if sizes is None:
            return
        in_dim = sizes[0] + (sizes[1] or 0)
        self.body = (MLP(in_dim, self.hidden, dropout=self.dropout, inplace=None) if self.hidden
                     else nn.Identity())
        self.fused_dim = self.hidden[-1] if self.hidden else in_dim
        self.classifier = nn.Linear(self.fused_dim, sizes[2])
        self.sizes = sizes

    def forward(self, image_emb: torch.Tensor,
                text_emb: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.body is None or self.classifier is None:
            raise RuntimeError("MLPHead.build(image_dim, text_dim, num_classes) was not called")
        x = image_emb
        if self.inputs == "image+text":
            x = torch.cat([image_emb, _text_or_fail("MLPHead", text_emb, len(image_emb))], dim=1)
        fused = self.body(x)
        return {"logits": self.classifier(fused), "fused": fused}


class _Modality(nn.Module):
    """One modality of :class:`AGCHHead`: ``direction = Linear(e / |e|)`` and
    ``magnitude = 2 sigmoid(g(log|e|))`` (a per-channel gate in (0, 2), 1 when ``g`` outputs 0); the
    modality's representation is their product."""

    def __init__(self, in_dim: int, dim: int, magnitude_hidden: int) -> None:
        super().__init__()
        self.direction = nn.Linear(in_dim, dim)
        self.magnitude = MLP(1, [magnitude_hidden, dim], inplace=None)

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        norm = emb.norm(dim=1, keepdim=True)
        direction = self.direction(emb / norm.clamp_min(1e-12))
        magnitude = 2.0 * torch.sigmoid(self.magnitude(torch.log(norm.clamp_min(1e-12))))
        return direction, magnitude


class AGCHHead(nn.Module):
    """The seed's AGCH-style head. Each part is *AGCH-inspired*: AGCH proper (Zhang, Li, Huang, Xu,
    "Aggregation-based Graph Convolutional Hashing for Unsupervised Cross-modal Retrieval", IEEE TMM 2022,
    doi:10.1109/TMM.2021.3053766) is unsupervised cross-modal hashing: it aggregates several similarity
    metrics of the features into a joint affinity matrix and learns unified binary codes with modality
    encoders, GCNs and a fusion module. This supervised head has no graph and no GCN; it borrows only these
    parts:

    1. **Direction / magnitude decomposition** (AGCH-inspired: AGCH's affinity aggregates a direction metric,
       cosine similarity, with a magnitude-sensitive one, Euclidean distance). Per modality,
       ``direction = Linear(e / |e|) -> (B, dim)`` and ``magnitude = 2 sigmoid(MLP(log |e|)) -> (B, dim)``,
       a per-channel gate in (0, 2) from the norm alone (``log`` so a scale factor of the towers is a shift
       of the gate's input); the modality's representation is ``direction * magnitude``. Scaling an
       embedding by ``c > 0`` changes only the magnitude path.
    2. **Fusion** (AGCH-inspired: AGCH combines its per-modality similarities element-wise and has a fusion
       module for the two modalities).
       ``"hadamard"``: ``z_image * z_text`` (B, dim); ``"concat"``: ``cat(z_image, z_text)`` (B, 2 dim).
       With ``inputs="image"`` there is nothing to fuse and ``fused = z_image`` (B, dim); ``fusion`` is
       unused.
    3. **Hash layer** (AGCH-inspired: AGCH's ``tanh`` relaxation of ``sign`` codes). ``hash_bits=K``:
       ``hash = tanh(Linear(fused)) -> (B, K)`` in (-1, 1), and in eval mode ``codes`` = the sign of ``hash``
       in {-1, 1} (0 maps to +1) for Hamming kNN; the classifier then reads ``hash`` (the seed's 64-bit
       bottleneck). ``hash_bits=None`` (ablation AB-1): no hash layer, the classifier reads ``fused``.
    4. **Classifier**: dropout then ``Linear(-> C)``.

    Returns ``logits`` (B, C), ``fused`` (B, dim or 2 dim), per modality ``image_direction`` /
    ``image_magnitude`` (and ``text_...``) (B, dim), and with a hash layer ``hash`` (B, K) (+ ``codes`` in
    eval).

    Args:
        dim: width of each modality's projection.
        fusion: ``"hadamard"`` or ``"concat"``.
        hash_bits: width of the tanh hash layer, or ``None`` for no hash layer.
        inputs: ``"image+text"`` or ``"image"`` (image-only variant, text ignored).
        magnitude_hidden: hidden width of the magnitude map (``1 -> magnitude_hidden -> dim``).
        dropout: dropout before the classifier.
    """

    def __init__(self, dim: int = 512, fusion: Literal["hadamard", "concat"] = "hadamard",
                 hash_bits: int | None = 64, inputs: Inputs = "image+text", magnitude_hidden: int = 16,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if dim < 1 or magnitude_hidden < 1:
            raise ConfigError(f"AGCHHead: dim={dim}, magnitude_hidden={magnitude_hidden}; expected both >= 1")
        if fusion not in FUSIONS:
            raise ConfigError(f"AGCHHead: fusion={fusion!r}; expected one of {list(FUSIONS)}")
        if hash_bits is not None and hash_bits < 1:
            raise ConfigError(f"AGCHHead: hash_bits={hash_bits}; expected >= 1, or null for no hash layer")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"AGCHHead: dropout={dropout}; expected 0 <= dropout < 1")
        _check_inputs("AGCHHead", inputs)
        self.dim, self.fusion, self.inputs = int(dim), fusion, inputs
        self.hash_bits = None if hash_bits is None else int(hash_bits)
        self.magnitude_hidden, self.dropout = int(magnitude_hidden), float(dropout)
        self.image: _Modality | None = None
        self.text: _Modality | None = None
        self.hash_layer: nn.Linear | None = None
        self.classifier: nn.Module | None = None
        self.sizes: tuple[int, int | None, int] | None = None
        self.fused_dim = self.dim * 2 if inputs == "image+text" and fusion == "concat" else self.dim

    def build(self, image_dim: int, text_dim: int | None, num_classes: int) -> None:
        """Create the layers for these widths (once; a second call with other widths is an error)."""
        sizes = _build_sizes("AGCHHead", self.inputs, self.sizes, image_dim, text_dim, num_classes)
        if sizes is None:
            return
        self.image = _Modality(sizes[0], self.dim, self.magnitude_hidden)
        if self.inputs == "image+text":
            self.text = _Modality(sizes[1], self.dim, self.magnitude_hidden)  # type: ignore[arg-type]
        if self.hash_bits is not None:
            self.hash_layer = nn.Linear(self.fused_dim, self.hash_bits)
        cls_in = self.hash_bits if self.hash_bits is not None else self.fused_dim
        self.classifier = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(cls_in, sizes[2]))
        self.sizes = sizes

    def forward(self, image_emb: torch.Tensor,
                text_emb: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.image is None or self.classifier is None:
            raise RuntimeError("AGCHHead.build(image_dim, text_dim, num_classes) was not called")
        out: dict[str, torch.Tensor] = {}
        direction, magnitude = self.image(image_emb)
        out["image_direction"], out["image_magnitude"] = direction, magnitude
        fused = direction * magnitude
        if self.text is not None:
            t_dir, t_mag = self.text(_text_or_fail("AGCHHead", text_emb, len(image_emb)))
            out["text_direction"], out["text_magnitude"] = t_dir, t_mag
            z_text = t_dir * t_mag
            fused = fused * z_text if self.fusion == "hadamard" else torch.cat([fused, z_text], dim=1)
        out["fused"] = fused
        rep = fused
        if self.hash_layer is not None:
            rep = out["hash"] = torch.tanh(self.hash_layer(fused))
            if not self.training:
                out["codes"] = torch.where(rep.detach() >= 0, 1.0, -1.0).to(rep.dtype)
        out["logits"] = self.classifier(rep)
        return out

