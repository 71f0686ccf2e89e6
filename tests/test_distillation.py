"""SCSN as a teacher in fast-reid's Distiller (scsn/fastreid_patches/distiller.py) and the descriptor loss
(scsn/modeling/distillation.py): the loss against a hand computation, teachers that build, load strictly, get no
gradient and stay out of the student's checkpoint, the settings, and one clear error per bad input."""
import glob
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import scsn.results

from fastreid.modeling import build_model
from fastreid.utils.events import EventStorage
from scsn.engine import build_config
from scsn.errors import CheckpointError, CheckpointMismatchError, ConfigError
from scsn.analysis.teacher import positive_mass, teacher_statistics
from scsn.modeling.distillation import (CascadeTeacherHead, StageTap, attention_transfer_loss,
                                        similarity_distillation_loss)
from scsn.modeling.suppression import CascadedSuppressionHead
from scsn.torch_support import DYNAMO_ONNX_EXPORT

from inference_helpers import load_tool, run_tool
from test_stock_fastreid_script import SETUP
from test_train_net import TINY, train_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCSN = os.path.join(ROOT, "configs", "Synthetic", "scsn_r18.yml")
BOT = os.path.join(ROOT, "configs", "Synthetic", "bagtricks_r18.yml")
# 64x32 images: an 8-row stage-4 map at SCSN's strides, one row to each of the K = 8 stripes.
SMALL = ["MODEL.HEADS.NUM_CLASSES", "4", "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
         "MODEL.DEVICE", "cpu"]
TARGETS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def save_teacher(directory, *opts, seed=0):
    """A trained-run folder of a small SCSN-R18: config.yaml (as fast-reid saves it) and model_final.pth."""
    torch.manual_seed(seed)
    cfg = build_config(SCSN, SMALL + list(opts), freeze=False)
    model = build_model(cfg)
    os.makedirs(directory, exist_ok=True)
    torch.save({"model": model.state_dict()}, os.path.join(directory, "model_final.pth"))
    with open(os.path.join(directory, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    return os.path.join(directory, "config.yaml"), os.path.join(directory, "model_final.pth"), model


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_teacher(str(tmp_path_factory.mktemp("teacher")))


def student_cfg(teachers, *opts):
    configs = "(" + "".join(f'"{c}",' for c, _, _ in teachers) + ")"
    weights = "(" + "".join(f'"{w}",' for _, w, _ in teachers) + ")"
    return build_config(BOT, SMALL + ["MODEL.META_ARCHITECTURE", "Distiller", "KD.MODEL_CONFIG", configs,
                                      "KD.MODEL_WEIGHTS", weights, *opts])


def train_step(model, seed=0):
    torch.manual_seed(seed)
    model.train()
    with EventStorage(0):
        return model({"images": torch.rand(8, 3, 64, 32) * 255, "targets": TARGETS.clone()})


def test_similarity_loss_matches_a_hand_computation():
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    t = 0.5

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    def neighbours(rows, i):
        logits = [cos(rows[i], rows[j]) / t for j in range(len(rows)) if j != i]
        z = sum(math.exp(v) for v in logits)
        return [math.exp(v) / z for v in logits]

    s_rows, t_rows = student.tolist(), teacher.tolist()
    expected = sum(sum(p * math.log(p / q) for p, q in zip(neighbours(t_rows, i), neighbours(s_rows, i)))
                   for i in range(3)) / 3
    assert similarity_distillation_loss(student, teacher, t).item() == pytest.approx(expected, rel=1e-5)


def test_similarity_loss_sees_only_the_geometry_and_trains_only_the_student():
    torch.manual_seed(0)
    teacher = torch.randn(8, 6)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6))
    same_geometry = torch.cat([3.0 * teacher @ rotation, torch.zeros(8, 4)], dim=1)  # wider, rotated, rescaled
    assert similarity_distillation_loss(same_geometry, teacher, 0.05).item() == pytest.approx(0.0, abs=1e-5)

    student = torch.randn(8, 4, requires_grad=True)
    fp32 = similarity_distillation_loss(student, teacher, 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 inside autocast: 1 / T magnifies bf16's rounding
        under_autocast = similarity_distillation_loss(student, teacher, 0.05)
    assert under_autocast.dtype == torch.float32 and under_autocast.item() == fp32.item()
    teacher.requires_grad_(True)
    loss = similarity_distillation_loss(student, teacher, 0.05)
    loss.backward()
    assert loss.item() > 0 and student.grad.abs().sum() > 0 and teacher.grad is None


def test_attention_transfer_loss_matches_a_hand_computation():
    # One stage: the student's 2x2 map of 2 channels, the teacher's 4x4 map of 1 channel (pooled to 2x2).
    student = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 1.0]]]], requires_grad=True)
    teacher = torch.arange(16.0).view(1, 1, 4, 4)
    s = [(1 + 1) / 2, (4 + 0) / 2, (0 + 4) / 2, (1 + 1) / 2]  # channel means of the squares, row by row
    t = [sum(v * v for v in (a, a + 1, a + 4, a + 5)) / 4 for a in (0.0, 2.0, 8.0, 10.0)]  # 2x2 means of squares

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    expected = 1000 / 2 * sum((a - b) ** 2 for a, b in zip(unit(s), unit(t))) / 4
    loss = attention_transfer_loss([student], [teacher], 1000.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    same = attention_transfer_loss([teacher * 3.0], [torch.cat([teacher, teacher, -teacher], dim=1)], 1000.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # scale and width do not matter, where the energy is does
    loss.backward()
    assert student.grad.abs().sum() > 0


def test_stage_taps_read_each_stage_of_the_student_and_the_scsn_teacher(teacher):
    images = torch.rand(2, 3, 64, 32)
    scsn_backbone = teacher[2].backbone.train()
    bot_backbone = build_model(build_config(BOT, SMALL)).backbone.train()
    taps = StageTap(scsn_backbone, "teacher"), StageTap(bot_backbone, "student")
    with torch.no_grad():
        scsn_backbone(images)
        bot_backbone(images)
        expected = [scsn_backbone.stage_features(images), []]
        x = bot_backbone.maxpool(bot_backbone.relu(bot_backbone.bn1(bot_backbone.conv1(images))))
        for stage in (bot_backbone.layer1, bot_backbone.layer2, bot_backbone.layer3, bot_backbone.layer4):
            x = stage(x)
            expected[1].append(x)
    for tap, maps in zip(taps, expected):
        assert all(torch.allclose(a, b) for a, b in zip(tap.take(), maps))
    assert [m.shape[-2:] for m in expected[0]] == [(16, 8), (8, 4), (8, 4), (8, 4)]  # SCSN: stages 3, 4 at stride 1
    assert [m.shape[-2:] for m in expected[1]] == [(16, 8), (8, 4), (4, 2), (4, 2)]
    with torch.no_grad():
        bot_backbone.eval()(images)
    with pytest.raises(RuntimeError, match="before a training forward"):  # eval forwards keep nothing
        taps[1].take()
    with pytest.raises(ConfigError, match="the student's Linear has none. Set KD.ATTENTION.WEIGHT 0"):
        StageTap(torch.nn.Linear(2, 2), "student")


def test_an_scsn_teacher_teaches_its_attention_maps(teacher):
    model = build_model(student_cfg([teacher], "KD.LOGIT_WEIGHT", "0.0", "KD.ATTENTION.WEIGHT", "1000.0"))
    losses = train_step(model)
    assert set(losses) == {"loss_cls", "loss_triplet", "loss_kd_attention"}
    assert torch.isfinite(losses["loss_kd_attention"]) and losses["loss_kd_attention"] > 0
    losses["loss_kd_attention"].backward()
    assert model.backbone.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model_ts[0].parameters())
    assert all(m is None for tap in model.kd_taps for m in tap.maps)  # released after the loss
    assert not any("tap" in k for k in model.state_dict())


def test_cascade_teacher_head_gives_distiller_one_dict(teacher):
    head = teacher[2].heads.train()
    features = torch.randn(4, 512, 8, 4)
    stages = head(features, TARGETS[:4])
    mean = CascadeTeacherHead(head, "mean")(features, TARGETS[:4])
    first = CascadeTeacherHead(head, "stage1")(features, TARGETS[:4])
    logits = torch.stack([s["pred_class_logits"] for s in stages])
    assert torch.allclose(mean["pred_class_logits"], logits.mean(0)) and torch.equal(first["pred_class_logits"],
                                                                                       logits[0])
    assert torch.equal(mean["features"], torch.cat([s["features"] for s in stages], dim=1))
    assert mean["features"].shape == (4, 3 * 512)


def test_an_scsn_teacher_trains_a_bot_student(teacher):
    model = build_model(student_cfg([teacher], "KD.DESCRIPTOR.WEIGHT", "1.0"))
    model_t = model.model_ts[0]
    assert isinstance(model_t.heads, CascadeTeacherHead) and isinstance(model_t.heads.head, CascadedSuppressionHead)
    # Loaded strictly: every tensor is the checkpoint's.
    saved = torch.load(teacher[1])["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model_t.heads.head.state_dict().items()
               for k in [f"heads.{k}"])
    # Not a submodule: not in the student's checkpoint, no gradient.
    assert not any(k.startswith("model_ts") for k in model.state_dict())
    assert not any(p.requires_grad for p in model_t.parameters())
    # KD.TEACHER_BN_EVAL: BatchNorm with the running statistics, the head still returning its training outputs.
    norms = [m for m in model_t.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(m.training for m in norms) and model_t.heads.training
    before = {k: v.clone() for k, v in model_t.state_dict().items()}

    losses = train_step(model)
    assert {"loss_cls", "loss_triplet", "loss_jsdiv", "loss_kd_descriptor"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model_t.parameters())
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(torch.equal(v, before[k]) for k, v in model_t.state_dict().items())  # running statistics too


def test_fastreids_batch_statistics_and_the_stage1_logits_are_options(teacher):
    model = build_model(student_cfg([teacher], "KD.TEACHER_BN_EVAL", "False", "KD.CASCADE_LOGITS", "stage1"))
    model_t = model.model_ts[0]
    assert all(m.training for m in model_t.modules()) and model_t.heads.logits == "stage1"
    assert torch.isfinite(train_step(model)["loss_jsdiv"])


def test_several_teachers_and_the_ema_copy(teacher, tmp_path):
    two_stages = save_teacher(str(tmp_path / "t2"), "MODEL.HEADS.NUM_STAGES", "2", seed=1)
    model = build_model(student_cfg([teacher, two_stages], "KD.EMA.ENABLED", "True"))
    ema, first, second = model.model_ts
    assert type(ema.heads).__name__ == "EmbeddingHead" and all(m.training for m in ema.modules())
    assert first.heads.head.num_stages == 3 and second.heads.head.num_stages == 2
    losses = train_step(model)
    assert torch.isfinite(losses["loss_jsdiv"])


def test_the_student_backbone_starts_from_the_teachers(teacher):
    # MODEL.BACKBONE.PRETRAIN True: ImageNet's weights, which the teacher's replace, are not fetched (offline here).
    model = build_model(student_cfg([teacher], "KD.INIT_FROM_TEACHER", "True", "KD.EMA.ENABLED", "True",
                                    "MODEL.BACKBONE.PRETRAIN", "True"))
    ema, model_t = model.model_ts
    student = model.backbone.state_dict()
    assert student.keys() <= model_t.backbone.state_dict().keys()  # ResNet18's every tensor, without RDAM and NMFF
    assert all(torch.equal(v, model_t.backbone.state_dict()[k]) for k, v in student.items())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ema.parameters()))  # the EMA copy starts there
    assert not torch.equal(build_model(student_cfg([teacher])).backbone.conv1.weight, model_t.backbone.conv1.weight)
    losses = train_step(model)
    sum(losses.values()).backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0 and model_t.backbone.conv1.weight.grad is None


def test_a_teacher_of_another_depth_cannot_start_the_student(teacher):
    with pytest.raises(ConfigError, match=r"KD.INIT_FROM_TEACHER needs a teacher backbone of the student's depth.*"
                                          r"\(first: layer1.2.conv1.weight\)"):
        build_model(student_cfg([teacher], "KD.INIT_FROM_TEACHER", "True", "MODEL.BACKBONE.DEPTH", "34x"))


def test_logit_weight_scales_fastreids_loss_and_zero_leaves_it_out(teacher):
    torch.manual_seed(0)
    reference = train_step(build_model(student_cfg([teacher])))["loss_jsdiv"]
    torch.manual_seed(0)
    scaled = train_step(build_model(student_cfg([teacher], "KD.LOGIT_WEIGHT", "0.5")))["loss_jsdiv"]
    assert scaled.item() == pytest.approx(0.5 * reference.item(), rel=1e-5)
    losses = train_step(build_model(student_cfg([teacher], "KD.LOGIT_WEIGHT", "0.0", "KD.DESCRIPTOR.WEIGHT", "1.0")))
    assert "loss_jsdiv" not in losses and torch.isfinite(losses["loss_kd_descriptor"])


def test_a_teacher_of_other_identities_teaches_through_the_descriptor_alone(teacher):
    other = ["MODEL.HEADS.NUM_CLASSES", "6"]
    with pytest.raises(ConfigError, match=r"trained on 4 identities, the student's training set has 6.*"
                                          r"KD.LOGIT_WEIGHT 0 and KD.DESCRIPTOR.WEIGHT 1"):
        build_model(student_cfg([teacher], *other))
    model = build_model(student_cfg([teacher], *other, "KD.LOGIT_WEIGHT", "0.0", "KD.DESCRIPTOR.WEIGHT", "1.0"))
    assert torch.isfinite(train_step(model)["loss_kd_descriptor"])


@pytest.mark.parametrize("opts,error,message", [
    (["KD.MODEL_WEIGHTS", '("a.pth", "b.pth")'], ConfigError, "lists 1 teacher configs but KD.MODEL_WEIGHTS 2"),
    (["KD.MODEL_CONFIG", '("missing/config.yaml",)'], ConfigError,
     r"KD.MODEL_CONFIG\[0\] 'missing/config.yaml' is not"),
    (["KD.MODEL_WEIGHTS", '("missing.pth",)'], CheckpointError, r"KD.MODEL_WEIGHTS\[0\] 'missing.pth' is not a file"),
    (["KD.MODEL_CONFIG", "()", "KD.MODEL_WEIGHTS", "()"], ConfigError, "needs a teacher"),
    (["KD.CASCADE_LOGITS", "max"], ConfigError, "KD.CASCADE_LOGITS must be one of"),
    (["KD.MODEL_CONFIG", "()", "KD.MODEL_WEIGHTS", "()", "KD.EMA.ENABLED", "True", "KD.INIT_FROM_TEACHER", "True"],
     ConfigError, "KD.INIT_FROM_TEACHER starts the student from its first teacher"),
    (["KD.DESCRIPTOR.TEMPERATURE", "0.0"], ConfigError, "TEMPERATURE must be > 0"),
    (["KD.LOGIT_WEIGHT", "0.0"], ConfigError, "all 0 and KD.INIT_FROM_TEACHER is False"),
    (["KD.ATTENTION.WEIGHT", "-1.0"], ConfigError, r"KD loss weights must be >= 0, got \{'KD.ATTENTION.WEIGHT': -1.0\}"),
    (["MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"], ConfigError, "feeds the teacher the student's normalised images"),
    (["MODEL.HEADS.NAME", "CascadedSuppressionHead"], ConfigError, "SCSN's cascade can be a teacher"),
])
def test_bad_kd_settings_stop_with_one_message(teacher, opts, error, message):
    with pytest.raises(error, match=message):
        build_model(student_cfg([teacher], *opts))


def test_a_checkpoint_that_does_not_fit_its_config_is_refused(teacher, tmp_path):
    config, weights, _ = save_teacher(str(tmp_path / "t"), "MODEL.HEADS.NUM_STAGES", "2")
    with pytest.raises(CheckpointMismatchError, match="KD teacher checkpoint"):
        build_model(student_cfg([(config, teacher[1], None)]))


def test_the_student_alone_for_inference(teacher, tmp_path):
    """A distilled student's config builds fast-reid's Baseline for inference: the teachers' files are not needed and
    the Distiller's checkpoint fills it, strictly."""
    from scsn.fastreid_patches.checkpoint import load_weights

    model = build_model(student_cfg([teacher]))
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": model.state_dict()}, path)
    cfg = build_config(BOT, SMALL + ["MODEL.META_ARCHITECTURE", "Distiller", "KD.MODEL_CONFIG", '("gone.yaml",)',
                                     "KD.MODEL_WEIGHTS", '("gone.pth",)'], inference=True)
    student = load_weights(build_model(cfg), path).eval()
    assert type(student).__name__ == "Baseline"
    images = torch.rand(2, 3, 64, 32) * 255
    with torch.no_grad():
        assert torch.equal(student({"images": images}), model.eval()({"images": images}))


CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yml"), recursive=True))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.yml")))  # the leaves a recipe's step 1 can train
DISTILL = [p for p in CONFIGS if f"{os.sep}distill{os.sep}" in p and not os.path.basename(p).startswith("Base-")]
TEST_OPTS = ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.HEADS.NUM_CLASSES", "4",
             "INPUT.SIZE_TRAIN", "[128, 64]", "INPUT.SIZE_TEST", "[128, 64]"]


@pytest.fixture(scope="module")
def recipe_runs(tmp_path_factory):
    """Step 1 of a recipe at a small size, once per teacher config: {config: (config.yaml, model_final.pth)}."""
    runs = {}

    def run(config):
        if config not in runs:
            torch.manual_seed(0)
            cfg = build_config(config, TEST_OPTS, freeze=False)
            folder = tmp_path_factory.mktemp("run")
            torch.save({"model": build_model(cfg).state_dict()}, folder / "model_final.pth")
            (folder / "config.yaml").write_text(cfg.dump())
            runs[config] = (str(folder / "config.yaml"), str(folder / "model_final.pth"))
        return runs[config]

    return run


def test_every_distill_config_is_found():
    assert len(DISTILL) >= 20 and any("Synthetic" in p for p in DISTILL)


# Leaves that differ only in data, teacher run, the depth of fast-reid's ResNet (tests/test_configs.py builds those)
# or a KD setting the tests above cover distill alike: train each set of losses and of KD.INIT_FROM_TEACHER once per
# family and student classifier (BoT's linear layer, SBS's CircleSoftmax), the first leaf.
_UNIQUE = {}
for _path in sorted(DISTILL, key=lambda p: "choices" in p):
    _cfg = build_config(_path)
    _UNIQUE.setdefault(("Synthetic" in _path, _cfg.KD.LOGIT_WEIGHT > 0, _cfg.KD.DESCRIPTOR.WEIGHT > 0,
                        _cfg.KD.INIT_FROM_TEACHER, _cfg.MODEL.HEADS.CLS_LAYER), _path)


@pytest.mark.parametrize("path", DISTILL, ids=lambda p: os.path.relpath(p, ROOT))
def test_distill_configs_learn_from_the_run_of_a_shipped_scsn_config(path):
    """Each leaf's KD.MODEL_CONFIG is <OUTPUT_DIR>/config.yaml of a shipped SCSN config (step 1 of its recipe), on
    the student's data and input size; the student keeps fast-reid's strides and BoT's width."""
    from scsn.engine.defaults import recipe_teachers

    cfg = build_config(path)
    teachers = [build_config(t) for t in recipe_teachers(cfg, RECIPES)]
    assert teachers and all(t.MODEL.META_ARCHITECTURE == "SCSN" for t in teachers)
    assert all(t.DATASETS.NAMES == cfg.DATASETS.NAMES and t.INPUT.SIZE_TEST == cfg.INPUT.SIZE_TRAIN
               for t in teachers)
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone" and cfg.MODEL.BACKBONE.LAST_STRIDE == 1
    assert cfg.MODEL.HEADS.NAME == "EmbeddingHead" and cfg.MODEL.HEADS.EMBEDDING_DIM == 0


@pytest.mark.parametrize("path", sorted(_UNIQUE.values()), ids=lambda p: os.path.relpath(p, ROOT))
def test_distill_configs_train_with_their_teachers(path, recipe_runs):
    """With step 1's run in place (here at a small size) the student builds, trains a step and embeds."""
    from scsn.engine.defaults import recipe_teachers

    runs = [recipe_runs(t) for t in recipe_teachers(build_config(path), RECIPES)]
    cfg = build_config(path, TEST_OPTS + [
        "KD.MODEL_CONFIG", "(" + "".join(f'"{c}",' for c, _ in runs) + ")",
        "KD.MODEL_WEIGHTS", "(" + "".join(f'"{w}",' for _, w in runs) + ")"])
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model({"images": torch.rand(4, 3, 128, 64) * 255, "targets": torch.tensor([0, 0, 1, 1])})
    kd_losses = {"loss_jsdiv": cfg.KD.LOGIT_WEIGHT > 0, "loss_kd_descriptor": cfg.KD.DESCRIPTOR.WEIGHT > 0}
    assert {k for k, on in kd_losses.items() if on} == set(losses) & set(kd_losses)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        assert model({"images": torch.rand(2, 3, 128, 64) * 255}).shape == (2, cfg.MODEL.BACKBONE.FEAT_DIM)


# ---------------------------------------------------------------------------------------------------------------
# End to end: the two-step recipe through tools/train_net.py and through fast-reid's own FastDistill script.

FASTDISTILL_SCRIPT = textwrap.dedent('''
    import scsn  # the first of the two lines: before any fastreid import

    import sys

    from fastreid.config import get_cfg
    from fastreid.engine import DefaultTrainer, default_argument_parser, default_setup, launch
    from fastreid.utils.checkpoint import Checkpointer
''') + SETUP + textwrap.dedent('''

    def main(args):
        cfg = setup(args)
        if args.eval_only:
            model = DefaultTrainer.build_model(cfg)
            Checkpointer(model, save_dir=cfg.OUTPUT_DIR).load(cfg.MODEL.WEIGHTS)
            return DefaultTrainer.test(cfg, model)
        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()


    if __name__ == "__main__":
        args = default_argument_parser().parse_args()
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
''')
ONE_EPOCH = TINY + ["SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1"]


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    """Step 1: SCSN-R18 trained by tools/train_net.py (one epoch of SyntheticReIDTiny)."""
    root = tmp_path_factory.mktemp("recipe")
    code, log = train_net(root / "data", "--config-file", SCSN, *ONE_EPOCH, "OUTPUT_DIR", str(root / "scsn"))
    assert code == 0, log[-3000:]
    return root, ["KD.MODEL_CONFIG", f'("{root / "scsn" / "config.yaml"}",)',
                  "KD.MODEL_WEIGHTS", f'("{root / "scsn" / "model_final.pth"}",)']


def test_train_net_distills_an_scsn_run_into_bot_and_the_student_ships(trained_teacher, tmp_path):
    """Step 2 as the README gives it: fast-reid's BoT config with MODEL.META_ARCHITECTURE Distiller; then the student
    evaluates from its own config.yaml (without the teacher's files) and exports to ONNX with parity."""
    root, kd = trained_teacher
    out = tmp_path / "student"
    code, log = train_net(root / "data", "--config-file", BOT, *ONE_EPOCH, "MODEL.META_ARCHITECTURE", "Distiller",
                          *kd, "OUTPUT_DIR", str(out))
    assert code == 0, log[-3000:]
    values = [float(v) for v in re.findall(r"loss_jsdiv: (\S+)", log)]
    assert values and all(math.isfinite(v) for v in values)
    trained = scsn.results.load(str(out / "eval_results.json"))
    assert "mAP" in trained

    (out / "eval_results.json").unlink()
    config = ["--config-file", str(out / "config.yaml")]
    code, log = train_net(root / "data", "--eval-only", *config, "MODEL.WEIGHTS", str(out / "model_final.pth"))
    assert code == 0, log[-3000:]
    assert scsn.results.load(str(out / "eval_results.json")) == trained

    route = [] if DYNAMO_ONNX_EXPORT else ["--route", "torchscript"]  # older torch: BoT has no NMFF to stop the tracer
    checks, _ = run_tool("export_onnx", *config, *route, "--output", str(tmp_path / "student.onnx"), "--repeats", "1",
                         "--batch-size", "4", "MODEL.WEIGHTS", str(out / "model_final.pth"))
    assert all(c["min_cosine"] >= 0.9999 for c in checks)


def test_fastreids_fastdistill_script_with_the_two_lines(trained_teacher, tmp_path):
    root, kd = trained_teacher
    script = tmp_path / "train_net.py"
    script.write_text(FASTDISTILL_SCRIPT)
    env = dict(os.environ, FASTREID_DATASETS=str(root / "data"), OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, str(script), "--config-file",
         os.path.join(ROOT, "configs", "Synthetic", "distill", "scsn_r18-bot_r18_logits_descriptor.yml"),
         *ONE_EPOCH, *kd, "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert re.search(r"loss_jsdiv: \d", log) and re.search(r"loss_kd_descriptor: \d", log)
    assert (tmp_path / "out" / "model_final.pth").is_file()


def test_positive_mass_matches_a_hand_computation():
    """Image 0's neighbours at cosines 1 (same identity), 0 and -1 (others): at T = 1 its same-identity mass is
    e / (e + 1 + 1/e)."""
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    mass = positive_mass(features, torch.tensor([0, 0, 1, 2]), temperature=1.0)
    assert mass[0].item() == pytest.approx(math.e / (math.e + 1 + 1 / math.e), rel=1e-6)
    assert mass[2].item() == 0 and mass[3].item() == 0  # no other image of their identity


def test_teacher_statistics_read_the_teacher_as_distiller_runs_it(teacher):
    """The first teacher's logits per KD.CASCADE_LOGITS and its descriptor, on the given batches, in the BN mode the
    Distiller set; KD.CASCADE_LOGITS is left as it was."""
    torch.manual_seed(3)
    batches = [{"images": torch.rand(8, 3, 64, 32) * 255, "targets": TARGETS.clone()} for _ in range(2)]
    stats = {}
    for bn_eval in ("True", "False"):
        model = build_model(student_cfg([teacher], "KD.TEACHER_BN_EVAL", bn_eval)).train()
        stats[bn_eval] = teacher_statistics(model, batches, [0.1])
        model_t = model.model_ts[0]
        assert model_t.heads.logits == "mean"
        with torch.no_grad():
            outs = [model_t.heads(model_t.backbone(model.preprocess_image(b)), b["targets"]) for b in batches]
        top1 = sum((o["pred_class_logits"].argmax(1) == TARGETS).sum().item() for o in outs) / 16
        mass = sum(positive_mass(o["features"], TARGETS, 0.1).sum().item() for o in outs) / 16
        assert stats[bn_eval]["logits"][0] == pytest.approx({"cascade_logits": "mean", "top1": top1,
                                                             "p_true": stats[bn_eval]["logits"][0]["p_true"]})
        assert stats[bn_eval]["descriptor"][0]["positive_mass"] == pytest.approx(mass, rel=1e-5)
        assert [x["cascade_logits"] for x in stats[bn_eval]["logits"]] == ["mean", "stage1"]
    assert stats["True"]["logits"][0]["p_true"] != pytest.approx(stats["False"]["logits"][0]["p_true"])


def test_teacher_statistics_tool_on_a_trained_teacher(trained_teacher, tmp_path, monkeypatch):
    root, kd = trained_teacher
    monkeypatch.setenv("FASTREID_DATASETS", str(root / "data"))
    record = run_tool("teacher_statistics", "--config-file", os.path.join(ROOT, "configs", "Synthetic", "distill",
                                                                           "scsn_r18-bot_r18.yml"),
                      "--batches", "2", "--out", str(tmp_path / "teacher.json"), *TINY, *kd)
    assert [r["teacher_bn"] for r in record["rows"]] == list(load_tool("teacher_statistics").BN_MODES)
    for row in record["rows"]:
        assert row["images"] == 32 and all(0 <= x["top1"] <= 1 and 0 < x["p_true"] < 1 for x in row["logits"])
        masses = [d["positive_mass"] for d in row["descriptor"]]
        assert masses == sorted(masses, reverse=True)  # a lower temperature sharpens onto the nearest images
    assert scsn.results.load(str(tmp_path / "teacher.json"))["rows"] == record["rows"]
