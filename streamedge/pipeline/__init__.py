"""The pipeline: shards, the per-message processor and the gateway that owns them."""
