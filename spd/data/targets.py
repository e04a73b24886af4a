"""Training targets at head resolution: joint heatmaps and downsampled DensePose IUV.

Coordinate convention (shared by encoder, decoder and the predictor): head pixel i covers input
pixels [i*s, (i+1)*s) with s = HEAD_STRIDE, so its centre sits at input x = (i + 0.5) * s - 0.5 —
the same alignment as bilinear upsampling with align_corners=False.
"""

from __future__ import annotations

import torch

HEAD_STRIDE = 8


def head_size(height: int, width: int, stride: int = HEAD_STRIDE) -> tuple[int, int]:
    return -(-height // stride), -(-width // stride)


def to_head_coords(xy: torch.Tensor, stride: int = HEAD_STRIDE) -> torch.Tensor:
    return (xy + 0.5) / stride - 0.5


def from_head_coords(xy: torch.Tensor, stride: int = HEAD_STRIDE) -> torch.Tensor:
    return (xy + 0.5) * stride - 0.5


def joint_heatmaps(
    keypoints: torch.Tensor,
    image_size: tuple[int, int],
    sigma: float,
    stride: int = HEAD_STRIDE,
    has_pose: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian heatmaps from keypoints (B, J, 3) (x, y in input pixels, v > 0 labelled).

    Returns heatmaps (B, J, h, w) with peak 1 and a weight (B, J): 1 for joints that are labelled,
    inside the image and belong to a sample with pose labels; 0 otherwise (their map is all zero).
    """
    B, J, _ = keypoints.shape
    H, W = image_size
    h, w = head_size(H, W, stride)
    kp = keypoints.float()
    x, y, v = kp[..., 0], kp[..., 1], kp[..., 2]
    finite = torch.isfinite(x) & torch.isfinite(y)
    inside = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
    weight = (v > 0) & finite & inside
    if has_pose is not None:
        weight = weight & has_pose.view(B, 1).to(torch.bool)
    xy = to_head_coords(torch.stack([x, y], dim=-1).nan_to_num(0.0), stride)  # (B, J, 2)
    gx = torch.arange(w, dtype=torch.float32, device=kp.device).view(1, 1, 1, w)
    gy = torch.arange(h, dtype=torch.float32, device=kp.device).view(1, 1, h, 1)
    d2 = (gx - xy[..., 0, None, None]) ** 2 + (gy - xy[..., 1, None, None]) ** 2  # (B, J, h, w)
    maps = torch.exp(-d2 / (2.0 * sigma**2)) * weight[..., None, None]
    return maps, weight.float()


def decode_heatmaps(heatmaps: torch.Tensor, stride: int = HEAD_STRIDE) -> torch.Tensor:
    """(B, J, h, w) heatmaps -> (B, J, 3): x, y in input pixels and the peak value as score.

    Arg-max with the usual quarter-pixel shift towards the higher neighbour.
    """
    B, J, h, w = heatmaps.shape
    hm = heatmaps.float().contiguous()
    score, idx = hm.view(B, J, -1).max(dim=-1)
    iy, ix = (idx // w), (idx % w)
    flat = hm.view(B * J, h, w)
    bj = torch.arange(B * J, device=hm.device)
    fx, fy = ix.view(-1), iy.view(-1)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat[bj, yy.clamp(0, h - 1), xx.clamp(0, w - 1)]

    dx = torch.sign(at(fy, fx + 1) - at(fy, fx - 1)) * ((fx > 0) & (fx < w - 1))
    dy = torch.sign(at(fy + 1, fx) - at(fy - 1, fx)) * ((fy > 0) & (fy < h - 1))
    x = fx.float() + 0.25 * dx
    y = fy.float() + 0.25 * dy
    xy = from_head_coords(torch.stack([x, y], dim=-1), stride).view(B, J, 2)
    return torch.cat([xy, score.view(B, J, 1)], dim=-1)


def downsample_iuv(
    dp_index: torch.Tensor, dp_uv: torch.Tensor, stride: int = HEAD_STRIDE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest (centre-pixel) downsampling of IUV labels to head resolution.

    dp_index (B, H, W) int64 (255 = ignore), dp_uv (B, 2, H, W) -> (B, h, w), (B, 2, h, w).
    Part ids are sampled, never interpolated, so boundaries stay sharp and no id is invented;
    U, V come from the same pixel as their part id.
    """
    H, W = dp_index.shape[-2:]
    h, w = head_size(H, W, stride)
    ys = ((torch.arange(h, device=dp_index.device) + 0.5) * stride).long().clamp(max=H - 1)
    xs = ((torch.arange(w, device=dp_index.device) + 0.5) * stride).long().clamp(max=W - 1)
    index = dp_index[..., ys, :][..., xs]
    uv = dp_uv[..., ys, :][..., xs]
    return index, uv
