"""Training domain: strategy files, indicators, fuzzy features, labels, the MLP and its training loop.

Plain synchronous Python with no transport in it. `ktrdr.training.trainer.run_training(job, bars, ...)`
is one training as a pure function (bars in, progress/checkpoint bytes out, model files as bytes back);
`ktrdr.training.process.TrainingProcess` runs it in a child process for the trainer actor. Nothing is
re-exported here on purpose: `strategy`, `job`, `progress`, `process` and `registry` stay importable
without torch (the orchestrator validates strategies, the CLI renders progress and lists models, the
trainer actor never imports torch itself).
"""
