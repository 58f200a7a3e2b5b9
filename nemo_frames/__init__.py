"""nemo_frames: curate image and interleaved image-text datasets as Dask dataframes."""
__version__ = "0.1.0"
