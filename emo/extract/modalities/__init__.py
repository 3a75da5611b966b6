"""One module per feature set (modality): what it stores, its key, and the fill function the shard
runner calls (``clip``, ``audio``, ``text``, ``au`` from OpenFace CSVs, ``au_pyfeat``; ``boxes`` is the
subject-box geometry the clip set's subject prompt uses). A new modality is a new module here."""
