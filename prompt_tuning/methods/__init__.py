"""Tuning methods, one package each, each selected by one gin file under `configs/methods/`.

A method is a small addition on top of the shared machinery: a module the
model holds (a prompt reparameterization, masks, extra parameters), at most a
loss term for `train/step.py`, and, where the method has stages, a driver that
calls `train.trainer.train`. See docs/architecture.md.
"""
