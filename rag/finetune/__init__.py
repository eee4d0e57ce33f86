"""Fine-tuning and export of the embedding model."""
