"""Training machinery shared by the search and the fine-tune: the loop, checkpoints, processes, interrupts."""
