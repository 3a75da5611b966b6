"""Frozen third-party models, one adapter file per library (the only files importing it): open_clip
(``clip``; EmotionCLIP's release converted by ``emotionclip``), transformers (``hf``: wav2vec 2.0 and the
sentiment model; SEGUE's release converted by ``segue``), torchvision's detectors (``detector``), py-feat
(``pyfeat``) and OpenFace's CSV output (``openface``). ``weights`` is the weights policy they share.
Extraction runs them on frames; heads rebuild a frozen text tower named by a feature set's provenance."""
