"""spurcli: generate class-wise spurious images with a fine-tuned Stable Diffusion and measure how
strongly image classifiers fall for them.

See README.md; the plugin API is in `spurcli.hookspecs`.
"""

from spurcli.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
