"""Real-dataset glue: the CUHK03 detected-box variant of §4.2 / Table 3 as a dataset name.

§4.2 evaluates CUHK03 on the 767/700 split with both annotations, the manually labeled boxes and the DPM
detected ones (Table 3, "Labeled" and "Detected" columns). fast-reid's ``CUHK03`` takes the choice as the
constructor argument ``cuhk03_labeled`` (default True), but its trainer builds every dataset as
``DATASET_REGISTRY.get(name)(root=...)`` without arguments, so the detected boxes need a name of their own.
"""
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.cuhk03 import CUHK03

__all__ = ["CUHK03Detected"]


@DATASET_REGISTRY.register()
class CUHK03Detected(CUHK03):
    """CUHK03, detected boxes (``<root>/cuhk03/images_detected``), 767/700 split (``splits_new_detected.json``).

    Same folder as ``CUHK03`` (labeled boxes): fast-reid extracts both kinds of boxes and both splits from
    ``cuhk03_release/cuhk-03.mat`` and the ``cuhk03_new_protocol_config_*.mat`` files on first use.
    """
    # Prefix of the training labels (``cuhk03_detected_<pid>``): tells them from the labeled variant's.
    dataset_name = "cuhk03_detected"

    def __init__(self, root="datasets", split_id=0, **kwargs):
        super().__init__(root=root, split_id=split_id, cuhk03_labeled=False, cuhk03_classic_split=False, **kwargs)
