"""The object API and the transformers Trainer search: DiffoRA inside your own training code."""
