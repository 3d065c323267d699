"""Data: sources (files, pandas, TFDS, built-in ETHOS), prompt formatting, the tf.data pipeline."""
