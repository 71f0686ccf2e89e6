"""Checkpoints (scsn/checkpoint.py): written atomically (a kill while saving leaves the last good checkpoint and
last_checkpoint usable), loaded with torch.load(weights_only=True) (a crafted pickle is refused and runs
nothing), and never loaded in part when resuming or evaluating."""
import os
import pickle
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import scsn
from fastreid.config import get_cfg
from fastreid.engine.hooks import PeriodicCheckpointer
from fastreid.modeling import build_model
from fastreid.solver import build_lr_scheduler, build_optimizer
from fastreid.utils.checkpoint import Checkpointer

from scsn.fastreid_patches.checkpoint import (CheckpointMismatchError, CorruptCheckpointError, UnsafeCheckpointError,
                             load_checkpoint_file, restore_best_metric)
from scsn.data.sampling import ResumableSampler
from fastreid.data.samplers import TrainingSampler
from test_train_net import train_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scsn_r18(*overrides, config="scsn_r18.yml"):
    cfg = get_cfg()
    scsn.add_scsn_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Synthetic", config))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.HEADS.NUM_CLASSES", "8", *overrides])
    return cfg


class CreatesAFile:
    """Unpickling this calls open(path, "w"): the file appears if the loader ran the pickle's code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_training_checkpoint_holds_only_what_weights_only_loading_allows(tmp_path):
    """Everything fast-reid's trainer checkpoints (model; optimizer over ContiguousParams' flat buffers; both LR
    schedulers; epoch, metric; the run seed) loads with the empty allow-list."""
    cfg = scsn_r18("SOLVER.FREEZE_ITERS", "0")
    model = build_model(cfg)
    optimizer, _ = build_optimizer(cfg, model)
    schedulers = build_lr_scheduler(cfg, optimizer, iters_per_epoch=3)
    sampler = ResumableSampler(TrainingSampler(10, seed=4), 2, seed=4)
    Checkpointer(model, str(tmp_path), optimizer=optimizer, data_sampler=sampler, **schedulers).save(
        "model_0000", epoch=0, metric=12.5)
    loaded = load_checkpoint_file(str(tmp_path / "model_0000.pth"))
    assert set(loaded) == {"model", "optimizer", "lr_sched", "warmup_sched", "data_sampler", "epoch", "metric"}
    assert loaded["data_sampler"] == {"seed": 4} and loaded["metric"] == 12.5
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000.pth"]  # no temporary file left


@pytest.mark.parametrize("resume", [False, True])
def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, resume):
    created = tmp_path / "created_by_unpickling"
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": CreatesAFile(str(created))}, path)
    checkpointer = Checkpointer(torch.nn.Linear(2, 1), str(tmp_path))
    with pytest.raises(UnsafeCheckpointError, match=r"Refusing to load checkpoint .*model_final\.pth.*"
                                                    r"\(.*(builtins|io)\.open\).*Nothing in it was run"):
        if resume:
            (tmp_path / "last_checkpoint").write_text("model_final.pth")
            checkpointer.resume_or_load("", resume=True)
        else:
            checkpointer.load(str(path))
    assert not created.exists()


def test_a_legacy_pickle_is_refused(tmp_path):
    path = tmp_path / "legacy.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": [0.0, 1.0]}}, f)
    with pytest.raises(UnsafeCheckpointError, match="raw or legacy pickle"):
        load_checkpoint_file(str(path))


def test_a_truncated_checkpoint_names_the_others_to_resume_from(tmp_path):
    torch.save({"model": {"w": torch.zeros(100)}}, tmp_path / "model_0000.pth")
    data = (tmp_path / "model_0000.pth").read_bytes()
    (tmp_path / "model_0001.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match=r"model_0001\.pth' is truncated or corrupt.*model_0000\.pth"):
        load_checkpoint_file(str(tmp_path / "model_0001.pth"))


KILLED_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys
    import torch
    import scsn
    from fastreid.utils.checkpoint import Checkpointer

    folder, stage = sys.argv[1], sys.argv[2]
    checkpointer = Checkpointer(torch.nn.Linear(1000, 100), folder)
    checkpointer.save("model_0000")
    if stage == "checkpoint":  # killed half-way through writing the checkpoint file
        real_save = torch.save
        def save(obj, f):
            real_save(obj, f)
            f.truncate(f.tell() // 2)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = save
    else:  # killed after the checkpoint, before the last_checkpoint tag is renamed into place
        real_replace = os.replace
        def replace(src, dst):
            if dst.endswith("last_checkpoint"):
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
        os.replace = replace
    checkpointer.model.weight.data.fill_(1.0)
    checkpointer.save("model_0001")
""")


@pytest.mark.parametrize("stage", ["checkpoint", "tag"])
def test_a_kill_while_saving_leaves_the_last_good_checkpoint_usable(tmp_path, stage):
    code = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, str(tmp_path), stage], cwd=ROOT).returncode
    assert code == -9
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000.pth"
    model = torch.nn.Linear(1000, 100)
    checkpointer = Checkpointer(model, str(tmp_path))
    checkpointer.strict = True
    checkpointer.resume_or_load("", resume=True)
    assert not torch.equal(model.weight, torch.ones_like(model.weight))
    leftovers = {"checkpoint": [".model_0001.pth.tmp"], "tag": [".last_checkpoint.tmp", "model_0001.pth"]}[stage]
    assert sorted(os.listdir(tmp_path)) == sorted(["last_checkpoint", "model_0000.pth", *leftovers])
    checkpointer.save("model_0001")  # the next save replaces the leftover
    assert (tmp_path / "last_checkpoint").read_text() == "model_0001.pth"
    assert not (tmp_path / ".model_0001.pth.tmp").exists()


@pytest.fixture(scope="module")
def four_stage_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "scsn_4stages.pth"
    torch.save({"model": build_model(scsn_r18("MODEL.HEADS.NUM_STAGES", "4")).state_dict()}, path)
    return path


def strict_checkpointer(model):
    checkpointer = Checkpointer(model)
    checkpointer.strict = True
    return checkpointer


def test_checkpoint_of_another_stage_count_is_refused_naming_the_keys(four_stage_checkpoint):
    with pytest.raises(CheckpointMismatchError) as error:
        strict_checkpointer(build_model(scsn_r18())).load(str(four_stage_checkpoint))
    message = str(error.value)
    assert "tensors of the checkpoint are not in the model" in message and "heads.stage_heads.3" in message
    assert "MODEL.HEADS.NUM_STAGES" in message and "not in the checkpoint" not in message


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    bot = tmp_path / "bot.pth"
    torch.save({"model": build_model(scsn_r18(config="bagtricks_r18.yml")).state_dict()}, bot)
    with pytest.raises(CheckpointMismatchError, match=r"tensors of the model are not in the checkpoint"):
        strict_checkpointer(build_model(scsn_r18())).load(str(bot))


def test_fine_tuning_may_load_part_of_a_model_and_evaluation_needs_no_classifier(four_stage_checkpoint):
    model = build_model(scsn_r18())
    Checkpointer(model).load(str(four_stage_checkpoint))  # not strict: fast-reid's report, stages 1-3 loaded
    evaluated = build_model(scsn_r18("MODEL.HEADS.NUM_CLASSES", "0", "MODEL.HEADS.NUM_STAGES", "4"))
    strict_checkpointer(evaluated).load(str(four_stage_checkpoint))  # the empty classifier is exempt
    reference = torch.load(four_stage_checkpoint, weights_only=True)["model"]
    assert torch.equal(evaluated.state_dict()["heads.stage_heads.3.bottleneck.0.weight"],
                       reference["heads.stage_heads.3.bottleneck.0.weight"])


def test_eval_only_never_evaluates_a_model_the_checkpoint_fills_in_part(tmp_path, four_stage_checkpoint):
    code, log = train_net(tmp_path / "data", "--eval-only", "--config-file", "configs/Synthetic/scsn_r18.yml",
                          "DATASETS.TESTS", '("SyntheticReIDTiny",)', "MODEL.DEVICE", "cpu",
                          "MODEL.WEIGHTS", str(four_stage_checkpoint), "OUTPUT_DIR", str(tmp_path / "out"))
    assert code == 1
    assert "error: Checkpoint" in log and "heads.stage_heads.3" in log
    assert "Start inference" not in log and "Traceback" not in log


def test_resume_keeps_the_best_model_of_the_earlier_run(tmp_path):
    model = torch.nn.Linear(2, 1)
    Checkpointer(model, str(tmp_path)).save("model_best", metric=61.5)
    hook = PeriodicCheckpointer(Checkpointer(model, str(tmp_path)), 1)
    trainer = types.SimpleNamespace(_hooks=[hook], cfg=types.SimpleNamespace(OUTPUT_DIR=str(tmp_path)))
    restore_best_metric(trainer)
    assert hook.best_metric == 61.5
