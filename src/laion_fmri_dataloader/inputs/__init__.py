"""Finding and reading a BIDS + fMRIPrep dataset: runs, events, confounds, masks, TR."""
