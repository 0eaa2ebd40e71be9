"""Writing a run folder: the training loop (`train`) and what it calls (`steps`, `schedules`,
`resume`, `faults`, `distributed`, `frames`), and the learning-rate range test (`lr_find`).
Nothing here reads a finished run; `report/` does, through the run folder's files."""
