"""Models: the CLIP embedder and the LAION scoring heads.

- :mod:`nemo_frames.models.clip`: :class:`~nemo_frames.models.clip.ClipEmbedder` (open_clip; weights
  from the hub cache, a local file or a local directory; fp32 / bf16 / fp16; one instance per
  worker through :func:`~nemo_frames.models.clip.get_embedder`).
- :mod:`nemo_frames.models.heads`: :class:`~nemo_frames.models.heads.AestheticHead` (LAION
  aesthetic predictor V2 and V1 linear heads) and :class:`~nemo_frames.models.heads.NsfwHead`
  (LAION CLIP-based NSFW detector, including its categorical lookup), in numpy.
- :mod:`nemo_frames.models.weights`: safe weight loading (safetensors or ``weights_only``) and
  sha256 pins.

Importing this package imports neither torch nor open_clip; they load when a model is built.
"""
