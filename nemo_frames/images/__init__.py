"""Pixel-level building blocks: decoding, CLIP preprocessing and per-image metrics.

Pure functions on bytes and numpy arrays; the fused scoring pass calls them per sample.

- :mod:`nemo_frames.images.decode`: bytes → upright RGB uint8 (libjpeg-turbo with DCT-domain downscaling for
  JPEG, Pillow for everything else), pixel cap before decode, typed per-sample errors, optional DALI / nvJPEG.
- :mod:`nemo_frames.images.preprocess`: the CLIP input batch, matched to open_clip's own transform.
- :mod:`nemo_frames.images.metrics`: blur (variance of the Laplacian), QR-code area ratio, pHash, content hash.

Definitions and measured errors: ``docs/operators/decode.md``.
"""
