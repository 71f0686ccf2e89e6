"""Pictures as exact pixel grids (PIL + numpy, matplotlib's colour maps): saliency rows and ranked lists.

Every picture is a row (or rows) of equal tiles, each under a one-line caption strip, so that tests can find each
tile at a known position.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw

from .saliency import Saliency, activation_map, pooled_view, pooling_exponent, suppressed_after

CAPTION = 14  # pixels of the caption strip above each tile
LEGEND = 14  # pixels of each line of the legend under a saliency row
GAP = 4  # pixels between tiles
BORDER = 4  # pixels of a ranked-list tile's correct / wrong frame
GREEN, RED, GREY = (0, 170, 0), (220, 0, 0), (150, 150, 150)


class Grid(NamedTuple):
    """Where the tiles are: tile (r, c) spans x = c * (width + GAP) + [0, width), y = r * (CAPTION + height) +
    CAPTION + [0, height)."""

    rows: int
    cols: int
    height: int
    width: int

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) of the whole picture."""
        return self.cols * (self.width + GAP) - GAP, self.rows * (CAPTION + self.height)

    def origin(self, row: int, col: int) -> Tuple[int, int]:
        """Top-left pixel (x, y) of tile (row, col), below its caption."""
        return col * (self.width + GAP), row * (CAPTION + self.height) + CAPTION


def save_png(picture: Image.Image, path: str) -> None:
    """256-colour PNG (median cut, no dithering): a third of the RGB file's size, no visible loss for these pictures."""
    picture.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 255] (the model's input) -> (H, W, 3) uint8."""
    return image.clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()


def heat_overlay(image: np.ndarray, heat: torch.Tensor, alpha: float = 0.5,
                 scale: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """image (H, W, 3) uint8, heat (h, w) -> jet colour map (blue low, red high) of the bilinearly upsampled heat,
    normalised to its own min and max or to a fixed ``scale`` (low, high), blended over the image; (H, W, 3) uint8."""
    h, w = image.shape[:2]
    heat = F.interpolate(heat[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    low, high = (heat.min(), heat.max()) if scale is None else scale
    heat = ((heat - low) / (high - low)).clamp(0, 1) if high > low else torch.zeros_like(heat)
    colours = colormaps["jet"](heat.numpy())[..., :3] * 255
    return (alpha * colours + (1 - alpha) * image).round().astype(np.uint8)


def compose(tiles: Sequence[Sequence[Image.Image]], captions: Sequence[Sequence[str]],
            frames: Optional[Sequence[Sequence[Optional[tuple]]]] = None,
            legend: Sequence[str] = ()) -> Tuple[Image.Image, Grid]:
    """Rows of equal-size tiles with a caption above each (and optionally a coloured frame), then the ``legend`` lines
    under the grid -> picture, grid."""
    width, height = tiles[0][0].size
    grid = Grid(rows=len(tiles), cols=max(len(row) for row in tiles), height=height, width=width)
    canvas = Image.new("RGB", (grid.size[0], grid.size[1] + LEGEND * len(legend)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            x, y = grid.origin(r, c)
            canvas.paste(tile, (x, y))
            draw.text((x + 1, y - CAPTION + 1), captions[r][c], fill="black")
            frame = frames[r][c] if frames else None
            if frame is not None:
                draw.rectangle([x, y, x + width - 1, y + height - 1], outline=frame, width=BORDER)
    for i, line in enumerate(legend):
        draw.text((1, grid.size[1] + LEGEND * i + 1), line, fill="black")
    return canvas, grid


VIEWS = ("pooled", "energy")


def stage_heat(x: torch.Tensor, pool: torch.nn.Module, view: str) -> torch.Tensor:
    """(B, C, h, w) map -> (B, h, w) heat: what ``pool`` draws from each position (``pooled``), or the energy
    sum_c x^2 whatever its sign (``energy``)."""
    return pooled_view(x, pool) if view == "pooled" else activation_map(x)


def pooling_caption(pool: torch.nn.Module) -> str:
    p = pooling_exponent(pool)
    return f"GeM p={p:.1f}" if "GeneralizedMean" in type(pool).__name__ else f"{type(pool).__name__}"


def legend_lines(view: str, attention: bool) -> List[str]:
    """What the colours of a saliency row mean."""
    lines = ["X1, Yt: sum_c max(x, eps)^p, the part of each position GeM pools (its stage's p; average / max pooling: "
             "max(x, 0)); each tile blue (its min) to red (its max)." if view == "pooled" else
             "X1, Yt: sum_c x^2, the map's energy whatever its sign (not what the head pools); each tile blue (its "
             "min) to red (its max)."]
    if attention:
        lines.append("Attention A_n = sigmoid(a_n), on a fixed scale: blue 0 (the block's branch suppressed there) "
                     "to red 1 (passed).")
    return lines


def stage_tile(image: np.ndarray, saliency: Saliency, index: int, t: int, view: str = "pooled") -> Image.Image:
    """Stage t's boosted map Y^t as a heat map (:func:`stage_heat`); suppressed stripes hatched grey; the stripe this
    stage hands to the suppression framed red (Fig. 6's red boxes); each kept stripe's SFE weight written on it."""
    stage = saliency.stages[t]
    tile = Image.fromarray(heat_overlay(image, stage_heat(stage.y[index:index + 1], saliency.pools[t], view)[0]))
    draw = ImageDraw.Draw(tile)
    num_stripes = stage.kept.shape[1]
    rows = tile.height / num_stripes
    suppressed_next = suppressed_after(saliency.stages, t)[index]
    for k in range(num_stripes):
        top, bottom = round(k * rows), round((k + 1) * rows) - 1
        if not stage.kept[index, k]:
            for x in range(-tile.height, tile.width, 6):
                draw.line([(x, bottom), (x + bottom - top, top)], fill=GREY)
            continue
        if suppressed_next[k]:
            draw.rectangle([0, top, tile.width - 1, bottom], outline=RED, width=2)
        if stage.weights is not None:
            draw.text((2, top + 1), f"{float(stage.weights[index, k]):.2f}", fill="white")
    return tile


def display_scale(height: int) -> int:
    """Small inputs (the synthetic 128x64) are drawn larger, so that the captions and stripe weights fit."""
    return max(1, round(256 / height))


def saliency_picture(images: torch.Tensor, saliency: Saliency, index: int,
                     view: str = "pooled") -> Tuple[Image.Image, Grid]:
    """One image's row: input | backbone X^1 (as stage 1 pools it) | stage 1..T | the recorded attention maps, then
    the legend; images (B, 3, H, W)."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}.")
    scale = display_scale(images.shape[2])
    image = to_uint8_image(images[index])
    image = np.asarray(Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                                     Image.BICUBIC))
    x1 = stage_heat(saliency.stages[0].x[index:index + 1], saliency.pools[0], view)[0]
    tiles = [Image.fromarray(image), Image.fromarray(heat_overlay(image, x1))]
    suffix = [f" {pooling_caption(pool)}" if view == "pooled" else " energy" for pool in saliency.pools]
    captions = ["input", "X1" + suffix[0]]
    for t in range(len(saliency.stages)):
        tiles.append(stage_tile(image, saliency, index, t, view))
        captions.append(f"Y{t + 1}" + suffix[t])
    for name, maps in saliency.attention.items():
        tiles.append(Image.fromarray(heat_overlay(image, maps[index], scale=(0.0, 1.0))))
        captions.append(f"A {name} (0-1)")
    return compose([tiles], [captions], legend=legend_lines(view, bool(saliency.attention)))


class RankedList(NamedTuple):
    """One query's retrieval: its image path, identity, AP, and its top-k gallery paths, distances and whether each
    has the query's identity."""

    query: str
    pid: int
    ap: float
    gallery: List[str]
    distances: List[float]
    correct: List[bool]


def ranked_list_picture(ranked: Sequence[RankedList], height: int, width: int) -> Tuple[Image.Image, Grid]:
    """One row per query: the query, then its top-k gallery images framed green (same identity) or red; tiles of
    (height, width) pixels."""
    def tile(path):
        return Image.open(path).convert("RGB").resize((width, height), Image.BICUBIC)

    tiles, captions, frames = [], [], []
    for r in ranked:
        tiles.append([tile(r.query)] + [tile(p) for p in r.gallery])
        captions.append([f"id {r.pid} AP {r.ap:.2f}"] + [f"{i + 1}: {d:.3f}" for i, d in enumerate(r.distances)])
        frames.append([None] + [GREEN if c else RED for c in r.correct])
    return compose(tiles, captions, frames)


def ranked_lists(distmat: np.ndarray, query: Sequence[tuple], gallery: Sequence[tuple], aps: Sequence[float],
                 indices: Sequence[int], top_k: int) -> List[RankedList]:
    """distmat (Q, G) over (path, pid, camid) items -> the top-k of the chosen queries, without the gallery images of
    the query's identity seen by the query's camera (the Market-1501 protocol fast-reid evaluates with)."""
    g_pids = np.asarray([g[1] for g in gallery])
    g_camids = np.asarray([g[2] for g in gallery])
    lists = []
    for q in indices:
        path, pid, camid = query[q]
        order = np.argsort(distmat[q], kind="stable")
        order = order[~((g_pids[order] == pid) & (g_camids[order] == camid))][:top_k]
        lists.append(RankedList(
            query=path, pid=int(pid), ap=float(aps[q]), gallery=[gallery[g][0] for g in order],
            distances=[float(distmat[q, g]) for g in order], correct=[bool(g_pids[g] == pid) for g in order],
        ))
    return lists
