"""fast-reid's real-dataset loaders read the layouts README.md documents, from small stand-in folders; CUHK03Detected
(scsn/datasets.py) picks the detected boxes of the 767/700 split; a missing folder says where it was looked for."""
import json
import os
import warnings

import pytest
from PIL import Image

from fastreid.data.datasets import DATASET_REGISTRY, CUHK03, DukeMTMC, Market1501, MSMT17
from scsn.errors import DatasetNotFoundError
from scsn.data.datasets import CUHK03Detected


def touch_jpegs(folder, names):
    """Tiny real JPEGs named ``names`` under ``folder``; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in names:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new("RGB", (4, 8), (120, 60, 30)).save(path)
        paths.append(path)
    return paths


def test_market1501(tmp_path):
    base = tmp_path / "Market-1501-v15.09.15"
    train = touch_jpegs(base / "bounding_box_train", ["0002_c1s1_000451_03.jpg", "0007_c3s3_015918_02.jpg"])
    query = touch_jpegs(base / "query", ["0001_c1s1_001051_00.jpg"])
    gallery = touch_jpegs(base / "bounding_box_test",
                          ["0001_c6s1_000176_01.jpg", "0000_c2s1_000151_01.jpg", "-1_c1s1_000401_03.jpg"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "deprecated data structure" warning: the documented layout
        data = Market1501(root=str(tmp_path))
    assert sorted(data.train) == [(train[0], "market1501_2", "market1501_0"),
                                  (train[1], "market1501_7", "market1501_2")]
    assert data.query == [(query[0], 1, 0)]
    assert sorted(data.gallery) == sorted([(gallery[0], 1, 5), (gallery[1], 0, 1)])  # junk (-1) skipped


def test_dukemtmc(tmp_path):
    base = tmp_path / "DukeMTMC-reID"
    train = touch_jpegs(base / "bounding_box_train", ["0005_c8_f0001234.jpg"])
    query = touch_jpegs(base / "query", ["0011_c1_f0057200.jpg"])
    gallery = touch_jpegs(base / "bounding_box_test", ["0011_c5_f0092031.jpg"])
    data = DukeMTMC(root=str(tmp_path))
    assert data.train == [(train[0], "dukemtmc_5", "dukemtmc_7")]
    assert data.query == [(query[0], 11, 0)]
    assert data.gallery == [(gallery[0], 11, 4)]


@pytest.mark.parametrize("version, train_dir, test_dir", [
    ("MSMT17_V1", "train", "test"),
    ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
])
def test_msmt17(tmp_path, version, train_dir, test_dir):
    base = tmp_path / version
    train_names = ["0000/0000_000_01_0303morning_0015_0.jpg", "0001/0001_011_14_0303noon_0950_1.jpg"]
    val_names = ["0001/0001_012_03_0303noon_0952_0.jpg"]
    test_names = ["0000/0000_000_05_0303morning_0016_0.jpg", "0000/0000_001_15_0303afternoon_0100_1.jpg"]
    train = touch_jpegs(base / train_dir, train_names + val_names)
    test = touch_jpegs(base / test_dir, test_names)
    for list_name, entries in [("list_train.txt", [(train_names[0], 0), (train_names[1], 1)]),
                               ("list_val.txt", [(val_names[0], 1)]),
                               ("list_query.txt", [(test_names[0], 0)]),
                               ("list_gallery.txt", [(test_names[1], 0)])]:
        (base / list_name).write_text("".join(f"{name} {pid}\n" for name, pid in entries))
    data = MSMT17(root=str(tmp_path))
    assert data.train == [(train[0], "msmt17_0", "msmt17_0"), (train[1], "msmt17_1", "msmt17_13")]
    # Test pids follow the train pids (they are numbered from 0 in both lists).
    assert data.query == [(test[0], 2, 4)]
    assert data.gallery == [(test[1], 2, 14)]


def write_cuhk03(root):
    """fast-reid's CUHK03 folder after its first run: the .mat files it requires (their content is only read to
    build the split files, which exist here), the extracted image folders and the four split files. Each split
    file names its own images, so a test sees which file was read."""
    base = root / "cuhk03"
    (base / "cuhk03_release").mkdir(parents=True)
    for mat in ("cuhk03_release/cuhk-03.mat", "cuhk03_new_protocol_config_detected.mat",
                "cuhk03_new_protocol_config_labeled.mat"):
        (base / mat).write_bytes(b"")
    splits = {}
    for boxes in ("detected", "labeled"):
        images = str(base / f"images_{boxes}")
        os.makedirs(images)
        for protocol in ("classic", "new"):
            def item(name, pid, camid):
                return [os.path.join(images, f"{protocol}_{name}"), pid, camid]

            split = {"train": [item("1_001_1_01.png", 0, 0), item("1_001_2_06.png", 0, 1)],
                     "query": [item("1_002_1_01.png", 5, 0)], "gallery": [item("1_002_2_07.png", 5, 1)]}
            splits[boxes, protocol] = split
            with open(base / f"splits_{protocol}_{boxes}.json", "w") as f:
                json.dump([split], f)
    return splits


def as_tuples(items):
    return [tuple(item) for item in items]


@pytest.mark.parametrize("cls, boxes, prefix", [(CUHK03, "labeled", "cuhk03"),
                                                (CUHK03Detected, "detected", "cuhk03_detected")])
def test_cuhk03_767_700_split(tmp_path, cls, boxes, prefix):
    split = write_cuhk03(tmp_path)[boxes, "new"]
    data = cls(root=str(tmp_path))
    assert as_tuples(data.train) == [(path, f"{prefix}_{pid}", f"{prefix}_{camid}")
                                     for path, pid, camid in split["train"]]
    assert as_tuples(data.query) == as_tuples(split["query"])
    assert as_tuples(data.gallery) == as_tuples(split["gallery"])
    assert all(f"images_{boxes}" in path for path, _, _ in data.train + data.query + data.gallery)


def test_cuhk03_detected_is_registered():
    assert DATASET_REGISTRY.get("CUHK03Detected") is CUHK03Detected
    assert CUHK03Detected.dataset_name != CUHK03.dataset_name


@pytest.mark.parametrize("cls, make, missing", [
    (Market1501, [], ""),
    (DukeMTMC, [], "DukeMTMC-reID"),
    (DukeMTMC, ["DukeMTMC-reID/bounding_box_train"], "DukeMTMC-reID/query"),
    (CUHK03, [], "cuhk03"),
    (CUHK03Detected, ["cuhk03"], "cuhk03/cuhk03_release"),
])
def test_missing_dataset_folder_names_path_and_env_variable(tmp_path, cls, make, missing):
    root = tmp_path / "datasets"
    for folder in make:
        (root / folder).mkdir(parents=True)
    expected = os.path.abspath(os.path.join(root, missing)) if missing else str(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Market1501's "deprecated data structure" warning
        with pytest.raises(DatasetNotFoundError, match="FASTREID_DATASETS") as error:
            cls(root=str(root))
    assert repr(expected) in str(error.value)


def test_missing_msmt17_folder_names_both_versions(tmp_path):
    root = tmp_path / "datasets"
    root.mkdir()
    with pytest.raises(DatasetNotFoundError, match="FASTREID_DATASETS") as error:
        MSMT17(root=str(root))
    assert repr(str(root / "MSMT17_V1")) in str(error.value)
    assert repr(str(root / "MSMT17_V2")) in str(error.value)
