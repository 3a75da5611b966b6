"""Stage 1's engine: a manifest's items -> decoded frames and audio (``emo.decode``) -> frozen encoders
(``emo.encoders``) -> HDF5 shards of one feature set (``emo.cache``).

``runner`` plans shards, claims them, writes them atomically and resumes; ``cluster`` runs shards as
dask tasks; ``presets`` is ``make extract``. One module per feature set in ``modalities/``: a new
modality goes there.
"""

from . import moved

moved.install()  # old ``emo.extract.<module>`` paths keep working for one release (see moved.py)
