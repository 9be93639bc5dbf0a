"""Training: `mdiff.train.loop.train_and_evaluate(config, workdir)`, the sharded step (`step`),
orbax checkpoints (`checkpoint`), MFU (`mfu`), progress bar and multi-host start-up (`distributed`)."""
