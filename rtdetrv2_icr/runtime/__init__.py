"""What every stage of a run shares: the process group and its collectives (`dist`), the
console logger, atomic file writes, checkpoint files, the runtime settings and their check, the
run's record and seeding, its loaders and its precision. No model, loss or loop lives here."""
