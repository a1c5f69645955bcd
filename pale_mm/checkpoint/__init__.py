"""Checkpoints: safe loading (:mod:`.safe_load`), integrity (:mod:`.integrity`), the fit of
weights to a model (:mod:`.state_dict`), URLs and downloads (:mod:`.download`) and
pretrained backbones (:mod:`.pretrained`).

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7 calls
``torch.load`` without saying so: mmengine's own checkpoints (which hold a message hub with
``HistoryBuffer`` objects and numpy scalars) are then refused. Turning safety off
(``weights_only=False``) would let any downloaded checkpoint run code on load. Instead,
:func:`safe_load` keeps ``weights_only`` loading and allows exactly the classes that
mmengine, mmdet, mmseg and mmpretrain checkpoints hold (:data:`ALLOWED_GLOBALS`).
In a hardened run (:mod:`pale_mm.hardening`) mmengine's loaders (``init_cfg`` Pretrained,
``load_from``, ``--resume``, URLs) go through it, and its saves are atomic
(:mod:`pale_mm.fileio`).

Every local checkpoint is checked whole before it is loaded (:func:`checkpoint_problem`:
cut short, damaged bytes by the CRC-32 of every record, no checkpoint at all), and
:class:`CheckpointFitHook` refuses one whose weights do not fit the model: each with a
one-line :class:`~pale_mm.errors.PaleError` naming the file and what is wrong.
"""
# atomic writing lives in pale_mm.fileio; its names stay importable from here
from ..fileio import (  # noqa: F401
    TMP_SUFFIX,
    CheckpointWriteError,
    atomic_save,
    atomic_text_file,
    atomic_write,
    remove_stale_tmp_files,
    tmp_path_beside,
)
from .download import (  # noqa: F401
    ZOO_SCHEMES,
    CheckpointDownloadError,
    is_url,
    local_checkpoint,
    resolve_checkpoint_url,
)
from .integrity import BROKEN_FIX, check_checkpoint_file, checkpoint_problem  # noqa: F401
from .pretrained import load_pretrained_backbone  # noqa: F401
from .safe_load import (  # noqa: F401
    ALLOWED_GLOBALS,
    TORCH_HAS_SAFE_GLOBALS,
    BrokenCheckpointError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    safe_load,
)
from .state_dict import (  # noqa: F401
    backbone_state_dict,
    check_checkpoint_fits,
    extract_state_dict,
    match_state_dict,
    strip_ddp_prefix,
)
