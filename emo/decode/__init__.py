"""A manifest item -> its decoded frames and audio: frame sampling (M x N x V, ``sampling``), video
decoding (decord or PyAV, ``video``), audio at 16 kHz mono (``audio``), every n-th frame for detectors
(``strided``), and the worker processes that decode with a per-video timeout (``workers``)."""
