"""Loss-spike detector benchmark: labeled corpus, peer detectors, scoring."""
