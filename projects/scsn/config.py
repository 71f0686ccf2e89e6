"""Config keys SCSN adds to fast-reid's defaults. Only adds keys; call before ``merge_from_file``."""
from fastreid.config import CfgNode as CN


def add_scsn_config(cfg):
    _C = cfg

    # Stride of ResNet stage 3 (layer3). fast-reid's LAST_STRIDE sets stage 4's; 1 here reproduces the
    # literal reading of §3.4 ("strides of Stage3 and Stage4 to 1"), at about 2x the backbone's FLOPs.
    _C.MODEL.BACKBONE.STAGE3_STRIDE = 2

    # Residual Dual Attention Module, §3.1.
    _C.MODEL.BACKBONE.RDAM = CN()
    # Attention in every residual block (Table 5 rows): "none", "CAM", "SAM", "RSAM", "CAM+SAM", "RDAM".
    _C.MODEL.BACKBONE.RDAM.MODE = "RDAM"
    # Reduction ratio r of the shared channel-attention MLP W1: C -> C/r, W2: C/r -> C (eq. 1).
    _C.MODEL.BACKBONE.RDAM.REDUCTION = 16
    # Kernel size of the convolution that maps the [avg; max] channel maps to W_n (eq. 2).
    _C.MODEL.BACKBONE.RDAM.SPATIAL_KERNEL = 7

    # Non-local Multi-stage Feature Fusion, §3.2.
    _C.MODEL.BACKBONE.NMFF = CN()
    # Low-level ResNet stages (1-3) fused into stage 4 (Table 6); [] turns NMFF off.
    _C.MODEL.BACKBONE.NMFF.STAGES = [3]
    # c_f: channels of each fused map F^{hl}, i.e. of the value embedding kappa_v (eqs. 3-4).
    _C.MODEL.BACKBONE.NMFF.VALUE_CHANNELS = 2048
    # c: channels of the query and key embeddings kappa_q, kappa_k (eq. 3).
    _C.MODEL.BACKBONE.NMFF.KEY_CHANNELS = 256
    # Bins of the pyramid average pooling of keys and values (Fig. 3): S = sum(b * b) sampled positions.
    _C.MODEL.BACKBONE.NMFF.POOL_BINS = [1, 3, 6, 8]
    # How F_f (eq. 5) joins the stage-4 map F_4: "add" (F_4 + F_f), "add_relu" (ReLU(F_4 + F_f)), "bn_add"
    # (F_4 + BN(F_f), BN at zero scale).
    _C.MODEL.BACKBONE.NMFF.MERGE = "add"

    # Salient Feature Extraction unit, §3.3, and cascaded suppression, §3.4.
    # Apply the SFE unit in each stage (eq. 8); False gives the plain global-branch baseline of Table 5.
    _C.MODEL.HEADS.WITH_SFE = True
    # K: number of horizontal stripes the SFE unit weighs.
    _C.MODEL.HEADS.NUM_STRIPES = 8
    # T: number of cascaded suppression stages; every stage has its own SFE, FC, BNNeck and classifier.
    _C.MODEL.HEADS.NUM_STAGES = 3
    # Stripes zeroed by the binary mask B after each stage (eq. 9).
    _C.MODEL.HEADS.SUPPRESS_STRIPES = 1
    # Pooling of stages t >= 2 (stage 1 uses POOL_LAYER); §3.4 uses max pooling after suppression.
    _C.MODEL.HEADS.SUPPRESSED_POOL_LAYER = "GlobalMaxPool"

    # Memory order of the model's weights and activations: "channels_last" (NHWC: oneDNN's bf16 and CUDA's fp16
    # convolutions run fastest in it), "contiguous" (NCHW), or "auto": channels_last when SOLVER.AMP.ENABLED.
    _C.MODEL.MEMORY_FORMAT = "auto"

    # What computes the test descriptors (evaluation, inference tools): "eager" PyTorch, "compiled" (torch.compile),
    # or "onnxruntime" running the ONNX graph of TEST.ONNX_FILE after a parity check (scsn/inference/runtime.py).
    _C.TEST.RUNTIME = "eager"
    # The ONNX graph for TEST.RUNTIME onnxruntime; exported there first when missing ("" : a temporary file).
    _C.TEST.ONNX_FILE = ""

    # Seed of python, numpy and torch RNGs for the run (tools/train_net.py); < 0 draws one, as fast-reid does.
    _C.SEED = -1

    # Weight of each stage's losses (intermediate supervision, eq. 12); [] weighs every stage 1.0.
    _C.MODEL.LOSSES.STAGE_WEIGHTS = []

    # fast-reid's Distiller (MODEL.META_ARCHITECTURE Distiller) with SCSN teachers (scsn/fastreid_patches/distiller.py).
    # Weight of fast-reid's logit loss loss_jsdiv; 0 turns it off (needed for a teacher trained on other identities).
    _C.KD.LOGIT_WEIGHT = 1.0
    # What the logit loss takes from a cascade teacher: "mean" of its T stages' logits, or "stage1"'s alone.
    _C.KD.CASCADE_LOGITS = "mean"
    # Teachers' BatchNorm layers use their running statistics (the teacher as evaluated) instead of each batch's.
    _C.KD.TEACHER_BN_EVAL = True
    # The student's backbone starts from the first teacher's, every tensor by name (a teacher of the student's depth
    # and width: SCSN-R18 -> BoT-R18); MODEL.WEIGHTS and --resume still load over it.
    _C.KD.INIT_FROM_TEACHER = False
    # Descriptor loss (scsn/modeling/distillation.py): the student's in-batch similarity distribution learns the
    # teacher's. Its weight; 0 turns it off.
    _C.KD.DESCRIPTOR = CN()
    _C.KD.DESCRIPTOR.WEIGHT = 0.0
    # Temperature of the softmax over each image's cosine similarities to the rest of the batch.
    _C.KD.DESCRIPTOR.TEMPERATURE = 0.1
    # Attention transfer (scsn/modeling/distillation.py): the student's stage attention maps learn the teachers'.
    # Its beta (Zagoruyko and Komodakis use 1000); 0 turns it off.
    _C.KD.ATTENTION = CN()
    _C.KD.ATTENTION.WEIGHT = 0.0
    return cfg
