"""The Vast wire protocol: envelopes, signatures and reports, free of I/O."""
