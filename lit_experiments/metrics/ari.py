"""Adjusted Rand Index (ARI / FG-ARI), mean best overlap (mBO) and the mask resize path (F05).

Conventions (every function here is per sample and batched; no Python loop over samples):

* ``pred`` is either an integer label map with the same shape as ``target`` (``(B, *spatial)``) or soft
  masks / logits ``(B, K, *spatial)`` (any floating dtype), reduced by ``argmax`` over ``K``. ``target`` is
  an integer label map ``(B, *spatial)``. ``spatial`` is any shape: images ``(H, W)``, video clips
  ``(T, H, W)`` (a clip is one sample; its frames are flattened together).
* Label values are arbitrary integers; only equality matters (permuting ids never changes a score).
  GT id ``0`` is background.
* ``ari(..., foreground_only=True)`` (FG-ARI) drops every pixel whose *target* is 0; the prediction may
  still put several slots on those pixels without penalty. ``foreground_only=False`` keeps all pixels.
* The contingency table of a batch is one ``scatter_add_`` of the key ``pred * Kt + target`` into a
  ``(B, Kp * Kt)`` buffer (row b = sample b, i.e. a bincount with a per-sample offset), over chunks of
  ~2**18 pixels so the keys stay cache-resident. Ids are used as bins directly when they are small and
  non-negative, else compacted with ``torch.unique``; huge id ranges fall back to a sort-based sparse
  count. All sums are int64, the final formula float64.
* ARI follows ``sklearn.metrics.adjusted_rand_score`` exactly (pair-confusion form), including its edge
  cases: when the two labelings agree on every pair (both a single cluster, both all singletons, a
  single pixel) the score is 1.0. The one deliberate difference: a sample with **no pixels left**
  (FG-ARI of a sample without foreground) is ``NaN`` where sklearn would return 1.0 for empty input;
  the metric classes skip and count such samples.
* ``mbo``: for every GT object (ids != 0 present in the sample) the best IoU over all predicted
  segments (computed over the full image), averaged over objects; ``NaN`` when a sample has no object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_DENSE_LIMIT = 1 << 24  # contingency cells above which the sparse (sort-based) path is used
_DIRECT_ID_LIMIT = 1 << 12  # non-negative ids below this are used as bins without compaction
_CHUNK_PIXELS = 1 << 18  # pixels per chunk in ari() (whole samples)


def _as_label_maps(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Validate shapes and return ``(pred, target)`` as integer ``(B, P)`` label maps (dtype kept)."""
    if target.dim() < 2:
        raise ValueError(f"target must be (B, *spatial), got shape {tuple(target.shape)}")
    if target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must be an integer label map, got dtype {target.dtype}")
    if pred.is_floating_point():
        if pred.dim() != target.dim() + 1 or pred.shape[0] != target.shape[0] or pred.shape[2:] != target.shape[1:]:
            raise ValueError(
                f"soft pred must be (B, K, *spatial) matching target (B, *spatial): "
                f"pred {tuple(pred.shape)}, target {tuple(target.shape)}"
            )
        pred = pred.argmax(dim=1)
    elif pred.shape != target.shape:
        raise ValueError(
            f"integer pred must have target's shape: pred {tuple(pred.shape)}, target {tuple(target.shape)}"
        )
    b = target.shape[0]
    if pred.dtype == torch.bool:
        pred = pred.to(torch.uint8)
    if target.dtype == torch.bool:
        target = target.to(torch.uint8)
    return pred.reshape(b, -1), target.reshape(b, -1)


def _compact(x: Tensor) -> tuple[Tensor, Tensor]:
    """Map ids to ``[0, K)``; returns ``(codes, ids)`` with ``ids[code] == original id``."""
    if x.numel() == 0:
        return x.long(), torch.zeros(1, dtype=torch.long, device=x.device)
    lo, hi = (int(v) for v in torch.aminmax(x))
    if lo >= 0 and hi < _DIRECT_ID_LIMIT:
        return x, torch.arange(hi + 1, device=x.device)
    ids, codes = torch.unique(x, return_inverse=True)
    return codes, ids


def _contingency(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Dense per-sample contingency ``(B, Kp, Kt)`` int64 and the target ids of the ``Kt`` columns.

    One fused ``target + Kt * pred`` pass and one ``scatter_add_`` along the pixel axis (no per-sample
    offsets needed); counts accumulate in float32 (exact below 2**24 pixels per sample).
    """
    b, npix = pred.shape
    p, p_ids = _compact(pred)
    t, t_ids = _compact(target)
    kp, kt = p_ids.numel(), t_ids.numel()
    if b * kp * kt > _DENSE_LIMIT:
        raise OverflowError("contingency too large for the dense path")
    small = torch.int16 if kp * kt < 2**15 else torch.int32 if kp * kt < 2**31 else torch.int64
    if t.dtype == torch.int64 and p.dtype == torch.int64:
        key = torch.add(t, p, alpha=kt)
    else:
        key = torch.add(t.to(small), p.to(small), alpha=kt).long()
    acc = torch.float32 if npix < 2**24 else torch.float64
    ones = torch.ones(1, dtype=acc, device=key.device).expand(b, npix)
    counts = torch.zeros(b, kp * kt, dtype=acc, device=key.device).scatter_add_(1, key, ones)
    return counts.long().view(b, kp, kt), t_ids


def _pair_sums(pred: Tensor, target: Tensor, foreground_only: bool) -> tuple[Tensor, ...]:
    """Per-sample ``n``, ``sum n_ij^2``, ``sum a_i^2`` (pred), ``sum b_j^2`` (target), all int64."""
    try:
        c, t_ids = _contingency(pred, target)
        if foreground_only:
            c = c * (t_ids != 0)
        n = c.sum(dim=(1, 2))
        s = (c * c).sum(dim=(1, 2))
        a = c.sum(dim=2)
        bb = c.sum(dim=1)
        return n, s, (a * a).sum(1), (bb * bb).sum(1)
    except OverflowError:
        return _pair_sums_sparse(pred, target, foreground_only)


def _pair_sums_sparse(pred: Tensor, target: Tensor, foreground_only: bool) -> tuple[Tensor, ...]:
    """Same sums via ``torch.unique`` on joint keys (for huge id ranges); memory O(pixels)."""
    b, npix = pred.shape
    bidx = torch.arange(b, device=pred.device).unsqueeze(1).expand(b, npix)
    keep = target != 0 if foreground_only else torch.ones_like(target, dtype=torch.bool)
    bidx, p, t = bidx[keep], pred[keep], target[keep]
    p, _ = _compact(p)
    t, _ = _compact(t)
    kp, kt = int(p.max()) + 1 if p.numel() else 1, int(t.max()) + 1 if t.numel() else 1

    def grouped_sq(key: Tensor, owner: Tensor) -> Tensor:
        uk, inv, cnt = torch.unique(key, return_inverse=True, return_counts=True)
        first = torch.zeros_like(uk).scatter_(0, inv, owner)
        return torch.zeros(b, dtype=torch.long, device=key.device).index_add_(0, first, cnt * cnt)

    n = torch.bincount(bidx, minlength=b)
    s = grouped_sq((bidx * kp + p) * kt + t, bidx)
    sa = grouped_sq(bidx * kp + p, bidx)
    sb = grouped_sq(bidx * kt + t, bidx)
    return n, s, sa, sb


def ari(pred: Tensor, target: Tensor, foreground_only: bool = True) -> Tensor:
    """Per-sample (FG-)ARI as float64 ``(B,)``; see the module docstring for conventions.

    Args:
        pred: int label map ``(B, *spatial)`` or soft masks / logits ``(B, K, *spatial)``.
        target: int label map ``(B, *spatial)``; id 0 is background.
        foreground_only: drop pixels with ``target == 0`` (FG-ARI, F05).
    """
    p, t = _as_label_maps(pred, target)
    # Chunks of ~2**18 pixels keep the intermediate keys cache-resident; each sample sits in one chunk.
    step = max(1, _CHUNK_PIXELS // max(1, p.shape[1]))
    parts = [_pair_sums(p[i : i + step], t[i : i + step], foreground_only) for i in range(0, p.shape[0], step)]
    n, s, sa, sb = (torch.cat(x).double() for x in zip(*parts))
    tp = s - n
    fp = sa - s  # pairs together in pred, apart in target
    fn = sb - s  # pairs together in target, apart in pred
    tn = n * n - fp - fn - s
    num = 2.0 * (tp * tn - fn * fp)
    den = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    out = num / den
    out = torch.where((fn == 0) & (fp == 0), torch.ones_like(out), out)
    return torch.where(n == 0, torch.full_like(out, math.nan), out)


def mbo(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean best overlap as float64 ``(B,)`` (GT id 0 is not an object; NaN without objects)."""
    p, t = _as_label_maps(pred, target)
    try:
        c, t_ids = _contingency(p, t)
    except OverflowError:
        return _mbo_sparse(p, t)
    c = c.double()
    area_p = c.sum(2, keepdim=True)
    area_t = c.sum(1, keepdim=True)
    union = area_p + area_t - c
    iou = torch.where(union > 0, c / union.clamp_min(1), torch.zeros_like(c))
    best = iou.amax(dim=1)  # (B, Kt)
    valid = (area_t.squeeze(1) > 0) & (t_ids != 0).unsqueeze(0)
    count = valid.sum(1)
    total = torch.where(valid, best, torch.zeros_like(best)).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


def _mbo_sparse(p: Tensor, t: Tensor) -> Tensor:
    """mBO via unique joint keys for huge id ranges (same result as the dense path)."""
    b, npix = p.shape
    bidx = torch.arange(b, device=p.device).unsqueeze(1).expand(b, npix).reshape(-1)
    p, _ = _compact(p.reshape(-1))
    t, t_ids = _compact(t.reshape(-1))
    kp, kt = int(p.max()) + 1, int(t.max()) + 1
    prow, tcol = bidx * kp + p, bidx * kt + t
    keys, cnt = torch.unique(prow * (b * kt) + tcol, return_counts=True)
    area_p = torch.bincount(prow, minlength=b * kp).double()
    area_t = torch.bincount(tcol, minlength=b * kt).double()
    kr, kc = keys // (b * kt), keys % (b * kt)
    iou = cnt.double() / (area_p[kr] + area_t[kc] - cnt.double())
    best = torch.zeros(b * kt, dtype=torch.float64, device=p.device).scatter_reduce_(0, kc, iou, "amax")
    tid = t_ids[torch.arange(b * kt, device=p.device) % kt]
    valid = ((area_t > 0) & (tid != 0)).view(b, kt)
    best = best.view(b, kt)
    count = valid.sum(1)
    total = torch.where(valid, best, torch.zeros_like(best)).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


def resize_masks(
    pred_masks_or_logits: Tensor,
    size: int | Sequence[int] | None = None,
    gt: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The evaluation resize path of F05: soft masks bilinear then argmax; GT nearest.

    Args:
        pred_masks_or_logits: ``(B, K, h, w)`` soft masks (e.g. slot-attention alphas) or logits, or
            patch-token masks ``(B, K, N)`` with ``N = h * w`` a perfect square (row-major patches).
            Upsampling is bilinear with ``align_corners=False``; the argmax over ``K`` comes *after*
            the resize (argmax first then resizing label ids is the F05 bug).
        size: output ``(H, W)`` (an int means square); defaults to ``gt``'s spatial size.
        gt: optional int GT ``(B, H0, W0)``; resized with ``nearest-exact`` (pixel-centre sampling, as
            PIL's NEAREST) only when ``(H0, W0) != size``, so no new ids are ever invented.

    Returns:
        int64 label map ``(B, H, W)``, or ``(pred_labels, gt_resized)`` when ``gt`` is given.
    """
    x = pred_masks_or_logits
    if not x.is_floating_point():
        raise ValueError(
            f"pred_masks_or_logits must be soft masks or logits (floating), got dtype {x.dtype}; "
            "resizing integer label ids is the F05 bug"
        )
    if x.dim() == 3:
        side = math.isqrt(x.shape[2])
        if side * side != x.shape[2]:
            raise ValueError(f"patch masks (B, K, N) need N to be a square number, got shape {tuple(x.shape)}")
        x = x.reshape(x.shape[0], x.shape[1], side, side)
    elif x.dim() != 4:
        raise ValueError(f"pred_masks_or_logits must be (B, K, h, w) or (B, K, N), got shape {tuple(x.shape)}")
    if size is None:
        if gt is None:
            raise ValueError("give size or gt")
        size = tuple(gt.shape[-2:])
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if gt is not None and (gt.dim() != 3 or gt.shape[0] != x.shape[0]):
        raise ValueError(f"gt must be (B, H, W) with B={x.shape[0]}, got shape {tuple(gt.shape)}")
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, size=size,
                          mode="bilinear", align_corners=False)
    labels = x.argmax(dim=1)
    if gt is None:
        return labels
    if tuple(gt.shape[-2:]) != size:
        gt = F.interpolate(gt[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(gt.dtype)
    return labels, gt
