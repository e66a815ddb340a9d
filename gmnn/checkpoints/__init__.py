"""Everything gmnn does with checkpoints, in one place.

- :mod:`gmnn.checkpoints.reading`: reading a checkpoint file as tensors and plain values only, never
  code, with one error line naming the option and the file when it cannot be read.
- :mod:`gmnn.checkpoints.hooks`: the LightningModule hooks that write and read gmnn's extra
  checkpoint entries (class path, gate temperature, random states) and load the right variant.
- :mod:`gmnn.checkpoints.variants`: which gmnn class wrote a checkpoint (``MoEModule.load_from_checkpoint``
  returns that class).
- :mod:`gmnn.checkpoints.compatibility`: whether a checkpoint fits a model (variant and architecture),
  with the settings that differ in the message.
- :mod:`gmnn.cli.resume`: what ``--ckpt_path last`` means in the ``gmnn`` command, and the
  command-line checks of a checkpoint against the config.
- :mod:`gmnn.checkpoints.reuse`: experts and gates copied from another run (``init_experts_from``,
  :class:`~gmnn.callbacks.GateTransfer`).

The submodules are imported where they are used (this package imports none of them, so that
``gmnn.models`` and ``gmnn.checkpoints`` can use each other without an import cycle).
"""
