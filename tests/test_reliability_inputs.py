"""The bad-input matrix of README.md ("Reliability"): each row gives one clear error or a documented recovery
(scsn/fastreid_patches/guards.py, scsn/data/sampling.py, scsn/fastreid_patches/compat.py). Rows tested elsewhere: a missing dataset folder
(test_datasets.py), offline pretrained weights (test_checks.py), a checkpoint of another model and unsafe
checkpoints (test_reliability_checkpoints.py)."""
import io
import logging
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import scsn
from fastreid.config import get_cfg
from fastreid.data import build_reid_train_loader, samplers
from fastreid.data.common import CommDataset
from fastreid.data.transforms import build_transforms
from fastreid.engine.train_loop import SimpleTrainer
from fastreid.modeling import build_model
from fastreid.utils.events import CommonMetricPrinter, EventStorage

from scsn.data import sampling
from scsn.engine.defaults import merge_config as load_config
from scsn.errors import (ConfigError, DatasetNotFoundError, EmptySplitError, InputError, NonFiniteLossError,
                         UnreadableImageError)
from test_datasets import touch_jpegs
from test_train_net import train_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCSN_R18 = os.path.join(ROOT, "configs", "Synthetic", "scsn_r18.yml")


def fresh_cfg():
    cfg = get_cfg()
    scsn.add_scsn_config(cfg)
    return cfg


# --- configs ---------------------------------------------------------------------------------------------------

def test_unknown_key_on_the_command_line_names_it_and_the_nearest_keys():
    with pytest.raises(ConfigError, match=r"Unknown config key SOLVER\.IMS_PER_BACH in the command line\. "
                                          r"Did you mean SOLVER\.IMS_PER_BATCH"):
        load_config(fresh_cfg(), SCSN_R18, ["SOLVER.IMS_PER_BACH", "16"])


def test_unknown_key_in_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text(f"_BASE_: {SCSN_R18}\nMODEL:\n  HEADS:\n    NUM_STAGE: 4\n")
    with pytest.raises(ConfigError, match=rf"Unknown config key MODEL\.HEADS\.NUM_STAGE in config file {path}.*"
                                          r"MODEL\.HEADS\.NUM_STAGES"):
        load_config(fresh_cfg(), str(path), [])


def test_wrong_value_type_names_the_key_the_expected_type_and_the_value():
    with pytest.raises(ConfigError, match=r"SOLVER\.IMS_PER_BATCH in the command line expects a value of "
                                          r"<class 'int'> \(its default is 32\), got sixteen of <class 'str'>"):
        load_config(fresh_cfg(), SCSN_R18, ["SOLVER.IMS_PER_BATCH", "sixteen"])


def test_odd_override_list_and_missing_or_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(fresh_cfg(), SCSN_R18, ["SOLVER.IMS_PER_BATCH"])
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(fresh_cfg(), str(tmp_path / "missing.yml"), [])
    broken = tmp_path / "broken.yml"
    broken.write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(fresh_cfg(), str(broken), [])


def test_stripes_not_dividing_the_map_height_stop_the_build_with_the_keys():
    overrides = ["MODEL.DEVICE", "cpu", "MODEL.HEADS.NUM_CLASSES", "8", "INPUT.SIZE_TRAIN", "[144, 64]",
                 "MODEL.BACKBONE.STAGE3_STRIDE", "2"]
    cfg = load_config(fresh_cfg(), SCSN_R18, overrides)
    with pytest.raises(ConfigError, match=r"INPUT\.SIZE_TRAIN height 144 gives a 9-row feature map.*"
                                          r"MODEL\.HEADS\.NUM_STRIPES=8"):
        build_model(cfg)


def test_train_net_prints_a_bad_input_as_one_line_without_traceback(tmp_path):
    code, log = train_net(tmp_path / "data", "--config-file", SCSN_R18, "MODEL.HEADS.NUM_STAGE", "4",
                          "OUTPUT_DIR", str(tmp_path / "out"))
    assert code == 1
    assert log.strip().splitlines()[-1].startswith(
        "error: Unknown config key MODEL.HEADS.NUM_STAGE in the command line. Did you mean MODEL.HEADS.NUM_STAGES")
    assert "Traceback" not in log


# --- datasets and batches --------------------------------------------------------------------------------------

def test_errors_of_the_matrix_are_input_errors():
    assert issubclass(DatasetNotFoundError, InputError) and issubclass(UnreadableImageError, InputError)


@pytest.mark.parametrize("empty", ["bounding_box_train", "query", "bounding_box_test"])
def test_empty_split_names_the_split_and_its_folder(tmp_path, empty):
    from fastreid.data.datasets import Market1501

    base = tmp_path / "Market-1501-v15.09.15"
    for folder, name in [("bounding_box_train", "0002_c1s1_000451_03.jpg"), ("query", "0001_c1s1_001051_00.jpg"),
                         ("bounding_box_test", "0001_c2s1_000301_01.jpg")]:
        (base / folder).mkdir(parents=True)
        if folder != empty:
            touch_jpegs(base / folder, [name])
    dataset = Market1501(root=str(tmp_path))
    split = {"bounding_box_train": "training", "query": "query", "bounding_box_test": "gallery"}[empty]
    with pytest.raises(EmptySplitError, match=rf"the {split} split has no image .*{empty}"):
        dataset.show_train() if split == "training" else dataset.show_test()


@pytest.fixture
def tiny_root(tmp_path, monkeypatch):
    """SyntheticReIDTiny (48 training images, 8 identities) as the training set of fast-reid's loader."""
    from fastreid.data import build

    monkeypatch.setattr(build, "_root", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("overrides, message", [
    (["SOLVER.IMS_PER_BATCH", "64"], r"48 images, fewer than SOLVER\.IMS_PER_BATCH 64"),
    (["SOLVER.IMS_PER_BATCH", "40"], r"needs 10 identities, but the training set has 8"),
    (["SOLVER.IMS_PER_BATCH", "18"], r"must be a multiple of DATALOADER\.NUM_INSTANCE 4"),
    (["DATALOADER.SAMPLER_TRAIN", "SetReWeightSampler"], r"SetReWeightSampler never fills a batch"),
])
def test_batches_the_training_set_cannot_fill_stop_before_training(tiny_root, overrides, message):
    cfg = load_config(fresh_cfg(), SCSN_R18, ["DATASETS.NAMES", '("SyntheticReIDTiny",)', *overrides])
    with pytest.raises(InputError, match=message):
        sampling.build_train_loader(cfg)


def jpeg_bytes(size=(16, 32)):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_truncated_jpeg_stops_training_with_its_name_instead_of_hanging(tmp_path, num_workers):
    """Before scsn/compat.py's loader-thread patch the training loop waited for ever on the prefetch queue."""
    good, bad = tmp_path / "0001_c1s1_000001_00.jpg", tmp_path / "0001_c1s1_000002_00.jpg"
    good.write_bytes(jpeg_bytes())
    bad.write_bytes(jpeg_bytes()[:300])
    train_set = CommDataset([(str(good), 1, 1), (str(bad), 1, 1)], build_transforms(fresh_cfg(), is_train=True))
    loader = build_reid_train_loader(train_set=train_set, sampler=samplers.TrainingSampler(2, shuffle=False, seed=0),
                                     total_batch_size=2, num_workers=num_workers)
    outcome = []

    def first_batch():
        try:
            next(iter(loader))
        except Exception as e:
            outcome.append(e)

    thread = threading.Thread(target=first_batch, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the loader hung"
    assert len(outcome) == 1 and "0001_c1s1_000002_00.jpg" in str(outcome[0]) and "truncated" in str(outcome[0])
    assert isinstance(outcome[0], UnreadableImageError)


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "I;16", "1"])
def test_every_image_mode_is_read_as_8_bit_rgb(tmp_path, mode):
    from fastreid.data.common import read_image

    rgb = np.random.default_rng(1).integers(0, 256, (8, 4, 3), dtype=np.uint8)
    if mode == "I;16":
        values = np.arange(32, dtype=np.uint16).reshape(8, 4) * 2000  # up to 62000
        image, expected = Image.fromarray(values), np.repeat(np.round(values / 257)[..., None], 3, axis=2)
    else:
        image = Image.fromarray(rgb).convert(mode)
        expected = np.asarray(image.convert("RGB"))
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    image.save(path)
    read = read_image(str(path))
    assert read.mode == "RGB" and np.array_equal(np.asarray(read), expected)
    if mode == "RGBA":
        assert np.array_equal(np.asarray(read), rgb)  # the colours, without the alpha channel


def test_image_smaller_than_the_input_size_is_resized_up():
    cfg = load_config(fresh_cfg(), SCSN_R18, [])
    small = Image.fromarray(np.full((10, 5, 3), 90, np.uint8))
    for is_train in (True, False):
        assert build_transforms(cfg, is_train=is_train)(small).shape == (3, 128, 64)


# --- training --------------------------------------------------------------------------------------------------

def test_epoch_of_one_iteration_logs_once_instead_of_dividing_by_zero(caplog):
    """fast-reid's metric printer divided by the iterations since its last line (0 when an epoch is 1 iteration)."""
    printer = CommonMetricPrinter(max_iter=5)
    with EventStorage(0) as storage, caplog.at_level(logging.INFO, logger="fastreid.utils.events"):
        storage.epoch = 0
        storage.put_scalar("loss_cls", 1.0)
        printer.write()  # after the step
        printer.write()  # after the epoch, same iteration
    assert sum("epoch/iter" in r.getMessage() for r in caplog.records) == 1


def test_nan_loss_names_the_stages_whose_losses_are_not_finite():
    losses = {"loss_cls_s1": torch.tensor(0.5), "loss_triplet_s1": torch.tensor(0.2),
              "loss_cls_s2": torch.tensor(float("nan")), "loss_triplet_s3": torch.tensor(float("inf"))}
    trainer = SimpleTrainer(torch.nn.Linear(1, 1), [], torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), 0.1), None)
    trainer.iter = 7
    with EventStorage(7) as storage:
        storage.epoch = 2
        with pytest.raises(NonFiniteLossError) as error:
            trainer._write_metrics(losses, 0.0)
    assert str(error.value).startswith("Loss became NaN or infinite at iteration 7 (epoch 2): stage 2: loss_cls_s2 = "
                                       "nan; stage 3: loss_triplet_s3 = inf. The weights were not updated")
    assert "--resume" in str(error.value)
