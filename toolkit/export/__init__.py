"""Take a trained classifier out of the toolkit: a keras-hub preset, a transformers
checkpoint, or LoRA adapter files.

    from toolkit.export import export
    export("runs/ethos_270m", "exports/ethos_270m", format="keras-preset")

`checkpoint` may be a saved classifier, a run directory, a sweep directory (its
best trial) or a run's Orbax `checkpoints/` (see `toolkit.export.source`).
"""

from toolkit.export.errors import ExportError
from toolkit.export.writer import FORMATS, export

__all__ = ["FORMATS", "ExportError", "export"]
