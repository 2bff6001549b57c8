"""Training domain: strategy files, indicators, fuzzy features, labels, the MLP and its training loop.

Plain synchronous Python with no transport in it; the trainer actor calls
`ktrdr.training.trainer.train_strategy` in a worker thread. Nothing is re-exported here on purpose:
`ktrdr.training.strategy` and `ktrdr.training.progress` must stay importable without torch (the
orchestrator validates strategies, the CLI renders training progress).
"""
