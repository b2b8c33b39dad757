"""The content-keyed embeddings folder: store, index and parts."""
