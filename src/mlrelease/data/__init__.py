"""Getting training data onto local disk, verified, and into the normalised form the job reads."""
