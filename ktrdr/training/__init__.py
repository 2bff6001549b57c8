"""Training domain: strategy files, indicators, fuzzy features, labels, the MLP and its training loop.

Plain synchronous Python with no transport in it, but for the adapters that keep its bytes in the
MODELS and CHECKPOINTS buckets (model_store, checkpoint_store).
`ktrdr.training.trainer.run_training(job, bars, ...)` is one training as a pure function (bars in,
progress/checkpoint bytes out, model files as bytes back); `ktrdr.training.process.TrainingProcess`
runs it in a child process for the trainer actor. Nothing is re-exported here on purpose: `strategy`,
`job`, `progress`, `process`, `registry` and the two stores stay importable without torch (the
orchestrator validates strategies and removes checkpoints, the CLI renders progress and lists models,
the trainer actor never imports torch itself).
"""
