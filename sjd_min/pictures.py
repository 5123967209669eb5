"""Pictures: output tensors as PIL images, acceptance heatmaps, and labelled grids."""

from __future__ import annotations

from torch import Tensor

_VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def to_pil(image: Tensor):
    """[3, H, W] in [-1, 1] -> an RGB PIL image."""
    from PIL import Image

    x = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(x)


def colormap(t: float) -> tuple[int, int, int]:
    """A viridis-like colour for t in [0, 1]."""
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    return tuple(round(a + (b - a) * f) for a, b in zip(_VIRIDIS[i], _VIRIDIS[i + 1]))


def heatmap(commit_call: Tensor, image_slots: Tensor, cell: int = 16):
    """Each image token coloured by the model call that committed it (dark: early, yellow: late);
    runs of one colour are tokens committed together."""
    from PIL import Image

    calls = commit_call[image_slots].float()  # h w
    top = max(float(calls.max()), 1.0)
    h, w = calls.shape
    img = Image.new("RGB", (w, h))
    img.putdata([colormap(float(c) / top) for c in calls.flatten()])
    return img.resize((w * cell, h * cell), Image.NEAREST)


def grid(images: list, labels_left: list[str] | None = None, labels_top: list[str] | None = None, pad: int = 4):
    """PIL images in rows and columns with optional text labels (Pillow's default font)."""
    from PIL import Image, ImageDraw

    cw = max(im.width for row in images for im in row)
    ch = max(im.height for row in images for im in row)
    left = 8 + 6 * max((len(s) for s in labels_left), default=0) if labels_left else 0
    top = 16 if labels_top else 0
    cols = max(len(r) for r in images)
    canvas = Image.new("RGB", (left + cols * (cw + pad) + pad, top + len(images) * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(labels_top or []):
        draw.text((left + pad + j * (cw + pad), 2), label, fill="black")
    for i, row in enumerate(images):
        y = top + pad + i * (ch + pad)
        if labels_left:
            draw.text((4, y + ch // 2 - 5), labels_left[i], fill="black")
        for j, im in enumerate(row):
            canvas.paste(im, (left + pad + j * (cw + pad), y))
    return canvas
