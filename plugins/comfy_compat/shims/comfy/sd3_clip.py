"""``comfy.sd3_clip``: the old name of :mod:`comfy.text_encoders.sd3_clip`.

The reference moved the module; packs still try the old name first. Importing it gives the very
same module object, so classes and ``isinstance`` checks agree under both names.
"""

from __future__ import annotations

import sys

from comfy.text_encoders import sd3_clip as _moved

sys.modules[__name__] = _moved
