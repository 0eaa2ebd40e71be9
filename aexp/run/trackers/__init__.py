"""Where a run's numbers go besides `metrics.csv`: the trackers of the `logger` config group
(`logger=[csv,tensorboard,mlflow,wandb]`, one YAML file each in conf/logger/ naming its class:
`base` holds what each builds on, `group` the set the loop talks to).

The loop sees one object, `Trackers`, and calls it at a few plain points: `start` once the run is
built (or restored), `log_step` after each optimiser step (a tracker that wants the loss every N
steps reads it then: no host sync otherwise), `log_epoch` with each metrics row, and the job calls
`finish` after the evaluation. Every call to a tracker is guarded: one that raises (a server down,
a full disk) costs one warning line and is dropped; training goes on. A tracker whose package is
missing is refused when it is built, before any data is loaded.

Resume: each tracker's run identity (an MLflow run id, a W&B run id) and the last epoch it logged
are kept in RUN_DIR/trackers.json, so a resumed or requeued run continues the same tracker run;
epochs the checkpoint holds but a tracker missed (a kill between the two) are logged on resume,
and none is logged twice (see each tracker's `start`)."""
