"""The embedded synthetic dataset (scsn/synthetic.py): determinism, Market-1501 protocol, caching, families."""
import itertools
import logging
import os
import re
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.market1501 import Market1501
from scsn.data import synthetic
from scsn.data.synthetic import SyntheticReID, SyntheticReIDBench, SyntheticReIDTiny

MARKET_NAME = re.compile(r"(-1|\d{4})_c[1-6]s\d_\d{6}_\d{2}\.jpg")
SIZES = (SyntheticReIDTiny, SyntheticReID, SyntheticReIDBench)


class TinySeed1(SyntheticReIDTiny):
    seed = 1


class TinyMoreJunk(SyntheticReIDTiny):
    num_junk = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return SyntheticReIDTiny(root=str(tmp_path_factory.mktemp("datasets")))


def files(directory):
    """{relative path: bytes} of every file under ``directory``."""
    out = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def pid_of(train_label, dataset):
    """fast-reid prefixes training pids and camids with the dataset name (its relabeling across datasets)."""
    prefix = dataset.dataset_name + "_"
    assert train_label.startswith(prefix)
    return int(train_label[len(prefix):])


def test_registered():
    for cls in SIZES:
        assert DATASET_REGISTRY.get(cls.__name__) is cls
    assert len({cls.dataset_name for cls in SIZES}) == len(SIZES)


def test_same_seed_same_bytes_other_seed_other_images(tmp_path, tiny):
    again = SyntheticReIDTiny(root=str(tmp_path / "a"))
    assert again.generated and os.path.basename(again.dataset_dir) == os.path.basename(tiny.dataset_dir)
    assert files(again.dataset_dir) == files(tiny.dataset_dir)

    other = TinySeed1(root=str(tmp_path / "b"))
    assert os.path.basename(other.dataset_dir) != os.path.basename(tiny.dataset_dir)
    ours, theirs = files(tiny.dataset_dir), files(other.dataset_dir)
    images = {k: v for k, v in ours.items() if k.endswith(".jpg")}
    assert not set(images.values()) & set(theirs.values())
    assert other.identities() != tiny.identities()


def test_images_are_market_named_128x64_rgb_jpegs(tiny):
    names = []
    for folder in (synthetic.TRAIN_DIR, synthetic.QUERY_DIR, synthetic.GALLERY_DIR):
        names += [os.path.join(folder, n) for n in os.listdir(os.path.join(tiny.dataset_dir, folder))]
    assert len(names) == 48 + 6 + 30 + 2  # train, query, gallery, junk
    for name in names:
        assert MARKET_NAME.fullmatch(os.path.basename(name)), name
        with Image.open(os.path.join(tiny.dataset_dir, name)) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 128))


def test_fastreid_market1501_parser_reads_the_same_lists(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Market1501 warns that the folders are not under Market-1501-v15.09.15
        market = Market1501(root=tiny.dataset_dir)
    assert sorted(market.query) == tiny.query
    assert sorted(market.gallery) == tiny.gallery
    assert sorted((p, pid_of(l, market), pid_of(c, market)) for p, l, c in market.train) == \
        sorted((p, pid_of(l, tiny), pid_of(c, tiny)) for p, l, c in tiny.train)


def test_split_protocol_of_the_generated_tiny_set(tiny):
    train_pids = {pid_of(label, tiny) for _, label, _ in tiny.train}
    query_pids = {pid for _, pid, _ in tiny.query}
    gallery_pids = {pid for _, pid, _ in tiny.gallery}
    assert train_pids == set(range(1, 9)) and query_pids == set(range(9, 15))
    assert not train_pids & (query_pids | gallery_pids)
    assert gallery_pids == query_pids | {0}  # distractors; the junk (-1) is skipped
    assert sum(pid == 0 for _, pid, _ in tiny.gallery) == SyntheticReIDTiny.num_distractors
    assert any(name.startswith("-1_") for name in os.listdir(os.path.join(tiny.dataset_dir, synthetic.GALLERY_DIR)))
    for _, pid, camid in tiny.query:  # a match that survives the evaluator's same-id-same-camera removal
        assert any(g_pid == pid and g_cam != camid for _, g_pid, g_cam in tiny.gallery)
    per_id = {pid: sum(label == f"{tiny.dataset_name}_{pid}" for _, label, _ in tiny.train) for pid in train_pids}
    assert min(per_id.values()) >= 4  # NaiveIdentitySampler, NUM_INSTANCE 4
    assert len(tiny.gallery) >= 10


@pytest.mark.parametrize("cls", SIZES, ids=lambda c: c.__name__)
def test_split_protocol_of_every_size(cls):
    params = cls.generation_params()
    identities = synthetic.build_identities(params)
    jobs = synthetic.build_layout(params, identities)
    by_folder = {f: [(pid, cam) for folder, pid, cam, _, _ in jobs if folder == f]
                 for f in (synthetic.TRAIN_DIR, synthetic.QUERY_DIR, synthetic.GALLERY_DIR)}
    train = {pid for pid, _ in by_folder[synthetic.TRAIN_DIR]}
    query = {pid for pid, _ in by_folder[synthetic.QUERY_DIR]}
    assert len(train) == cls.num_train_ids and len(query) == cls.num_test_ids and not train & query
    query_cams = {}
    for pid, cam in by_folder[synthetic.QUERY_DIR]:
        query_cams.setdefault(pid, set()).add(cam)
    for pid, cams in query_cams.items():
        assert len(cams) == 1  # queried from one camera ...
        others = {cam for g_pid, cam in by_folder[synthetic.GALLERY_DIR] if g_pid == pid} - cams
        assert len(others) == cls.cameras_per_id - 1  # ... found in the others
    assert sum(pid == 0 for pid, _ in by_folder[synthetic.GALLERY_DIR]) == cls.num_distractors > 0
    if cls is SyntheticReID:  # the CPU demo's budget: a few thousand images at most
        assert len(jobs) < 2500 and len(by_folder[synthetic.TRAIN_DIR]) >= 60 * 12


def test_second_construction_reuses_the_files(tmp_path, caplog):
    root = str(tmp_path)
    with caplog.at_level(logging.INFO, logger="scsn.data.synthetic"):
        first = SyntheticReIDTiny(root=root)
        assert first.generated
        assert [r.getMessage() for r in caplog.records if "generated" in r.getMessage()] != []
        manifest = os.path.join(first.dataset_dir, synthetic.MANIFEST)
        stamps = {p: os.stat(os.path.join(first.dataset_dir, p)).st_mtime_ns for p in files(first.dataset_dir)}
        caplog.clear()
        second = SyntheticReIDTiny(root=root)
        assert not second.generated and not [r for r in caplog.records if "generated" in r.getMessage()]
        assert {p: os.stat(os.path.join(first.dataset_dir, p)).st_mtime_ns for p in stamps} == stamps
        assert second.train == first.train and second.gallery == first.gallery

        changed = TinyMoreJunk(root=root)  # other parameters: a new folder, the old one kept
        assert changed.generated and changed.dataset_dir != first.dataset_dir
        assert sorted(os.listdir(tmp_path / "SyntheticReID")) == sorted(
            os.path.basename(d) for d in (first.dataset_dir, changed.dataset_dir))
        assert os.stat(manifest).st_mtime_ns == stamps[synthetic.MANIFEST]


def test_folder_with_other_parameters_is_regenerated(tmp_path):
    first = SyntheticReIDTiny(root=str(tmp_path))
    manifest = os.path.join(first.dataset_dir, synthetic.MANIFEST)
    with open(manifest, "w") as f:
        f.write('{"params": {"seed": 7}}')
    assert SyntheticReIDTiny(root=str(tmp_path)).generated
    assert synthetic.read_manifest(first.dataset_dir)["params"] == SyntheticReIDTiny.generation_params()


def test_interrupted_generation_leaves_no_half_dataset(tmp_path, monkeypatch):
    render, calls = synthetic.render_image, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt
        return render(*args)

    monkeypatch.setattr(synthetic, "render_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        SyntheticReIDTiny(root=str(tmp_path))
    assert os.listdir(tmp_path / "SyntheticReID") == []
    monkeypatch.setattr(synthetic, "render_image", render)
    assert len(SyntheticReIDTiny(root=str(tmp_path)).train) == 48


def secondary_clues(spec):
    return [spec[k] for k in ("hair", "shoes", "accessory", "logo")]


@pytest.mark.parametrize("cls", SIZES, ids=lambda c: c.__name__)
def test_families_share_the_clothes_and_differ_in_secondary_clues(cls):
    identities = synthetic.build_identities(cls.generation_params())
    families = {}
    for spec in identities:
        families.setdefault(spec["family"], []).append(spec)
    alone = families.pop(-1)
    assert {spec["split"] for f in families.values() for spec in f} == {"train", "test"}
    for family in families.values():
        assert 2 <= len(family) <= 3 and len({spec["split"] for spec in family}) == 1
        for a, b in itertools.combinations(family, 2):
            assert all(a[k] == b[k] for k in ("shirt", "lower", "body", "skin"))
            assert sum(x != y for x, y in zip(secondary_clues(a), secondary_clues(b))) >= 2
    in_families = len(identities) - len(alone)
    assert abs(in_families / len(identities) - cls.family_share) < 0.1


def test_family_members_differ_only_in_small_regions():
    """Same camera and pose: family members differ in a few pixels, other identities in many."""
    params = SyntheticReID.generation_params()
    identities, cameras = synthetic.build_identities(params), synthetic.build_cameras(params)
    families = {}
    for spec in identities:
        families.setdefault(spec["family"], []).append(spec)
    alone = families.pop(-1)

    def differing(a, b, k):
        camera = cameras[k % len(cameras)]
        pose = synthetic.sample_pose(np.random.default_rng(k), camera, occlusion_prob=0.0)
        x, y = (synthetic.render_image(s, camera, pose).astype(int) for s in (a, b))
        return (np.abs(x - y).max(-1) > 40).mean()

    within = [differing(f[0], f[1], k) for k, f in enumerate(families.values())]
    across = [differing(a, b, k) for k, (a, b) in enumerate(zip(alone[::2], alone[1::2]))]
    assert 0.01 < min(within) and max(within) < 0.15 < min(across)


def test_show_train_and_show_test_log_the_counts(tiny, caplog):
    bases = logging.getLogger("fastreid.data.datasets.bases")
    bases.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="fastreid.data.datasets.bases"):
            tiny.show_train()
            tiny.show_test()
    finally:
        bases.removeHandler(caplog.handler)
    text = caplog.text
    assert re.search(r"\| train +\| 8 +\| 48 +\| 6 ", text)
    assert re.search(r"\| query +\| 6 +\| 6 ", text)
    assert re.search(r"\| gallery +\| 7 +\| 30 ", text)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # the test loader's default 4 workers, unused
def test_fastreid_loaders_and_identity_sampler_read_it(cfg, tiny, monkeypatch):
    from fastreid.data import build_reid_test_loader, build_reid_train_loader

    # fast-reid reads $FASTREID_DATASETS once, at import.
    monkeypatch.setattr(sys.modules["fastreid.data.build"], "_root", os.path.dirname(os.path.dirname(tiny.dataset_dir)))
    cfg.DATASETS.NAMES = ("SyntheticReIDTiny",)
    cfg.INPUT.SIZE_TRAIN = cfg.INPUT.SIZE_TEST = [128, 64]
    cfg.DATALOADER.SAMPLER_TRAIN = "NaiveIdentitySampler"
    cfg.DATALOADER.NUM_INSTANCE = 4
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 16
    loader = iter(build_reid_train_loader(cfg))
    try:
        batch = next(loader)
    finally:
        loader.shutdown()  # its prefetching thread
    assert batch["images"].shape == (16, 3, 128, 64)
    assert sorted(batch["targets"].bincount().tolist(), reverse=True)[:4] == [4, 4, 4, 4]
    test_loader, num_query = build_reid_test_loader(cfg, dataset_name="SyntheticReIDTiny")
    assert num_query == 6 and len(test_loader.dataset) == 6 + 30


def test_bad_sizes_name_the_attribute():
    class OneCamera(SyntheticReIDTiny):
        cameras_per_id = 1

    class NegativeShare(SyntheticReIDTiny):
        family_share = -0.5

    with pytest.raises(ValueError, match="cameras_per_id"):
        OneCamera.generation_params()
    with pytest.raises(ValueError, match="NegativeShare.family_share"):
        NegativeShare(root="unused")
