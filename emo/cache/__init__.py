"""The feature cache on disk: manifests (``manifest``), HDF5 shards (``shard``), feature sets with their
keys and provenance (``featureset``), ``emo cache verify`` (``verify``) and loading a cache into tensors
for heads (``loader``, ``data``). Format: docs/cache-format.md."""
