"""Embedded synthetic person re-ID dataset: a small, fair test of the claim of §1 (and Fig. 6).

§1: models that attend to the most salient features fail when "the re-identification of a person may rely on
diverse clues masked by the most salient features [...], e.g., body, clothes or even shoes"; Fig. 6 shows stage II
of SCSN finding such clues on "hard samples with similar appearances". Here every identity is a drawn pedestrian
whose identity lives in its appearance: hair, shirt (colour and texture), trousers / shorts / skirt (colour and
texture), shoes, bag / backpack / hat, a logo on the shirt, body proportions. A share of the identities
(``family_share``) come in *families* of 2-3 that share the most salient clue (the same shirt, lower-body
clothes, skin and build) and differ only in secondary clues (hair, shoes, accessory, logo): a model that looks
only at the clothes cannot tell family members apart. Families occur in the train and in the test split
(different families in each).

Cameras add their own nuisances (colour cast, illumination, contrast, blur, noise, JPEG quality, person scale,
background scene), and each image its own (position and scale jitter, stride, mirror, light direction,
background clutter, occlusion by a pole or a low obstacle). The split follows Market-1501 (§4.2): disjoint
train and test identities; each test identity is queried from one camera and appears in the gallery in that
camera and in others, so real matches survive the evaluator's same-identity-same-camera removal; distractors
(pid 0) and junk (pid -1, skipped by the loader) in the gallery; Market-1501 folder and file names.

Generated from a seed on first use into ``<root>/SyntheticReID/<hash of the parameters>/`` (a manifest records
them), through a temporary folder renamed at the end, and reused afterwards. fast-reid builds a dataset as
``DATASET_REGISTRY.get(name)(root=$FASTREID_DATASETS)`` without a cfg, so the sizes are class attributes and
each size is its own registered class.
"""
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image, ImageFilter

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset
from fastreid.data.datasets.market1501 import Market1501

logger = logging.getLogger(__name__)

__all__ = [
    "SyntheticReID", "SyntheticReIDTiny", "SyntheticReIDBench",
    "build_identities", "build_cameras", "build_layout", "sample_pose", "render_image", "params_hash",
]

# Part of every parameter hash: bump it when the drawing changes, so that cached datasets are regenerated.
GENERATOR_VERSION = 1
HEIGHT, WIDTH = 128, 64
TRAIN_DIR, QUERY_DIR, GALLERY_DIR = "bounding_box_train", "query", "bounding_box_test"
MANIFEST = "manifest.json"
# Market-1501 camera ids are one digit, 1-6 (fast-reid's Market1501.process_dir asserts it).
MAX_CAMERAS = 6
# Market-1501 person ids: 1-1501 (0 = distractor, -1 = junk).
MAX_IDS = 1501


def _rgb(*colours):
    return np.array(colours, dtype=np.float32) / 255


CLOTH = _rgb(
    (28, 28, 32), (235, 235, 228), (125, 125, 128), (30, 42, 110), (45, 95, 205), (125, 185, 230),
    (195, 30, 38), (105, 25, 45), (40, 135, 65), (110, 115, 45), (235, 205, 45), (235, 125, 35),
    (235, 135, 175), (110, 50, 145), (115, 72, 40), (205, 185, 145),
)
HAIR = _rgb((20, 18, 18), (65, 42, 25), (130, 85, 45), (220, 190, 120), (170, 170, 170), (165, 65, 30))
SKIN = _rgb((245, 210, 185), (225, 185, 145), (195, 145, 105), (145, 100, 70), (95, 65, 45))
# Few, well separated shoe colours: shoes are a few pixels tall, and the only clue of some family members.
SHOES = _rgb((20, 20, 20), (240, 240, 240), (200, 30, 30), (40, 80, 200), (235, 200, 40))
SHIRT_TEXTURES = ("plain", "hstripes", "vstripes", "checks")
LOWER_TEXTURES = ("plain", "vstripes", "checks")
LOWER_STYLES = ("trousers", "shorts", "skirt")
ACCESSORIES = ("none", "bag", "backpack", "hat")
LOGOS = ("none", "square", "disc", "cross")
# Secondary clues that tell family members apart; two members differ in at least this many of the four.
MIN_SECONDARY_DIFFERENCES = 2

# Person layout, in units of the person's height from the top of the head (u) and from the body axis (v).
SHOULDER, HEAD_CENTRE, SOLE = 0.165, 0.08, 0.96


def _colour(rgb):
    return [round(float(c), 4) for c in rgb]


def _clothes(rng, textures):
    """Colour (jittered per identity, so equal palette entries still differ a little), texture, second colour."""
    first, second = rng.choice(len(CLOTH), size=2, replace=False)
    return {
        "colour": _colour(np.clip(CLOTH[first] + rng.uniform(-0.04, 0.04, 3), 0, 1)),
        "texture": str(rng.choice(textures)),
        "colour2": _colour(CLOTH[second]),
        "period": round(float(rng.uniform(0.035, 0.06)), 4),
    }


def _sample_primary(rng):
    """The most salient clues, shared by a family: clothes (most of the pixels), skin and build."""
    lower = _clothes(rng, LOWER_TEXTURES)
    lower["style"] = str(rng.choice(LOWER_STYLES, p=[0.6, 0.25, 0.15]))
    return {
        "body": {
            "height": round(float(rng.uniform(0.86, 0.96)), 4),
            "width": round(float(rng.uniform(0.21, 0.29)), 4),
            "legs": round(float(rng.uniform(0.44, 0.52)), 4),
        },
        "skin": _colour(SKIN[rng.integers(len(SKIN))]),
        "shirt": _clothes(rng, SHIRT_TEXTURES),
        "lower": lower,
    }


def _sample_secondary(rng):
    """Small clues (hair, shoes, accessory, logo) and a key per clue: family members must differ in some."""
    hair, long_hair, shoes = int(rng.integers(len(HAIR))), bool(rng.random() < 0.35), int(rng.integers(len(SHOES)))
    accessory = str(rng.choice(ACCESSORIES, p=[0.4, 0.2, 0.2, 0.2]))
    accessory_colour = int(rng.integers(len(CLOTH)))
    logo = str(rng.choice(LOGOS, p=[0.4, 0.2, 0.2, 0.2]))
    logo_colour = int(rng.integers(len(CLOTH)))
    clues = {
        "hair": {"colour": _colour(HAIR[hair]), "long": long_hair},
        "shoes": _colour(SHOES[shoes]),
        "accessory": {"kind": accessory, "colour": _colour(CLOTH[accessory_colour])},
        "logo": {"shape": logo, "colour": _colour(CLOTH[logo_colour])},
    }
    keys = (
        (hair, long_hair),
        shoes,
        (accessory, accessory_colour if accessory != "none" else -1),
        (logo, logo_colour if logo != "none" else -1),
    )
    return clues, keys


def _family_sizes(num_ids, share, rng):
    """Sizes (2 or 3) of the families that hold about ``share`` of ``num_ids`` identities, then 1s."""
    left = int(round(share * num_ids))
    sizes = []
    while left >= 2:
        size = 3 if left == 3 or (left >= 5 and rng.random() < 0.5) else 2
        sizes.append(size)
        left -= size
    return sizes + [1] * (num_ids - sum(sizes))


def build_identities(params):
    """Identity specs of the train ids (pids 1..N) then the test ids; ``family`` is -1 for an identity alone."""
    rng = np.random.default_rng([params["seed"], 0])
    specs, pid, family = [], 1, 0
    for split, num_ids in (("train", params["num_train_ids"]), ("test", params["num_test_ids"])):
        for size in _family_sizes(num_ids, params["family_share"], rng):
            primary = _sample_primary(rng)
            members = []
            while len(members) < size:
                clues, keys = _sample_secondary(rng)
                if all(sum(a != b for a, b in zip(keys, other)) >= MIN_SECONDARY_DIFFERENCES for _, other in members):
                    members.append((clues, keys))
            for clues, _ in members:
                specs.append({"pid": pid, "split": split, "family": family if size > 1 else -1, **primary, **clues})
                pid += 1
            family += size > 1
    return specs


def build_cameras(params):
    """Each camera's nuisances: colour cast, illumination, blur, noise, JPEG quality, person scale, scene."""
    rng = np.random.default_rng([params["seed"], 1])
    cameras = []
    for _ in range(params["num_cameras"]):
        wall, floor = (np.clip(rng.uniform(0.2, 0.8) + rng.uniform(-0.1, 0.1, 3), 0, 1) for _ in range(2))
        cameras.append({
            "gain": _colour(rng.uniform(0.8, 1.15, 3)),
            "brightness": round(float(rng.uniform(0.75, 1.15)), 4),
            "contrast": round(float(rng.uniform(0.8, 1.1)), 4),
            "blur": round(float(rng.uniform(0.0, 1.1)), 4),
            "noise": round(float(rng.uniform(0.01, 0.04)), 4),
            "quality": int(rng.integers(70, 96)),
            "scale": round(float(rng.uniform(0.86, 1.0)), 4),
            "wall": _colour(wall),
            "floor": _colour(floor),
            "horizon": round(float(rng.uniform(0.55, 0.8)), 4),
            "tile": int(rng.integers(6, 16)),
        })
    return cameras


def sample_pose(rng, camera, occlusion_prob, wild=False):
    """Per-image nuisances, all drawn here in a fixed order, so that one pose can render any identity.

    ``wild`` (distractors, junk): badly placed detections, often showing only part of a person.
    """
    shift, scale = ((16, 30), (0.7, 1.3)) if wild else ((4, 4), (0.93, 1.04))
    return {
        "scale": camera["scale"] * rng.uniform(*scale),
        "dx": rng.uniform(-shift[0], shift[0]),
        "dy": rng.uniform(-shift[1], shift[1]),
        "stride": rng.uniform(0.0, 0.05),
        "mirror": bool(rng.random() < 0.5),
        "light": rng.uniform(-0.15, 0.15),
        "brightness": rng.uniform(0.9, 1.1),
        "blur": rng.uniform(0.8, 1.2),
        "horizon": rng.uniform(-0.04, 0.04),
        "clutter": rng.uniform(size=(int(rng.integers(1, 7)), 7)),  # rows: x, y, w, h, r, g, b in [0, 1]
        "occlusion": rng.uniform(size=6) if rng.random() < occlusion_prob else None,
        "noise_seed": int(rng.integers(2 ** 32)),
    }


_Y = np.arange(HEIGHT, dtype=np.float32)[:, None] + 0.5  # (H, 1) pixel centres
_X = np.arange(WIDTH, dtype=np.float32)[None, :] + 0.5  # (1, W)


def _background(camera, pose):
    """Wall above a tiled floor, camera-specific, with random rectangles for clutter."""
    img = np.empty((HEIGHT, WIDTH, 3), np.float32)
    horizon = (camera["horizon"] + pose["horizon"]) * HEIGHT
    floor = (_Y >= horizon)[:, 0]
    img[~floor] = camera["wall"]
    img[floor] = camera["floor"]
    tile = camera["tile"]
    img[((_Y - horizon) % tile < 1.0)[:, 0] & floor] *= 0.8
    img[:, (_X % (3 * tile) < 1.0)[0]] *= 0.9
    for x, y, w, h, *rgb in pose["clutter"]:
        x0, y0 = int(x * WIDTH) - 4, int(y * HEIGHT) - 8
        img[max(y0, 0):max(y0 + 4 + int(h * 40), 0), max(x0, 0):x0 + 4 + int(w * 24)] = rgb
    return img


def _texture(kind, period, u, v):
    """(H, W) mask of the second colour of a texture, in person coordinates so it scales with the person."""
    rows = (u // period % 2).astype(bool)  # (H, 1)
    cols = ((v + 1) // period % 2).astype(bool)  # (1, W)
    masks = {"hstripes": lambda: rows, "vstripes": lambda: cols, "checks": lambda: rows ^ cols}
    return np.broadcast_to(masks[kind](), (HEIGHT, WIDTH)) if kind in masks else None


def _paint(img, mask, colour, texture=None, colour2=None):
    img[mask] = colour
    if texture is not None:
        img[mask & texture] = colour2


def _draw_person(img, spec, pose):
    """Paint one pedestrian onto ``img`` (H, W, 3), back to front."""
    body = spec["body"]
    size = HEIGHT * body["height"] * pose["scale"]
    u = (_Y - ((HEIGHT - size) / 2 + pose["dy"])) / size  # (H, 1): 0 at the top of the head, 1 at the soles
    v = (_X - (WIDTH / 2 + pose["dx"])) / size * (-1 if pose["mirror"] else 1)  # (1, W)
    av = np.abs(v)
    hip = 1 - body["legs"]
    half = body["width"] / 2  # shoulder half-width
    hip_half = 0.8 * half
    torso_half = half + (hip_half - half) * (u - SHOULDER) / (hip - SHOULDER)  # (H, 1)
    crotch = hip + 0.1
    leg_half = 0.45 * hip_half
    leg_axis = 0.52 * hip_half + pose["stride"] * np.clip((u - crotch) / (1 - crotch), 0, 1)  # walking stride
    legs = (np.abs(av - leg_axis) < leg_half) & (u >= crotch) & (u < SOLE)
    seat = (av < hip_half) & (u >= hip) & (u < crotch)
    skin, shirt, lower, clues = spec["skin"], spec["shirt"], spec["lower"], spec["accessory"]
    person = np.zeros((HEIGHT, WIDTH), bool)

    def paint(mask, colour, texture=None, colour2=None):
        _paint(img, mask, colour, texture, colour2)
        person[mask] = True

    # Lower body: bare legs, covered by the trousers, shorts or skirt.
    paint(legs, skin)
    if lower["style"] == "trousers":
        clothed = legs | seat
    elif lower["style"] == "shorts":
        clothed = (legs | seat) & (u < hip + 0.4 * body["legs"])
    else:
        length = 0.5 * body["legs"]
        clothed = (av < hip_half * (1 + 0.7 * (u - hip) / length)) & (u >= hip) & (u < hip + length)
    paint(clothed, lower["colour"], _texture(lower["texture"], lower["period"], u, v), lower["colour2"])
    paint((np.abs(av - leg_axis) < 1.25 * leg_half) & (u >= SOLE - 0.01) & (u < 1.0), spec["shoes"])

    paint((av < 0.025) & (u > 0.12) & (u < SHOULDER + 0.01), skin)  # neck
    if clues["kind"] == "backpack":  # its top shows above the shoulders
        paint((av < 0.8 * half) & (u >= SHOULDER - 0.04) & (u < SHOULDER + 0.01), clues["colour"])
    shirt_texture = _texture(shirt["texture"], shirt["period"], u - SHOULDER, v)
    arms = (av > half - 0.01) & (av < half + 0.05)
    paint((av < torso_half) & (u >= SHOULDER) & (u < hip + 0.01), shirt["colour"], shirt_texture, shirt["colour2"])
    paint(arms & (u >= SHOULDER + 0.01) & (u < hip + 0.03), shirt["colour"], shirt_texture, shirt["colour2"])
    paint(arms & (u >= hip + 0.03) & (u < hip + 0.07), skin)  # hands

    if clues["kind"] == "backpack":  # straps
        paint((np.abs(av - 0.55 * half) < 0.014) & (u >= SHOULDER) & (u < SHOULDER + 0.2), clues["colour"])
    elif clues["kind"] == "bag":  # shoulder bag on one side, strap across the chest
        bag_top = hip - 0.1
        strap = -0.6 * half + (1.6 * half + 0.05) * (u - SHOULDER) / (bag_top - SHOULDER)
        paint((np.abs(v - strap) < 0.012) & (u >= SHOULDER) & (u < bag_top), clues["colour"])
        paint((v > half + 0.02) & (v < half + 0.12) & (u >= bag_top) & (u < hip + 0.06), clues["colour"])

    logo = spec["logo"]
    if logo["shape"] != "none":
        du, s = u - (SHOULDER + 0.11), 0.045
        shape = {
            "square": lambda: (np.abs(du) < s) & (av < s),
            "disc": lambda: du ** 2 + v ** 2 < s ** 2,
            "cross": lambda: ((np.abs(du) < s) & (av < s / 3)) | ((np.abs(du) < s / 3) & (av < s)),
        }[logo["shape"]]()
        paint(shape, logo["colour"])

    hair = spec["hair"]
    if hair["long"]:
        paint((av < 0.066) & (u >= 0.03) & (u < 0.21), hair["colour"])
    paint(((u - HEAD_CENTRE) / 0.068) ** 2 + (v / 0.05) ** 2 < 1, skin)  # face
    paint((((u - HEAD_CENTRE) / 0.075) ** 2 + (v / 0.056) ** 2 < 1) & (u < 0.058), hair["colour"])
    if clues["kind"] == "hat":
        paint(((av < 0.06) & (u >= -0.012) & (u < 0.04)) | ((av < 0.08) & (u >= 0.03) & (u < 0.045)),
              clues["colour"])

    # Round body: darker towards the silhouette's sides, lit from one side.
    shade = (1 - 0.3 * np.clip(av / 0.2, 0, 1) ** 2) * (1 + pose["light"] * np.clip(v / 0.2, -1, 1))  # (1, W)
    img[person] *= np.broadcast_to(shade, (HEIGHT, WIDTH))[person][:, None]
    return person


def _occlude(img, pose):
    """A pole (vertical bar) or a low obstacle (bar over the bottom of the image) in front of the person; returns
    the (H, W) bool mask it covers."""
    kind, where, size, *rgb = pose["occlusion"]
    covered = np.zeros((HEIGHT, WIDTH), bool)
    if kind < 0.6:
        x0 = int(WIDTH / 2 + pose["dx"] + (where - 0.5) * 24)
        covered[:, max(x0, 0):max(x0 + 3 + int(7 * size), 0)] = True
    else:
        covered[int(HEIGHT * (0.62 + 0.25 * where)):] = True
    img[covered] = rgb
    return covered


def render_image(spec, camera, pose, with_mask=False):
    """One (H, W, 3) uint8 image of identity ``spec`` (None: background only) seen by ``camera`` in ``pose``; with
    ``with_mask`` also the (H, W) bool mask of the person's visible pixels (its ground-truth segmentation)."""
    img = _background(camera, pose)
    person = _draw_person(img, spec, pose) if spec is not None else np.zeros((HEIGHT, WIDTH), bool)
    if pose["occlusion"] is not None:
        person &= ~_occlude(img, pose)
    img *= np.asarray(camera["gain"], np.float32) * (camera["brightness"] * pose["brightness"])
    img = (img - 0.5) * camera["contrast"] + 0.5
    out = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    radius = camera["blur"] * pose["blur"]
    if radius > 0.1:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    noise = np.random.default_rng(pose["noise_seed"]).standard_normal((HEIGHT, WIDTH, 3), np.float32)
    out = np.clip(np.asarray(out, np.float32) + noise * (255 * camera["noise"]), 0, 255).round().astype(np.uint8)
    return (out, person) if with_mask else out


def _sample_stranger(rng):
    clues, _ = _sample_secondary(rng)
    return {"pid": 0, "split": "distractor", "family": -1, **_sample_primary(rng), **clues}


def build_layout(params, identities):
    """Every image to draw, as (folder, pid in the file name, camera index from 0, spec or None, wild)."""
    rng = np.random.default_rng([params["seed"], 3])
    jobs = []
    for spec in identities:
        cameras = [int(c) for c in rng.choice(params["num_cameras"], params["cameras_per_id"], replace=False)]
        if spec["split"] == "train":
            jobs += [(TRAIN_DIR, spec["pid"], c, spec, False)
                     for c in cameras for _ in range(params["train_images_per_camera"])]
        else:
            # Queried from one camera; in the gallery in that camera (removed by the evaluator) and in others.
            jobs += [(QUERY_DIR, spec["pid"], cameras[0], spec, False)] * params["query_images_per_id"]
            jobs += [(GALLERY_DIR, spec["pid"], c, spec, False)
                     for c in cameras for _ in range(params["gallery_images_per_camera"])]
    test_ids = [spec for spec in identities if spec["split"] == "test"]
    for _ in range(params["num_distractors"]):  # strangers or empty scenes, badly cropped
        spec = _sample_stranger(rng) if rng.random() < 0.7 else None
        jobs.append((GALLERY_DIR, 0, int(rng.integers(params["num_cameras"])), spec, True))
    for _ in range(params["num_junk"]):  # bad detections of test identities
        spec = test_ids[rng.integers(len(test_ids))]
        jobs.append((GALLERY_DIR, -1, int(rng.integers(params["num_cameras"])), spec, True))
    return jobs


def file_name(pid, camera, frame):
    """Market-1501's ``0001_c1s1_000151_00.jpg`` (junk: ``-1_c1s1_...``); ``camera`` counts from 0."""
    return f"{pid if pid < 0 else f'{pid:04d}'}_c{camera + 1}s1_{frame:06d}_00.jpg"


def _frame(path):
    """The frame number :func:`file_name` wrote into ``path``'s name."""
    return int(os.path.basename(path).split("_")[2])


def params_hash(params):
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def _write(params, directory):
    """Draw the whole dataset into the empty folder ``directory``; returns its manifest."""
    identities, cameras = build_identities(params), build_cameras(params)
    for folder in (TRAIN_DIR, QUERY_DIR, GALLERY_DIR):
        os.makedirs(os.path.join(directory, folder))
    jobs = build_layout(params, identities)
    for frame, (folder, pid, camera, spec, wild) in enumerate(jobs):
        pose = sample_pose(np.random.default_rng([params["seed"], 2, frame]), cameras[camera],
                           params["occlusion_prob"], wild)
        Image.fromarray(render_image(spec, cameras[camera], pose)).save(
            os.path.join(directory, folder, file_name(pid, camera, frame)), quality=cameras[camera]["quality"])
    manifest = {
        "params": params,
        "images": {folder: sum(job[0] == folder for job in jobs) for folder in (TRAIN_DIR, QUERY_DIR, GALLERY_DIR)},
        "cameras": cameras,
        "identities": identities,
    }
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def read_manifest(directory):
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_generated(params, directory, name):
    """Reuse ``directory`` if its manifest records ``params``; otherwise generate it atomically: into a
    temporary sibling renamed at the end, so an interrupted run leaves no half dataset behind."""
    manifest = read_manifest(directory)
    if manifest is not None and manifest["params"] == params:
        return False
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    parent = os.path.dirname(directory) or "."
    os.makedirs(parent, exist_ok=True)
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}-", dir=parent)
    try:
        manifest = _write(params, tmp)
        try:
            os.rename(tmp, directory)
        except OSError:  # another process finished the same dataset first
            if (read_manifest(directory) or {}).get("params") != params:
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    families = len({spec["family"] for spec in manifest["identities"]} - {-1})
    logger.info(
        f"{name}: generated {sum(manifest['images'].values())} images ({manifest['images']}) of "
        f"{params['num_train_ids']} train + {params['num_test_ids']} test identities ({families} families) "
        f"in {time.perf_counter() - start:.1f} s into {directory}"
    )
    return True


@DATASET_REGISTRY.register()
class SyntheticReID(ImageDataset):
    """The demo's size: trains and evaluates an R18 SCSN at 128x64 on 2 CPU cores in minutes.

    960 train images (80 ids x 4 cameras x 3), 100 queries and 550 gallery images (50 ids x 4 cameras x 2,
    150 distractors), plus 10 junk images the loader skips.
    """
    dataset_name = "syntheticreid"
    _junk_pids = [0, -1]

    num_train_ids = 80
    num_test_ids = 50
    num_cameras = 6
    cameras_per_id = 4  # cameras each identity appears in; a test identity's first one is its query camera
    train_images_per_camera = 3
    query_images_per_id = 2
    gallery_images_per_camera = 2
    num_distractors = 150
    num_junk = 10
    family_share = 0.5  # share of the identities of each split that belong to a family of 2-3
    occlusion_prob = 0.15
    seed = 0

    PARAMETERS = (
        "num_train_ids", "num_test_ids", "num_cameras", "cameras_per_id", "train_images_per_camera",
        "query_images_per_id", "gallery_images_per_camera", "num_distractors", "num_junk", "family_share",
        "occlusion_prob", "seed",
    )

    def __init__(self, root="datasets", **kwargs):
        self.params = self.generation_params()
        self.root = root
        self.dataset_dir = os.path.join(root, "SyntheticReID", params_hash(self.params))
        self.generated = ensure_generated(self.params, self.dataset_dir, type(self).__name__)
        train = self._read(TRAIN_DIR, is_train=True)
        query = self._read(QUERY_DIR, is_train=False)
        gallery = self._read(GALLERY_DIR, is_train=False)
        super().__init__(train, query, gallery, **kwargs)

    def _read(self, folder, is_train):
        # fast-reid's own Market-1501 parser (skips pid -1, prefixes train labels with dataset_name), sorted
        # because glob's order depends on the file system.
        return sorted(Market1501.process_dir(self, os.path.join(self.dataset_dir, folder), is_train))

    @classmethod
    def generation_params(cls):
        """Every parameter of the generation (the cache key), checked."""
        name = cls.__name__
        params = {"generator": GENERATOR_VERSION, "height": HEIGHT, "width": WIDTH}
        for key in cls.PARAMETERS:
            value = getattr(cls, key)
            params[key] = float(value) if key in ("family_share", "occlusion_prob") else int(value)
        for key in ("num_train_ids", "num_test_ids", "train_images_per_camera", "query_images_per_id",
                    "gallery_images_per_camera"):
            if params[key] < 1:
                raise ValueError(f"{name}.{key} must be >= 1, got {params[key]}.")
        for key in ("num_distractors", "num_junk"):
            if params[key] < 0:
                raise ValueError(f"{name}.{key} must be >= 0, got {params[key]}.")
        for key in ("family_share", "occlusion_prob"):
            if not 0 <= params[key] <= 1:
                raise ValueError(f"{name}.{key} must be in [0, 1], got {params[key]}.")
        if not 2 <= params["cameras_per_id"] <= params["num_cameras"] <= MAX_CAMERAS:
            raise ValueError(
                f"{name}: need 2 <= cameras_per_id <= num_cameras <= {MAX_CAMERAS} (every query needs a match in "
                f"another camera; Market-1501 names have cameras 1-{MAX_CAMERAS}), got cameras_per_id="
                f"{params['cameras_per_id']}, num_cameras={params['num_cameras']}."
            )
        if params["num_train_ids"] + params["num_test_ids"] > MAX_IDS:
            raise ValueError(
                f"{name}: num_train_ids + num_test_ids must be <= {MAX_IDS} (Market-1501 person ids), got "
                f"{params['num_train_ids'] + params['num_test_ids']}."
            )
        return params

    def identities(self):
        """The identity specs this dataset was drawn from (train then test ids), as recorded in its manifest."""
        return read_manifest(self.dataset_dir)["identities"]

    def person_mask(self, path):
        """The (H, W) bool mask of the person's visible pixels in this dataset's image ``path``, drawn again from the
        generation's parameters (the ground truth that human-parsing masks approximate on real data)."""
        if not hasattr(self, "_layout"):
            self._cameras = build_cameras(self.params)
            self._layout = build_layout(self.params, build_identities(self.params))
        frame = _frame(path)
        _, _, camera, spec, wild = self._layout[frame]
        pose = sample_pose(np.random.default_rng([self.params["seed"], 2, frame]), self._cameras[camera],
                           self.params["occlusion_prob"], wild)
        return render_image(spec, self._cameras[camera], pose, with_mask=True)[1]


@DATASET_REGISTRY.register()
class SyntheticReIDTiny(SyntheticReID):
    """Unit and end-to-end tests: 48 train images (8 ids x 2 cameras x 3, enough for NUM_INSTANCE 4),
    6 queries, 30 gallery images (6 ids x 2 cameras x 2, 6 distractors), generated in well under a second."""
    dataset_name = "syntheticreidtiny"

    num_train_ids = 8
    num_test_ids = 6
    cameras_per_id = 2
    train_images_per_camera = 3
    query_images_per_id = 1
    gallery_images_per_camera = 2
    num_distractors = 6
    num_junk = 2


@DATASET_REGISTRY.register()
class SyntheticReIDBench(SyntheticReID):
    """Accuracy benchmark: 3200 train images (200 ids x 4 cameras x 4), 300 queries, 1600 gallery images
    (150 ids x 4 cameras x 2, 400 distractors)."""
    dataset_name = "syntheticreidbench"

    num_train_ids = 200
    num_test_ids = 150
    train_images_per_camera = 4
    num_distractors = 400
    num_junk = 20
