"""Training one network: the recipe, the data on the device and the trainer.

Read in the order the data flows: `recipe` (how to train, as frozen data, with its
augmentation specs), `sources` (reading CIFAR-10 and CIFAR-100), `folders` (image
folders, resized once and cached), `datasets` (the --data value and its identity) and
`data` (seeded stratified splits held as uint8 on the device), `augment` (batched per-sample
augmentations), `optimizers` and `schedules`, `device` and `evaluation`, then `trainer`
(the epoch loop) and `run` (one run outside a study). The trainer is pure: it takes a
model, data, a recipe, a device and callbacks, and knows nothing of Optuna or storage.
This package imports nothing heavy itself, so `training.recipe` stays torch-free.
"""
