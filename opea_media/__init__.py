"""opea-media: serve and batch-run Stable Diffusion and Stable Video Diffusion."""

__version__ = "0.1.0"
