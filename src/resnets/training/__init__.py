"""Training: the loop (loop.train), the run directory and its checkpoints, learning-rate schedules, fine-tuning
starts and the processes of a torchrun job."""
