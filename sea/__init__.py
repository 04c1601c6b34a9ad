"""The library behind the pipeline (see README.md, "Layout")."""

import warnings

# torch >= 2.9 warns at import time about `torch.jit.script` inside libraries we use
# (torch-geometric, open_clip); it says nothing about this pipeline and would clutter the
# one-line errors the stages print.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
